"""Pictures: an X-ray with each sentence's gaze heatmap overlaid, and evaluation plots (confusion matrix, ROC).

Needs matplotlib (`pip install 'egma_hf[viz]'`).
"""

import math
import textwrap
from pathlib import Path

import numpy as np

from .data.images import load_image
from .metrics import roc_auc, roc_curve

PANEL_INCHES = (3.2, 3.8)  # width, height of one panel, caption included
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sentence_heatmaps(image, sentences, heatmaps, path=None, columns: int = 3, alpha: float = 0.45):
    """One panel per sentence: the image, that sentence's heatmap on top, the sentence as caption.

    Args:
        image: an image path (DICOM too) or an (H, W) array in [0, 1].
        sentences: S sentences; heatmaps: (S, h, w) maps covering the whole image at any resolution.
        path: where to save the PNG (`columns * 320` x `rows * 380` pixels), or None to only return the figure.
    Returns:
        The matplotlib figure.
    """
    plt = _pyplot()
    pixels = load_image(image) if isinstance(image, (str, Path)) else np.asarray(image, np.float32)
    heatmaps = np.asarray(heatmaps, np.float32)
    if heatmaps.ndim != 3 or len(heatmaps) != len(sentences):
        raise ValueError(f"need one 2-D heatmap per sentence: {len(sentences)} sentences, heatmaps {heatmaps.shape}")
    if len(sentences) == 0:
        raise ValueError("no sentences to draw")
    columns = min(columns, len(sentences))
    rows = math.ceil(len(sentences) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI,
                                squeeze=False)
    height, width = pixels.shape
    for axis, sentence, heatmap in zip(axes.flat, sentences, heatmaps):
        axis.imshow(pixels, cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
        axis.imshow(heatmap, cmap="jet", alpha=alpha * (heatmap > 0.05), extent=(0, width, height, 0),
                    vmin=0, vmax=max(float(heatmap.max()), 1e-6), interpolation="bilinear")
        axis.set_title("\n".join(textwrap.wrap(sentence, 34)[:4]), fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.05, hspace=0.3)
    if path is not None:
        figure.savefig(path, dpi=DPI)
    return figure


def plot_reading(row: dict, path=None, **kwargs):
    """`plot_sentence_heatmaps` for one row of a gaze dataset (`egma_hf.data` readers)."""
    return plot_sentence_heatmaps(row["image"], row["sentences"], row["sentence_heatmaps"], path, **kwargs)


def plot_confusion_matrix(matrix, class_names, path=None, title: str = ""):
    """Counts (rows true, columns predicted) as a heat map with the count in each cell; returns the figure."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    size = 1.2 + 0.9 * len(class_names)
    figure, axis = plt.subplots(figsize=(size + 1, size), dpi=DPI)
    image = axis.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=30, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path)
    return figure


def plot_roc_curves(curves: dict, path=None, title: str = ""):
    """curves: {name: (binary labels (N,), scores (N,))}; one ROC line per name, AUROC in the legend."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5), dpi=DPI)
    for name, (labels, scores) in curves.items():
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
        axis.plot(false_positive_rate, true_positive_rate, label=f"{name} ({roc_auc(labels, scores):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance (0.500)")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path)
    return figure
