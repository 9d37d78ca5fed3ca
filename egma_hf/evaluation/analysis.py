"""What a trained EGMA model learned, as numbers next to pictures (the paper's t-SNE figure and attention maps).

Embeddings
- `project_embeddings`: image embeddings (N, D) -> 2-D points (N, 2) with t-SNE (or PCA) for a scatter plot.
- `single_finding_labels` + `silhouette`: how well the embeddings cluster by class, as one number. Only images with
  exactly one finding, or none ("No Finding"), have a class; images with several findings are left out.
- `embedding_clusters`: both, and the 2-D projections, for several models on one split.

Attention
- `sentence_patch_similarity`: each sentence's cosine similarity to every image patch, (S, h, w) on the patch grid.
  The grid covers the padded square the model sees (EGMAImageProcessor: pad to square, then resize).
- `gaze_on_patch_grid`: a reading's sentence heatmaps through the same geometry, average-pooled to that grid.
- `gaze_agreement`: per sentence, the Pearson correlation of similarity and gaze over the patches, and the AUROC of
  the similarity at telling gaze-hot patches from the rest. A patch is hot when the sentence's gaze map, scaled to
  max 1, exceeds a threshold: the rule of EGMA's MLCE gaze labels (`config.gaze_label_threshold`, 1/255).
- `test_split_agreement`: both numbers over every sentence of a split that has gaze, and the same for a shuffled
  control in which each sentence is paired with the gaze of a reading of another image. The control keeps the
  gaze's spatial prior (radiologists look at the lungs), so the gap to it is what the model learned about
  *which* region a sentence is about.
- `pick_reading` + `reading_agreement`: one reading's maps and per-sentence numbers for several models (a figure).

Needs scikit-learn for t-SNE and the silhouette (`pip install 'egma_hf[analysis]'`, or scikit-learn itself).
"""

import importlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import load_image
from ..image_processing_egma import fit_to_square
from .embedding import embed_images, image_file_batches
from .metrics import roc_auc

NO_FINDING = "No Finding"
SKLEARN_HINT = "pip install 'egma_hf[analysis]' (or: pip install scikit-learn)"


def _sklearn(module: str):
    try:
        return importlib.import_module(f"sklearn.{module}")
    except ImportError as error:
        raise ImportError(f"this analysis needs scikit-learn: {SKLEARN_HINT}") from error


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, np.float64)


# ----------------------------------------------------------------------------------------------------------------
# Embeddings


def project_embeddings(embeds, method: str = "tsne", seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """(N, D) embeddings -> (N, 2) points for a scatter plot.

    Embeddings are L2-normalised first, so the Euclidean distances t-SNE uses order pairs as cosine similarity does.
    `method` is "tsne" (scikit-learn's TSNE, PCA-initialised, seeded) or "pca". t-SNE's perplexity defaults to
    scikit-learn's 30, lowered to (N - 1) / 3 for small sets (it must stay below N).
    """
    points = _numpy(embeds)
    if points.ndim != 2 or len(points) < 3:
        raise ValueError(f"need (N >= 3, D) embeddings to project, got shape {points.shape}")
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    if method == "pca":
        centred = points - points.mean(0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        projected = centred @ components[:2].T
        return np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))  # D == 1 still gives two columns
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    manifold = _sklearn("manifold")
    perplexity = perplexity if perplexity is not None else min(30.0, max(1.0, (len(points) - 1) / 3))
    tsne = manifold.TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(points.astype(np.float32)).astype(np.float64)


def single_finding_labels(label_lists: Sequence[Sequence[str]], min_class_size: int = 2) -> tuple[list[int], list[str]]:
    """Which images have a class for the silhouette, and that class.

    An image with exactly one finding is labelled by it; one with none (no labels, or only "No Finding") is
    "No Finding"; one with several findings is left out, since it belongs to several clusters at once. Classes with
    fewer than `min_class_size` images are left out too (a lone image's silhouette is 0 by definition).

    Returns (indices into `label_lists`, class name of each kept image).
    """
    kept = []
    for index, labels in enumerate(label_lists):
        findings = sorted(set(labels) - {NO_FINDING})
        if len(findings) <= 1:
            kept.append((index, findings[0] if findings else NO_FINDING))
    counts = Counter(name for _, name in kept)
    kept = [(index, name) for index, name in kept if counts[name] >= min_class_size]
    return [index for index, _ in kept], [name for _, name in kept]


