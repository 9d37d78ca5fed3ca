"""build_once and the cached synthetic data: one build under a file lock, recovery from killed and failed builds."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from egma_hf.data import build_once, cached_synthetic_corpus, cached_synthetic_evaluation_sets

# Each worker waits until all have started (a barrier of marker files), then asks for the same folder at once.
BARRIER = """
import os, sys, time
from pathlib import Path

ready, workers = Path(sys.argv[1]), int(sys.argv[2])
(ready / str(os.getpid())).touch()
deadline = time.monotonic() + 120
while len(list(ready.iterdir())) < workers and time.monotonic() < deadline:
    time.sleep(0.01)
"""

COUNTING_BUILD = "from egma_hf.data import build_once\n" + BARRIER + """
target, log = Path(sys.argv[3]), Path(sys.argv[4])


def write(line):
    with open(log, "a") as file:  # one short O_APPEND write per line: lines from several processes do not mix
        file.write(line + "\\n")


def build(folder):
    write(f"build {os.getpid()} {time.time()}")
    folder.mkdir()
    deadline = time.monotonic() + 60  # hold the lock until every worker has asked (not a fixed sleep: a loaded
    while log.read_text().count("enter ") < workers and time.monotonic() < deadline:  # machine imports slowly)
        time.sleep(0.05)
    (folder / "content.txt").write_text(f"built by {os.getpid()}")
    write(f"done {os.getpid()} {time.time()}")


write(f"enter {os.getpid()} {time.time()}")
result = build_once(target, build)
print(result, (result / "content.txt").read_text())
"""

CORPUS = BARRIER + """
import hashlib
from egma_hf.data import cached_synthetic_corpus

folder = cached_synthetic_corpus(num_samples=6, seed=1, cache_dir=sys.argv[3])
digest = hashlib.sha256()
for path in sorted(p for p in folder.rglob("*") if p.is_file()):
    digest.update(str(path.relative_to(folder)).encode() + b"\\0" + path.read_bytes())
print(folder, digest.hexdigest())
"""

KILLED_BUILD = """
import sys, time
from pathlib import Path
from egma_hf.data import build_once

target, building = Path(sys.argv[1]), Path(sys.argv[2])


def build(folder):
    folder.mkdir()
    (folder / "half-written.txt").write_text("partial")
    building.touch()
    time.sleep(600)  # killed here


build_once(target, build)
"""


def start_workers(script: str, workers: int, ready: Path, *arguments) -> list[subprocess.Popen]:
    ready.mkdir()
    return [
        subprocess.Popen([sys.executable, "-c", script, str(ready), str(workers), *map(str, arguments)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]


def finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        outputs.append(stdout.strip())
    return outputs


def write_content(text: str):
    def build(folder: Path):
        folder.mkdir()
        (folder / "content.txt").write_text(text)

    return build


def test_build_runs_once_then_returns_the_finished_folder(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        write_content("first")(folder)

    target = tmp_path / "corpus"
    assert build_once(target, build) == target
    assert build_once(target, build) == target
    assert len(calls) == 1 and calls[0] == tmp_path / "corpus.tmp"
    assert (target / "content.txt").read_text() == "first"
    assert not (tmp_path / "corpus.tmp").exists()


def test_stale_partial_folder_is_cleaned_up(tmp_path):
    stale = tmp_path / "corpus.tmp"
    stale.mkdir()
    (stale / "leftover.txt").write_text("from a killed build")
    target = build_once(tmp_path / "corpus", write_content("fresh"))
    assert sorted(p.name for p in target.iterdir()) == ["content.txt"]
    assert not stale.exists()


def test_failed_build_leaves_nothing_and_releases_the_lock(tmp_path):
    target = tmp_path / "corpus"

    def failing(folder):
        write_content("half")(folder)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(target, failing)
    assert not target.exists() and not (tmp_path / "corpus.tmp").exists()
    with FileLock(tmp_path / "corpus.lock").acquire(timeout=0):  # raises filelock.Timeout if still held
        pass
    assert (build_once(target, write_content("retry")) / "content.txt").read_text() == "retry"


def test_build_that_writes_nothing_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(RuntimeError, match=r"building .*corpus: the build function wrote nothing"):
        build_once(tmp_path / "corpus", lambda folder: None)
    assert not (tmp_path / "corpus").exists()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda cache: cached_synthetic_corpus(num_samples="../escape", cache_dir=cache), "num_samples must be an int"),
        (lambda cache: cached_synthetic_corpus(num_samples=1, cache_dir=cache), r"num_samples must be an int >= 2"),
        (lambda cache: cached_synthetic_corpus(num_samples=6, seed=-1, cache_dir=cache), r"seed must be an int >= 0"),
        (lambda cache: cached_synthetic_corpus(num_samples=6.0, cache_dir=cache), "num_samples must be an int"),
        (lambda cache: cached_synthetic_evaluation_sets(images_per_class=0, cache_dir=cache),
         r"images_per_class must be an int >= 1"),
    ],
)
def test_bad_cache_arguments_are_refused_before_any_folder_is_made(tmp_path, call, message):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=message):
        call(cache)
    assert not cache.exists()


@pytest.mark.slow
def test_concurrent_processes_share_one_build(tmp_path):
    target, log = tmp_path / "cache" / "corpus", tmp_path / "log.txt"
    outputs = finish(start_workers(COUNTING_BUILD, 3, tmp_path / "ready", target, log))
    events = [line.split() for line in log.read_text().splitlines()]
    builds = [event for event in events if event[0] == "build"]
    assert len(builds) == 1, events
    builder = builds[0][1]
    assert outputs == [f"{target} built by {builder}"] * 3
    done = next(float(event[2]) for event in events if event[0] == "done")
    enters = [float(event[2]) for event in events if event[0] == "enter"]
    assert len(enters) == 3 and max(enters) < done  # all three asked while the build was running
    assert not (target.parent / "corpus.tmp").exists()


@pytest.mark.slow
def test_concurrent_cached_synthetic_corpus_gives_identical_results(tmp_path):
    cache = tmp_path / "cache"
    outputs = finish(start_workers(CORPUS, 3, tmp_path / "ready", cache))
    folder = cache / "synthetic-6-seed1"
    assert len(set(outputs)) == 1 and outputs[0].startswith(f"{folder} ")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    assert outputs[0] == f"{folder} {digest.hexdigest()}"
    assert sorted(p.name for p in cache.iterdir()) == ["synthetic-6-seed1", "synthetic-6-seed1.lock"]


@pytest.mark.slow
def test_build_killed_midway_is_recovered_by_the_next_call(tmp_path):
    target, building = tmp_path / "corpus", tmp_path / "building"
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(target), str(building)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not building.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
    finally:
        process.kill()
        process.communicate()
    assert not target.exists() and (tmp_path / "corpus.tmp" / "half-written.txt").exists()
    with FileLock(tmp_path / "corpus.lock").acquire(timeout=10):  # the dead process's lock is gone with it
        pass
    assert (build_once(target, write_content("complete")) / "content.txt").read_text() == "complete"
    assert sorted(p.name for p in target.iterdir()) == ["content.txt"]
    assert not (tmp_path / "corpus.tmp").exists()
