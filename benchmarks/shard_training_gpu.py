"""End-to-end pre-training from shards on a GPU: samples/s, the share of step time spent waiting for data, host-GPU
syncs per step, and the projected time of one MIMIC-CXR epoch (377,110 images).

NOT YET RUN ON A GPU: written and smoke-tested (`--device cpu --quick`) on a CPU-only machine; its GPU figures are
still to be measured.

What it does:
1. Writes (cached under `--cache`) a synthetic MIMIC-EYE twin of `--gaze_readings` readings and a MIMIC-CXR-JPG twin
   of `--images` images that includes them, attaches the gaze (`attach_gaze`; ~3% of rows with gaze by default)
   and writes the rows to shards (256-px images, 64-px heatmaps, `write_shards(num_proc=cores)`).
2. Builds Swin-T (timm `swin_tiny_patch4_window7_224`, random weights, through `timm_wrapper`) + a BERT-base-size
   text tower (`BertConfig` defaults, random weights) with a tokenizer of the training reports (`build_tokenizer`);
   `--towers tiny` takes the tiny CPU preset instead (the smoke run).
3. Trains with its own loop, the steps of `egma_hf.training.loop.train_steps` (batches from `ShardStream.loader`
   with the default augmentation at 224 px, sent with non_blocking, EGMA loss under bf16 autocast, clip to 1,
   AdamW, logit_scale clamp, the loss read every `--log_every` steps), timing the host's wait in `next(batches)`
   as loop.py does (`data_wait_fraction`) and samples/s after `--warmup` steps, the GPU synchronised at both ends.
4. Counts the host-GPU syncs of one more (non-logging) step with `torch.cuda.set_sync_debug_mode("warn")`, as
   benchmarks/loss_overhead.py does, and lists where they are.

    python benchmarks/shard_training_gpu.py                          # on a GPU: 20k images, batch 128, 8 workers
    python benchmarks/shard_training_gpu.py --batch_size 256 --num_workers 16 --steps 100
    python benchmarks/shard_training_gpu.py --device cpu --quick     # smoke run (the tests): tiny towers, a CPU
"""

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

MIMIC_CXR_IMAGES = 377_110
SWIN_T = "swin_tiny_patch4_window7_224"


def shard_corpus(cache: Path, images: int, readings: int, image_size: int) -> Path:
    from egma_hf.data import (
        HeatmapSettings,
        ShardSettings,
        attach_gaze,
        load_mimic_cxr,
        load_mimic_eye,
        make_synthetic_mimic_cxr,
        make_synthetic_mimic_eye,
        write_shards,
    )

    base = cache / f"training-{images}-{readings}-{image_size}px"
    shards = base / "shards"
    if not (shards / "egma_shards.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        make_synthetic_mimic_eye(base / "eye", readings, seed=0)
        make_synthetic_mimic_cxr(base / "cxr", images, seed=0, mimic_eye=base / "eye", image_size=image_size)
        rows = attach_gaze(load_mimic_cxr(base / "cxr", frontal_only=False),
                           load_mimic_eye(base / "eye", HeatmapSettings(recipe=12.0)))
        write_shards(rows, shards, ShardSettings(image_size=256, heatmap_size=64), num_proc=os.cpu_count() or 1,
                     progress=False)
    return shards


def build_model(towers: str, reports):
    from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
    from egma_hf.training import build_tokenizer
    from egma_hf.training.setup import TINY_TEXT, TINY_VISION

    tokenizer = build_tokenizer(reports)
    if towers == "real":
        config = EGMAConfig(vision_config=dict(model_type="timm_wrapper", architecture=SWIN_T),
                            text_config=dict(model_type="bert", vocab_size=tokenizer.vocab_size))
    else:
        config = EGMAConfig(vision_config=dict(TINY_VISION),
                            text_config=dict(TINY_TEXT, vocab_size=tokenizer.vocab_size), projection_dim=64)
    model = EGMAModel(config)
    with torch.no_grad():
        grid = model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224)).patch_grid
    processor = EGMAProcessor(EGMAImageProcessor(size=224, gaze_grid_size=grid[0]), tokenizer)
    return model, processor


