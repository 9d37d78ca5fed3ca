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

import numbers
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
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

ENSEMBLES = ("max", "mean")


def check_ensemble(ensemble) -> str:
    """`ensemble` itself, or a ValueError naming the argument and the accepted values."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
    return ensemble


def check_positive_int(value, name: str) -> int:
    """`value` when it is an int >= 1 (not a bool), else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def check_top_k(top_k) -> int | None:
    """None (every label) or an int >= 1; a top_k above the number of labels gives every label."""
    return None if top_k is None else check_positive_int(top_k, "top_k")


def check_hypothesis_template(template) -> str:
    """A template with exactly one `{}` field (where the label goes); anything else would give every label the
    same prompt (no field: uniform scores) or fail half-way (two fields, a named field, a bad format spec)."""
    if not isinstance(template, str):
        raise ValueError(f"hypothesis_template must be a string with one '{{}}' for the label, got "
                         f"{type(template).__name__} {template!r}")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        if len(fields) != 1 or fields[0] not in ("", "0"):
            raise ValueError(f"it has {len(fields)} replacement fields {fields}" if fields else "it has none")
        template.format("label")
    except (ValueError, IndexError, KeyError) as error:
        raise ValueError(f"hypothesis_template must contain exactly one '{{}}' where the label goes (e.g. "
                         f"'a chest X-ray with {{}}'), got {template!r}: {error}") from None
    return template


def candidate_label_prompts(candidate_labels, hypothesis_template=None) -> dict[str, list[str]]:
    """CLIP-style `candidate_labels` and `hypothesis_template` (default "{}") -> {label: [prompt]}."""
    if isinstance(candidate_labels, str) or not isinstance(candidate_labels, (Sequence, np.ndarray)):
        raise ValueError(f"candidate_labels must be a list of label strings, got {type(candidate_labels).__name__} "
                         f"{candidate_labels!r:.80}")
    candidate_labels = [str(label) if isinstance(label, str) else label for label in candidate_labels]
    if not candidate_labels:
        raise ValueError("candidate_labels is empty: pass at least one label")
    bad = [(index, label) for index, label in enumerate(candidate_labels)
           if not isinstance(label, str) or not label.strip()]
    if bad:
        raise ValueError(f"candidate_labels must be non-empty strings; bad entries (index, value): {bad[:5]}")
    stripped = [label.strip() for label in candidate_labels]
    duplicates = sorted({label for label in stripped if stripped.count(label) > 1})
    if duplicates:
        raise ValueError(f"candidate_labels must be distinct; repeated: {duplicates}")
    template = check_hypothesis_template("{}" if hypothesis_template is None else hypothesis_template)
    return {label: [template.format(label)] for label in candidate_labels}


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
        if not isinstance(raw_name, str):
            raise ValueError(f"class_prompts keys must be class names (strings), got {type(raw_name).__name__} "
                             f"{raw_name!r}")
        name = raw_name.strip()
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
    check_positive_int(batch_size, "batch_size")
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r:.80}")
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
        check_ensemble(self.ensemble)

    @property
    def multi_label(self) -> bool:
        return self.negative_embeds is not None

    @classmethod
    def from_prompts(cls, model, tokenizer, class_prompts, ensemble: str = "max", batch_size: int = 64):
        """Embed `class_prompts` (see the module docstring, or a built-in set name) with `model`, once."""
        check_ensemble(ensemble)
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
        width = self.prompt_embeds.shape[-1]
        if not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 2 or image_embeds.shape[1] != width:
            shape = tuple(image_embeds.shape) if hasattr(image_embeds, "shape") else type(image_embeds).__name__
            raise ValueError(f"image_embeds must be an (images, {width}) tensor, the model's embedding width, "
                             f"got {shape}")
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
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")  # NaN fails too
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
    if isinstance(images, (str, bytes, os.PathLike)) or not hasattr(images, "__len__"):
        raise ValueError(f"images must be a list of images, got {type(images).__name__} (for files, read each with "
                         "egma_hf.data.load_image)")
    if len(images) == 0:
        raise ValueError("images is empty")
    check_positive_int(batch_size, "batch_size")
    classifier = ZeroShotClassifier.from_prompts(model, processor.tokenizer, class_prompts, ensemble)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor.image_processor(images=list(images[start : start + batch_size]),
                                                 return_tensors="pt")["pixel_values"]
        chunks.append(classifier.probabilities(embed_pixel_values(model, pixel_values)))
    return classifier.class_names, torch.cat(chunks)