def silhouette(embeds, labels: Sequence[str]) -> float:
    """Mean silhouette of (N, D) embeddings grouped by `labels` (N class names), cosine distance, in [-1, 1].

    1: every image is much closer to its own class than to the nearest other class; 0: classes overlap; < 0: images
    sit closer to another class. Which images to pass: see `single_finding_labels`.
    """
    points, labels = _numpy(embeds), np.asarray(labels, dtype=object)
    if points.ndim != 2 or len(points) != len(labels):
        raise ValueError(f"need (N, D) embeddings and N labels, got {points.shape} and {len(labels)} labels")
    classes = len(set(labels.tolist()))
    if not 2 <= classes <= len(points) - 1:
        raise ValueError(f"the silhouette needs 2 to N - 1 classes; got {classes} classes for {len(points)} images")
    return float(_sklearn("metrics").silhouette_score(points, labels, metric="cosine"))


# ----------------------------------------------------------------------------------------------------------------
# Sentence -> patch similarity and gaze on the patch grid


def _load_if_path(image):
    return load_image(image) if isinstance(image, (str, Path)) else image


@torch.no_grad()
def similarity_maps_batch(
    model, processor, images: Sequence, sentence_lists: Sequence[Sequence[str]]
) -> list[np.ndarray]:
    """Batched `sentence_patch_similarity`: B images and their B sentence lists -> B arrays (S_b, h, w)."""
    if len(images) != len(sentence_lists):
        raise ValueError(f"{len(images)} images but {len(sentence_lists)} sentence lists")
    model.eval()
    parameter = next(model.parameters())
    batch = processor(images=[_load_if_path(image) for image in images], text=[list(s) for s in sentence_lists])
    image_features = model.get_image_features(pixel_values=batch["pixel_values"].to(parameter.device, parameter.dtype))
    if image_features.patch_embeds is None:
        raise ValueError(f"this vision tower has no patch grid: {model._no_patch_grid_reason}")
    text_inputs = {key: batch[key].to(parameter.device) for key in ("input_ids", "attention_mask", "token_type_ids")
                   if key in batch}
    text_features = model.get_text_features(**text_inputs)
    patches = F.normalize(image_features.patch_embeds.float(), dim=-1)  # (B, N, D)
    sentences = F.normalize(text_features.sentence_embeds.float(), dim=-1)  # (B, M, D)
    cosine = torch.einsum("bmd,bnd->bmn", sentences, patches).cpu().numpy()
    height, width = image_features.patch_grid
    return [cosine[b, : len(s)].reshape(len(s), height, width) for b, s in enumerate(sentence_lists)]


def sentence_patch_similarity(model, processor, image, sentences: Sequence[str]) -> np.ndarray:
    """Cosine similarity of each sentence's embedding to each patch embedding of the image.

    Args:
        model: an `EGMAModel`; processor: its `EGMAProcessor`.
        image: an image path (DICOM too) or anything the processor takes (PIL, array, tensor).
        sentences: S sentences, used as they are (not split again).
    Returns:
        (S, h, w) float array on the model's patch grid, which covers the processor's padded square.
    """
    if not sentences:
        raise ValueError("no sentences")
    return similarity_maps_batch(model, processor, [image], [list(sentences)])[0]


def gaze_on_patch_grid(heatmaps, image_size: tuple[int, int], square_size: int, grid: tuple[int, int]) -> np.ndarray:
    """Sentence heatmaps (S, h', w') covering an image of `image_size` (H, W) -> (S, *grid), through the image
    processor's geometry (longer side to `square_size`, centred on a square) and average-pooled to the patch grid:
    `EGMAImageProcessor.preprocess_gaze` for any grid."""
    maps = torch.as_tensor(np.asarray(heatmaps, np.float32))
    if maps.ndim != 3:
        raise ValueError(f"need (sentences, h, w) heatmaps, got shape {tuple(maps.shape)}")
    square = fit_to_square(maps, tuple(image_size), square_size)
    return F.adaptive_avg_pool2d(square, tuple(grid)).numpy()


