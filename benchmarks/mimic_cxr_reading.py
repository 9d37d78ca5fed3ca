"""MIMIC-CXR reading speed: rows/s of `load_mimic_cxr` on one core, projected to the full 377,110 images.

Writes the synthetic MIMIC-CXR-JPG twin (`make_synthetic_mimic_cxr`, reports as a folder, plus a copy of the reports
zipped like PhysioNet's `mimic-cxr-reports.zip`, `files/pXX/p<subject>/s<study>.txt` inside) at each `--num_images`,
then times `load_mimic_cxr(root)` in a fresh subprocess pinned to one core (CPU affinity, torch / OMP threads = 1)
for the reports folder and zip, with `frontal_only` True and False. Each subprocess reports its peak RSS
(`ru_maxrss`); a baseline subprocess that only imports `egma_hf.data` gives the memory the reader itself adds.
Writing the twin is timed too, but it is not the target.

Projection: the reader's work is split into a per-study part (reading each study's report once, then
`mimic_report_text` and `split_report_into_sentences`: timed alone in the same subprocess after the load) and the
rest, taken as per listed image (CSV rows, path checks, one row each, the Arrow table):

    projected = per_study_s * 227,827 / studies + (total_s - per_study_s) * 377,110 / images

and, as an upper bound, everything per image: total_s * 377,110 / images (the twin has ~1.33 images per study,
MIMIC-CXR 1.66, so scaling all of it by images over-counts the per-study part). The target: under 10 minutes.

    python benchmarks/mimic_cxr_reading.py [--num_images 5000 10000 20000] [--work_dir DIR] [--repeats 1] \
        [--reports folder|zip|both] [--profile [10]]
"""

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

MIMIC_CXR_IMAGES = 377_110
MIMIC_CXR_STUDIES = 227_827
TARGET_S = 600.0
REPORTS_KINDS = ("folder", "zip")


def pin_to_one_core() -> int:
    """Pin this process to one of the cores it may use (and torch / OMP to one thread); returns the core."""
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)
    return core


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def count_image_opens() -> dict:
    """Count PIL opens and pixel decodes from here on: {"opened": n, "decoded": n}, updated in place."""
    from PIL import Image, ImageFile

    counts = {"opened": 0, "decoded": 0}
    open_image, decode = Image.open, ImageFile.ImageFile.load

    def counted_open(*args, **kwargs):
        counts["opened"] += 1
        return open_image(*args, **kwargs)

    def counted_decode(self, *args, **kwargs):
        counts["decoded"] += 1
        return decode(self, *args, **kwargs)

    Image.open, ImageFile.ImageFile.load = counted_open, counted_decode
    return counts


def report_texts(reports: Path):
    """Every report text under a reports folder or zip (one per study), read the way the reader reads them."""
    if reports.is_dir():
        for path in sorted(reports.rglob("*.txt")):
            yield path.read_text(errors="replace")
    else:
        with zipfile.ZipFile(reports) as archive:
            for name in archive.namelist():
                if name.endswith(".txt"):
                    yield archive.read(name).decode("utf-8", errors="replace")


def per_study_seconds(reports: Path) -> tuple[float, int]:
    """(seconds, report files) for the reader's once-per-study work alone: read + FINDINGS/IMPRESSION + sentences."""
    from egma_hf.data.mimic_cxr import mimic_report_text
    from egma_hf.processing_egma import split_report_into_sentences

    files, start = 0, time.perf_counter()
    for text in report_texts(reports):
        split_report_into_sentences(mimic_report_text(text))
        files += 1
    return time.perf_counter() - start, files


def worker(task: dict) -> dict:
    """Run in a fresh subprocess: one timed `load_mimic_cxr` (or only the imports, for the baseline)."""
    core = pin_to_one_core()
    import egma_hf.data  # noqa: F401  (the baseline: what importing the package costs)

    logging.getLogger("egma_hf.data").setLevel(logging.ERROR)  # the skip summary, once per load: the twin's quirks

    if task["kind"] == "baseline":
        return {"peak_rss_mb": peak_rss_mb(), "core": core}
    from egma_hf.data.mimic_cxr import load_mimic_cxr

    root, reports = Path(task["root"]), Path(task["reports"])
    counts = count_image_opens()
    if task.get("profile"):
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        rows = load_mimic_cxr(root, reports=reports, frontal_only=task["frontal_only"])
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(task["profile"])
        return {"rows": len(rows)}
    start = time.perf_counter()
    rows = load_mimic_cxr(root, reports=reports, frontal_only=task["frontal_only"])
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    study_seconds, report_files = per_study_seconds(reports)
    return {"rows": len(rows), "studies_in_rows": len(set(rows["study_id"])), "seconds": seconds,
            "per_study_seconds": study_seconds, "report_files": report_files, "peak_rss_mb": peak,
            "images_opened": counts["opened"], "images_decoded": counts["decoded"], "core": core}


def best_of(task: dict, repeats: int) -> dict:
    """The fastest of `repeats` fresh subprocesses (a shared machine only ever slows a run down)."""
    return min((in_subprocess(task) for _ in range(repeats)), key=lambda result: result["seconds"])


def in_subprocess(task: dict) -> dict:
    """`worker(task)` in a fresh Python: its own peak memory, its own core."""
    sys.stdout.flush()
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        subprocess.run([sys.executable, __file__, "--worker", json.dumps(task), result.name], check=True)
        return json.loads(Path(result.name).read_text())


def zip_reports(folder: Path, archive: Path) -> int:
    """Zip a reports folder like PhysioNet's `mimic-cxr-reports.zip` (`files/pXX/...` inside); returns files."""
    files = sorted(folder.rglob("*.txt"))
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for path in files:
            handle.write(path, path.relative_to(folder).as_posix())
    return len(files)