def to_device(batch: dict, device) -> dict:
    """As the training loop does: tensors to the device, the compact (B, 1, H, W) float16 pixels expanded there."""
    from egma_hf.data import expand_pixels

    moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return {**moved, "pixel_values": expand_pixels(moved["pixel_values"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--towers", choices=["real", "tiny"], default="real")
    parser.add_argument("--images", type=int, default=20_000, help="images of the MIMIC-CXR twin")
    parser.add_argument("--gaze_readings", type=int, default=600, help="MIMIC-EYE readings attached (~3%%)")
    parser.add_argument("--image_size", type=int, default=512, help="the twin's JPEG side")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timing starts")
    parser.add_argument("--log_every", type=int, default=10, help="steps between reads of the loss (a sync)")
    parser.add_argument("--no_bf16", action="store_true", help="train in float32")
    parser.add_argument("--cache", default="/tmp/bench_shards")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny towers, 300 images of 128 px, 4 + 2 steps of batch 4, 1 worker")
    options = parser.parse_args()
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("shard_training_gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it "
                         "on a GPU machine, or `--device cpu --quick` for a smoke run")
    with tempfile.TemporaryDirectory() as folder:
        if options.quick:
            options.towers, options.images, options.gaze_readings, options.image_size = "tiny", 300, 20, 128
            options.batch_size, options.num_workers, options.steps, options.warmup = 4, 1, 4, 2
            options.log_every, options.cache = 2, str(Path(folder) / "cache")
        results = run(options, device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), towers "
          f"{options.towers}, batch {options.batch_size}, {options.num_workers} loader workers, bf16 "
          f"{not options.no_bf16}; {results['rows']} training rows, {results['gaze_share']:.1%} with gaze")
    print(f"samples/s: {results['samples_per_s']:.1f}")
    print(f"data_wait_fraction: {results['data_wait_fraction']:.3f}")
    print(f"host-GPU syncs per step: {results['syncs_per_step']}"
          + (f" ({', '.join(f'{p} x{n}' for p, n in results['sync_places'].items())})" if results["sync_places"]
             else ""))
    print(f"projected 377,110-image epoch: {results['epoch_s'] / 3600:.2f} h ({results['epoch_s']:.0f} s)")
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=1))


def run(options, device) -> dict:
    from egma_hf.data import AugmentSettings, EGMADataCollator, ShardRows, ShardSet, ShardStream

    torch.manual_seed(0)
    shards = ShardSet(shard_corpus(Path(options.cache), options.images, options.gaze_readings, options.image_size))
    model, processor = build_model(options.towers, [r["report"] for r in shards.read_split("train", ["report"])])
    model = model.to(device).train()
    rows = ShardRows(processor.image_processor, shards.settings.heatmap_size, AugmentSettings(), seed=0)
    collate = EGMADataCollator(processor, compact_pixels=True)  # as training does: expanded on the device
    stream = ShardStream(shards, "train", options.batch_size, rows, collate, seed=0, num_workers=options.num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not options.no_bf16)

    def batches():
        epoch = 0
        while True:
            yield from stream.loader(epoch)
            epoch += 1

    def step(batch, read_loss: bool):
        with autocast:
            loss = model(**to_device(batch, device), return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, model.config.logit_scale_max)
        return loss.item() if read_loss else None

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    source = batches()
    waited, samples, gaze = 0.0, 0, 0
    for number in range(options.warmup + options.steps):
        if number == options.warmup:
            synchronize()
            started, waited, samples, gaze = time.perf_counter(), 0.0, 0, 0
        asked = time.perf_counter()
        batch = next(source)
        waited += time.perf_counter() - asked
        samples += len(batch["pixel_values"])
        gaze += int(batch["has_gaze"].sum())
        step(batch, (number + 1) % options.log_every == 0)
    synchronize()
    elapsed = time.perf_counter() - started
    places = []
    if device.type == "cuda":
        batch = next(source)
        synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step(batch, False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        places = [f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}" for w in caught
                  if "synchroniz" in str(w.message)]
    speed = samples / elapsed
    return {"rows": shards.rows("train"), "gaze_share": gaze / samples, "samples_per_s": speed,
            "data_wait_fraction": waited / elapsed, "syncs_per_step": len(places) if device.type == "cuda" else None,
            "sync_places": dict(Counter(places)), "epoch_s": MIMIC_CXR_IMAGES / speed}


if __name__ == "__main__":
    main()