def image_patch_mask(image_size: tuple[int, int], square_size: int, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the patches lying at least half on the image rather than on the padding of the square."""
    coverage = gaze_on_patch_grid(np.ones((1, *image_size), np.float32), image_size, square_size, grid)[0]
    return coverage >= 0.5


# ----------------------------------------------------------------------------------------------------------------
# Agreement with gaze


def gaze_agreement(similarity_maps, gaze_maps, threshold: float = 1 / 255, patch_mask=None) -> dict:
    """How well each sentence's similarity map matches its gaze map.

    Args:
        similarity_maps: (S, h, w) sentence->patch similarities.
        gaze_maps: (S, h, w) gaze on the same grid (any scale; each map is scaled to max 1 here).
        threshold: a patch is gaze-hot when its scaled gaze exceeds this (EGMA's MLCE label rule).
        patch_mask: optional (h, w) bool, the patches to compare (e.g. `image_patch_mask`); default all.
    Returns:
        {"correlation": [...], "auroc": [...], "scored": [sentence indices], "skipped": {reason: count}}: Pearson
        correlation and AUROC (similarity scoring hot vs not-hot patches) for each scored sentence. Skipped:
        "no_hot_patch" (no gaze above the threshold), "all_patches_hot" (nothing to tell apart),
        "constant_similarity" (correlation undefined) and "non_finite" (NaN or inf in either map).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1) (gaze maps are scaled to max 1), got {threshold!r}")
    similarity, gaze = _numpy(similarity_maps), _numpy(gaze_maps)
    if similarity.ndim != 3 or similarity.shape != gaze.shape:
        raise ValueError(f"need two (S, h, w) arrays of one shape, got {similarity.shape} and {gaze.shape}")
    mask = np.ones(similarity.shape[1:], bool) if patch_mask is None else np.asarray(patch_mask, bool)
    if mask.shape != similarity.shape[1:]:
        raise ValueError(f"patch_mask must be {similarity.shape[1:]}, got {mask.shape}")
    result = {"correlation": [], "auroc": [], "scored": [], "skipped": Counter()}
    for index, (sim, gz) in enumerate(zip(similarity, gaze)):
        if not (np.isfinite(sim).all() and np.isfinite(gz).all()):
            result["skipped"]["non_finite"] += 1  # a NaN gaze peak would otherwise read as "no hot patch"
            continue
        peak = gz.max()
        hot = gz / peak > threshold if peak > 0 else np.zeros_like(gz, bool)
        sim, gz, hot = sim[mask], gz[mask], hot[mask]
        if not hot.any():
            result["skipped"]["no_hot_patch"] += 1
        elif hot.all():
            result["skipped"]["all_patches_hot"] += 1
        elif np.ptp(sim) == 0:
            result["skipped"]["constant_similarity"] += 1
        else:
            result["correlation"].append(float(np.corrcoef(sim, gz)[0, 1]))
            result["auroc"].append(roc_auc(hot, sim))
            result["scored"].append(index)
    result["skipped"] = dict(result["skipped"])
    return result


def shuffled_gaze_pairs(
    image_keys: Sequence, sentence_counts: Sequence[int], seed: int = 0
) -> list[list[tuple[int, int]]]:
    """For the shuffled control: pair every sentence of every reading with one sentence of a reading of another
    image (readings of the same image share its findings, so their gaze is no control).

    Args:
        image_keys: one key per reading naming its image (e.g. the image path).
        sentence_counts: S_r per reading.
    Returns:
        For reading r, S_r pairs (other reading, its sentence index). Raises when all readings share one image.
    """
    keys = list(image_keys)
    if len(keys) != len(sentence_counts):
        raise ValueError(f"{len(keys)} image keys but {len(sentence_counts)} sentence counts")
    if len(set(keys)) < 2:
        raise ValueError("the shuffled control needs readings of at least two different images")
    rng = np.random.default_rng(seed)
    pairs = []
    for reading, count in enumerate(sentence_counts):
        chosen = []
        for _ in range(count):
            other = reading
            while keys[other] == keys[reading]:
                other = int(rng.integers(len(keys)))
            chosen.append((other, int(rng.integers(sentence_counts[other]))))
        pairs.append(chosen)
    return pairs


def _summary(values: list[float]) -> dict:
    array = np.asarray(values, np.float64)
    if len(array) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std()), "n": len(array)}


