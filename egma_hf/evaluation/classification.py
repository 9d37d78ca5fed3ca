"""Zero-shot classification scored against labels, with bootstrap intervals. Classes and labels always meet by name.

- `evaluate_single_label` / `evaluate_multi_label`: metrics of a `ZeroShotClassifier` (or any class scores) on
  labelled images; a constant predictor is flagged and compared with the majority-class baseline.
- `zero_shot_auroc`: per-finding AUROC of positive-vs-negative prompt scores (model selection in pre-training).
- `score_zero_shot`: a classifier on image embeddings, scored by the right one of the two, with ROC curve inputs.
- `read_class_prompts`: a built-in prompt set name or a JSON file, checked against the task before any work.
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..zero_shot import ZeroShotClassifier, check_positive_int, resolve_class_prompts
from .embedding import embed_images
from .metrics import accuracy, bootstrap_ci, column_aurocs, confusion_matrix, macro_f1, roc_auc


def check_labels(labels, class_names, multi_label: bool) -> dict[str, int]:
    """Single-label: one class name per image, every one a class. Multi-label: one list of finding names per image;
    findings outside the prompt set are not scored, and their counts are returned so the caller reports them."""
    if isinstance(labels, str) or not hasattr(labels, "__len__"):
        raise ValueError(f"labels must be a list with one entry per image, got {type(labels).__name__}")
    if len(labels) == 0:
        raise ValueError("the evaluation set is empty")
    for index, row in enumerate(labels):
        if multi_label:
            if isinstance(row, str) or not isinstance(row, (list, tuple, set, frozenset, np.ndarray)):
                raise ValueError(f"labels[{index}] must be a list of finding names (multi-label), got "
                                 f"{type(row).__name__} {row!r:.60}")
            bad = [name for name in row if not isinstance(name, str)]
            if bad:
                raise ValueError(f"labels[{index}] must hold finding names (strings), got {bad[:3]}")
        elif row is None or isinstance(row, (list, tuple, set, dict, np.ndarray)):
            raise ValueError(f"labels[{index}] must be one class name (single-label), got {type(row).__name__} "
                             f"{row!r:.60}; multi-label label lists go to evaluate_multi_label")
    seen = Counter(name for row in labels for name in row) if multi_label else Counter(labels)
    unknown = {name: count for name, count in sorted(seen.items(), key=lambda item: str(item[0]))
               if name not in class_names}
    if multi_label:
        return unknown
    if unknown:
        raise ValueError(f"labels not in the prompt set's classes {list(class_names)}: {unknown} "
                         "(classes are matched by name; rename the labels or the classes)")


def class_targets(labels, class_names, multi_label: bool) -> np.ndarray:
    """(N, C) bool: is image n of class c (single-label: labels[n] == c; multi-label: c in labels[n])."""
    if multi_label:
        return np.array([[name in row for name in class_names] for row in labels], bool).reshape(-1, len(class_names))
    return np.asarray(labels, dtype=object)[:, None] == np.asarray(class_names, dtype=object)[None, :]


def _check_class_names(class_names) -> list:
    class_names = list(class_names)
    if len(class_names) == 0 or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be distinct and non-empty, got {class_names}")
    return class_names


def _check_scores(class_names, probabilities, num_images: int, num_bootstrap, what: str) -> np.ndarray:
    """(images, classes) finite scores whose columns are `class_names`; `num_bootstrap` >= 1."""
    check_positive_int(num_bootstrap, "num_bootstrap")
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.shape != (num_images, len(class_names)):
        raise ValueError(f"probabilities must be (images, {what}) = {(num_images, len(class_names))}, "
                         f"got {probabilities.shape}")
    bad = np.flatnonzero(~np.isfinite(probabilities).all(1))
    if len(bad):
        raise ValueError(f"probabilities hold NaN or inf for {len(bad)} images (rows {bad[:10].tolist()})")
    return probabilities


def evaluate_single_label(class_names, probabilities, labels, num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Accuracy, macro-F1 (with 95% bootstrap intervals), one-vs-rest AUROC per class and a confusion matrix.

    Args:
        class_names: C names, the columns of `probabilities`.
        probabilities: (N, C) class scores; the prediction is the first column with the highest score.
        labels: N true class names.
    Returns a dict; `"constant_prediction"` names the class when every image got the same prediction, and
    `"majority_baseline"` gives what always predicting the most frequent class scores. A class whose AUROC is
    undefined (no image of it, or only images of it) is left out of `"auroc"` and listed with the reason under
    `"auroc_undefined"`; `"mean_auroc"` is None, with `"mean_auroc_undefined"` saying why, when no class has one.
    """
    class_names = _check_class_names(class_names)
    labels = np.asarray(labels, dtype=object) if not isinstance(labels, str) else labels
    check_labels(labels, class_names, multi_label=False)
    probabilities = _check_scores(class_names, probabilities, len(labels), num_bootstrap, "classes")
    predictions = np.asarray(class_names, dtype=object)[probabilities.argmax(1)]
    f1 = lambda truth, predicted: macro_f1(truth, predicted, labels=class_names)  # noqa: E731
    predicted_counts = Counter(predictions.tolist())
    majority = Counter(labels.tolist()).most_common(1)[0][0]
    constant = np.full(len(labels), majority, dtype=object)
    auroc, undefined = column_aurocs(class_targets(labels, class_names, False), probabilities, class_names,
                                     absent="no image of this class", everywhere="every image is of this class")
    result = {
        "num_images": len(labels),
        "class_counts": {name: int(np.sum(labels == name)) for name in class_names},
        "accuracy": bootstrap_ci(accuracy, labels, predictions, num_samples=num_bootstrap, seed=seed),
        "macro_f1": bootstrap_ci(f1, labels, predictions, num_samples=num_bootstrap, seed=seed),
        "auroc": auroc,
        "auroc_undefined": undefined,
        "mean_auroc": float(np.mean(list(auroc.values()))) if auroc else None,
        "confusion_matrix": confusion_matrix(labels, predictions, class_names).tolist(),
        "predicted_counts": {name: predicted_counts.get(name, 0) for name in class_names},
        "constant_prediction": predictions[0] if len(predicted_counts) == 1 else None,
        "majority_baseline": {"class": majority, "accuracy": accuracy(labels, constant),
                              "macro_f1": f1(labels, constant)},
    }
    if not auroc:
        result["mean_auroc_undefined"] = "no class has both images of it and images of other classes"
    return result


