"""From dataset rows to training batches: gaze-fraction subsets (the paper's ablation) and the collator."""

import hashlib
import math
import numbers
from collections.abc import Mapping

import datasets
import numpy as np
import torch

from .images import load_image

PREPARED_COLUMNS = ("pixel_values", "gaze_grid", "sentences", "has_gaze")
RAW_COLUMNS = ("image", "sentences", "has_gaze")  # and `sentence_heatmaps` where `has_gaze` is set


def _check_dataset(dataset, columns, argument: str = "dataset") -> None:
    """TypeError unless `dataset` is a `datasets.Dataset`; ValueError naming the missing columns or an empty one."""
    if not isinstance(dataset, datasets.Dataset):
        hint = " (pick one split, e.g. dataset['train'])" if isinstance(dataset, datasets.DatasetDict) else ""
        raise TypeError(f"{argument} must be a datasets.Dataset, got {type(dataset).__name__}{hint}")
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{argument} lacks the column(s) {missing}; found {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError(f"{argument} is empty (0 rows)")


def with_gaze_fraction(
    dataset: datasets.Dataset, fraction: float, seed: int = 0, split: str = "train"
) -> datasets.Dataset:
    """Keep gaze on a seeded random `fraction` of the `split` rows that have it; the others get `has_gaze=False`.

    The kept rows are the first `floor(fraction * n + 0.5)` of one seeded permutation (the paper's 1% of 3,695 is
    37), so for a given seed a smaller fraction's rows are always inside a larger fraction's. Rows of other splits
    are unchanged; heatmaps stay in the data either way. Errors name the argument: a fraction outside [0, 1] (or
    NaN), a negative or non-integer seed, a split with no rows, a dataset without `split` / `has_gaze`.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction (the gaze fraction) must be a number in [0, 1], got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    _check_dataset(dataset, ["split", "has_gaze"])
    splits = list(dataset["split"])
    if split not in splits:
        raise ValueError(f"split {split!r} has no rows in dataset; its splits are {sorted(set(map(str, splits)))}")
    has_gaze = list(dataset["has_gaze"])
    eligible = [i for i, (row_split, gaze) in enumerate(zip(splits, has_gaze)) if row_split == split and gaze]
    kept = {eligible[i] for i in kept_gaze_positions(len(eligible), fraction, seed)}
    for index in eligible:
        has_gaze[index] = index in kept
    return dataset.remove_columns("has_gaze").add_column("has_gaze", has_gaze, feature=datasets.Value("bool"))


def kept_gaze_positions(count: int, fraction: float, seed: int) -> set[int]:
    """Which of `count` readings with gaze keep it (positions in their order), by `with_gaze_fraction`'s rule."""
    order = np.random.default_rng(seed).permutation(count)
    return {int(i) for i in order[: math.floor(fraction * count + 0.5)]}


def prepare_for_training(dataset: datasets.Dataset, image_processor, num_proc: int | None = None) -> datasets.Dataset:
    """Decode, resize and normalise every image once, and pool every sentence heatmap to the patch grid once.

    Adds `pixel_values` (size, size) float16, one channel (the model's three are copies) and `gaze_grid`
    (sentences, g, g) float32, so training batches need no image decoding, and drops the full-size heatmaps that
    `gaze_grid` replaces. `datasets` caches the result.
    """
    if not all(hasattr(image_processor, name) for name in ("prepare_images", "preprocess_gaze", "gaze_grid_size")):
        hint = " (pass processor.image_processor)" if hasattr(image_processor, "image_processor") else ""
        raise TypeError(f"image_processor must be an EGMAImageProcessor, got {type(image_processor).__name__}{hint}")
    _check_dataset(dataset, ["image", "sentence_heatmaps", "reading_heatmap"])
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, numbers.Integral)
                                 or num_proc < 1):
        raise ValueError(f"num_proc must be None or an integer >= 1, got {num_proc!r}")

    def prepare(rows):
        pixels, sizes = image_processor.prepare_images([load_image(path) for path in rows["image"]])
        maps = [np.asarray(m, np.float32) for m in rows["sentence_heatmaps"]]
        grids = [image_processor.preprocess_gaze([m], [size], len(m))[0][0].numpy() for m, size in zip(maps, sizes)]
        return {"pixel_values": pixels[:, 0].to(torch.float16).numpy(), "gaze_grid": grids}

    features = dataset.features.copy()
    features["pixel_values"] = datasets.Array2D((image_processor.size, image_processor.size), "float16")
    grid = image_processor.gaze_grid_size
    features["gaze_grid"] = datasets.List(datasets.Array2D((grid, grid), "float32"))
    prepared = dataset.map(prepare, batched=True, batch_size=32, features=features, num_proc=num_proc,
                           desc="preparing images and gaze grids")
    prepared = prepared.remove_columns(["sentence_heatmaps", "reading_heatmap"])  # pooled into gaze_grid now
    # rows hand these two columns out as numpy arrays (no Python lists of floats on the training hot path)
    return prepared.with_format("numpy", columns=["pixel_values", "gaze_grid"], output_all_columns=True)


