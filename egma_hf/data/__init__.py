"""Chest X-ray data: readers for the eye-gaze sets (EGD-CXR, REFLACX, MIMIC-EYE, pre-rendered heatmap folders) and
for the large corpora (MIMIC-CXR-JPG, CheXpert Plus, any image-text dataset) with `attach_gaze` to join them, sentence
heatmaps, gaze-fraction subsets, a collator for `EGMAModel`, a synthetic corpus in MIMIC-EYE's file formats, and
readers for the public evaluation sets (CheXpert 5x200 / 8x200 / official splits, RSNA Pneumonia, SIIM-ACR) with
synthetic equivalents."""

from .augment import AugmentSettings, JointAugment
from .batching import EGMADataCollator, expand_pixels, kept_gaze_positions, prepare_for_training, with_gaze_fraction
from .cache import build_once, cached_synthetic_corpus, cached_synthetic_evaluation_sets, default_cache_dir
from .chexpert_plus import load_chexpert_plus
from .combine import attach_gaze, subject_splits
from .evaluation_sets import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_8X200_CLASSES,
    CHEXPERT_COMPETITION_TASKS,
    EVALUATION_SETS,
    RSNA_CLASSES,
    SIIM_CLASSES,
    EvaluationSet,
    load_chexpert,
    load_chexpert_5x200,
    load_chexpert_8x200,
    load_rsna_pneumonia,
    load_siim_acr,
)
from .heatmaps import Fixations, Sentence, group_words_into_sentences, heatmap_shape, render_heatmaps
from .image_text import load_image_text
from .images import image_size_of, load_image
from .mimic_cxr import load_mimic_cxr, mimic_report_text, report_sections
from .prerendered_gaze import load_prerendered_gaze
from .readers import FEATURES, HeatmapSettings, SkipLog, by_split, load_egd_cxr, load_mimic_eye, load_reflacx
from .shards import ShardSet, ShardSettings, write_shards
from .streaming import ShardRows, ShardStream, load_shard_split
from .synthetic import (
    make_synthetic_chexpert_plus,
    make_synthetic_evaluation_sets,
    make_synthetic_mimic_cxr,
    make_synthetic_mimic_eye,
    write_prerendered_gaze,
)

__all__ = [
    "AugmentSettings",
    "JointAugment",
    "ShardRows",
    "ShardSet",
    "ShardSettings",
    "ShardStream",
    "expand_pixels",
    "kept_gaze_positions",
    "load_shard_split",
    "write_shards",
    "attach_gaze",
    "build_once",
    "cached_synthetic_corpus",
    "cached_synthetic_evaluation_sets",
    "default_cache_dir",
    "CHEXPERT_5X200_CLASSES",
    "CHEXPERT_8X200_CLASSES",
    "CHEXPERT_COMPETITION_TASKS",
    "EVALUATION_SETS",
    "EvaluationSet",
    "RSNA_CLASSES",
    "SIIM_CLASSES",
    "load_chexpert",
    "load_chexpert_5x200",
    "load_chexpert_8x200",
    "load_chexpert_plus",
    "load_rsna_pneumonia",
    "load_siim_acr",
    "make_synthetic_chexpert_plus",
    "make_synthetic_evaluation_sets",
    "FEATURES",
    "EGMADataCollator",
    "Fixations",
    "HeatmapSettings",
    "Sentence",
    "SkipLog",
    "by_split",
    "group_words_into_sentences",
    "heatmap_shape",
    "image_size_of",
    "load_egd_cxr",
    "load_image",
    "load_image_text",
    "load_mimic_cxr",
    "load_mimic_eye",
    "load_prerendered_gaze",
    "mimic_report_text",
    "load_reflacx",
    "make_synthetic_mimic_cxr",
    "make_synthetic_mimic_eye",
    "prepare_for_training",
    "render_heatmaps",
    "report_sections",
    "subject_splits",
    "with_gaze_fraction",
    "write_prerendered_gaze",
]
