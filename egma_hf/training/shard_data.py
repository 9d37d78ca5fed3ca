"""Training from `--shards`: the shard folder opened and checked, and the stream of training batches."""

from dataclasses import dataclass

import datasets

from ..data import ShardRows, ShardSet, ShardStream, kept_gaze_positions, load_shard_split
from .settings import TrainingSettings


@dataclass
class ShardData:
    shards: ShardSet
    splits: dict  # "train": its reports (for a tokenizer); "validate" / "test": their labels (for the split checks)
    source: str
    gaze_kept: frozenset  # reading ids of the training rows that keep their gaze (--gaze_fraction)


def open_shard_data(settings: TrainingSettings) -> ShardData:
    """The shard folder of `--shards`, its splits' reports and labels, and the training rows that keep their gaze;
    SystemExit naming the flag when it is unreadable, unfinished or has no train split."""
    try:
        shards = ShardSet(settings.shards)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"--shards {settings.shards}: {error}") from None
    if "train" not in shards.splits:
        raise SystemExit(f"--shards {settings.shards}: no train split (its splits: {sorted(shards.splits)})")
    splits = {"train": datasets.Dataset.from_dict(
        {"report": [row["report"] for row in shards.read_split("train", columns=["report"])]})}
    for name in ("validate", "test"):
        if name in shards.splits:
            splits[name] = datasets.Dataset.from_dict(
                {"labels": [row["labels"] for row in shards.read_split(name, columns=["labels"])]})
    gaze = shards.gaze_readings("train")
    kept = frozenset(gaze[i] for i in kept_gaze_positions(len(gaze), settings.gaze_fraction, settings.seed))
    stored = shards.settings
    source = (f"shards {settings.shards} ({shards.manifest['rows']} rows, {stored.image_size}-px images, "
              f"{len(gaze)} training rows with gaze)")
    return ShardData(shards=shards, splits=splits, source=source, gaze_kept=kept)


def shard_stream(settings: TrainingSettings, data: ShardData, image_processor, collate, accelerator):
    """(this process' training stream, the prepared validate / test splits); SystemExit when the stored images are
    smaller than the training size or the split is too small for the processes, workers and batch size."""
    stored = data.shards.settings
    if stored.image_size < image_processor.size:
        raise SystemExit(f"--shards {settings.shards} stores {stored.image_size}-px images and the model trains at "
                         f"{image_processor.size} px: write shards with image_size >= {image_processor.size}")
    evaluation = ShardRows(image_processor, stored.heatmap_size)
    prepared = {name: load_shard_split(data.shards, name, evaluation)
                for name in ("validate", "test") if name in data.shards.splits}
    rows = ShardRows(image_processor, stored.heatmap_size, settings.augment_settings(), settings.seed,
                     data.gaze_kept)
    try:
        stream = ShardStream(data.shards, "train", settings.batch_size, rows, collate, seed=settings.seed,
                             rank=accelerator.process_index, world_size=accelerator.num_processes,
                             num_workers=settings.num_workers, shuffle_buffer=settings.shuffle_buffer)
    except ValueError as error:
        raise SystemExit(f"--shards {settings.shards}: {error}: lower --batch_size or --num_workers") from None
    if stream.batches_per_epoch < settings.gradient_accumulation_steps:
        raise SystemExit(f"--shards {settings.shards}: {stream.batches_per_epoch} batches per process and epoch is "
                         f"fewer than --gradient_accumulation_steps {settings.gradient_accumulation_steps}")
    return stream, prepared
