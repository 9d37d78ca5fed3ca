"""Retrieval between image and text embeddings: the paper's Precision@K in both directions (Sec. 5.1) and Recall@K,
optionally with bootstrap intervals over the queries. `retrieval_metrics` is the one implementation: CheXpert 8x200
against the expert queries (`expert_query_retrieval`) and the ablation's image-report pairs both call it."""

import numpy as np
import torch

from ..prompts import CHEXPERT_8X200_QUERIES
from ..zero_shot import check_positive_int, embed_prompts
from .metrics import bootstrap_ci, precision_at_k, recall_at_k


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


def expert_query_retrieval(model, tokenizer, image_embeds, image_labels, ks=(1, 5, 10),
                           num_bootstrap: int | None = None, seed: int = 0) -> dict:
    """The paper's CheXpert 8x200 retrieval: every image against the 40 expert queries
    (`egma_hf.prompts.CHEXPERT_8X200_QUERIES`), relevant = same class. `retrieval_metrics` of the two."""
    texts = [(name, query) for name, queries in CHEXPERT_8X200_QUERIES.items() for query in queries]
    text_embeds = embed_prompts(model, tokenizer, [query for _, query in texts])
    text_labels = [name for name, _ in texts]
    return retrieval_metrics(image_embeds, image_labels, text_embeds, text_labels, ks, num_bootstrap, seed)
