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
from .zero_shot import ZeroShotClassifier, check_positive_int, embed_pixel_values


def image_file_batches(image_processor, paths, batch_size: int = 32):
    """Image files (PNG, JPG or DICOM) -> batches of pixel_values (B, 3, S, S) for `embed_images`, decoded one
    batch at a time. A file that cannot be decoded raises ValueError naming it."""
    check_positive_int(batch_size, "batch_size")
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


def _auroc_undefined(truth: np.ndarray, absent: str, everywhere: str) -> str | None:
    """Why AUROC is undefined for these binary labels, or None when it is defined."""
    if not truth.any():
        return absent
    if truth.all():
        return everywhere
    return None


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
    _check_labels(labels, class_names, multi_label=False)
    probabilities = _check_scores(class_names, probabilities, len(labels), num_bootstrap, "classes")
    predictions = np.asarray(class_names, dtype=object)[probabilities.argmax(1)]
    f1 = lambda truth, predicted: macro_f1(truth, predicted, labels=class_names)  # noqa: E731
    predicted_counts = Counter(predictions.tolist())
    majority = Counter(labels.tolist()).most_common(1)[0][0]
    constant = np.full(len(labels), majority, dtype=object)
    auroc, undefined = {}, {}
    for column, name in enumerate(class_names):
        truth = labels == name
        reason = _auroc_undefined(truth, "no image of this class", "every image is of this class")
        if reason is None:
            auroc[name] = roc_auc(truth, probabilities[:, column])
        else:
            undefined[name] = reason
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
    not_scored = _check_labels(labels, class_names, multi_label=True)
    probabilities = _check_scores(class_names, probabilities, len(labels), num_bootstrap, "findings")
    auroc, skipped, reasons = {}, [], {}
    for column, name in enumerate(class_names):
        truth = np.array([name in row for row in labels])
        reason = _auroc_undefined(truth, "no positive image", "every image is positive")
        if reason is not None:
            skipped.append(name)
            reasons[name] = reason
            continue
        auroc[name] = bootstrap_ci(roc_auc, truth, probabilities[:, column], num_samples=num_bootstrap, seed=seed)
    result = {
        "num_images": len(labels),
        "positive_counts": {name: int(sum(name in row for row in labels)) for name in class_names},
        "auroc": auroc,
        "mean_auroc": float(np.mean([value["value"] for value in auroc.values()])) if auroc else None,
        "skipped": skipped,
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
    _check_labels(labels, classifier.class_names, multi_label=True)
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


def check_ks(ks) -> list[int]:
    """Retrieval cut-offs: a non-empty list of distinct whole numbers >= 1."""
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise ValueError(f"ks must be a list of cut-offs (whole numbers >= 1), got {ks!r}")
    ks = [check_positive_int(k, "each k in ks") for k in ks]
    if not ks or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be a non-empty list of distinct cut-offs, got {ks}")
    return ks


def _embeddings(embeds, labels, name: str) -> tuple[torch.Tensor, np.ndarray]:
    embeds = torch.as_tensor(embeds)
    if embeds.ndim != 2:
        raise ValueError(f"{name}_embeds must be ({name}s, dim), got shape {tuple(embeds.shape)}")
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (len(embeds),):
        raise ValueError(f"{name}_labels must hold one label per {name} embedding: {len(embeds)} embeddings, "
                         f"labels of shape {labels.shape}")
    if len(embeds) == 0:
        raise ValueError(f"no {name} embeddings")
    return embeds, labels


def retrieval_metrics(image_embeds, image_labels, text_embeds, text_labels, ks=(1, 5, 10),
                      num_bootstrap: int | None = None, seed: int = 0) -> dict:
    """Precision@K (the paper's metric, Sec. 5.1) and Recall@K in both directions; an image's relevant texts are
    those of its class, and vice versa.

    Skipped and counted, per direction: a k larger than the number of candidates (`"skipped_ks"`, k -> reason), and
    queries with no candidate of their class (`"skipped_queries"`: count and reason), for which nothing can be
    retrieved. With `num_bootstrap`, every value is a `bootstrap_ci` interval over the queries instead of a float.

    Returns {"i2t": {"precision": {k: v}, "recall": {k: v}, ...}, "t2i": {...}}.
    """
    ks = check_ks(ks)
    if num_bootstrap is not None:
        check_positive_int(num_bootstrap, "num_bootstrap")
    image_embeds, image_labels = _embeddings(image_embeds, image_labels, "image")
    text_embeds, text_labels = _embeddings(text_embeds, text_labels, "text")
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image and text embeddings differ in width: {image_embeds.shape[1]} and "
                         f"{text_embeds.shape[1]}")
    scores = (image_embeds.float() @ text_embeds.float().t()).cpu().numpy()
    relevant = image_labels[:, None] == text_labels[None, :]
    result = {}
    for direction, (s, r) in {"i2t": (scores, relevant), "t2i": (scores.T, relevant.T)}.items():
        candidates = "texts" if direction == "i2t" else "images"
        answerable = r.any(1)
        s, r = s[answerable], r[answerable]
        entry = {"precision": {}, "recall": {}}
        if not answerable.all():
            entry["skipped_queries"] = {"count": int((~answerable).sum()),
                                        "reason": f"no {candidates[:-1]} of the query's class among the candidates"}
        if not answerable.any():
            raise ValueError(f"{direction}: no query has a candidate of its class (image labels "
                             f"{sorted(set(image_labels.tolist()), key=str)[:8]}, text labels "
                             f"{sorted(set(text_labels.tolist()), key=str)[:8]})")
        too_large = {k: f"k exceeds the {s.shape[1]} candidate {candidates}" for k in ks if k > s.shape[1]}
        if too_large:
            entry["skipped_ks"] = too_large
        for kind, metric in (("precision", precision_at_k), ("recall", recall_at_k)):
            for k in (k for k in ks if k not in too_large):
                if num_bootstrap is None:
                    entry[kind][k] = metric(s, r, k)
                else:
                    entry[kind][k] = bootstrap_ci(lambda s_, r_, k=k, metric=metric: metric(s_, r_, k), s, r,
                                                  num_samples=num_bootstrap, seed=seed)
        result[direction] = entry
    return result
