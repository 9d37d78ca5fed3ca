"""Pictures for checking gaze data: an X-ray with each sentence's gaze heatmap overlaid.

Needs matplotlib (`pip install 'egma_hf[viz]'`).
"""

import math
import textwrap
from pathlib import Path

import numpy as np

from .data.images import load_image

PANEL_INCHES = (3.2, 3.8)  # width, height of one panel, caption included
DPI = 100


def plot_sentence_heatmaps(image, sentences, heatmaps, path=None, columns: int = 3, alpha: float = 0.45):
    """One panel per sentence: the image, that sentence's heatmap on top, the sentence as caption.

    Args:
        image: an image path (DICOM too) or an (H, W) array in [0, 1].
        sentences: S sentences; heatmaps: (S, h, w) maps covering the whole image at any resolution.
        path: where to save the PNG (`columns * 320` x `rows * 380` pixels), or None to only return the figure.
    Returns:
        The matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
