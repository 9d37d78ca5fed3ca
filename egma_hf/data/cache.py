"""Data built once and kept: synthetic corpora and evaluation sets live under one cache folder."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .evaluation_sets import make_synthetic_evaluation_sets
from .synthetic import make_synthetic_mimic_eye


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


def cached_synthetic_corpus(num_samples: int = 640, seed: int = 0, cache_dir=None) -> Path:
    """The synthetic MIMIC-EYE corpus (`make_synthetic_mimic_eye`) in the cache, written on first use; its folder
    name, `synthetic-{num_samples}-seed{seed}`, says what is in it. The default data of the example scripts."""
    folder = Path(cache_dir or default_cache_dir()) / f"synthetic-{num_samples}-seed{seed}"
    return build_once(folder, lambda out: make_synthetic_mimic_eye(out, num_samples, seed))


def cached_synthetic_evaluation_sets(images_per_class: int = 100, seed: int = 0, cache_dir=None) -> Path:
    """The synthetic evaluation sets (`make_synthetic_evaluation_sets`) in the cache, written on first use, in
    `synthetic-evaluation-{images_per_class}-seed{seed}`. The default data of the evaluation scripts."""
    folder = Path(cache_dir or default_cache_dir()) / f"synthetic-evaluation-{images_per_class}-seed{seed}"
    return build_once(folder, lambda out: make_synthetic_evaluation_sets(out, images_per_class, seed))
