"""Training throughput of EGMA's full loss against the global InfoNCE alone, and how long steps wait for data.

Same towers (the pre-training script's default preset), same prepared synthetic data, same batches; only the loss
weights differ. Prints samples/s for both, their ratio (target >= 0.9), and the fraction of each step spent
waiting for the data loader (target < 10%).

    python benchmarks/training_throughput.py [--steps 40] [--batch_size 32] [--num_workers 0]
"""

import argparse
import time
from pathlib import Path

import torch

from egma_hf.data import EGMADataCollator, prepare_for_training
from egma_hf.training import LOSS_PRESETS, TrainingSettings, build_model_and_processor, load_readings


def measure(model, loader, steps: int, weights: dict) -> dict:
    for key, value in weights.items():
        setattr(model.config, key, value)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(loader)
    waited = computed = 0.0
    samples = 0
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        fetched = time.perf_counter()
        batch.pop("reading_id", None)
        loss = model.train()(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done = time.perf_counter()
        if step >= 2:
            waited += fetched - start
            computed += done - fetched
            samples += batch["pixel_values"].shape[0]
    return {"samples_per_s": samples / (waited + computed), "data_wait": waited / (waited + computed)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--cache_dir", default=None)
    options = parser.parse_args()
    settings = TrainingSettings() if options.cache_dir is None else TrainingSettings(cache_dir=options.cache_dir)
    readings, source = load_readings(settings)
    train = readings.filter(lambda split: split == "train", input_columns="split")
    model, processor = build_model_and_processor(settings, train, Path(settings.cache_dir) / "benchmark-work")
    prepared = prepare_for_training(train, processor.image_processor)
    loader = torch.utils.data.DataLoader(prepared, batch_size=options.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=EGMADataCollator(processor), num_workers=options.num_workers)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for name, weights in (("clip", pretrain_weights(global_only=True)), ("egma", pretrain_weights(global_only=False))):
        model.load_state_dict(initial)
        torch.manual_seed(0)
        results[name] = measure(model, loader, options.steps, weights)
    print(f"{source}; batch {options.batch_size}; {options.steps} steps each; {torch.get_num_threads()} threads")
    for name, result in results.items():
        print(f"{name:>5}: {result['samples_per_s']:7.1f} samples/s, "
              f"waiting for data {result['data_wait']:.1%} of the time")
    print(f"egma / clip throughput = {results['egma']['samples_per_s'] / results['clip']['samples_per_s']:.3f}")


def pretrain_weights(global_only: bool) -> dict:
    mlce, fine, egm = (0.0, 0.0, 0.0) if global_only else LOSS_PRESETS["egma"]
    return dict(global_loss_weight=1.0, mlce_loss_weight=mlce, fine_grained_loss_weight=fine, egm_loss_weight=egm)


if __name__ == "__main__":
    main()
