"""Sentence-heatmap speed: readings per second on one core, against stamping full-resolution kernels.

A reading: a 3000 x 2500 image, 150 fixations, 6 sentences, maps at 224 px (the issue's target: >= 200 readings/s
on one core). The baseline does what the EGMA-lineage code does: add a 500 x 500 px Gaussian kernel (sd 500/6) per
fixation into a full-resolution float array, then shrink it to the map size; both run side by side.

    python benchmarks/heatmaps.py [--readings 200] [--size 224]
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from egma_hf.data.heatmaps import Fixations, heatmap_shape, render_heatmaps  # noqa: E402

IMAGE = (3000, 2500)


def random_reading(rng, fixations=150, sentences=6, duration=30.0):
    start = np.sort(rng.uniform(0, duration, fixations))
    points = Fixations(rng.uniform(0, IMAGE[1], fixations), rng.uniform(0, IMAGE[0], fixations), start,
                       start + rng.uniform(0.1, 0.5, fixations))
    edges = np.linspace(0, duration, sentences + 1)
    return points, list(zip(edges[:-1], edges[1:]))


def stamped(points, windows, out_shape, kernel_size=500):
    """The baseline: full-resolution canvas, one 500 x 500 kernel per fixation, then resize."""
    half = kernel_size // 2
    axis = np.arange(kernel_size) - half
    kernel = np.exp(-0.5 * (axis[:, None] ** 2 + axis[None, :] ** 2) / (kernel_size / 6) ** 2)
    maps = []
    for low, high in windows:
        canvas = np.zeros((IMAGE[0] + kernel_size, IMAGE[1] + kernel_size))
        weight = np.clip(np.minimum(points.end, high) - np.maximum(points.start, low), 0, None)
        for x, y, w in zip(points.x.astype(int), points.y.astype(int), weight):
            if w > 0:
                canvas[y : y + kernel_size, x : x + kernel_size] += w * kernel
        canvas = torch.from_numpy(canvas[half : half + IMAGE[0], half : half + IMAGE[1]])[None, None]
        maps.append(F.interpolate(canvas, size=out_shape, mode="area")[0, 0].numpy())
    return np.stack(maps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200)
    parser.add_argument("--baseline-readings", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="longer side of the maps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    readings = [random_reading(rng) for _ in range(args.readings)]
    shape = heatmap_shape(IMAGE, args.size)

    start = time.perf_counter()
    for points, windows in readings:
        render_heatmaps(points, windows + [(-np.inf, np.inf)], IMAGE, shape, recipe="egma")
    ours = args.readings / (time.perf_counter() - start)

    start = time.perf_counter()
    for points, windows in readings[: args.baseline_readings]:
        stamped(points, windows + [(0.0, 1e9)], shape)
    baseline = args.baseline_readings / (time.perf_counter() - start)

    print(f"image {IMAGE[0]}x{IMAGE[1]}, 150 fixations, 6 sentences + whole reading, "
          f"maps {shape[0]}x{shape[1]}, 1 core")
    print(f"egma_hf render_heatmaps: {ours:8.1f} readings/s")
    print(f"full-resolution stamping: {baseline:8.2f} readings/s")
    print(f"speed-up: {ours / baseline:.0f}x; ~3.7k MIMIC-EYE readings: {3700 / ours:.1f} s of heatmap work")


if __name__ == "__main__":
    main()
