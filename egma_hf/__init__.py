"""egma_hf: EGMA (Eye-gaze Guided Multi-modal Alignment, Ma et al., NeurIPS 2024) as a transformers model.

Importing the package registers EGMA with transformers' Auto classes, so `AutoModel`, `AutoConfig`,
`AutoProcessor`, `AutoImageProcessor` and `pipeline("zero-shot-image-classification", model=<dir>)` load saved
EGMA checkpoints without remote code, and registers the medical zero-shot pipeline,
`pipeline("egma-zero-shot-image-classification", model=<dir>)` (prompt ensembles, multi-label findings).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_egma import EGMAConfig
from .conversion import convert_medclip_state_dict, load_original_checkpoint
from .image_processing_egma import EGMAImageProcessor
from .losses import (
    EGMALoss,
    EGMALossOutput,
    clip_contrastive_loss,
    fine_grained_contrastive_loss,
    fine_grained_similarity,
    gaze_mapping_loss,
    gaze_mlce_loss,
    multilabel_categorical_crossentropy,
)
from .modeling_egma import (
    EGMAForImageClassification,
    EGMAImageFeatures,
    EGMAModel,
    EGMAOutput,
    EGMAPreTrainedModel,
    EGMATextFeatures,
)
from .pipeline_egma import EGMAZeroShotImageClassificationPipeline
from .processing_egma import EGMAProcessor, split_report_into_sentences
from .zero_shot import ZeroShotClassifier, zero_shot_classify

__version__ = "0.1.0.dev0"

AutoConfig.register(EGMAConfig.model_type, EGMAConfig, exist_ok=True)
AutoModel.register(EGMAConfig, EGMAModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(EGMAConfig, EGMAModel, exist_ok=True)
AutoModelForImageClassification.register(EGMAConfig, EGMAForImageClassification, exist_ok=True)
AutoImageProcessor.register(EGMAConfig, image_processor_classes={"torchvision": EGMAImageProcessor}, exist_ok=True)
AutoProcessor.register(EGMAConfig, EGMAProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    "egma-zero-shot-image-classification", pipeline_class=EGMAZeroShotImageClassificationPipeline,
    pt_model=AutoModel, type="multimodal",
)

# save_pretrained copies the code next to the weights, so trust_remote_code=True works without egma_hf installed.
EGMAConfig.register_for_auto_class()
EGMAModel.register_for_auto_class("AutoModel")
EGMAForImageClassification.register_for_auto_class("AutoModelForImageClassification")
EGMAImageProcessor.register_for_auto_class("AutoImageProcessor")
EGMAProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "EGMAConfig",
    "EGMAForImageClassification",
    "EGMAImageFeatures",
    "EGMAImageProcessor",
    "EGMALoss",
    "EGMALossOutput",
    "EGMAModel",
    "EGMAOutput",
    "EGMAPreTrainedModel",
    "EGMAProcessor",
    "EGMATextFeatures",
    "EGMAZeroShotImageClassificationPipeline",
    "ZeroShotClassifier",
    "clip_contrastive_loss",
    "convert_medclip_state_dict",
    "fine_grained_contrastive_loss",
    "fine_grained_similarity",
    "gaze_mapping_loss",
    "gaze_mlce_loss",
    "load_original_checkpoint",
    "multilabel_categorical_crossentropy",
    "split_report_into_sentences",
    "zero_shot_classify",
]
