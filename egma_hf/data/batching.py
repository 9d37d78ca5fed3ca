"""From dataset rows to training batches: gaze-fraction subsets (the paper's ablation) and the collator."""

import math

import datasets
import numpy as np

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


class EGMADataCollator:
    """Rows of a gaze dataset -> the batch `EGMAModel` expects, through `EGMAProcessor`.

    Images are read from the `image` paths (DICOM included), the `sentences` are used as they are, and each
    row's `sentence_heatmaps` go through the processor's image geometry when `has_gaze` is set.
    """

    def __init__(self, processor, max_length: int = 77, image_loader=load_image):
        self.processor = processor
        self.max_length = max_length
        self.image_loader = image_loader

    def __call__(self, rows: list[dict]):
        images = [self.image_loader(row["image"]) for row in rows]
        sentences = [list(row["sentences"]) for row in rows]
        heatmaps = [np.asarray(row["sentence_heatmaps"], np.float32) if row["has_gaze"] else None for row in rows]
        return self.processor(images=images, text=sentences, gaze_heatmaps=heatmaps, max_length=self.max_length)
