"""Training from `--shards`: writing a corpus' shards, opening and checking them, and the stream of training
batches."""

import argparse
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..data import (
    ShardRows,
    ShardSet,
    ShardSettings,
    ShardStream,
    kept_gaze_positions,
    load_shard_split,
    write_shards,
)
from .settings import TrainingSettings
from .setup import load_readings

# the pre-training flags that say which rows to read; make_shards takes these and its own
DATA_FLAGS = ("data", "gaze_data", "image_root", "all_views", "labels", "image_column", "caption_column",
              "heatmap_recipe", "synthetic_samples", "corpus_seed", "seed", "cache_dir")


def shards_argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """pre-training's data flags, then where and how to write the shards."""
    parser = TrainingSettings.argument_parser(description, only=DATA_FLAGS)
    defaults = ShardSettings()
    parser.add_argument("--out_dir", required=True, help="the shard folder (new, or one to finish)")
    parser.add_argument("--image_size", type=int, default=defaults.image_size,
                        help="stored image side, a little above the training size (256 for 224)")
    parser.add_argument("--heatmap_size", type=int, default=defaults.heatmap_size, help="stored heatmap side")
    parser.add_argument("--shard_size", type=int, default=defaults.shard_size, help="rows per shard file")
    parser.add_argument("--num_proc", type=int, default=1, help="processes decoding images")
    parser.add_argument("--no_jpeg_draft", action="store_true",
                        help="decode JPEGs at full size (slower; pixels as the in-memory path has them)")
    return parser


def make_shards(argv=None, description: str | None = None) -> Path:
    """Read the rows the data flags name, as pre-training would, and write their shards; returns the folder.
    SystemExit naming the flag on a bad value."""
    args = vars(shards_argument_parser(description).parse_args(argv))
    out_dir, num_proc, draft = args.pop("out_dir"), args.pop("num_proc"), not args.pop("no_jpeg_draft")
    try:
        stored = ShardSettings(image_size=args.pop("image_size"), heatmap_size=args.pop("heatmap_size"),
                               shard_size=args.pop("shard_size"), jpeg_draft=draft)
    except ValueError as error:
        raise SystemExit(f"--{error}") from None
    if num_proc < 1:
        raise SystemExit(f"--num_proc must be at least 1, got {num_proc}")
    settings = TrainingSettings(**args)
    settings.check()
    readings, source = load_readings(settings)
    try:
        out = write_shards(readings, out_dir, stored, num_proc=num_proc)
    except (ValueError, FileExistsError, NotADirectoryError, RuntimeError) as error:
        raise SystemExit(f"--out_dir {out_dir}: {error}") from None
    manifest = ShardSet(out).manifest
    print(f"{source}: {manifest['rows']} rows in {out} ({manifest['bytes_per_row'] / 1e3:.1f} KB per row, "
          f"{manifest['skipped']['count']} skipped); train with --shards {out}")
    return out


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
    if settings.vision_model or settings.init_from:  # the tokenizer comes with the model: no need to read reports
        reports = [""] * shards.rows("train")
    else:  # the tiny preset builds its tokenizer from them (reading this column skips the pixel bytes)
        reports = [row["report"] for row in shards.read_split("train", columns=["report"])]
    splits = {"train": datasets.Dataset.from_dict({"report": reports})}
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
