"""EGMA configuration: a vision tower, a text tower, a shared projection and the loss recipe.

`EGMAConfig()` with no arguments reproduces the paper's model (Ma et al., NeurIPS 2024): a Swin-T image tower at
224 px (as `microsoft/swin-tiny-patch4-window7-224`), a BERT-base text tower with Bio_ClinicalBERT's vocabulary, a
512-d joint space and a learnable temperature initialised at 1/0.07 and clamped to 100.

The loss fields follow the paper; where the released EGMA code differs, the code's behaviour is one value away
(noted on each field). The method page in docs/ explains each term.
"""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Bio_ClinicalBERT is a BERT-base with a 28,996-token cased vocabulary; BertConfig supplies the rest.
BIO_CLINICAL_BERT_VOCAB_SIZE = 28996


@strict
class EGMAConfig(PreTrainedConfig):
    r"""
    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Any transformers vision backbone whose output is a patch grid (Swin, ViT, ConvNeXt, ...), or a
            `TimmWrapperConfig` for a timm model. A dict needs a `model_type`; defaults to Swin-T at 224 px.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            A BERT-family encoder config. Defaults to BERT-base with Bio_ClinicalBERT's vocabulary.
        projection_dim (`int`, defaults to 512):
            Size of the joint image-text space. Patches and sentences share it with the global embeddings.
        logit_scale_init_value (`float`, defaults to log(1/0.07)):
            Initial value of the log temperature; `exp(logit_scale)` multiplies every cosine similarity.
        logit_scale_max (`float`, defaults to log(100)):
            Upper clamp of `logit_scale` wherever it is used (scale never exceeds 100).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the classification head's initial weights.
        initializer_factor (`float`, defaults to 1.0):
            Scales the projections' initial standard deviation (width**-0.5), as in `CLIPConfig`.
        text_pooling_layers (`int`, defaults to 4):
            A sentence embedding averages the last this-many hidden layers of the text tower (MedCLIP/EGMA).
        text_pooling_mask_padding (`bool`, defaults to `True`):
            Average over real tokens only. `False` is the released code, which also averages padding tokens, so a
            sentence's embedding there depends on how long the other sentences in its batch are.
        global_loss_weight (`float`, defaults to 0.0):
            CLIP InfoNCE on the global embeddings (paper Eqs. 1-2). The paper's total loss is EGF + EGM only.
        mlce_loss_weight (`float`, defaults to 1.0):
            EGF's multi-label categorical cross-entropy of sentence-patch scores against gaze labels (Eq. 4).
        fine_grained_loss_weight (`float`, defaults to 1.0):
            EGF's FILIP-style fine-grained instance contrast (Eq. 5, the second half of Eq. 6).
        egm_loss_weight (`float`, defaults to 1.0):
            EGM, the gaze-weighted cross-modal mapping contrast (Eqs. 7-9).
        mlce_s2p_weight (`float`, defaults to 0.5):
            Weight of the sentence->patch MLCE; patch->sentence gets `1 - mlce_s2p_weight`. Released code: 0.8.
        mlce_reduction (`"batch"` or `"gaze_samples"`, defaults to `"batch"`):
            Divide the summed MLCE by the batch size (paper, Eq. 6) or by the number of samples with gaze (code).
        gaze_label_threshold (`float`, defaults to 1/255):
            A patch is a positive gaze label for a sentence when its pooled heatmap (scaled to max 1) exceeds this.
            The paper's rule is `> 0` on 8-bit heatmap images, where anything below one grey level is 0; 1/255 is
            that rule on float heatmaps, whose Gaussian tails would otherwise make nearly every patch positive.
        fine_grained_t2i_softmax_over (`"images"` or `"texts"`, defaults to `"images"`):
            The text->image fine-grained term normalises over images (paper) or over texts (released code).
        egm_threshold (`float`, defaults to 3/7):
            EGM sparsity: min-max normalised similarities below this are zeroed before mixing in gaze.
        egm_eps (`float`, defaults to 0.01):
            Added to every mapping weight before row normalisation, so no row is all zero.
        egm_text_weight (`float`, defaults to 0.5):
            Weight of the sentence-side EGM term; the patch side gets `1 - egm_text_weight`. Released code: 0.3.
        egm_binarize (`bool`, defaults to `False`):
            Replace the kept similarities by 1 (the paper's word "binarize"; the released code keeps the values).
        egm_normalize_mapped (`bool`, defaults to `True`):
            L2-normalise the mapped features before the EGM contrast, so it compares cosines like Eq. 2. The
            released code uses the raw weighted sums.
    """

    model_type = "egma"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="swin"),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="bert", init_kwargs={"vocab_size": BIO_CLINICAL_BERT_VOCAB_SIZE}
        ),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    logit_scale_init_value: float | int = math.log(1 / 0.07)
    logit_scale_max: float | int = math.log(100.0)
    initializer_range: float | int = 0.02
    initializer_factor: float | int = 1.0
    text_pooling_layers: int = 4
    text_pooling_mask_padding: bool = True

    global_loss_weight: float | int = 0.0
    mlce_loss_weight: float | int = 1.0
    fine_grained_loss_weight: float | int = 1.0
    egm_loss_weight: float | int = 1.0

    mlce_s2p_weight: float = 0.5
    mlce_reduction: Literal["batch", "gaze_samples"] = "batch"
    gaze_label_threshold: float | int = 1 / 255
    fine_grained_t2i_softmax_over: Literal["images", "texts"] = "images"
    egm_threshold: float | int = 3 / 7
    egm_eps: float | int = 0.01
    egm_text_weight: float | int = 0.5
    egm_binarize: bool = False
    egm_normalize_mapped: bool = True

    def validate_egma_fields(self):
        """Part of `@strict` validation: ranges that a type annotation cannot express."""
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if self.text_pooling_layers < 1:
            raise ValueError(f"text_pooling_layers must be >= 1, got {self.text_pooling_layers}")
        if not self.logit_scale_init_value <= self.logit_scale_max:
            raise ValueError(
                f"logit_scale_init_value ({self.logit_scale_init_value}) must not exceed logit_scale_max "
                f"({self.logit_scale_max})"
            )
        loss_weights = ("global_loss_weight", "mlce_loss_weight", "fine_grained_loss_weight", "egm_loss_weight")
        for name in loss_weights:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not any(getattr(self, name) > 0 for name in loss_weights):
            raise ValueError(f"at least one of {', '.join(loss_weights)} must be > 0")
        for name in ("mlce_s2p_weight", "egm_text_weight", "egm_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not (math.isfinite(self.egm_eps) and self.egm_eps > 0):
            raise ValueError(f"egm_eps must be > 0 so that no mapping row is all zero, got {self.egm_eps}")
        if not (math.isfinite(self.gaze_label_threshold) and self.gaze_label_threshold >= 0):
            raise ValueError(f"gaze_label_threshold must be >= 0, got {self.gaze_label_threshold}")


__all__ = ["EGMAConfig"]
