import pytest
from typer.testing import CliRunner

from onedistill.cli import app
from onedistill.config import ConfigError, load_config, parse_config

BASE = {
    "data": {"source": "mr-sentiment"},
    "teacher": {"model": "pkg:all-mpnet-base-v2"},
    "student": {"model": "pkg:all-minilm-l6-v2"},
}


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_in():
    cfg = parse_config(BASE)
    assert cfg.distill.loss.w_kd == 0.6
    assert cfg.distill.loss.w_hidden == 0.3
    assert cfg.distill.loss.w_quant == 0.1
    assert 0.05 <= cfg.teacher.hard_fraction <= 0.10


def test_scientific_notation_loads_as_float(tmp_path):
    path = write(
        tmp_path,
        "data: {source: mr-sentiment}\nteacher: {model: x}\nstudent: {model: y}\n"
        "distill:\n  lr: 1e-5\n  projection_lr: 3E-4\n",
    )
    cfg = load_config(path)
    assert cfg.distill.lr == pytest.approx(1e-5)
    assert cfg.distill.projection_lr == pytest.approx(3e-4)


def test_every_error_reported_at_once_with_path_and_value(tmp_path):
    path = write(
        tmp_path,
        "data: {source: mr-sentiment, text_colum: txt}\n"
        "teacher: {model: x, finetune: partial}\n"
        "student: {model: y}\n"
        "distill:\n  epochs: 0\n  loss: {w_kd: -1}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    assert len(errors) == 4
    joined = "\n".join(errors)
    assert "data.text_colum: unknown key" in joined
    assert "teacher.finetune" in joined and "'partial'" in joined and "'head'" in joined
    assert "distill.epochs" in joined and "received 0" in joined
    assert "distill.loss.w_kd" in joined and "-1" in joined


def test_student_needs_exactly_one_kind():
    raw = {**BASE, "student": {"model": "y", "layers": 3}}
    with pytest.raises(ConfigError, match="exactly one of student.model or student.layers"):
        parse_config(raw)


def test_data_needs_a_source():
    with pytest.raises(ConfigError, match="data.source"):
        parse_config({**BASE, "data": {}})


def test_validate_command_lists_errors(tmp_path):
    path = write(
        tmp_path, "data: {source: mr-sentiment}\nteacher: {modle: x}\nstudent: {model: y}\n"
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    out = result.output
    assert "teacher.modle: unknown key" in out
    assert "teacher.model: required key is missing" in out


def test_validate_command_accepts_shipped_example():
    result = CliRunner().invoke(app, ["validate", "examples/mr-sentiment.yaml"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_not_yaml_is_clear_error(tmp_path):
    path = write(tmp_path, "data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
