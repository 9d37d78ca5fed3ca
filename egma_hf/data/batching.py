"""From dataset rows to training batches: gaze-fraction subsets (the paper's ablation) and the collator."""

import math

import datasets
import numpy as np
import torch

from .images import load_image


def with_gaze_fraction(dataset: datasets.Dataset, fraction: float, seed: int = 0, split: str = "train") -> datasets.Dataset:
    """Keep gaze on a seeded random `fraction` of the `split` rows that have it; the others get `has_gaze=False`.

    The kept rows are the first `floor(fraction * n + 0.5)` of one seeded permutation (the paper's 1% of 3,695 is
    37), so for a given seed a smaller fraction's rows are always inside a larger fraction's. Rows of other splits
    are unchanged; heatmaps stay in the data either way.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
        raise ValueError(f"gaze fraction must be in [0, 1], got {fraction!r}")
    has_gaze = list(dataset["has_gaze"])
    eligible = [i for i, (row_split, gaze) in enumerate(zip(dataset["split"], has_gaze)) if row_split == split and gaze]
    order = np.random.default_rng(seed).permutation(len(eligible))
    kept = {eligible[i] for i in order[: math.floor(fraction * len(eligible) + 0.5)]}
    for index in eligible:
        has_gaze[index] = index in kept
    return dataset.remove_columns("has_gaze").add_column("has_gaze", has_gaze, feature=datasets.Value("bool"))


def prepare_for_training(dataset: datasets.Dataset, image_processor, num_proc: int | None = None) -> datasets.Dataset:
    """Decode, resize and normalise every image once, and pool every sentence heatmap to the patch grid once.

    Adds `pixel_values` (size, size) float16, one channel (the model's three are copies) and `gaze_grid`
    (sentences, g, g) float32, so training batches need no image decoding, and drops the full-size heatmaps that
    `gaze_grid` replaces. `datasets` caches the result.
    """

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


class EGMADataCollator:
    """Rows of a gaze dataset -> the batch `EGMAModel` expects, through `EGMAProcessor`.

    Images are read from the `image` paths (DICOM included), the `sentences` are used as they are, and each
    row's `sentence_heatmaps` go through the processor's image geometry when `has_gaze` is set. Rows that went
    through `prepare_for_training` skip all of that and are only stacked and padded.
    """

    def __init__(self, processor, max_length: int = 77, image_loader=load_image):
        self.processor = processor
        self.max_length = max_length
        self.image_loader = image_loader

    def __call__(self, rows: list[dict]):
        sentences = [list(row["sentences"]) for row in rows]
        if "pixel_values" in rows[0]:  # prepared by `prepare_for_training`: no decoding, no resizing
            batch = self.processor(text=sentences, max_length=self.max_length)
            pixels = torch.stack([torch.as_tensor(np.asarray(row["pixel_values"])) for row in rows]).float()
            batch["pixel_values"] = pixels[:, None].expand(-1, 3, -1, -1).contiguous()
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
