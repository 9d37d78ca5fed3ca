"""Writing shards (`egma_hf.data.write_shards`): how close to the JPEG-decode floor, how it scales with processes,
and that its time grows linearly with the corpus while its memory stays flat.

Three measurements, each side by side in one run:

(a) Decode floor, one core. A MIMIC-CXR twin whose JPEGs are rewritten at MIMIC-CXR's size (`--big_size`, default
    2500 wide x 3000 high, grayscale, quality 90: the 64-px drawing upscaled, with noise for a realistic entropy).
    The same files are decoded alone (PIL open + `draft("L", (256, 256))` + load: libjpeg's work, which no writer
    can avoid), through `decode_image` alone, and through `write_shards(num_proc=1)` (decode, fit to the square,
    parquet), alternately, `--repeats` times. Prints floor / full (target >= 0.8).
(b) Processes: `write_shards` with num_proc 1 and 2 on the same big-JPEG rows (shards of `--proc_shard_size` rows,
    so both processes get work). Prints rows/s of each and the speed-up (target: linear, 2x on 2 cores), and as a
    control the decode floor alone in 1 and 2 forked processes: on a machine whose cores are shared or are
    hyperthreads of one, that control's speed-up is the most write_shards can get.
(c) Scaling: a twin of `--scaling` images (`--scaling_image_size` px, 512 by default, to keep disk and time in
    check; all views), written with `--scaling_procs` processes in a fresh subprocess per size, which reports its
    wall time and peak RSS (`ru_maxrss` of itself and of its largest child); a baseline subprocess that only
    imports and opens the rows gives what the writer adds. Also the manifest's bytes per row (image_size 256, no
    gaze: ~65 KB, the 256² pixels plus the reader's text). The corpora and shards are cached under `--cache`
    (shard_loading.py reads the shards from there).

    python benchmarks/shard_preprocessing.py [--big_images 200] [--scaling 5000 10000 20000] [--json FILE]
    python benchmarks/shard_preprocessing.py --quick        # smoke run (the tests): tiny sizes, a temporary cache
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STORED = dict(image_size=256, heatmap_size=64)


def peak_rss_mb() -> dict:
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}  # Linux: kilobytes


def twin_rows(root: Path, images: int, image_size: int):
    """The rows (all views) of a cached synthetic MIMIC-CXR twin, saved with save_to_disk beside it."""
    import datasets

    from egma_hf.data import load_mimic_cxr, make_synthetic_mimic_cxr

    saved = root.with_name(root.name + "-rows")
    if not saved.is_dir():
        shutil.rmtree(root, ignore_errors=True)
        make_synthetic_mimic_cxr(root, images, seed=0, image_size=image_size)
        rows = load_mimic_cxr(root, frontal_only=False)
        rows.save_to_disk(str(saved) + ".tmp")
        os.replace(str(saved) + ".tmp", saved)
    return datasets.load_from_disk(str(saved))


def big_jpeg_rows(cache: Path, images: int, width: int, height: int):
    """A twin whose JPEGs are rewritten at width x height (grayscale, quality 90), cached."""
    from PIL import Image

    root = cache / f"big-{images}-{width}x{height}"
    done = root / "big_jpegs_written"
    rows = twin_rows(root, images, 64)
    if not done.is_file():
        rng = np.random.default_rng(0)
        for path in sorted((root / "files").rglob("*.jpg")):
            with Image.open(path) as small:
                big = np.asarray(small.convert("L").resize((width, height), Image.BICUBIC), np.float32)
            big += rng.normal(0, 6, big.shape).astype(np.float32)  # film grain: real CXRs are not smooth
            Image.fromarray(big.clip(0, 255).astype(np.uint8), "L").save(path, quality=90)
        done.write_text("yes")
    return rows


def decode_floor(paths, size: int) -> float:
    """Seconds to decode `paths` the cheapest way libjpeg allows at `size`: open, draft, load."""
    from PIL import Image

    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.draft("L", (size, size))
            image.load()
    return time.perf_counter() - started


def floor_in_processes(paths, size: int, num_proc: int) -> float:
    """Seconds for `num_proc` forked processes to run `decode_floor` on an equal share of `paths` each: what the
    machine's cores allow in parallel, the control for write_shards' speed-up."""
    import concurrent.futures
    import functools
    import multiprocessing

    shares = [paths[i::num_proc] for i in range(num_proc)]
    with concurrent.futures.ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(functools.partial(decode_floor, size=size), [share[:1] for share in shares]))  # started
        started = time.perf_counter()
        list(pool.map(functools.partial(decode_floor, size=size), shares))
        return time.perf_counter() - started


def decode_only(paths, settings) -> float:
    from egma_hf.data.shards import decode_image

    started = time.perf_counter()
    for path in paths:
        decode_image(path, settings)
    return time.perf_counter() - started


def timed_write(rows, settings, num_proc: int, work: Path) -> tuple[float, dict]:
    from egma_hf.data import ShardSet, write_shards

    out = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    write_shards(rows, out, settings, num_proc=num_proc, progress=False)
    elapsed = time.perf_counter() - started
    manifest = ShardSet(out).manifest
    shutil.rmtree(out)
    return elapsed, manifest


def floor_and_processes(options, work: Path) -> dict:
    import torch

    from egma_hf.data import ShardSettings

    torch.set_num_threads(1)
    width, height = (int(v) for v in options.big_size.split("x"))
    rows = big_jpeg_rows(Path(options.cache), options.big_images, width, height)
    paths = list(rows["image"])
    settings = ShardSettings(**STORED, shard_size=options.proc_shard_size)
    decode_floor(paths, settings.image_size)  # warm the page cache, so neither side reads the disk
    floor, decode, full = [], [], []
    for _ in range(options.repeats):
        floor.append(decode_floor(paths, settings.image_size))
        decode.append(decode_only(paths, settings))
        full.append(timed_write(rows, settings, 1, work)[0])
    procs, control = {1: [], 2: []}, {1: [], 2: []}
    for _ in range(options.repeats):
        for num_proc in procs:
            procs[num_proc].append(timed_write(rows, settings, num_proc, work)[0])
            control[num_proc].append(floor_in_processes(paths, settings.image_size, num_proc))
    return {"rows": len(paths), "size": options.big_size, "jpeg_mb": sum(os.path.getsize(p) for p in paths) / 1e6
            / len(paths), "floor_s": floor, "decode_image_s": decode, "write_shards_s": full,
            "floor_over_full": [f / w for f, w in zip(floor, full)], "procs_s": procs,
            "speedup": [a / b for a, b in zip(procs[1], procs[2])], "control_s": control,
            "control_speedup": [a / b for a, b in zip(control[1], control[2])]}


def scaling_child(options) -> None:
    """In a fresh process: open the cached rows, write `--child_rows` of them, print time, memory and bytes/row."""
    import datasets

    from egma_hf.data import ShardSet, ShardSettings, write_shards

    rows = datasets.load_from_disk(options.child_corpus)
    result = {"rows": options.child_rows}
    if options.child_rows:
        rows = rows.select(range(options.child_rows))
        out = Path(options.child_out)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.perf_counter()
        write_shards(rows, partial, ShardSettings(**STORED), num_proc=options.scaling_procs, progress=False)
        result["seconds"] = time.perf_counter() - started
        result["bytes_per_row"] = ShardSet(partial).manifest["bytes_per_row"]
        shutil.rmtree(out, ignore_errors=True)
        os.replace(partial, out)
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def scaling(options) -> list[dict]:
    cache = Path(options.cache)
    largest = max(options.scaling)
    root = cache / f"scaling-{largest}-{options.scaling_image_size}px"
    rows = twin_rows(root, largest + 10, options.scaling_image_size)  # + the twin's few skipped quirks
    if len(rows) < largest:
        raise SystemExit(f"{root}: {len(rows)} rows, fewer than {largest}")
    saved = str(root.with_name(root.name + "-rows"))
    results = []
    for size in [0, *options.scaling]:
        out = cache / f"shards-{size}-{options.scaling_image_size}px"
        command = [sys.executable, __file__, "--child_corpus", saved, "--child_rows", str(size), "--child_out",
                   str(out), "--scaling_procs", str(options.scaling_procs)]
        results.append(child_result(command, f"scaling child for {size} rows"))
    return results


def child_result(command: list[str], what: str) -> dict:
    """Run a benchmark's child process; the JSON object its last line prints (SystemExit naming `what` if it
    fails)."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big_images", type=int, default=200, help="(a), (b): images of the big-JPEG twin")
    parser.add_argument("--big_size", default="2500x3000", help="(a), (b): their width x height")
    parser.add_argument("--proc_shard_size", type=int, default=25, help="(a), (b): rows per shard")
    parser.add_argument("--repeats", type=int, default=2, help="(a), (b): alternating repeats of each side")
    parser.add_argument("--scaling", type=int, nargs="*", default=[5000, 10000, 20000], help="(c): rows per size")
    parser.add_argument("--scaling_image_size", type=int, default=512, help="(c): the twin's image side")
    parser.add_argument("--scaling_procs", type=int, default=2, help="(c): write_shards num_proc")
    parser.add_argument("--cache", default="/tmp/bench_shards", help="where corpora and shards are kept")
    parser.add_argument("--skip", choices=["floor", "scaling"], action="append", default=[])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 30 images of 600x800, scaling 40 and 80 rows of 128 px, in a temporary cache")
    parser.add_argument("--child_corpus", help=argparse.SUPPRESS)
    parser.add_argument("--child_rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child_out", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child_corpus:
        return scaling_child(options)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if options.quick:
            options.big_images, options.big_size, options.proc_shard_size = 30, "600x800", 5
            options.scaling, options.repeats, options.cache = [40, 80], 1, str(work / "cache")
            options.scaling_image_size = 128
        Path(options.cache).mkdir(parents=True, exist_ok=True)
        results = {}
        if "floor" not in options.skip:
            results["floor"] = floor = floor_and_processes(options, work)
            n = floor["rows"]
            print(f"(a) decode floor, one process, {n} JPEGs of {floor['size']} ({floor['jpeg_mb']:.2f} MB each), "
                  f"draft to {STORED['image_size']}, {options.repeats} alternating repeat(s):")
            for name, key in (("floor (open+draft+load)", "floor_s"), ("decode_image", "decode_image_s"),
                              ("write_shards num_proc=1", "write_shards_s")):
                print(f"    {name:<26} " + "  ".join(f"{1000 * t / n:7.2f} ms/row" for t in floor[key]))
            print("    floor / full = " + "  ".join(f"{r:.3f}" for r in floor["floor_over_full"])
                  + "   (target >= 0.8)")
            print(f"(b) processes, same rows, shards of {options.proc_shard_size}:")
            for num_proc, times in floor["procs_s"].items():
                print(f"    num_proc={num_proc}: " + "  ".join(f"{n / t:7.1f} rows/s" for t in times))
            print("    speed-up 2 vs 1 = " + "  ".join(f"{s:.2f}x" for s in floor["speedup"]) + "   (target 2x)")
            print("    control, the floor in 1 and 2 forked processes: " + "  ".join(
                f"{n / a:.1f} -> {n / b:.1f} rows/s" for a, b in zip(floor["control_s"][1], floor["control_s"][2])))
            print("    control speed-up = " + "  ".join(f"{s:.2f}x" for s in floor["control_speedup"])
                  + "   (what the cores allow; write_shards' speed-up / this = its parallel efficiency)")
        if "scaling" not in options.skip:
            results["scaling"] = table = scaling(options)
            base = table[0]["rss_mb"]["self"]
            print(f"(c) scaling: {options.scaling_image_size}-px twin (all views), num_proc={options.scaling_procs}, "
                  f"image_size 256, no gaze; baseline process (imports + rows opened): {base:.0f} MB")
            print("| rows | seconds | rows/s | ms/row | peak RSS parent MB | peak RSS largest child MB | "
                  "KB per row |")
            print("|---:|---:|---:|---:|---:|---:|---:|")
            for entry in table[1:]:
                print(f"| {entry['rows']} | {entry['seconds']:.1f} | {entry['rows'] / entry['seconds']:.0f} | "
                      f"{1000 * entry['seconds'] / entry['rows']:.2f} | {entry['rss_mb']['self']:.0f} | "
                      f"{entry['rss_mb']['children']:.0f} | {entry['bytes_per_row'] / 1e3:.1f} |")
        if options.json:
            Path(options.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