def expand_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
    """`compact_pixels` batches' (B, 1, H, W) pixels -> the model's (B, 3, H, W) float32 (a view of one channel)."""
    return pixel_values.float().expand(-1, 3, -1, -1)


def study_id_of(row: Mapping) -> int:
    """A row's study as a 63-bit integer that is the same in every process: a hash of `subject_id/study_id`, or of
    the image path when the row names no study (then each image is a study of its own)."""
    study = str(row.get("study_id") or "")
    key = f"{row.get('subject_id') or ''}/{study}" if study else f"image:{row.get('image', row.get('reading_id'))}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


class EGMADataCollator:
    """Rows of a gaze dataset -> the batch `EGMAModel` expects, through `EGMAProcessor`.

    Images are read from the `image` paths (DICOM included), the `sentences` are used as they are, and each
    row's `sentence_heatmaps` go through the processor's image geometry when `has_gaze` is set. Rows that went
    through `prepare_for_training` skip all of that and are only stacked and padded. An empty batch, a row that
    is not a mapping, lacks a column, or a mix of prepared and unprepared rows is a ValueError naming the row.

    `compact_pixels` (prepared rows only) leaves `pixel_values` as prepared, (B, 1, size, size) float16, for the
    consumer to expand to three float channels on its device (`expand_pixels`).

    With `same_study_positives` (default), the batch carries `study_ids` (`study_id_of` each row), so that the
    model's contrastive terms treat pairs of one study (a frontal and a lateral image of one report, two readings of
    one image) as positives of each other rather than as negatives; False leaves them out (every other pair is a
    negative, as in CLIP).
    """

    def __init__(self, processor, max_length: int = 77, image_loader=load_image, same_study_positives: bool = True,
                 compact_pixels: bool = False):
        if not callable(processor):
            raise TypeError(f"processor must be an EGMAProcessor, got {type(processor).__name__}")
        if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1 (tokens per sentence), got {max_length!r}")
        if not callable(image_loader):
            raise TypeError(f"image_loader must be a function of an image path, got {type(image_loader).__name__}")
        for name, value in (("same_study_positives", same_study_positives), ("compact_pixels", compact_pixels)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        self.compact_pixels = compact_pixels
        self.processor = processor
        self.max_length = max_length
        self.image_loader = image_loader
        self.same_study_positives = same_study_positives

    @staticmethod
    def _check_rows(rows) -> bool:
        """Whether the rows are prepared ones; ValueError naming the first row that does not fit."""
        if not isinstance(rows, (list, tuple)) or not rows:
            raise ValueError(f"EGMADataCollator needs a non-empty list of rows, got {rows!r:.80}")
        if not all(isinstance(row, Mapping) for row in rows):
            index = next(i for i, row in enumerate(rows) if not isinstance(row, Mapping))
            raise ValueError(f"rows[{index}] must be a dataset row (a mapping), got {type(rows[index]).__name__}")
        prepared = "pixel_values" in rows[0]
        needed = PREPARED_COLUMNS if prepared else RAW_COLUMNS
        for index, row in enumerate(rows):
            missing = [column for column in needed if column not in row]
            if not prepared and row.get("has_gaze") and "sentence_heatmaps" not in row:
                missing.append("sentence_heatmaps")
            if missing or ("pixel_values" in row) != prepared:
                kind = "prepared (prepare_for_training)" if prepared else "unprepared"
                raise ValueError(f"rows[{index}] lacks the column(s) {missing} of a {kind} row like rows[0], or mixes "
                                 f"prepared and unprepared rows; its columns are {sorted(row)}")
        return prepared

    def __call__(self, rows: list[dict]):
        batch = self._collate(rows)
        if self.same_study_positives:
            batch["study_ids"] = torch.tensor([study_id_of(row) for row in rows], dtype=torch.long)
        return batch

    def _collate(self, rows: list[dict]):
        prepared = self._check_rows(rows)
        sentences = [list(row["sentences"]) for row in rows]
        if prepared:  # prepared by `prepare_for_training`: no decoding, no resizing
            batch = self.processor(text=sentences, max_length=self.max_length)
            pixels = torch.stack([torch.as_tensor(np.asarray(row["pixel_values"])) for row in rows])[:, None]
            if self.compact_pixels:  # as prepared (one channel, float16): a sixth of the bytes from a loader worker
                batch["pixel_values"] = pixels
            else:
                batch["pixel_values"] = expand_pixels(pixels).contiguous()
            grid = np.asarray(rows[0]["gaze_grid"]).shape[-1]
            gaze = torch.zeros(len(rows), batch["input_ids"].shape[1], grid, grid)
            for index, row in enumerate(rows):
                maps = torch.as_tensor(np.asarray(row["gaze_grid"], np.float32))
                gaze[index, : len(maps)] = maps
            batch["gaze_heatmaps"] = gaze
            batch["has_gaze"] = torch.tensor([bool(row["has_gaze"]) for row in rows])
            return batch
        images = [self.image_loader(row["image"]) for row in rows]
        heatmaps = [np.asarray(row["sentence_heatmaps"], np.float32) if row["has_gaze"] else None for row in rows]
        return self.processor(images=images, text=sentences, gaze_heatmaps=heatmaps, max_length=self.max_length)
