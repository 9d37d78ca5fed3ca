"""Zero-shot chest X-ray classification from prompt ensembles. Classes meet labels by name, never by position.

Class prompts are a dict keyed by class name, in one of two forms:

- single-label, `{class: [prompt, ...]}`: a class's logit is `logit_scale * cos(image, prompts)` ensembled by the
  max over its prompts (`ensemble="max"`, the paper's, after MedCLIP) or by the cosine with the re-normalised mean
  prompt embedding (`"mean"`, open_clip's); probabilities are a softmax over the classes.
- multi-label, `{finding: ([positive prompt, ...], [negative prompt, ...])}` (or `{"positive": [...],
  "negative": [...]}`): each finding is scored on its own, CheXzero-style, by the softmax over the pair (positive
  logit, negative logit). That softmax equals `sigmoid(positive logit - negative logit)`, which is what is computed.

`ZeroShotClassifier.from_prompts` embeds every distinct prompt once; scoring images afterwards is one matrix product.
Classes are stored in sorted-name order, so no result depends on the order the classes were given, even on ties.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .prompts import (
    CHEXPERT_8X200_QUERIES,
    FINDING_PROMPT_PAIRS,
    chexpert_5x200_prompts,
    rsna_prompts,
    siim_acr_prompts,
)

BUILTIN_PROMPT_SETS = {
    "chexpert_5x200": chexpert_5x200_prompts,
    "chexpert_8x200": lambda: dict(CHEXPERT_8X200_QUERIES),
    "rsna": rsna_prompts,
    "rsna_released_code": lambda: rsna_prompts("released_code"),
    "siim_acr": siim_acr_prompts,
    "chexpert_findings": lambda: dict(FINDING_PROMPT_PAIRS),
}


def resolve_class_prompts(class_prompts) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
    """Validate class prompts (a dict, or the name of a built-in set in `BUILTIN_PROMPT_SETS`).

    Returns ({class: positive prompts}, {class: negative prompts} for multi-label sets, else None), keyed by the
    stripped class names in sorted order.
    """
    if isinstance(class_prompts, str):
        if class_prompts not in BUILTIN_PROMPT_SETS:
            raise ValueError(f"unknown prompt set {class_prompts!r}; built-in sets: {sorted(BUILTIN_PROMPT_SETS)}")
        class_prompts = BUILTIN_PROMPT_SETS[class_prompts]()
    if not isinstance(class_prompts, Mapping) or not class_prompts:
        raise ValueError("class_prompts must be a non-empty dict {class name: prompts} or a built-in set name, got "
                         f"{type(class_prompts).__name__} {class_prompts!r:.80}")
    positives, negatives = {}, {}
    for raw_name, value in class_prompts.items():
        name = str(raw_name).strip()
        if not name:
            raise ValueError(f"class name {raw_name!r} is empty")
        if name in positives:
            raise ValueError(f"duplicate class name {name!r} in class_prompts")
        if isinstance(value, Mapping):
            if set(value) != {"positive", "negative"}:
                raise ValueError(f"class {name!r}: a prompt dict needs exactly the keys 'positive' and 'negative', "
                                 f"got {sorted(value)}")
            value = (value["positive"], value["negative"])
        is_pair = (isinstance(value, (tuple, list)) and len(value) == 2
                   and all(isinstance(v, Sequence) and not isinstance(v, str) for v in value))  # JSON gives lists
        if is_pair:
            positives[name] = _prompt_list(name, value[0], "positive prompts")
            negatives[name] = _prompt_list(name, value[1], "negative prompts")
        else:
            positives[name] = _prompt_list(name, value, "prompts")
    if negatives and len(negatives) != len(positives):
        single = sorted(set(positives) - set(negatives))
        raise ValueError(f"classes {single} have a plain prompt list while others have (positive, negative) pairs: "
                         "use one form for every class")
    order = sorted(positives)
    return ({name: positives[name] for name in order},
            {name: negatives[name] for name in order} if negatives else None)


def _prompt_list(name: str, value, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"class {name!r}: {what} must be a list of strings, got {type(value).__name__}")
    bad = [p for p in value if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"class {name!r}: {what} must be non-empty strings, got {bad[:3]}")
    if not value:
        raise ValueError(f"class {name!r} has no {what}")
    return list(value)


@torch.no_grad()
def embed_prompts(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 77) -> torch.Tensor:
    """Texts (one sentence each) -> (T, D) L2-normalised global text embeddings; puts the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt").to(device)
        chunks.append(F.normalize(model.get_text_features(**tokens).pooler_output.float(), dim=-1))
    return torch.cat(chunks)


@torch.no_grad()
def embed_pixel_values(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, D) L2-normalised global image embeddings (float32)."""
    parameter = next(model.parameters())
    features = model.get_image_features(pixel_values=pixel_values.to(parameter.device, parameter.dtype))
    return F.normalize(features.pooler_output.float(), dim=-1)


def _stack_padded(groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(P_c, D)] -> (C, P_max, D) zero-padded and a (C, P_max) mask of real prompts."""
    width = max(len(group) for group in groups)
    stacked = groups[0].new_zeros(len(groups), width, groups[0].shape[-1])
    mask = torch.zeros(len(groups), width, dtype=torch.bool, device=groups[0].device)
    for index, group in enumerate(groups):
        stacked[index, : len(group)] = group
        mask[index, : len(group)] = True
    return stacked, mask


