"""What a pre-training step costs on a large corpus with gaze on a subset, against the gaze-only corpus, per sample.

Writes the synthetic twins (a MIMIC-EYE corpus and a MIMIC-CXR-JPG tree that includes its images), reads the
gaze-only corpus (`load_mimic_eye`), the combined one (`attach_gaze(load_mimic_cxr(...), gaze)`) and the combined
one with no gaze kept (`with_gaze_fraction(..., 0)`), prepares their training splits as pretrain.py does, and times
collating a batch and one forward + backward + AdamW step of pretrain.py's default model (EGMA loss, study_ids in
the batch), on seeded random batches of each corpus in turn (interleaved, so that load on the machine hits all
alike). Prints the median per sample and the ratio to the gaze-only corpus (target: 1, the same per sample).

    python benchmarks/corpus_step_cost.py [--steps 30] [--batch_size 32] [--images 2000] [--readings 200]
    python benchmarks/corpus_step_cost.py --quick        # smoke run (the tests)
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from egma_hf.data import (
    EGMADataCollator,
    HeatmapSettings,
    attach_gaze,
    by_split,
    load_mimic_cxr,
    load_mimic_eye,
    make_synthetic_mimic_cxr,
    make_synthetic_mimic_eye,
    prepare_for_training,
    with_gaze_fraction,
)
from egma_hf.training import TrainingSettings, build_model_and_processor


def corpora(work: Path, images: int, readings: int) -> dict:
    """{name: training split} of the three corpora."""
    make_synthetic_mimic_eye(work / "eye", readings, seed=0)
    make_synthetic_mimic_cxr(work / "cxr", images, seed=0, mimic_eye=work / "eye", image_size=128)
    gaze = load_mimic_eye(work / "eye", HeatmapSettings(recipe=12.0))
    combined = attach_gaze(load_mimic_cxr(work / "cxr"), gaze)
    combined_train = by_split(combined)["train"]
    return {"gaze-only (MIMIC-EYE)": by_split(gaze)["train"], "combined (MIMIC-CXR + gaze)": combined_train,
            "combined, no gaze kept": with_gaze_fraction(combined_train, 0.0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per corpus, after 2 warm-up steps")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000, help="listed images of the MIMIC-CXR twin")
    parser.add_argument("--readings", type=int, default=200, help="gaze readings of the MIMIC-EYE twin")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps of batch 8, 300 images, 40 readings")
    options = parser.parse_args()
    if options.quick:
        options.steps, options.batch_size, options.images, options.readings = 4, 8, 300, 40
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        splits = corpora(work, options.images, options.readings)
        settings = TrainingSettings(cache_dir=str(work / "cache"))
        model, processor = build_model_and_processor(settings, splits["combined (MIMIC-CXR + gaze)"], work / "model")
        prepared = {name: prepare_for_training(split, processor.image_processor) for name, split in splits.items()}
        collate = EGMADataCollator(processor)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        timings = {name: {"collate": [], "step": [], "gaze": []} for name in prepared}
        for step in range(options.steps + 2):
            for name, data in prepared.items():
                rows = [data[int(i)] for i in rng.choice(len(data), options.batch_size, replace=False)]
                started = time.perf_counter()
                batch = collate(rows)
                collated = time.perf_counter()
                loss = model.train()(**batch, return_loss=True).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                done = time.perf_counter()
                if step >= 2:
                    timings[name]["collate"].append((collated - started) / options.batch_size)
                    timings[name]["step"].append((done - collated) / options.batch_size)
                    timings[name]["gaze"].append(float(batch["has_gaze"].float().mean()))
    sizes = {name: len(split) for name, split in splits.items()}
    print(f"batch {options.batch_size}, {options.steps} steps per corpus (interleaved), {options.threads} thread(s); "
          f"pretrain.py's default model and loss (egma), study_ids in every batch")
    print(f"{'corpus':<30} {'train rows':>10} {'gaze rows':>9} {'collate ms/sample':>17} {'step ms/sample':>14} "
          f"{'samples/s':>9} {'step ratio':>10}")
    reference = statistics.median(timings["gaze-only (MIMIC-EYE)"]["step"])
    for name, timing in timings.items():
        collate_ms, step_ms = (1000 * statistics.median(timing[k]) for k in ("collate", "step"))
        print(f"{name:<30} {sizes[name]:>10} {statistics.mean(timing['gaze']):>9.1%} {collate_ms:>17.2f} "
              f"{step_ms:>14.2f} {1000 / (collate_ms + step_ms):>9.1f} {step_ms / (1000 * reference):>10.3f}")


if __name__ == "__main__":
    main()
