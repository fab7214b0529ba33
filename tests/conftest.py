"""Shared fixtures: tiny models and data built inside the tests, no downloads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = (
    "good great fine nice superb lovely fun moving bad awful dull boring weak poor mess "
    "movie film plot actor scene story script cast the a an is was very not quite it this"
).split()
POSITIVE = {"good", "great", "fine", "nice", "superb", "lovely", "fun", "moving"}


def make_tokenizer(directory: Path):
    """A WordPiece tokenizer over the toy vocabulary, saved to ``directory``."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(directory)
    return tok


def make_tiny_bert(
    directory: Path,
    layers: int = 2,
    width: int = 32,
    heads: int = 4,
    labels: int = 2,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised BERT classifier (and tokenizer) to ``directory``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = make_tokenizer(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=width * 2,
        max_position_embeddings=128,
        num_labels=labels,
    )
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    return directory


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Toy sentiment rows whose label follows from the words in them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 12))
        score = sum(1 if w in POSITIVE else 0 for w in words) - sum(
            1 for w in words if w in {"bad", "awful", "dull", "boring", "weak", "poor", "mess"}
        )
        label = "positive" if score > 0 or (score == 0 and i % 2) else "negative"
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sharpen(path: Path, std: float = 0.1, seed: int = 0) -> Path:
    """Redraw the weight matrices with a larger spread.

    BERT's 0.02 init gives logits of ~0.005 that barely react to anything; parity and INT8
    checks need a model whose outputs padding or quantization can move.
    """
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std, generator=gen)
    model.save_pretrained(path)
    return path


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    return make_tiny_bert(tmp_path / "tiny-bert")