def _ensemble(image_embeds: torch.Tensor, prompt_embeds: torch.Tensor, mask: torch.Tensor, ensemble: str):
    """(N, D) x (C, P, D) prompts -> (N, C) cosine per class."""
    if ensemble == "max":
        cosines = torch.einsum("nd,cpd->ncp", image_embeds, prompt_embeds)
        return cosines.masked_fill(~mask, float("-inf")).amax(-1)
    means = (prompt_embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return image_embeds @ F.normalize(means, dim=-1).t()


@dataclass
class ZeroShotClassifier:
    """Embedded class prompts and the rule that turns image embeddings into class scores.

    Attributes:
        class_names: C names in sorted order; every (N, C) output has its columns in this order.
        prompt_embeds, prompt_mask: (C, P, D) normalised (positive) prompt embeddings, zero-padded, and (C, P) mask.
        negative_embeds, negative_mask: the same for negative prompts in multi-label mode, else None.
        logit_scale: the model's temperature, exp(logit_scale) clamped as in training.
        ensemble: "max" or "mean".
    """

    class_names: list[str]
    prompt_embeds: torch.Tensor
    prompt_mask: torch.Tensor
    logit_scale: float
    ensemble: str = "max"
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.ensemble not in ("max", "mean"):
            raise ValueError(f"ensemble must be 'max' or 'mean', got {self.ensemble!r}")

    @property
    def multi_label(self) -> bool:
        return self.negative_embeds is not None

    @classmethod
    def from_prompts(cls, model, tokenizer, class_prompts, ensemble: str = "max", batch_size: int = 64):
        """Embed `class_prompts` (see the module docstring, or a built-in set name) with `model`, once."""
        positives, negatives = resolve_class_prompts(class_prompts)
        groups = list(positives.values()) + (list(negatives.values()) if negatives else [])
        distinct = list(dict.fromkeys(prompt for group in groups for prompt in group))
        embeds = embed_prompts(model, tokenizer, distinct, batch_size=batch_size)
        row = {prompt: index for index, prompt in enumerate(distinct)}

        def padded(prompt_sets):
            return _stack_padded([embeds[[row[p] for p in prompts]] for prompts in prompt_sets.values()])

        prompt_embeds, prompt_mask = padded(positives)
        negative_embeds, negative_mask = padded(negatives) if negatives else (None, None)
        scale = model.logit_scale.detach().float().clamp(max=model.config.logit_scale_max).exp().item()
        return cls(list(positives), prompt_embeds, prompt_mask, scale, ensemble, negative_embeds, negative_mask)

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(N, D) normalised image embeddings -> (N, C): class logits, or positive-minus-negative logits."""
        image_embeds = image_embeds.to(self.prompt_embeds.device, self.prompt_embeds.dtype)
        logits = self.logit_scale * _ensemble(image_embeds, self.prompt_embeds, self.prompt_mask, self.ensemble)
        if self.multi_label:
            logits = logits - self.logit_scale * _ensemble(image_embeds, self.negative_embeds, self.negative_mask,
                                                           self.ensemble)
        return logits

    def probabilities(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(N, C): softmax over classes (single-label) or each finding's probability of being present."""
        logits = self.logits(image_embeds)
        return torch.sigmoid(logits) if self.multi_label else logits.softmax(-1)

    def predict(self, image_embeds: torch.Tensor, threshold: float = 0.5) -> list:
        """Single-label: one class name per image (ties go to the first name in sorted order).
        Multi-label: per image, the findings whose probability is at least `threshold`."""
        if self.multi_label:
            present = self.probabilities(image_embeds) >= threshold
            return [[name for name, on in zip(self.class_names, row) if on] for row in present.tolist()]
        return [self.class_names[index] for index in self.logits(image_embeds).argmax(-1).tolist()]

    def to(self, device) -> "ZeroShotClassifier":
        moved = {name: getattr(self, name) for name in ("prompt_embeds", "prompt_mask", "negative_embeds",
                                                        "negative_mask")}
        moved = {name: value.to(device) if value is not None else None for name, value in moved.items()}
        return ZeroShotClassifier(self.class_names, logit_scale=self.logit_scale, ensemble=self.ensemble, **moved)


def zero_shot_classify(model, processor, images, class_prompts, ensemble: str = "max", batch_size: int = 16):
    """Plain-function form of the pipeline.

    Args:
        model: an `EGMAModel`; processor: its `EGMAProcessor`.
        images: a list of PIL images or (H, W) / (H, W, C) arrays (read files with `egma_hf.data.load_image`).
        class_prompts: as in `ZeroShotClassifier.from_prompts`.
    Returns:
        (class names in sorted order, (N, C) probabilities).
    """
    if len(images) == 0:
        raise ValueError("images is empty")
    classifier = ZeroShotClassifier.from_prompts(model, processor.tokenizer, class_prompts, ensemble)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor.image_processor(images=list(images[start : start + batch_size]),
                                                 return_tensors="pt")["pixel_values"]
        chunks.append(classifier.probabilities(embed_pixel_values(model, pixel_values)))
    return classifier.class_names, torch.cat(chunks)
