"""Evaluation metrics as plain numpy functions (no Hub-hosted metric scripts, which cannot be fetched offline),
with percentile-bootstrap confidence intervals. Each is checked against scikit-learn in the tests.
"""

from collections.abc import Callable

import numpy as np


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches. y_true, y_pred: (n,) class ids or names."""
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every class in y_true or y_pred); a class with no
    true and no predicted sample scores 0, as scikit-learn's `zero_division=0`."""
    y_true, y_pred = _paired(y_true, y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else np.asarray(labels)
    scores = []
    for label in labels:
        true_positive = np.sum((y_pred == label) & (y_true == label))
        predicted, actual = np.sum(y_pred == label), np.sum(y_true == label)
        scores.append(0.0 if predicted + actual == 0 else 2 * true_positive / (predicted + actual))
    return float(np.mean(scores))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve from ranks (ties get their average rank). labels {0,1} (n,), scores (n,)."""
    labels, scores = _paired(np.asarray(labels, bool), np.asarray(scores, np.float64))
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # 1-based average rank of each tie group
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds), one point per distinct score from the highest down,
    starting at (0, 0) with threshold +inf; the trapezoid area under it equals `roc_auc`."""
    labels, scores = _paired(np.asarray(labels, bool), np.asarray(scores, np.float64))
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("an ROC curve needs at least one positive and one negative")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_group]
    false_positives = (last_of_group + 1) - true_positives
    return (np.r_[0.0, false_positives / negatives], np.r_[0.0, true_positives / positives],
            np.r_[np.inf, sorted_scores[last_of_group]])


def confusion_matrix(y_true, y_pred, labels) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class, both in the order of `labels`.
    A value in y_true or y_pred that is not in `labels` is an error, not dropped."""
    y_true, y_pred = _paired(y_true, y_pred)
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in np.concatenate([y_true, y_pred]) if v not in index})
    if unknown:
        raise ValueError(f"values not in labels {labels}: {unknown}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[v] for v in y_true], [index[v] for v in y_pred]), 1)
    return matrix


def _top_k_hits(scores, relevant, k: int) -> np.ndarray:
    scores, relevant = np.asarray(scores, np.float64), np.asarray(relevant, bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores and relevant must both be (queries, items), got {scores.shape} and {relevant.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    top = np.argsort(-scores, axis=1, kind="mergesort")[:, :k]  # ties keep item order
    return np.take_along_axis(relevant, top, axis=1).sum(1)


def precision_at_k(scores, relevant, k: int) -> float:
    """Mean over queries of (relevant items among the top k) / k — the paper's retrieval metric (Sec. 5.1).

    scores: (queries, items) similarities; relevant: (queries, items) bool, e.g. same class.
    """
    return float(np.mean(_top_k_hits(scores, relevant, k) / k))


def recall_at_k(scores, relevant, k: int) -> float:
    """Mean over queries of (relevant items among the top k) / (relevant items); queries with none are an error."""
    counts = np.asarray(relevant, bool).sum(1)
    if np.any(counts == 0):
        raise ValueError(f"{int(np.sum(counts == 0))} queries have no relevant item")
    return float(np.mean(_top_k_hits(scores, relevant, k) / counts))


def bootstrap_ci(metric: Callable, *arrays, num_samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Percentile-bootstrap interval of `metric(*arrays)`, resampling the rows (first axis) of all arrays together.

    Resamples on which the metric is undefined (e.g. AUROC of a single class) are skipped and counted.
    Returns {"value", "low", "high", "num_samples", "skipped"}.
    """
    arrays = [np.asarray(a) for a in arrays]
    length = len(arrays[0])
    if any(len(a) != length for a in arrays):
        raise ValueError(f"arrays must have the same length, got {[len(a) for a in arrays]}")
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(num_samples):
        rows = rng.integers(0, length, length)
        try:
            values.append(metric(*(a[rows] for a in arrays)))
        except ValueError:
            skipped += 1
    if not values:
        raise ValueError("the metric is undefined on every bootstrap resample")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"value": metric(*arrays), "low": float(low), "high": float(high), "num_samples": len(values),
            "skipped": skipped}


def _paired(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of one length, got shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("no samples")
    return a, b
