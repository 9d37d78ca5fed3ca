"""Training-time loading from shards: samples/s of `ShardStream` (read, decode, the default augmentation at 224 from
256-px stored images, `EGMADataCollator(compact_pixels=True)` as training uses it) per loader worker, and one
epoch's time and peak memory as rows grow.

(1) Per-worker speed, side by side in one run (the cases interleaved, `--repeats` rounds): rows without gaze, rows
    with gaze (every row a MIMIC-EYE reading, heatmaps moved with the image), and a MIMIC-CXR twin with gaze on
    ~`--gaze_share` of its rows; each with `num_workers=0` (in this process) and `num_workers=1` (one worker
    process, the main one only receiving batches). The timing starts at the first batch, so the worker's start is
    reported apart. Target: >= 500 samples/s per worker.
(2) Scaling: one epoch of `num_workers=1` over the shards shard_preprocessing.py wrote (`--cache`,
    `shards-<rows>-<px>px`; written here when missing), in a fresh subprocess per size that reports its wall time
    and peak RSS (`ru_maxrss` of itself and of its worker).
(3) `--profile`: cProfile of the in-process path over the mixed rows, the top functions by own time.

    python benchmarks/shard_loading.py [--rows 4000] [--batches 60] [--scaling 5000 10000 20000] [--profile]
    python benchmarks/shard_loading.py --quick        # smoke run (the tests): tiny sizes, a temporary cache
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STORED = dict(image_size=256, heatmap_size=64)  # shard_preprocessing.py's (the ShardSettings defaults)


def child_json(command: list[str], what: str) -> dict:
    """The JSON object a child process prints last; SystemExit with its output if it failed."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


CASES = ("no gaze", "gaze", "mix")


def processor_for(shards):
    from egma_hf import EGMAImageProcessor, EGMAProcessor
    from egma_hf.training import build_tokenizer

    reports = [row["report"] for row in shards.read_split("train", columns=["report"])]
    return EGMAProcessor(EGMAImageProcessor(size=224, gaze_grid_size=7), build_tokenizer(reports))


