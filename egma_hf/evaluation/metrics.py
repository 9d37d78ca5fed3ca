"""Evaluation metrics as plain numpy functions (no Hub-hosted metric scripts, which cannot be fetched offline),
with percentile-bootstrap confidence intervals. Each is checked against scikit-learn in the tests.

Inputs are checked, not coerced: binary labels must be booleans or 0/1 (not 2, -1 or NaN), scores must be finite,
and a metric that is undefined on its input (AUROC of one class) raises ValueError rather than returning NaN.
`auroc_defined`, `column_aurocs` and `mean_auroc` are the one place that decides which columns of a multi-column
problem (classes one-vs-rest, findings, tasks) have an AUROC: those with both a positive and a negative.
"""

import numbers
from collections.abc import Callable

import numpy as np


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches. y_true, y_pred: (n,) class ids or names."""
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every class in y_true or y_pred); a class with no
    true and no predicted sample scores 0, as scikit-learn's `zero_division=0`. A value in y_true or y_pred that
    is not in `labels` is an error (scikit-learn would drop it silently)."""
    y_true, y_pred = _paired(y_true, y_pred)
    if labels is None:
        labels = np.unique(np.concatenate([y_true, y_pred]))
    else:
        labels = np.asarray(_class_list(labels), dtype=object)
        _check_known(labels.tolist(), y_true, y_pred)
    scores = []
    for label in labels:
        true_positive = np.sum((y_pred == label) & (y_true == label))
        predicted, actual = np.sum(y_pred == label), np.sum(y_true == label)
        scores.append(0.0 if predicted + actual == 0 else 2 * true_positive / (predicted + actual))
    return float(np.mean(scores))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve from ranks (ties get their average rank). labels {0,1} (n,), scores (n,)."""
    labels, scores = _binary_and_scores(labels, scores)
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


def auroc_defined(targets) -> np.ndarray:
    """(N, C) binary targets -> (C,) bool: the columns holding both a positive and a negative, where AUROC is
    defined."""
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must be (samples, columns), got shape {targets.shape}")
    positives = (targets == 1).sum(0)
    return (positives > 0) & (positives < len(targets))


def column_aurocs(targets, scores, names, metric: Callable = roc_auc, absent: str = "no positive",
                  everywhere: str = "every sample is positive") -> tuple[dict, dict]:
    """`metric` (default `roc_auc`) of each column where AUROC is defined, and why it is not elsewhere.

    Args:
        targets: (N, C) binary; scores: (N, C); names: the C column names.
        metric: called as metric(targets[:, c], scores[:, c]), e.g. a `bootstrap_ci` of `roc_auc`.
        absent / everywhere: the reason given for a column without a positive / without a negative.
    Returns ({name: value}, {name: reason}), both in column order.
    """
    targets, scores, names = np.asarray(targets), np.asarray(scores), list(names)
    if targets.shape != scores.shape or targets.shape[1:] != (len(names),):
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must both be (samples, {len(names)})")
    defined = auroc_defined(targets)
    values, undefined = {}, {}
    for column, name in enumerate(names):
        if defined[column]:
            values[name] = metric(targets[:, column] == 1, scores[:, column])
        else:
            undefined[name] = absent if not (targets[:, column] == 1).any() else everywhere
    return values, undefined


def mean_auroc(targets, scores) -> float:
    """Mean AUROC over the columns of (N, C) targets and scores that hold both classes; ValueError when none does
    (so `bootstrap_ci` skips a resample on which it is undefined)."""
    values, _ = column_aurocs(targets, scores, range(np.shape(targets)[1]))
    if not values:
        raise ValueError("AUROC is undefined for every task")
    return float(np.mean(list(values.values())))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds), one point per distinct score from the highest down,
    starting at (0, 0) with threshold +inf; the trapezoid area under it equals `roc_auc`."""
    labels, scores = _binary_and_scores(labels, scores)
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
    labels = _class_list(labels)
    index = {label: i for i, label in enumerate(labels)}
    _check_known(labels, y_true, y_pred)
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[v] for v in y_true], [index[v] for v in y_pred]), 1)
    return matrix