def _pooled(results: list[dict]) -> dict:
    correlation = [value for result in results for value in result["correlation"]]
    auroc = [value for result in results for value in result["auroc"]]
    skipped = Counter()
    for result in results:
        skipped.update(result["skipped"])
    return {"correlation": _summary(correlation), "auroc": _summary(auroc), "skipped": dict(skipped)}


def split_similarity_and_gaze(model, processor, dataset, batch_size: int = 16) -> list[dict]:
    """Similarity maps and gaze grids of every reading with gaze in `dataset` (rows of the `egma_hf.data`
    readers): [{"reading_id", "image", "similarity" (S, h, w), "gaze" (S, h, w), "patch_mask" (h, w)}]."""
    rows = [row for row in dataset if row["has_gaze"] and len(row["sentences"]) > 0]
    square = processor.image_processor.size
    readings = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [load_image(row["image"]) for row in chunk]
        maps = similarity_maps_batch(model, processor, images, [row["sentences"] for row in chunk])
        for row, image, similarity in zip(chunk, images, maps):
            grid = similarity.shape[1:]
            readings.append({
                "reading_id": row["reading_id"],
                "image": row["image"],
                "similarity": similarity,
                "gaze": gaze_on_patch_grid(row["sentence_heatmaps"], image.shape, square, grid),
                "patch_mask": image_patch_mask(image.shape, square, grid),
            })
    return readings


def test_split_agreement(model, processor, dataset, batch_size: int = 16, threshold: float | None = None,
                         seed: int = 0) -> dict:
    """Gaze agreement of `model` over every sentence of `dataset` (one split) whose reading has gaze.

    Only the patches on the image are compared (`image_patch_mask`): on the padding both gaze and any sensible
    similarity are trivially low. `threshold` defaults to `model.config.gaze_label_threshold`.

    Returns {"num_readings", "num_sentences", "threshold", "matched": {...}, "shuffled": {...}}; each of "matched"
    (each sentence against its own gaze) and "shuffled" (against another image's reading, `shuffled_gaze_pairs`)
    holds "correlation" and "auroc" as {"mean", "std", "n"} over scored sentences, and "skipped" counts.
    """
    threshold = model.config.gaze_label_threshold if threshold is None else threshold
    readings = split_similarity_and_gaze(model, processor, dataset, batch_size)
    if not readings:
        raise ValueError("no reading with gaze and sentences in this dataset")
    matched = [gaze_agreement(r["similarity"], r["gaze"], threshold, r["patch_mask"]) for r in readings]
    result = {
        "num_readings": len(readings),
        "num_sentences": int(sum(len(r["similarity"]) for r in readings)),
        "threshold": threshold,
        "matched": _pooled(matched),
        "shuffled": None,
    }
    if len({r["image"] for r in readings}) >= 2:
        pairs = shuffled_gaze_pairs([r["image"] for r in readings], [len(r["similarity"]) for r in readings], seed)
        shuffled = []
        for reading, reading_pairs in zip(readings, pairs):
            borrowed = np.stack([readings[other]["gaze"][sentence] for other, sentence in reading_pairs])
            shuffled.append(gaze_agreement(reading["similarity"], borrowed, threshold, reading["patch_mask"]))
        result["shuffled"] = _pooled(shuffled)
    return result


test_split_agreement.__test__ = False  # a library function whose name pytest would otherwise collect


# ----------------------------------------------------------------------------------------------------------------
# Several models on one split: `models` is {display name: (EGMAModel, EGMAProcessor)}


