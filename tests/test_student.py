import pytest
import torch
from transformers import AutoModel

from conftest import make_tiny_bert
from onedistill.config import StudentConfig
from onedistill.student import (
    MappingError,
    adaptive_mapping,
    check_mapping,
    cut_student,
    default_mapping,
    linear_cka,
    resolve_mapping,
)


def test_named_mappings():
    assert default_mapping("uniform", 6, 12) == [2, 4, 6, 8, 10, 12]
    assert default_mapping("uniform", 4, 6) == [2, 3, 4, 6]
    assert default_mapping("last", 3, 12) == [10, 11, 12]
    with pytest.raises(MappingError, match="only 2"):
        default_mapping("uniform", 3, 2)


def test_explicit_mapping_and_skip_layers_checked_against_models():
    cfg = StudentConfig(model="x", mapping=[1, 3], skip_layers=[1])
    assert resolve_mapping(cfg, 2, 4) == [1, 3]
    with pytest.raises(MappingError, match="has 2 entries"):
        resolve_mapping(cfg, 3, 4)
    with pytest.raises(MappingError, match=r"teacher layers \[7\] outside 1..4"):
        check_mapping([1, 7], [], 2, 4)
    with pytest.raises(MappingError, match=r"skip_layers names student layers \[5\]"):
        check_mapping([1, 2], [5], 2, 4)
    with pytest.raises(MappingError, match="leaves no layer"):
        check_mapping([1, 2], [1, 2], 2, 4)


def test_linear_cka_properties():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    # Invariant to rotation and scale, so different-width layers compare fairly.
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, torch.randn(64, 16)) < 0.5


def test_adaptive_mapping_finds_matching_layers():
    torch.manual_seed(0)
    teacher = torch.randn(64, 5, 8)  # embeddings + 4 layers
    # Student layer 1 is a rotated copy of teacher layer 3, student layer 2 of teacher layer 1.
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    student = torch.stack([teacher[:, 0], teacher[:, 3] @ q, teacher[:, 1] @ q], dim=1)
    mapping, scores = adaptive_mapping(student, teacher)
    assert mapping == [3, 1]
    assert len(scores) == 2 and len(scores[0]) == 4


def test_cut_student_copies_teacher_layers(tmp_path):
    path = make_tiny_bert(tmp_path / "t", layers=4, width=32)
    teacher = AutoModel.from_pretrained(path)
    student = cut_student(path, teacher, [2, 4], ["neg", "pos"])
    assert student.config.num_hidden_layers == 2
    t_state, s_state = teacher.state_dict(), student.base_model.state_dict()
    key = "encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(s_state[key.format(0)], t_state[key.format(1)])
    assert torch.equal(s_state[key.format(1)], t_state[key.format(3)])
    assert torch.equal(
        s_state["embeddings.word_embeddings.weight"], t_state["embeddings.word_embeddings.weight"]
    )