def write_twin(work_dir: Path, num_images: int, seed: int) -> dict:
    """The twin at `num_images` plus its reports zip; its listed images / studies and the write times."""
    import pandas as pd

    from egma_hf.data.synthetic.mimic_cxr import make_synthetic_mimic_cxr

    start = time.perf_counter()
    root = make_synthetic_mimic_cxr(work_dir / f"mimic-cxr-{num_images}", num_images=num_images, seed=seed)
    written = time.perf_counter() - start
    start = time.perf_counter()
    zip_reports(root / "mimic-cxr-reports", root / "mimic-cxr-reports.zip")
    zipped = time.perf_counter() - start
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz", dtype=str)
    return {"root": root, "write_s": written, "zip_s": zipped, "listed_images": len(split),
            "studies": split["study_id"].nunique()}


def projections(result: dict, twin: dict) -> tuple[float, float]:
    """(projected seconds at MIMIC-CXR's size, upper bound with everything per image); see the module docstring."""
    per_image_s = max(result["seconds"] - result["per_study_seconds"], 0.0)
    projected = (result["per_study_seconds"] * MIMIC_CXR_STUDIES / twin["studies"]
                 + per_image_s * MIMIC_CXR_IMAGES / twin["listed_images"])
    return projected, result["seconds"] * MIMIC_CXR_IMAGES / twin["listed_images"]


def print_table(measured: list[tuple[dict, dict, str, bool]], baseline_mb: float) -> None:
    header = (f"{'images':>7} {'studies':>7} {'reports':>7} {'frontal':>7} {'rows':>6} {'load s':>7} {'rows/s':>7} "
              f"{'files/s':>7} {'study s':>7} {'peak MB':>7} {'-base MB':>8} {'KB/row':>6} {'decoded':>7} "
              f"{'377k: min':>9} {'(bound)':>7} {'<10 min':>7}")
    print(header)
    for twin, result, kind, frontal_only in measured:
        projected, bound = projections(result, twin)
        own_mb = result["peak_rss_mb"] - baseline_mb
        print(f"{twin['listed_images']:>7} {twin['studies']:>7} {kind:>7} {str(frontal_only):>7} {result['rows']:>6} "
              f"{result['seconds']:>7.2f} {result['rows'] / result['seconds']:>7.0f} "
              f"{result['report_files'] / result['seconds']:>7.0f} {result['per_study_seconds']:>7.2f} "
              f"{result['peak_rss_mb']:>7.0f} {own_mb:>8.0f} {own_mb * 1024 / result['rows']:>6.1f} "
              f"{result['images_decoded']:>7} {projected / 60:>9.1f} {bound / 60:>7.1f} "
              f"{'yes' if bound < TARGET_S else 'yes*' if projected < TARGET_S else 'NO':>7}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, nargs="+", default=[20000], help="twin sizes (listed images)")
    parser.add_argument("--work_dir", default=None, help="where to write the twins (default: a temporary folder)")
    parser.add_argument("--reports", choices=[*REPORTS_KINDS, "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="fresh subprocesses per load; the fastest is shown")
    parser.add_argument("--profile", type=int, nargs="?", const=10, default=0,
                        help="also cProfile one load at the largest size (folder, frontal only): top N cumulative")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, result_path = args.worker
        Path(result_path).write_text(json.dumps(worker(json.loads(task))))
        return

    kinds = REPORTS_KINDS if args.reports == "both" else (args.reports,)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        baseline = in_subprocess({"kind": "baseline"})
        twins, measured = {}, []
        for num_images in args.num_images:
            twin = twins[num_images] = write_twin(Path(work_dir), num_images, args.seed)
            print(f"twin {num_images}: {twin['listed_images']} listed images, {twin['studies']} studies; written in "
                  f"{twin['write_s']:.1f} s, reports zipped in {twin['zip_s']:.1f} s (not the target)", flush=True)
            for kind in kinds:
                reports = twin["root"] / ("mimic-cxr-reports" if kind == "folder" else "mimic-cxr-reports.zip")
                for frontal_only in (True, False):
                    task = {"kind": "load", "root": str(twin["root"]), "reports": str(reports),
                            "frontal_only": frontal_only}
                    measured.append((twin, best_of(task, args.repeats), kind, frontal_only))
        print(f"\none core pinned (core {measured[0][1]['core']}), torch / OMP threads 1; baseline subprocess "
              f"(import egma_hf.data only): peak RSS {baseline['peak_rss_mb']:.0f} MB")
        print("images / studies: listed in the split file; reports: where the report text is read from; files/s: "
              "report files / load s;\nstudy s: the once-per-study work (read + parse + sentences) timed alone; "
              "-base MB: peak RSS minus the baseline;\ndecoded: image pixel decodes during the load; 377k: min = "
              "study s * 227,827 / studies + (load s - study s) * 377,110 / images;\n(bound) = load s * 377,110 / "
              "images; <10 min: yes if the bound is, yes* if only the projection is\n")
        print_table(measured, baseline["peak_rss_mb"])
        if args.profile:
            largest = max(args.num_images)
            print(f"\ncProfile of one load at {largest} images (reports folder, frontal_only=True), "
                  f"top {args.profile} cumulative:")
            in_subprocess({"kind": "load", "root": str(twins[largest]["root"]), "frontal_only": True,
                           "reports": str(twins[largest]["root"] / "mimic-cxr-reports"), "profile": args.profile})


if __name__ == "__main__":
    main()