def embedding_clusters(models: dict, rows, projection: str = "tsne", batch_size: int = 16,
                       seed: int = 0) -> tuple[dict, dict, list[str]]:
    """Each model's silhouette (cosine, on the full embeddings) over the single-finding images of `rows`, and
    their 2-D projections for a scatter plot.

    Returns (report, {model: (N, 2) points}, the N class names); no silhouette and no points when there are fewer
    than three such images or two classes.
    """
    indices, classes = single_finding_labels(list(rows["labels"]))
    paths = [rows[i]["image"] for i in indices]
    report = {"num_images": len(indices), "num_images_in_split": len(rows), "metric": "cosine",
              "classes": {name: classes.count(name) for name in sorted(set(classes))},
              "rule": "images with exactly one finding, or none ('No Finding'); classes with >= 2 such images",
              "projection": projection, "silhouette": {}}
    points = {}
    if len(set(classes)) < 2 or len(indices) < 3:
        return report, points, classes
    for name, (model, processor) in models.items():
        embeds = embed_images(model, image_file_batches(processor.image_processor, paths, batch_size)).cpu()
        report["silhouette"][name] = silhouette(embeds, classes)
        points[name] = project_embeddings(embeds, projection, seed=seed)
    return report, points, classes


def pick_reading(rows, reading_id: str | None = None) -> dict:
    """The reading `reading_id`, or the first reading by id that has gaze and a finding (else the first with gaze);
    ValueError when there is none."""
    candidates = sorted((row for row in rows if row["has_gaze"] and row["sentences"]), key=lambda r: r["reading_id"])
    if reading_id is not None:
        for row in candidates:
            if row["reading_id"] == reading_id:
                return row
        raise ValueError(f"--reading_id {reading_id}: no reading with gaze of that id in the {len(rows)} rows "
                         "analysed")
    if not candidates:
        raise ValueError("no reading with gaze in this split")
    with_finding = [row for row in candidates if set(row["labels"]) - {NO_FINDING}]
    return (with_finding or candidates)[0]


def reading_agreement(models: dict, row: dict, threshold: float) -> tuple[dict, dict]:
    """One reading's gaze agreement (`gaze_agreement`, image patches only) for each model, and what
    `plot_similarity_vs_gaze` draws of it.

    Returns (summary {"reading_id", "image", "sentences", "labels", "per_model": {model: agreement}},
    figure {"square": the padded image, "similarity": {model: (S, h, w)}, "gaze": (S, h, w), "captions"}).
    Every model's processor shares the geometry in practice; the first one's square and grid are drawn.
    """
    image = load_image(row["image"])
    maps, captions, numbers = {}, {}, {}
    for name, (model, processor) in models.items():
        similarity = similarity_maps_batch(model, processor, [image], [row["sentences"]])[0]
        square_size, grid = processor.image_processor.size, similarity.shape[1:]
        gaze = gaze_on_patch_grid(row["sentence_heatmaps"], image.shape, square_size, grid)
        agreement = gaze_agreement(similarity, gaze, threshold, image_patch_mask(image.shape, square_size, grid))
        per_sentence = ["skipped"] * len(similarity)
        for index, correlation, auroc in zip(agreement["scored"], agreement["correlation"], agreement["auroc"]):
            per_sentence[index] = f"r={correlation:.2f} AUROC={auroc:.2f}"
        maps[name], captions[name], numbers[name] = similarity, per_sentence, agreement
    square_size = next(iter(models.values()))[1].image_processor.size
    square = fit_to_square(torch.from_numpy(image), image.shape, square_size).numpy()
    gaze = gaze_on_patch_grid(row["sentence_heatmaps"], image.shape, square_size, next(iter(maps.values())).shape[1:])
    summary = {"reading_id": row["reading_id"], "image": row["image"], "sentences": list(row["sentences"]),
               "labels": list(row["labels"]), "per_model": numbers}
    return summary, {"square": square, "similarity": maps, "gaze": gaze, "captions": captions}


__all__ = [
    "NO_FINDING",
    "SKLEARN_HINT",
    "embedding_clusters",
    "gaze_agreement",
    "gaze_on_patch_grid",
    "image_patch_mask",
    "pick_reading",
    "project_embeddings",
    "reading_agreement",
    "sentence_patch_similarity",
    "shuffled_gaze_pairs",
    "silhouette",
    "similarity_maps_batch",
    "single_finding_labels",
    "split_similarity_and_gaze",
    "test_split_agreement",
]
