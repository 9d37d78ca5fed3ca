"""Evaluating EGMA's global embeddings: zero-shot classification, retrieval and their metrics with bootstrap
confidence intervals. Classes and labels always meet by name.

- `embed_images`: batched, normalised image embeddings.
- `evaluate_single_label` / `evaluate_multi_label`: metrics of a `ZeroShotClassifier` (or any class scores) on
  labelled images; a constant predictor is flagged and compared with the majority-class baseline.
- `zero_shot_auroc`: per-finding AUROC of positive-vs-negative prompt scores (used for model selection in
  pre-training).
- `retrieval_metrics`: the paper's Precision@K in both directions (Sec. 5.1), and Recall@K.
"""

from collections import Counter

import numpy as np
import torch

from .data.images import load_image
from .metrics import accuracy, bootstrap_ci, confusion_matrix, macro_f1, precision_at_k, recall_at_k, roc_auc
from .zero_shot import ZeroShotClassifier, embed_pixel_values


def image_file_batches(image_processor, paths, batch_size: int = 32):
    """Image files (PNG, JPG or DICOM) -> batches of pixel_values (B, 3, S, S) for `embed_images`, decoded one
    batch at a time. A file that cannot be decoded raises ValueError naming it."""
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            try:
                images.append(load_image(path))
            except Exception as error:  # noqa: BLE001 - any decoder failure, reported with the file
                raise ValueError(f"cannot decode {path}: {type(error).__name__}: {error}") from error
        yield image_processor(images=images, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def embed_images(model, image_batches) -> torch.Tensor:
    """Iterable of pixel_values (B, 3, S, S) -> (N, D) L2-normalised global image embeddings (model in eval mode)."""
    model.eval()
    chunks = [embed_pixel_values(model, pixels) for pixels in image_batches]
    if not chunks:
        raise ValueError("no images to embed")
    return torch.cat(chunks)


def _check_labels(labels, class_names, multi_label: bool) -> dict[str, int]:
    """Single-label: every label must be a class. Multi-label: findings outside the prompt set are not scored;
    returns their counts so the caller reports them."""
    if len(labels) == 0:
        raise ValueError("the evaluation set is empty")
    seen = Counter(name for row in labels for name in row) if multi_label else Counter(labels)
    unknown = {name: count for name, count in sorted(seen.items()) if name not in class_names}
    if multi_label:
        return unknown
    if unknown:
        raise ValueError(f"labels not in the prompt set's classes {list(class_names)}: {unknown} "
                         "(classes are matched by name; rename the labels or the classes)")


def evaluate_single_label(class_names, probabilities, labels, num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Accuracy, macro-F1 (with 95% bootstrap intervals), one-vs-rest AUROC per class and a confusion matrix.

    Args:
        class_names: C names, the columns of `probabilities`.
        probabilities: (N, C) class scores; the prediction is the first column with the highest score.
        labels: N true class names.
    Returns a dict; `"constant_prediction"` names the class when every image got the same prediction, and
    `"majority_baseline"` gives what always predicting the most frequent class scores.
    """
    class_names = list(class_names)
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, dtype=object)
    _check_labels(labels, class_names, multi_label=False)
    if probabilities.shape != (len(labels), len(class_names)):
        raise ValueError(f"probabilities must be (images, classes) = {(len(labels), len(class_names))}, "
                         f"got {probabilities.shape}")
    predictions = np.asarray(class_names, dtype=object)[probabilities.argmax(1)]
    f1 = lambda truth, predicted: macro_f1(truth, predicted, labels=class_names)  # noqa: E731
    predicted_counts = Counter(predictions.tolist())
    majority = Counter(labels.tolist()).most_common(1)[0][0]
    constant = np.full(len(labels), majority, dtype=object)
    auroc = {}
    for column, name in enumerate(class_names):
        truth = labels == name
        if truth.any() and not truth.all():
            auroc[name] = roc_auc(truth, probabilities[:, column])
    return {
        "num_images": len(labels),
        "class_counts": {name: int(np.sum(labels == name)) for name in class_names},
        "accuracy": bootstrap_ci(accuracy, labels, predictions, num_samples=num_bootstrap, seed=seed),
        "macro_f1": bootstrap_ci(f1, labels, predictions, num_samples=num_bootstrap, seed=seed),
        "auroc": auroc,
        "mean_auroc": float(np.mean(list(auroc.values()))) if auroc else None,
        "confusion_matrix": confusion_matrix(labels, predictions, class_names).tolist(),
        "predicted_counts": {name: predicted_counts.get(name, 0) for name in class_names},
        "constant_prediction": predictions[0] if len(predicted_counts) == 1 else None,
        "majority_baseline": {"class": majority, "accuracy": accuracy(labels, constant),
                              "macro_f1": f1(labels, constant)},
    }


def evaluate_multi_label(class_names, probabilities, labels, num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-finding AUROC with 95% bootstrap intervals and their mean. labels: N lists of positive finding names;
    findings with no positive or no negative image are listed under "skipped" (AUROC is undefined there), and
    label names outside `class_names` are counted under "labels_not_scored"."""
    class_names = list(class_names)
    probabilities = np.asarray(probabilities, np.float64)
    not_scored = _check_labels(labels, class_names, multi_label=True)
    if probabilities.shape != (len(labels), len(class_names)):
        raise ValueError(f"probabilities must be (images, findings) = {(len(labels), len(class_names))}, "
                         f"got {probabilities.shape}")
    auroc, skipped = {}, []
    for column, name in enumerate(class_names):
        truth = np.array([name in row for row in labels])
        if truth.all() or not truth.any():
            skipped.append(name)
            continue
        auroc[name] = bootstrap_ci(roc_auc, truth, probabilities[:, column], num_samples=num_bootstrap, seed=seed)
    if not auroc:
        raise ValueError(f"no finding of {class_names} has both positive and negative images")
    return {
        "num_images": len(labels),
        "positive_counts": {name: int(sum(name in row for row in labels)) for name in class_names},
        "auroc": auroc,
        "mean_auroc": float(np.mean([value["value"] for value in auroc.values()])),
        "skipped": skipped,
        "labels_not_scored": not_scored,
    }


def zero_shot_auroc(model, tokenizer, image_batches, labels: list[list[str]], class_prompts="chexpert_findings"):
    """Per-finding and mean AUROC of positive-vs-negative prompt scores (mean prompt ensembles), no intervals.

    Returns {"auroc": {finding: value}, "mean_auroc": float, "num_images": int}; findings with no positive or no
    negative image are left out.
    """
    classifier = ZeroShotClassifier.from_prompts(model, tokenizer, class_prompts, ensemble="mean")
    if not classifier.multi_label:
        raise ValueError("zero_shot_auroc needs (positive, negative) prompt pairs per finding")
    image_embeds = embed_images(model, image_batches)
    if len(image_embeds) != len(labels):
        raise ValueError(f"{len(image_embeds)} images but {len(labels)} label lists")
    if len(labels) == 0:
        raise ValueError("the evaluation set is empty")
    scores = classifier.logits(image_embeds).cpu().numpy()
    auroc = {}
    for column, name in enumerate(classifier.class_names):
        truth = np.array([name in row for row in labels])
        if truth.any() and not truth.all():
            auroc[name] = roc_auc(truth, scores[:, column])
    if not auroc:
        raise ValueError("no finding has both positive and negative images")
    return {"auroc": auroc, "mean_auroc": float(np.mean(list(auroc.values()))), "num_images": len(labels)}


def retrieval_metrics(image_embeds, image_labels, text_embeds, text_labels, ks=(1, 5, 10)) -> dict:
    """Precision@K (the paper's metric, Sec. 5.1) and Recall@K in both directions; an image's relevant texts are
    those of its class, and vice versa. A k larger than the number of candidates is skipped.

    Returns {"i2t": {"precision": {k: v}, "recall": {k: v}}, "t2i": {...}}.
    """
    scores = (torch.as_tensor(image_embeds) @ torch.as_tensor(text_embeds).t()).cpu().numpy()
    relevant = np.asarray(image_labels, dtype=object)[:, None] == np.asarray(text_labels, dtype=object)[None, :]
    result = {}
    for direction, (s, r) in {"i2t": (scores, relevant), "t2i": (scores.T, relevant.T)}.items():
        usable = [k for k in ks if k <= s.shape[1]]
        result[direction] = {"precision": {k: precision_at_k(s, r, k) for k in usable},
                             "recall": {k: recall_at_k(s, r, k) for k in usable}}
    return result
