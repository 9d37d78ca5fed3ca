"""Zero-shot evaluation and retrieval from EGMA's global embeddings. Classes and labels always meet by name.

- `zero_shot_auroc`: multi-label, each finding scored by a positive vs a negative prompt set (CheXzero-style):
  cos(image, positive) - cos(image, negative), so the words a finding and its negation share cancel.
- `zero_shot_classify`: single-label, each class a list of prompts, ensembled by the max over prompts (the
  paper's, after MedCLIP) or by the mean of normalised prompt embeddings (open_clip's).
- `retrieval_precision`: the paper's Precision@K in both directions (Sec. 5.1).
"""

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import precision_at_k, roc_auc

# (positive prompts, negative prompts) for the CheXpert-style findings of the synthetic corpus and MIMIC-EYE.
DEFAULT_CLASS_PROMPTS = {
    "Cardiomegaly": (["The heart is enlarged.", "Cardiomegaly is present."],
                     ["The heart size is normal.", "No cardiomegaly."]),
    "Edema": (["There is pulmonary edema.", "Interstitial edema is present."],
              ["No pulmonary edema.", "There is no edema."]),
    "Lung Opacity": (["There is a focal opacity in the lung.", "A lung opacity is seen."],
                     ["The lungs are clear.", "No focal opacity."]),
    "Pleural Effusion": (["There is a pleural effusion.", "A pleural effusion is present."],
                         ["No pleural effusion.", "The costophrenic angles are sharp."]),
    "Pneumothorax": (["There is a pneumothorax.", "A pneumothorax is seen."],
                     ["No pneumothorax.", "There is no pneumothorax."]),
}


@torch.no_grad()
def embed_images(model, image_batches) -> torch.Tensor:
    """Iterable of pixel_values (B, 3, S, S) -> (N, D) L2-normalised global image embeddings (model in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([F.normalize(model.get_image_features(pixel_values=pixels.to(device)).pooler_output.float(), dim=-1)
                      for pixels in image_batches])


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Texts (one sentence each) -> (T, D) L2-normalised global text embeddings (model in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=77,
                           return_tensors="pt").to(device)
        chunks.append(F.normalize(model.get_text_features(**tokens).pooler_output.float(), dim=-1))
    return torch.cat(chunks)


def _prompt_set(model, tokenizer, prompts) -> torch.Tensor:
    return F.normalize(embed_texts(model, tokenizer, prompts).mean(0), dim=-1)


def zero_shot_auroc(model, tokenizer, image_batches, labels: list[list[str]], class_prompts=None) -> dict:
    """Per-finding and mean AUROC of positive-vs-negative prompt scores.

    Args:
        model: an `EGMAModel`; tokenizer: its tokenizer.
        image_batches: iterable of `pixel_values` tensors (B, 3, S, S), in the order of `labels`.
        labels: positive label names per image.
        class_prompts: {finding: (positive prompts, negative prompts)}; findings with no positive or no negative
            image are skipped.
    Returns:
        {"auroc": {finding: value}, "mean_auroc": float, "num_images": int}
    """
    class_prompts = class_prompts or DEFAULT_CLASS_PROMPTS
    image_embeds = embed_images(model, image_batches)
    if len(image_embeds) != len(labels):
        raise ValueError(f"{len(image_embeds)} images but {len(labels)} label lists")
    results = {}
    for name, (positive, negative) in class_prompts.items():
        truth = np.array([name in row for row in labels])
        if truth.all() or not truth.any():
            continue
        direction = _prompt_set(model, tokenizer, positive) - _prompt_set(model, tokenizer, negative)
        results[name] = roc_auc(truth, (image_embeds @ direction).cpu().numpy())
    if not results:
        raise ValueError("no finding has both positive and negative images")
    return {"auroc": results, "mean_auroc": float(np.mean(list(results.values()))), "num_images": len(labels)}


def zero_shot_classify(image_embeds: torch.Tensor, class_embeds: dict[str, torch.Tensor], ensemble: str = "max"):
    """Single-label zero-shot scores.

    Args:
        image_embeds: (N, D) normalised image embeddings.
        class_embeds: {class name: (P, D) normalised prompt embeddings}.
        ensemble: "max" (a class scores its best prompt; the paper) or "mean" (cosine with the re-normalised mean
            prompt embedding; open_clip).
    Returns:
        (class names, (N, C) scores); predictions are `names[scores.argmax(1)]`, compared with labels by name.
    """
    if ensemble not in ("max", "mean"):
        raise ValueError(f"ensemble must be 'max' or 'mean', got {ensemble!r}")
    names = list(class_embeds)
    columns = []
    for name in names:
        prompts = class_embeds[name]
        if ensemble == "max":
            columns.append((image_embeds @ prompts.t()).amax(1))
        else:
            columns.append(image_embeds @ F.normalize(prompts.mean(0), dim=-1))
    return names, torch.stack(columns, 1)


def retrieval_precision(image_embeds, image_labels, text_embeds, text_labels, ks=(1, 5, 10)) -> dict:
    """Precision@K both ways (paper Sec. 5.1): an image's relevant texts are those of its class, and vice versa.

    Returns {"i2t": {k: P@k}, "t2i": {k: P@k}}; a k larger than the candidate count is skipped.
    """
    scores = (image_embeds @ text_embeds.t()).cpu().numpy()
    relevant = np.asarray(image_labels)[:, None] == np.asarray(text_labels)[None, :]
    return {
        "i2t": {k: precision_at_k(scores, relevant, k) for k in ks if k <= scores.shape[1]},
        "t2i": {k: precision_at_k(scores.T, relevant.T, k) for k in ks if k <= scores.shape[0]},
    }
