"""Pictures: an X-ray with each sentence's gaze heatmap overlaid, evaluation plots (confusion matrix, ROC), 2-D
projections of embeddings by class, and sentence->patch similarity maps next to the radiologist's gaze.

`plot_evaluation_report` draws an evaluation report's ROC curves and confusion matrix. Needs matplotlib
(`pip install 'egma_hf[viz]'`).
"""

import math
import textwrap
from pathlib import Path

import numpy as np

from ..data.images import load_image
from .metrics import roc_auc, roc_curve

PANEL_INCHES = (3.2, 3.8)  # width, height of one panel, caption included
DPI = 100


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display); ImportError without matplotlib."""
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
    plt = pyplot()
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
    matrix = np.asarray(matrix)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix must be (classes, classes) = {(len(class_names),) * 2} for class_names "
                         f"{list(class_names)}, got shape {matrix.shape}")
    plt = pyplot()
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
    if not curves:
        raise ValueError("no ROC curve to draw (curves is empty)")
    plt = pyplot()
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


def plot_embedding_projection(points, labels, path=None, title: str = "", scores: dict | None = None):
    """2-D projections of image embeddings (`egma_hf.evaluation.analysis.project_embeddings`), one panel per model, dots
    coloured by class.

    Args:
        points: {model name: (N, 2) array}, or one (N, 2) array for a single panel.
        labels: N class names, shared by every panel.
        scores: optional {model name: silhouette}; each panel's title then shows its score.
        path: where to save the PNG, or None to only return the figure.
    Returns:
        The matplotlib figure.
    """
    plt = pyplot()
    panels = dict(points) if isinstance(points, dict) else {"": points}
    labels = np.asarray(labels, dtype=object)
    if not panels:
        raise ValueError("no projection to draw")
    for name, xy in panels.items():
        if np.shape(xy) != (len(labels), 2):
            raise ValueError(f"{name or 'points'}: need ({len(labels)}, 2) points, one per label, got {np.shape(xy)}")
    classes = sorted(set(labels.tolist()))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 4.4), dpi=DPI, squeeze=False)
    for axis, (name, xy) in zip(axes.flat, panels.items()):
        xy = np.asarray(xy, np.float64)
        for index, name_of_class in enumerate(classes):
            chosen = labels == name_of_class
            axis.scatter(xy[chosen, 0], xy[chosen, 1], s=14, color=colours(index % colours.N), label=name_of_class)
        score = (scores or {}).get(name)
        axis.set_title(name + (f"\nsilhouette {score:.3f}" if score is not None else ""), fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    handles, names = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="center right", fontsize=8, frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, 1 - 1.8 / figure.get_figwidth(), 1))
    if path is not None:
        figure.savefig(path)
    return figure


def plot_similarity_vs_gaze(image, sentences, similarity_maps, gaze_maps, path=None, captions=None,
                            alpha: float = 0.5):
    """One row per sentence: the image with each model's sentence->patch similarity on top, then the image with
    the radiologist's gaze for that sentence.

    Args:
        image: (H, W) array in [0, 1] (or an image path) that the maps cover: for EGMA, the padded square the
            model sees, since its patch grid covers that square.
        sentences: S sentences.
        similarity_maps: (S, h, w) maps, or {model name: (S, h, w)} for one column per model.
        gaze_maps: (S, h', w') gaze maps over the same image (e.g. pooled to the same grid, to compare like for like).
        captions: optional {model name: S strings} shown under each similarity panel's title (e.g. the scores).
        path: where to save the PNG, or None to only return the figure.
    Each map is drawn min-max scaled to its own range, interpolated over the image.
    """
    plt = pyplot()
    pixels = load_image(image) if isinstance(image, (str, Path)) else np.asarray(image, np.float32)
    columns = dict(similarity_maps) if isinstance(similarity_maps, dict) else {"similarity": similarity_maps}
    gaze_maps = np.asarray(gaze_maps, np.float32)
    if len(sentences) == 0:
        raise ValueError("no sentences to draw")
    for name, maps in {**columns, "gaze": gaze_maps}.items():
        if np.ndim(maps) != 3 or len(maps) != len(sentences):
            raise ValueError(f"{name}: need one 2-D map per sentence ({len(sentences)}), got shape {np.shape(maps)}")
    height, width = pixels.shape
    extent = (0, width, height, 0)
    rows, count = len(sentences), len(columns) + 1
    figure, axes = plt.subplots(rows, count, figsize=(PANEL_INCHES[0] * count, PANEL_INCHES[1] * rows), dpi=DPI,
                                squeeze=False)
    for row, sentence in enumerate(sentences):
        panels = [(name, np.asarray(maps[row], np.float32), "viridis") for name, maps in columns.items()]
        panels.append(("radiologist's gaze", gaze_maps[row], "jet"))
        for axis, (name, heatmap, colour_map) in zip(axes[row], panels):
            low, high = float(heatmap.min()), float(heatmap.max())
            axis.imshow(pixels, cmap="gray", vmin=0, vmax=1, extent=extent)
            axis.imshow(heatmap, cmap=colour_map, alpha=alpha, extent=extent, vmin=low, vmax=max(high, low + 1e-6),
                        interpolation="bilinear")
            caption = (captions or {}).get(name)
            label = name + (f": {caption[row]}" if caption is not None else "")
            text = "\n".join(textwrap.wrap(sentence, 34)[:3]) if axis is axes[row][0] else ""
            axis.set_title(f"{text}\n{label}" if text else label, fontsize=8)
            axis.axis("off")
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.94, wspace=0.05, hspace=0.35)
    if path is not None:
        figure.savefig(path, dpi=DPI)
    return figure


def plot_evaluation_report(report: dict, curves: dict, output_dir) -> list[Path]:
    """`roc_curves.png` (when `curves`, as `score_zero_shot` returns them) and, for a single-label report,
    `confusion_matrix.png` in `output_dir`; returns the files written."""
    output_dir = Path(output_dir)
    title = f"{report['dataset_name']} ({report['split']})"
    written = []
    if curves:
        plot_roc_curves(curves, output_dir / "roc_curves.png", title=title)
        written.append(output_dir / "roc_curves.png")
    if "confusion_matrix" in report.get("zero_shot", {}):
        names = list(report["zero_shot"]["class_counts"])
        plot_confusion_matrix(report["zero_shot"]["confusion_matrix"], names, output_dir / "confusion_matrix.png",
                              title=title)
        written.append(output_dir / "confusion_matrix.png")
    return written


__all__ = [
    "DPI",
    "PANEL_INCHES",
    "plot_confusion_matrix",
    "plot_embedding_projection",
    "plot_evaluation_report",
    "plot_reading",
    "plot_roc_curves",
    "plot_sentence_heatmaps",
    "plot_similarity_vs_gaze",
    "pyplot",
]
