"""Pre-training step time with the image tower trained, frozen (LiT-style), and frozen but for its last stage.

Swin-T (timm `swin_tiny_patch4_window7_224` through `timm_wrapper`) + a BERT-base-size text tower (`BertConfig`
defaults), random weights, the full EGMA loss, AdamW over the parameters that train (as pre-training builds it);
batches of the synthetic training corpus with gaze at 224 px. The cases run interleaved, each from the same
weights, and the script prints the median step time of each and its speed-up over the unfrozen step
(target for the frozen image tower: >= 1.5).

    python benchmarks/frozen_towers.py [--batch_size 16] [--steps 3] [--rounds 3]
"""

import argparse
import statistics
import time

import torch

from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
from egma_hf.data import EGMADataCollator, prepare_for_training
from egma_hf.training import LOSS_PRESETS, TrainingSettings, build_tokenizer, load_readings

SWIN_T = "swin_tiny_patch4_window7_224"
CASES = {"unfrozen": None, "image tower frozen": 0, "image tower frozen but its last stage": 1}


def step_seconds(model, batches, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for step in range(steps + 1):  # one warm-up step
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        loss = model(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache_dir", default=None)
    options = parser.parse_args()
    settings = TrainingSettings() if options.cache_dir is None else TrainingSettings(cache_dir=options.cache_dir)
    readings, source = load_readings(settings)
    train = readings.filter(lambda split, gaze: split == "train" and gaze, input_columns=["split", "has_gaze"])
    train = train.select(range(min(len(train), 2 * options.batch_size)))
    tokenizer = build_tokenizer(train["report"])
    config = EGMAConfig(vision_config=dict(model_type="timm_wrapper", architecture=SWIN_T),
                        text_config=dict(model_type="bert", vocab_size=tokenizer.vocab_size))
    mlce, fine, egm = LOSS_PRESETS["egma"]
    config.update(dict(mlce_loss_weight=mlce, fine_grained_loss_weight=fine, egm_loss_weight=egm))
    torch.manual_seed(0)
    model = EGMAModel(config).train()
    with torch.no_grad():
        grid = model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224)).patch_grid
    processor = EGMAProcessor(EGMAImageProcessor(size=224, gaze_grid_size=grid[0]), tokenizer)
    prepared = prepare_for_training(train, processor.image_processor)
    collate = EGMADataCollator(processor)
    batches = [collate([prepared[i] for i in range(start, start + options.batch_size)])
               for start in range(0, len(prepared) - options.batch_size + 1, options.batch_size)]
    for batch in batches:
        batch.pop("reading_id", None)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    times = {name: [] for name in CASES}
    for _ in range(options.rounds):
        for name, unlocked in CASES.items():
            model.load_state_dict(initial)
            model.requires_grad_(True)
            if unlocked is not None:
                model.lock_image_tower(unlocked_layers=unlocked)
            torch.manual_seed(0)
            times[name] += step_seconds(model, batches, options.steps)
    sentences = int((batches[0]["attention_mask"].sum(-1) > 0).sum())
    print(f"{source}; Swin-T + BERT-base size, random weights; batch {options.batch_size} at 224 px with gaze "
          f"({sentences} sentences in the first batch); {options.rounds} rounds x {options.steps} steps; "
          f"{torch.get_num_threads()} threads")
    baseline = statistics.median(times["unfrozen"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>38}: median step {median:6.2f} s (min {min(values):.2f}, max {max(values):.2f}); "
              f"speed-up over unfrozen {baseline / median:.2f}x")


if __name__ == "__main__":
    main()