def evaluate_multi_label(class_names, probabilities, labels, num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-finding AUROC with 95% bootstrap intervals and their mean. labels: N lists of positive finding names;
    findings with no positive or no negative image are listed under "skipped" (AUROC is undefined there; the
    reason per finding under "skipped_reasons"), and label names outside `class_names` are counted under
    "labels_not_scored". When no finding has an AUROC, "mean_auroc" is None and "mean_auroc_undefined" says why."""
    class_names = _check_class_names(class_names)
    not_scored = check_labels(labels, class_names, multi_label=True)
    probabilities = _check_scores(class_names, probabilities, len(labels), num_bootstrap, "findings")
    targets = class_targets(labels, class_names, True)
    def interval(truth, scores):
        return bootstrap_ci(roc_auc, truth, scores, num_samples=num_bootstrap, seed=seed)

    auroc, reasons = column_aurocs(targets, probabilities, class_names, interval, absent="no positive image",
                                   everywhere="every image is positive")
    result = {
        "num_images": len(labels),
        "positive_counts": {name: int(count) for name, count in zip(class_names, targets.sum(0))},
        "auroc": auroc,
        "mean_auroc": float(np.mean([value["value"] for value in auroc.values()])) if auroc else None,
        "skipped": list(reasons),
        "skipped_reasons": reasons,
        "labels_not_scored": not_scored,
    }
    if not auroc:
        result["mean_auroc_undefined"] = f"no finding of {class_names} has both positive and negative images"
    return result


def zero_shot_auroc(model, tokenizer, image_batches, labels: list[list[str]], class_prompts="chexpert_findings"):
    """Per-finding and mean AUROC of positive-vs-negative prompt scores (mean prompt ensembles), no intervals.

    Returns {"auroc": {finding: value}, "mean_auroc": float, "num_images": int}; findings with no positive or no
    negative image are left out.
    """
    classifier = ZeroShotClassifier.from_prompts(model, tokenizer, class_prompts, ensemble="mean")
    if not classifier.multi_label:
        raise ValueError("zero_shot_auroc needs (positive, negative) prompt pairs per finding")
    check_labels(labels, classifier.class_names, multi_label=True)
    image_embeds = embed_images(model, image_batches)
    if len(image_embeds) != len(labels):
        raise ValueError(f"{len(image_embeds)} images but {len(labels)} label lists")
    if len(labels) == 0:
        raise ValueError("the evaluation set is empty")
    scores = classifier.logits(image_embeds).cpu().numpy()
    targets = class_targets(labels, classifier.class_names, multi_label=True)
    auroc, _ = column_aurocs(targets, scores, classifier.class_names)
    if not auroc:
        raise ValueError("no finding has both positive and negative images")
    return {"auroc": auroc, "mean_auroc": float(np.mean(list(auroc.values()))), "num_images": len(labels)}


def score_zero_shot(classifier: ZeroShotClassifier, image_embeds, labels, num_bootstrap: int = 1000,
                    seed: int = 0) -> tuple[dict, dict]:
    """`classifier` on (N, D) image embeddings, scored by `evaluate_multi_label` or `evaluate_single_label` as it
    is multi-label or not. Returns (the result, {class: (truth (N,), scores (N,))} for each class with an AUROC,
    e.g. for `plot_roc_curves`)."""
    probabilities = classifier.probabilities(image_embeds).cpu().numpy()
    evaluate = evaluate_multi_label if classifier.multi_label else evaluate_single_label
    result = evaluate(classifier.class_names, probabilities, labels, num_bootstrap, seed)
    targets = class_targets(labels, classifier.class_names, classifier.multi_label)
    curves = {name: (targets[:, column], probabilities[:, column])
              for column, name in enumerate(classifier.class_names) if name in result["auroc"]}
    return result, curves


def read_class_prompts(name: str, multi_label: bool, dataset: str):
    """A built-in prompt set name, or a JSON file {class: prompts} (or {finding: [positives, negatives]}), checked
    and fitted to the task: prompt pairs for a multi-label set, one prompt list per class otherwise. ValueError
    naming `name` (and `dataset`) when it cannot be used."""
    prompts = name
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        try:
            prompts = json.loads(path.read_text())
        except (UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    try:
        _, negatives = resolve_class_prompts(prompts)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if (negatives is not None) != multi_label:
        needed = "(positive, negative) prompt pairs per finding" if multi_label else "one prompt list per class"
        raise ValueError(f"{name} does not fit {dataset}: it needs {needed}")
    return prompts
