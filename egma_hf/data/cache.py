"""Data built once and kept: synthetic corpora and evaluation sets live under one cache folder."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def default_cache_dir() -> Path:
    """$EGMA_HF_CACHE, else ~/.cache/egma_hf."""
    return Path(os.environ.get("EGMA_HF_CACHE") or Path.home() / ".cache" / "egma_hf")


def build_once(path, build: Callable[[Path], object]) -> Path:
    """Run `build(folder)` unless `path` exists. It writes into a `.tmp` folder beside `path` that is renamed when
    complete, so an interrupted build is never mistaken for a finished one. Returns `path`."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".tmp")
        shutil.rmtree(partial, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        build(partial)
        os.replace(partial, path)
    return path
