"""Eye-gaze chest X-ray data: readers for EGD-CXR, REFLACX and MIMIC-EYE, sentence heatmaps, gaze-fraction
subsets, a collator for `EGMAModel`, and a synthetic corpus in MIMIC-EYE's file formats."""

from .batching import EGMADataCollator, prepare_for_training, with_gaze_fraction
from .heatmaps import Fixations, Sentence, group_words_into_sentences, heatmap_shape, render_heatmaps
from .images import image_size_of, load_image
from .readers import FEATURES, HeatmapSettings, by_split, load_egd_cxr, load_mimic_eye, load_reflacx
from .synthetic import make_synthetic_mimic_eye

__all__ = [
    "FEATURES",
    "EGMADataCollator",
    "Fixations",
    "HeatmapSettings",
    "Sentence",
    "by_split",
    "group_words_into_sentences",
    "heatmap_shape",
    "image_size_of",
    "load_egd_cxr",
    "load_image",
    "load_mimic_eye",
    "load_reflacx",
    "make_synthetic_mimic_eye",
    "prepare_for_training",
    "render_heatmaps",
    "with_gaze_fraction",
]
