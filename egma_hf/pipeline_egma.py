"""`pipeline("egma-zero-shot-image-classification")`: medical zero-shot classification with prompt ensembles.

    classifier = pipeline("egma-zero-shot-image-classification", model="path/or/hub-id")   # trust_remote_code=True
    classifier("cxr.png", class_prompts="chexpert_5x200")                       # built-in set, single-label softmax
    classifier(images, class_prompts={"Normal": [...], "Pneumonia": [...]}, ensemble="mean")
    classifier("cxr.png", class_prompts="chexpert_findings")                    # multi-label, (positive, negative)
    classifier("cxr.png", candidate_labels=["pneumonia", "no finding"], hypothesis_template="{}")  # CLIP-style

Each image returns `[{"label", "score"}]` sorted by score: softmax probabilities over classes for plain prompt
lists; for (positive, negative) prompt pairs, each finding's own probability of being present. Prompt embeddings
are computed once per class set and reused for every image and every later call with the same set.
The standard `pipeline("zero-shot-image-classification")` keeps working for single-label use.
"""

import json

import numpy as np
from transformers import Pipeline
from transformers.image_utils import load_image

from .zero_shot import (
    ZeroShotClassifier,
    candidate_label_prompts,
    check_ensemble,
    check_top_k,
    embed_pixel_values,
    resolve_class_prompts,
)

TASK = "egma-zero-shot-image-classification"
# What `config.custom_pipelines` holds on the Hub so that `pipeline(TASK, model=repo, trust_remote_code=True)`
# finds this class without egma_hf installed (egma_hf.hub sets it when it stages a folder for upload).
CUSTOM_PIPELINES = {TASK: {"impl": "pipeline_egma.EGMAZeroShotImageClassificationPipeline", "pt": ["AutoModel"],
                           "type": "multimodal"}}


class EGMAZeroShotImageClassificationPipeline(Pipeline):
    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        self._classifiers = {}  # (prompt set, ensemble) -> ZeroShotClassifier
        super().__init__(*args, **kwargs)

    def __call__(self, images, **kwargs):
        """images: a path or URL (PNG/JPG), a PIL image or an (H, W) / (H, W, C) array (read DICOM files with
        `egma_hf.data.load_image`), or a list of them. Keyword arguments: `class_prompts`
        (dict or built-in set name) or `candidate_labels` (+ `hypothesis_template`, default "{}"), `ensemble`
        ("max" or "mean"), `top_k` (an int >= 1; more than the number of classes gives them all), `timeout`."""
        if (kwargs.get("class_prompts") is None) == (kwargs.get("candidate_labels") is None):
            raise ValueError("pass exactly one of class_prompts (dict or built-in set name) and candidate_labels")
        if isinstance(images, (list, tuple)) and len(images) == 0:
            raise ValueError("images is empty: pass an image, or a non-empty list of them")
        return super().__call__(images, **kwargs)

    def _sanitize_parameters(self, class_prompts=None, candidate_labels=None, hypothesis_template=None,
                             ensemble=None, top_k=None, timeout=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)} for {TASK}")
        forward, postprocess = {}, {"top_k": check_top_k(top_k)} if top_k is not None else {}
        if class_prompts is not None or candidate_labels is not None:
            classifier = self.classifier_for(class_prompts, candidate_labels, hypothesis_template,
                                             "max" if ensemble is None else ensemble)
            forward["classifier"] = postprocess["classifier"] = classifier
        preprocess = {"timeout": timeout} if timeout is not None else {}
        return preprocess, forward, postprocess

    def classifier_for(self, class_prompts=None, candidate_labels=None, hypothesis_template=None,
                       ensemble="max") -> ZeroShotClassifier:
        """The (cached) classifier for a prompt set; exactly one of class_prompts and candidate_labels."""
        if (class_prompts is None) == (candidate_labels is None):
            raise ValueError("pass exactly one of class_prompts (dict or built-in set name) and candidate_labels")
        check_ensemble(ensemble)
        if candidate_labels is not None:
            class_prompts = candidate_label_prompts(candidate_labels, hypothesis_template)
        elif hypothesis_template is not None:
            raise ValueError("hypothesis_template applies to candidate_labels only; write class_prompts out in full")
        key = (json.dumps(resolve_class_prompts(class_prompts)), ensemble)  # validated, and in one canonical form
        if key not in self._classifiers:
            classifier = ZeroShotClassifier.from_prompts(self.model, self.tokenizer, class_prompts, ensemble)
            self._classifiers[key] = classifier.to(self.device)
        return self._classifiers[key]

    def preprocess(self, image, timeout=None):
        if not isinstance(image, np.ndarray):  # arrays (e.g. egma_hf.data.load_image of a DICOM) go in as they are
            image = load_image(image, timeout=timeout)
        return self.image_processor(images=[image], return_tensors="pt").to(self.dtype)

    def _forward(self, model_inputs, classifier):
        image_embeds = embed_pixel_values(self.model, model_inputs["pixel_values"])
        return {"probabilities": classifier.probabilities(image_embeds)}

    def postprocess(self, model_outputs, classifier, top_k=None):
        scores = model_outputs["probabilities"][0].tolist()
        ranked = sorted(zip(classifier.class_names, scores), key=lambda pair: -pair[1])
        return [{"label": label, "score": score} for label, score in ranked[:top_k]]

