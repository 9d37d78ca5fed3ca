"""Zero-shot evaluation on a gaze dataset: each finding scored by a positive vs a negative prompt set, AUROC per
finding (CheXzero-style), matched to the dataset's `labels` column by name.

A prompt set's embedding is the mean of its normalised prompt embeddings (open_clip's ensemble); an image's score
for a finding is cos(image, positive) - cos(image, negative), so the words a finding and its negation share cancel.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import roc_auc

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
def zero_shot_auroc(model, tokenizer, image_batches, labels: list[list[str]], class_prompts=None) -> dict:
    """Per-finding and mean AUROC of positive-vs-negative prompt scores.

    Args:
        model: an `EGMAModel` (put in eval mode here).
        tokenizer: the model's tokenizer.
        image_batches: iterable of `pixel_values` tensors (B, 3, S, S), in the order of `labels`.
        labels: positive label names per image.
        class_prompts: {finding: (positive prompts, negative prompts)}; findings with no positive or no negative
            image are skipped.
    Returns:
        {"auroc": {finding: value}, "mean_auroc": float, "num_images": int}
    """
    model.eval()
    class_prompts = class_prompts or DEFAULT_CLASS_PROMPTS
    device = next(model.parameters()).device
    image_embeds = torch.cat([
        F.normalize(model.get_image_features(pixel_values=pixels.to(device)).pooler_output.float(), dim=-1)
        for pixels in image_batches
    ])
    if len(image_embeds) != len(labels):
        raise ValueError(f"{len(image_embeds)} images but {len(labels)} label lists")

    def prompt_set(prompts):
        tokens = tokenizer(list(prompts), padding=True, return_tensors="pt").to(device)
        embeds = F.normalize(model.get_text_features(**tokens).pooler_output.float(), dim=-1)
        return F.normalize(embeds.mean(0), dim=-1)

    results = {}
    for name, (positive, negative) in class_prompts.items():
        truth = np.array([name in row for row in labels])
        if truth.all() or not truth.any():
            continue
        scores = image_embeds @ (prompt_set(positive) - prompt_set(negative))
        results[name] = roc_auc(truth, scores.cpu().numpy())
    if not results:
        raise ValueError("no finding has both positive and negative images")
    return {"auroc": results, "mean_auroc": float(np.mean(list(results.values()))), "num_images": len(labels)}