def _top_k_hits(scores, relevant, k: int) -> np.ndarray:
    scores, relevant = np.asarray(scores, np.float64), np.asarray(relevant, bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores and relevant must both be (queries, items), got {scores.shape} and {relevant.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no queries (scores has 0 rows)")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be a whole number in [1, {scores.shape[1]}] (the number of items), got {k!r}")
    _check_finite(scores, "scores")
    top = np.argsort(-scores, axis=1, kind="mergesort")[:, :k]  # ties keep item order
    return np.take_along_axis(relevant, top, axis=1).sum(1)


def precision_at_k(scores, relevant, k: int) -> float:
    """Mean over queries of (relevant items among the top k) / k — the paper's retrieval metric (Sec. 5.1).

    scores: (queries, items) similarities; relevant: (queries, items) bool, e.g. same class.
    """
    return float(np.mean(_top_k_hits(scores, relevant, k) / k))


def recall_at_k(scores, relevant, k: int) -> float:
    """Mean over queries of (relevant items among the top k) / (relevant items); queries with none are an error."""
    hits = _top_k_hits(scores, relevant, k)
    counts = np.asarray(relevant, bool).sum(1)
    if np.any(counts == 0):
        rows = np.flatnonzero(counts == 0)
        raise ValueError(f"{len(rows)} queries have no relevant item (rows {rows[:10].tolist()}); Recall@K is "
                         "undefined for them")
    return float(np.mean(hits / counts))


def bootstrap_ci(metric: Callable, *arrays, num_samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Percentile-bootstrap interval of `metric(*arrays)`, resampling the rows (first axis) of all arrays together.

    Resamples on which the metric is undefined (it raises ValueError or returns NaN, e.g. AUROC of a single class)
    are skipped and counted. The metric must be defined on the full arrays.
    Returns {"value", "low", "high", "num_samples", "skipped"}.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"num_samples (bootstrap resamples) must be a whole number >= 1, got {num_samples!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    arrays = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in arrays):
        raise ValueError(f"arrays must have a first axis to resample, got shapes {[a.shape for a in arrays]}")
    length = len(arrays[0])
    if any(len(a) != length for a in arrays):
        raise ValueError(f"arrays must have the same length, got {[len(a) for a in arrays]}")
    if length == 0:
        raise ValueError("no samples to bootstrap (the arrays are empty)")
    value = float(metric(*arrays))
    if not np.isfinite(value):
        raise ValueError(f"the metric is {value} on the full data; an interval around it would be meaningless")
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(num_samples):
        rows = rng.integers(0, length, length)
        try:
            resampled = float(metric(*(a[rows] for a in arrays)))
        except ValueError:
            resampled = float("nan")
        if np.isfinite(resampled):
            values.append(resampled)
        else:
            skipped += 1
    if not values:
        raise ValueError(f"the metric is undefined on every one of the {num_samples} bootstrap resamples")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"value": value, "low": float(low), "high": float(high), "num_samples": len(values), "skipped": skipped}


def _paired(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of one length, got shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("no samples")
    return a, b


def _check_finite(values: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(1)) if values.size else []
    if len(bad):
        raise ValueError(f"{name} must be finite; NaN or inf in {len(bad)} rows (first: {bad[:10].tolist()})")


def _binary_and_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels (booleans or 0/1) as bool, and finite float scores, of one length."""
    labels, scores = _paired(labels, scores)
    try:
        scores = scores.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"scores must be numbers, got dtype {scores.dtype}: {error}") from None
    _check_finite(scores, "scores")
    if labels.dtype != bool:
        valid = np.isin(labels, [0, 1]) if labels.dtype.kind in "biuf" else np.zeros(len(labels), bool)
        if not valid.all():
            bad = np.flatnonzero(~valid)
            raise ValueError(f"labels must be binary (True/False or 0/1); {len(bad)} rows are not, e.g. row "
                             f"{bad[0]}: {labels.tolist()[bad[0]]!r}")
        labels = labels.astype(bool)
    return labels, scores


def _class_list(labels) -> list:
    labels = list(labels)
    if not labels:
        raise ValueError("labels (the class list) is empty")
    repeated = sorted({str(label) for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"labels (the class list) repeats {repeated}")
    return labels


def _check_known(labels: list, *value_arrays) -> None:
    known = set(labels)
    unknown = sorted({str(v) for values in value_arrays for v in values if v not in known})
    if unknown:
        raise ValueError(f"values not in labels {labels}: {unknown}")


__all__ = [
    "accuracy",
    "auroc_defined",
    "bootstrap_ci",
    "column_aurocs",
    "confusion_matrix",
    "macro_f1",
    "mean_auroc",
    "precision_at_k",
    "recall_at_k",
    "roc_auc",
    "roc_curve",
]