def written(folder: Path, make_rows) -> Path:
    """`folder`'s shards, written from make_rows() when missing."""
    from egma_hf.data import ShardSettings, write_shards

    if not (folder / "egma_shards.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write_shards(make_rows(), folder, ShardSettings(**STORED), num_proc=2, progress=False)
    return folder


def corpora(cache: Path, rows: int, gaze_share: float, image_size: int) -> dict:
    """{case: (shard folder, gaze_kept)}: a MIMIC-CXR twin of `rows` images with a MIMIC-EYE twin of
    gaze_share * rows readings attached, and the MIMIC-EYE twin's own shards."""
    from egma_hf.data import (
        HeatmapSettings,
        attach_gaze,
        load_mimic_cxr,
        load_mimic_eye,
        make_synthetic_mimic_cxr,
        make_synthetic_mimic_eye,
    )

    readings = max(6, round(rows * gaze_share))
    base = cache / f"loading-{rows}-{readings}-{image_size}px"
    eye, cxr = base / "eye", base / "cxr"
    if not (base / "made").is_file():
        shutil.rmtree(base, ignore_errors=True)
        make_synthetic_mimic_eye(eye, readings, seed=0)
        make_synthetic_mimic_cxr(cxr, rows, seed=0, mimic_eye=eye, image_size=image_size)
        (base / "made").write_text("yes")
    heatmaps = HeatmapSettings(recipe=12.0)
    mix = written(base / "shards-mix", lambda: attach_gaze(load_mimic_cxr(cxr, frontal_only=False),
                                                           load_mimic_eye(eye, heatmaps)))
    gaze = written(base / "shards-gaze", lambda: load_mimic_eye(eye, heatmaps))
    return {"no gaze": (mix, frozenset()), "gaze": (gaze, None), "mix": (mix, None)}


def stream_for(folder: Path, gaze_kept, num_workers: int, batch_size: int, processor=None):
    from egma_hf.data import AugmentSettings, EGMADataCollator, ShardRows, ShardSet, ShardStream

    shards = ShardSet(folder)
    processor = processor or processor_for(shards)
    rows = ShardRows(processor.image_processor, shards.settings.heatmap_size, augment=AugmentSettings(), seed=0,
                     gaze_kept=gaze_kept)
    return ShardStream(shards, "train", batch_size, rows, EGMADataCollator(processor, compact_pixels=True), seed=0,
                       num_workers=num_workers, shuffle_buffer=1000), processor


def timed_stream(stream, batches: int, epoch: int = 0) -> dict:
    """Iterate up to `batches` batches (epochs on end): the first batch's wait, then samples/s after it."""
    started = time.perf_counter()
    first, count, samples, gaze = None, 0, 0, 0
    while count < batches:
        for batch in stream.loader(epoch):
            count += 1
            if first is None:
                first = time.perf_counter()
            else:
                samples += len(batch["pixel_values"])
                gaze += int(batch["has_gaze"].sum())
            if count >= batches:
                break
        epoch += 1
    elapsed = time.perf_counter() - first
    return {"first_batch_s": first - started, "samples_per_s": samples / elapsed if samples else 0.0,
            "gaze_share": gaze / max(samples, 1)}


def per_worker(options, cache: Path) -> dict:
    folders = corpora(cache, options.rows, options.gaze_share, options.image_size)
    results = {(case, workers): [] for case in CASES for workers in (0, 1)}
    processors = {}
    for _ in range(options.repeats):
        for case in CASES:
            folder, kept = folders[case]
            for workers in (0, 1):
                stream, processors[folder] = stream_for(folder, kept, workers, options.batch_size,
                                                        processors.get(folder))
                results[(case, workers)].append(timed_stream(stream, options.batches))
    return results


def profile(options, cache: Path, top: int = 18) -> str:
    folder, kept = corpora(cache, options.rows, options.gaze_share, options.image_size)["mix"]
    stream, _ = stream_for(folder, kept, 0, options.batch_size)
    profiler = cProfile.Profile()
    profiler.enable()
    timed_stream(stream, options.batches)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def epoch_child(options) -> None:
    """In a fresh process: one epoch of num_workers=1 over the shards, its time and peak memory."""
    import torch

    torch.set_num_threads(1)
    stream, _ = stream_for(Path(options.child_shards), None, 1, options.batch_size)
    started = time.perf_counter()
    samples = sum(len(batch["pixel_values"]) for batch in stream.loader(0))
    seconds = time.perf_counter() - started
    print(json.dumps({"corpus_rows": stream.shards.manifest["rows"], "rows": stream.shards.rows("train"),
                      "samples": samples, "seconds": seconds,
                      "rss_mb": {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                 "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))


def scaling(options, cache: Path) -> list[dict]:
    results = []
    for size in options.scaling:
        folder = cache / f"shards-{size}-{options.scaling_image_size}px"
        if not (folder / "egma_shards.json").is_file():
            command = [sys.executable, str(Path(__file__).with_name("shard_preprocessing.py")), "--skip", "floor",
                       "--scaling", str(size), "--scaling_image_size", str(options.scaling_image_size),
                       "--cache", str(cache)]
            subprocess.run(command, check=True, capture_output=True)
        results.append(child_json([sys.executable, __file__, "--child_shards", str(folder), "--batch_size",
                                     str(options.batch_size)], f"epoch child for {folder}"))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="(1): images of the MIMIC-CXR twin")
    parser.add_argument("--image_size", type=int, default=512, help="(1): the twin's JPEG side")
    parser.add_argument("--gaze_share", type=float, default=0.03, help="(1): its share of rows with gaze")
    parser.add_argument("--batches", type=int, default=60, help="(1): batches per case, the first not timed")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="(1): interleaved rounds")
    parser.add_argument("--scaling", type=int, nargs="*", default=[5000, 10000, 20000], help="(2): rows per size")
    parser.add_argument("--scaling_image_size", type=int, default=512, help="(2): the twin's image side")
    parser.add_argument("--cache", default="/tmp/bench_shards")
    parser.add_argument("--profile", action="store_true", help="(3): profile the in-process path")
    parser.add_argument("--skip", choices=["workers", "scaling"], action="append", default=[])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200 rows of 128 px, 6 batches of 8, scaling 64 rows")
    parser.add_argument("--child_shards", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child_shards:
        return epoch_child(options)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        if options.quick:
            options.rows, options.batches, options.batch_size, options.repeats = 200, 6, 8, 1
            options.gaze_share, options.scaling, options.scaling_image_size = 0.1, [64], 128
            options.image_size = 128
            options.cache = str(Path(folder) / "cache")
        cache = Path(options.cache)
        cache.mkdir(parents=True, exist_ok=True)
        results = {}
        if "workers" not in options.skip:
            found = per_worker(options, cache)
            results["workers"] = [{"case": case, "num_workers": workers, "runs": runs}
                                  for (case, workers), runs in found.items()]
            print(f"(1) loading from shards, default augmentation, 224 from 256 px, batch {options.batch_size}, "
                  f"{options.batches} batches per case (first not timed), {options.repeats} interleaved round(s); "
                  "target >= 500 samples/s per worker")
            print(f"{'rows':<8} {'num_workers':>11} {'gaze share':>10} {'first batch s':>13}  samples/s per round")
            for (case, workers), runs in found.items():
                print(f"{case:<8} {workers:>11} {runs[0]['gaze_share']:>10.1%} {runs[0]['first_batch_s']:>13.2f}  "
                      + "  ".join(f"{run['samples_per_s']:.0f}" for run in runs))
        if "scaling" not in options.skip:
            results["scaling"] = table = scaling(options, cache)
            print(f"(2) one epoch, num_workers=1, {options.scaling_image_size}-px twin's shards (no gaze):")
            print("| corpus rows | train rows | epoch s | samples/s | peak RSS main MB | peak RSS worker MB |")
            print("|---:|---:|---:|---:|---:|---:|")
            for entry in table:
                print(f"| {entry['corpus_rows']} | {entry['rows']} | {entry['seconds']:.1f} | "
                      f"{entry['samples'] / entry['seconds']:.0f} | "
                      f"{entry['rss_mb']['self']:.0f} | {entry['rss_mb']['children']:.0f} |")
        if options.profile:
            print("(3) profile, num_workers=0, mixed rows:")
            print(profile(options, cache))
        if options.json:
            Path(options.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
