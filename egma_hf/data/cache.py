"""Data built once and kept: synthetic corpora and evaluation sets live under one cache folder."""

import logging
import os
import shutil
from collections.abc import Callable
from numbers import Integral
from pathlib import Path

from filelock import FileLock, Timeout

from .synthetic import make_synthetic_evaluation_sets, make_synthetic_mimic_eye

logger = logging.getLogger("egma_hf.data")


def default_cache_dir() -> Path:
    """$EGMA_HF_CACHE, else ~/.cache/egma_hf."""
    return Path(os.environ.get("EGMA_HF_CACHE") or Path.home() / ".cache" / "egma_hf")


def build_once(path, build: Callable[[Path], object]) -> Path:
    """Run `build(folder)` unless `path` exists; returns `path`.

    The build writes into a `.tmp` folder beside `path` that is renamed when complete, so an interrupted build is
    never mistaken for a finished one. Builds take a file lock (`path` + `.lock`), so processes asking for the same
    `path` at once (several jobs, or nodes sharing a file system) get one build: the others wait and return it. The
    lock dies with its process, so the `.tmp` of a killed build is cleaned up by the next call; a build that raises
    leaves nothing behind.
    """
    path = Path(path)
    if path.exists():  # finished folders only ever appear by the rename below
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name(path.name + ".lock"))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        logger.info("waiting for another process to finish building %s (lock file %s)", path, lock.lock_file)
        lock.acquire()
    try:
        if not path.exists():  # another process may have finished it while we waited
            partial = path.with_name(path.name + ".tmp")
            shutil.rmtree(partial, ignore_errors=True)  # left by a killed build: whoever builds holds the lock
            try:
                build(partial)
                if not partial.is_dir():
                    raise RuntimeError(f"building {path}: the build function wrote nothing into {partial}")
                os.replace(partial, path)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    finally:
        lock.release()
    return path


def cached_synthetic_corpus(num_samples: int = 640, seed: int = 0, cache_dir=None) -> Path:
    """The synthetic MIMIC-EYE corpus (`make_synthetic_mimic_eye`) in the cache, written on first use; its folder
    name, `synthetic-{num_samples}-seed{seed}`, says what is in it. The default data of the example scripts."""
    num_samples = _check_int(num_samples, "num_samples", minimum=2)  # one EGD-CXR and one REFLACX reading
    seed = _check_int(seed, "seed", minimum=0)
    folder = Path(cache_dir or default_cache_dir()) / f"synthetic-{num_samples}-seed{seed}"
    return build_once(folder, lambda out: make_synthetic_mimic_eye(out, num_samples, seed))


def cached_synthetic_evaluation_sets(images_per_class: int = 100, seed: int = 0, cache_dir=None) -> Path:
    """The synthetic evaluation sets (`make_synthetic_evaluation_sets`) in the cache, written on first use, in
    `synthetic-evaluation-{images_per_class}-seed{seed}`. The default data of the evaluation scripts."""
    images_per_class = _check_int(images_per_class, "images_per_class", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    folder = Path(cache_dir or default_cache_dir()) / f"synthetic-evaluation-{images_per_class}-seed{seed}"
    return build_once(folder, lambda out: make_synthetic_evaluation_sets(out, images_per_class, seed))


def _check_int(value, argument: str, minimum: int) -> int:
    """Cache folder names are built from these numbers, so anything but an int is refused before any path is."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")
    return int(value)
