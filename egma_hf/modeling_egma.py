"""EGMA model: a CLIP-shaped dual encoder whose patches and sentences are aligned with radiologists' eye gaze.

Batch layout
------------
Texts come in one of two shapes:

- `input_ids` (T, L): T texts of one sentence each, like CLIP (zero-shot prompts, the transformers pipeline).
- `input_ids` (T, M, L): T reports, each padded to M sentence slots. A slot whose `attention_mask` row is all zero is
  padding; every report needs at least one real sentence. `EGMAProcessor` produces this layout.

Each sentence is encoded on its own (padding slots are never run through the text tower). A report's global
embedding is the mean of its projected sentence embeddings, so a one-sentence report and the same sentence as a
prompt get the same embedding.

Gaze is optional: `gaze_heatmaps` (B, M, h, w) holds one heatmap per sentence slot, pooled to the vision tower's
patch grid (h * w = number of patches; `EGMAProcessor` does the pooling), and `has_gaze` (B,) marks the samples
that have gaze at all. Heatmaps of samples without gaze and of padding slots are ignored.
"""

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_egma import EGMAConfig
from .losses import EGMALoss
from .pipeline_egma import EGMAZeroShotImageClassificationPipeline

AUTO_MAP = {
    "AutoConfig": "configuration_egma.EGMAConfig",
    "AutoModel": "modeling_egma.EGMAModel",
    "AutoModelForZeroShotImageClassification": "modeling_egma.EGMAModel",
}


@dataclass
class EGMAImageFeatures(BaseModelOutputWithPooling):
    r"""
    pooler_output (`torch.Tensor` of shape `(batch_size, projection_dim)`):
        Projected global image embedding (not normalised), as `CLIPModel.get_image_features`.
    patch_embeds (`torch.Tensor` of shape `(batch_size, num_patches, projection_dim)`):
        Projected patch embeddings (not normalised), row-major over the patch grid. None when the vision tower's
        output has no patch grid that can be derived.
    patch_grid (`tuple[int, int]`):
        (height, width) of the patch grid.
    """

    patch_embeds: torch.Tensor | None = None
    patch_grid: tuple[int, int] | None = None


@dataclass
class EGMATextFeatures(BaseModelOutputWithPooling):
    r"""
    pooler_output (`torch.Tensor` of shape `(num_texts, projection_dim)`):
        Projected global text embedding (not normalised): the mean of each report's sentence embeddings.
    last_hidden_state (`torch.Tensor` of shape `(num_sentences, seq_len, hidden_size)`):
        Text tower output for the real sentences only, in row-major (text, slot) order.
    sentence_embeds (`torch.Tensor` of shape `(num_texts, max_sentences, projection_dim)`):
        Projected sentence embeddings (not normalised); zeros in padding slots.
    sentence_mask (`torch.BoolTensor` of shape `(num_texts, max_sentences)`):
        True for real sentences.
    """

    sentence_embeds: torch.Tensor | None = None
    sentence_mask: torch.Tensor | None = None


@dataclass
class EGMAOutput(ModelOutput):
    r"""
    loss (`torch.Tensor`, returned when `return_loss=True`): weighted sum of the loss terms below.
    global_loss, mlce_loss, fine_grained_loss, egm_loss (`torch.Tensor`): each term, None when switched off.
    logits_per_image (`torch.Tensor` of shape `(num_images, num_texts)`): scaled cosine of global embeddings.
    logits_per_text (`torch.Tensor` of shape `(num_texts, num_images)`): its transpose.
    image_embeds (`torch.Tensor` of shape `(num_images, projection_dim)`): normalised global image embeddings.
    text_embeds (`torch.Tensor` of shape `(num_texts, projection_dim)`): normalised global text embeddings.
    patch_embeds (`torch.Tensor` of shape `(num_images, num_patches, projection_dim)`): normalised patches.
    sentence_embeds (`torch.Tensor` of shape `(num_texts, max_sentences, projection_dim)`): normalised sentences.
    sentence_mask (`torch.BoolTensor` of shape `(num_texts, max_sentences)`): real sentence slots.
    text_model_output (`EGMATextFeatures`), vision_model_output (`EGMAImageFeatures`): tower outputs.
    """

    loss: torch.Tensor | None = None
    global_loss: torch.Tensor | None = None
    mlce_loss: torch.Tensor | None = None
    fine_grained_loss: torch.Tensor | None = None
    egm_loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    patch_embeds: torch.Tensor | None = None
    sentence_embeds: torch.Tensor | None = None
    sentence_mask: torch.Tensor | None = None
    text_model_output: EGMATextFeatures | None = None
    vision_model_output: EGMAImageFeatures | None = None

    def to_tuple(self):
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class _Sentences:
    """Text inputs in (T, M, L) layout and where their real sentences are: `index` is (text ids, slot ids), (S,)
    each."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    mask: torch.Tensor
    index: tuple[torch.Tensor, torch.Tensor]


def _build_text_tower(text_config) -> PreTrainedModel:
    """The text tower without BERT's pooler: EGMA pools hidden states itself, and unused weights break DDP."""
    try:
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option
        return AutoModel.from_config(text_config)


def _vision_width(vision_model: nn.Module, vision_config) -> int:
    """Channel width of the vision tower's patch tokens and pooled output."""
    timm_model = getattr(vision_model, "timm_model", None)
    if timm_model is not None:
        return timm_model.num_features
    hidden_sizes = getattr(vision_config, "hidden_sizes", None)  # ConvNeXt, ResNet
    if hidden_sizes:
        return hidden_sizes[-1]
    return vision_config.hidden_size


TOWER_KWARGS = frozenset(TransformersKwargs.__annotations__)  # what forward passes on to the towers


def _check_kwargs(kwargs: dict, where: str) -> None:
    """Only transformers' own forward keywords (`output_hidden_states`, `output_attentions`, ...) pass through."""
    if kwargs.keys() <= TOWER_KWARGS:
        return
    unknown = sorted(set(kwargs) - TOWER_KWARGS)
    if unknown:
        raise TypeError(f"{where} got unexpected keyword argument(s) {unknown}")


def _output_flag(name: str, value, *configs):
    """An explicit `output_hidden_states` / `output_attentions` value, else the first of `configs` that sets it."""
    if value is not None:
        return value
    return next((flag for config in configs if (flag := getattr(config, name, None))), None)


def _requested_hidden_states(hidden_states: tuple, request) -> tuple | None:
    """Keep what `output_hidden_states` asked for: all (True), none (False/None), or the listed indices."""
    if not request:
        return None
    if request is True:
        return hidden_states
    selected = [request] if isinstance(request, int) else list(request)
    count = len(hidden_states)
    kept = {index % count for index in selected if -count <= index < count}
    return tuple(state if index in kept else None for index, state in enumerate(hidden_states))


def tower_layers(tower: nn.Module) -> tuple[str, nn.Module]:
    """The (dotted name, ModuleList or Sequential) of a tower's layer stack: BERT/Dinov2 `encoder.layer`, Swin/CLIP
    `encoder.layers`, ConvNeXt `encoder.stages`, timm `blocks` / `stages` / `layers`; the outermost such list."""
    found = [(name, module) for name, module in tower.named_modules()
             if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0
             and name.rsplit(".", 1)[-1] in ("layer", "layers", "stages", "blocks")]
    if not found:
        raise ValueError(f"cannot find the layer list of the {type(tower).__name__} tower (no encoder.layer, "
                         "encoder.layers, encoder.stages or blocks)")
    # the outermost list: Swin's stages hold their own blocks lists
    return min(found, key=lambda item: item[0].count("."))


def lock_tower(tower: nn.Module, unlocked_layers: int = 0) -> None:
    """Freeze `tower` except its last `unlocked_layers` layers (and, when any is unlocked, the modules after the
    layer stack such as a final LayerNorm or pooler). ValueError naming `unlocked_layers` when it is out of range."""
    name, layers = tower_layers(tower)
    if isinstance(unlocked_layers, bool) or not isinstance(unlocked_layers, int) \
            or not 0 <= unlocked_layers <= len(layers):
        raise ValueError(f"unlocked_layers must be an integer in [0, {len(layers)}] (the {type(tower).__name__} "
                         f"tower has {len(layers)} layers in {name}), got {unlocked_layers!r}")
    tower.requires_grad_(False)
    if unlocked_layers == 0:
        return
    for layer in layers[len(layers) - unlocked_layers:]:
        layer.requires_grad_(True)
    # What runs after the stack trains too (final norms, poolers, a timm head's norm): at each level on the way
    # down to the stack, the children registered after the one that holds it. Embeddings come before and stay.
    parent = tower
    for part in name.split("."):
        children = list(parent.named_children())
        position = [child_name for child_name, _ in children].index(part)
        for _, child in children[position + 1:]:
            child.requires_grad_(True)
        parent = getattr(parent, part)


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit vectors along the last dim, computed in float32: all-zero rows (padding sentence slots) stay zero
    instead of becoming 0/0 in float16, where F.normalize's eps of 1e-12 underflows to 0."""
    x32 = x.float()
    return (x32 / x32.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(x.dtype)


def egma_checkpoint_problem(pretrained_model_name_or_path, **kwargs) -> str | None:
    """Why a folder or Hub id is not an EGMA checkpoint (another model type, unreadable weights), or None; a folder
    without a config is left to the caller. `kwargs`: `from_pretrained`'s (the Hub options among them are used)."""
    options = {k: kwargs[k] for k in ("cache_dir", "force_download", "proxies", "local_files_only", "token",
                                      "revision", "subfolder") if k in kwargs}
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **options)
    except OSError:
        return None  # no config: transformers' own error says what is missing
    model_type = config_dict.get("model_type")
    if model_type != "egma":
        return (
            f"{pretrained_model_name_or_path} holds a {model_type!r} model, not an EGMA checkpoint (its config.json "
            f"needs model_type 'egma'). To build EGMA from pretrained towers use "
            f"EGMAModel.from_vision_text_pretrained(vision, text); original EGMA/MedCLIP weights convert with "
            f"egma_hf.load_original_checkpoint."
        )
    folder = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
    if folder.is_dir():
        for weights in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(weights, "pt"):
                    pass
            except (SafetensorError, OSError) as error:
                return f"{weights} is not a readable safetensors file ({error}); the copy may be truncated"
    return None


class EGMAPreTrainedModel(PreTrainedModel):
    config: EGMAConfig
    config_class = EGMAConfig
    base_model_prefix = "egma"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As transformers', but a folder of another model type (BERT, CLIP, ...) or a truncated weights file is
        an error naming it (transformers only logs a warning and returns randomly initialised weights)."""
        if kwargs.get("config") is None and not kwargs.get("gguf_file"):
            problem = egma_checkpoint_problem(pretrained_model_name_or_path, **kwargs)
            if problem:
                raise ValueError(problem)
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise OSError(f"cannot read the weights of {pretrained_model_name_or_path}: {error}") from error
        return (model, info) if wants_info else model

    def enable_input_require_grads(self):
        """As transformers' version, but tolerant of towers whose patch embedding returns a tuple (Swin)."""

        def make_output_require_grad(module, inputs, output):
            (output[0] if isinstance(output, tuple) else output).requires_grad_(True)

        hooks = []
        for tower in (getattr(self, "text_model", None), getattr(self, "vision_model", None)):
            embeddings = tower.get_input_embeddings() if tower is not None else None
            if embeddings is not None:
                hooks.append(embeddings.register_forward_hook(make_output_require_grad))
        self._require_grads_hooks = hooks

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        """transformers' switch reaches layers with a `gradient_checkpointing` flag; a timm tower has its own."""
        timm_model = getattr(getattr(self, "vision_model", None), "timm_model", None)
        if timm_model is not None and hasattr(timm_model, "set_grad_checkpointing"):
            timm_model.set_grad_checkpointing(enable)
        super()._set_gradient_checkpointing(enable, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, EGMAForImageClassification):
            init.normal_(module.classifier.weight, std=self.config.initializer_range)
            init.zeros_(module.classifier.bias)
        if isinstance(module, EGMAModel):
            factor = self.config.initializer_factor
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class EGMAModel(EGMAPreTrainedModel):
    """EGMA dual encoder. `get_image_features` / `get_text_features` / `forward` follow `CLIPModel`."""

    def __init__(self, config: EGMAConfig, vision_model: PreTrainedModel | None = None, text_model=None):
        super().__init__(config)
        self.vision_model = vision_model if vision_model is not None else AutoModel.from_config(config.vision_config)
        self.text_model = text_model if text_model is not None else _build_text_tower(config.text_config)
        self.vision_model.config = config.vision_config
        self.text_model.config = config.text_config

        self.vision_embed_dim = _vision_width(self.vision_model, config.vision_config)
        self.text_embed_dim = config.text_config.hidden_size
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.loss_function = EGMALoss(config)
        self.post_init()

    @classmethod
    def from_vision_text_pretrained(
        cls, vision_model_name_or_path: str, text_model_name_or_path: str, **config_kwargs
    ) -> "EGMAModel":
        """Build EGMA from two separately pretrained towers (local dirs or Hub ids), e.g. a Swin-T and
        Bio_ClinicalBERT. The projections and the temperature are newly initialised; `config_kwargs` go to
        `EGMAConfig` (loss recipe, `projection_dim`, ...)."""
        vision_model = AutoModel.from_pretrained(vision_model_name_or_path)
        try:
            text_model = AutoModel.from_pretrained(text_model_name_or_path, add_pooling_layer=False)
        except TypeError:
            text_model = AutoModel.from_pretrained(text_model_name_or_path)
        config = EGMAConfig(vision_config=vision_model.config, text_config=text_model.config, **config_kwargs)
        model = cls(config, vision_model=vision_model, text_model=text_model)
        # post_init only initialises what is not loaded; make sure the new heads start from EGMA's init.
        model._init_weights(model)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Both Auto keys, so the zero-shot pipeline and AutoModel load it with trust_remote_code=True.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        super().save_pretrained(save_directory, *args, **kwargs)
        # The medical zero-shot pipeline's code travels with every checkpoint; whether `pipeline()` offers it to
        # remote-code users depends on `config.custom_pipelines` (egma_hf.hub sets it when staging an upload).
        custom_object_save(EGMAZeroShotImageClassificationPipeline, save_directory)

    # ----------------------------------------------------------------------------------------------------------
    # Image side

    def _patch_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor | None, tuple[int, int] | None, str]:
        """Vision tower output -> (B, N, C) patch tokens and their (h, w) grid, or (None, None, reason)."""
        if hidden.ndim == 4:
            timm_model = getattr(self.vision_model, "timm_model", None)
            if getattr(timm_model, "output_fmt", "NCHW") == "NHWC":
                hidden = hidden.permute(0, 3, 1, 2)
            height, width = hidden.shape[-2:]
            return hidden.flatten(2).transpose(1, 2), (height, width), ""
        if hidden.ndim != 3:
            return None, None, f"vision tower output has shape {tuple(hidden.shape)}, expected 3-D tokens or 4-D maps"
        num_tokens = hidden.shape[1]
        timm_model = getattr(self.vision_model, "timm_model", None)
        if timm_model is not None:
            prefixes = [getattr(timm_model, "num_prefix_tokens", 0)]
        else:  # class token and register tokens come first in transformers' ViT-style towers
            registers = getattr(self.config.vision_config, "num_register_tokens", 0) or 0
            prefixes = [0, 1 + registers]
        for prefix in prefixes:
            side = math.isqrt(num_tokens - prefix)
            if side * side == num_tokens - prefix:
                return hidden[:, prefix:], (side, side), ""
        return None, None, f"{num_tokens} vision tokens do not form a square patch grid"

    def lock_image_tower(self, unlocked_layers: int = 0) -> None:
        """LiT-style: freeze the image tower except its last `unlocked_layers` layers/stages (open_clip's
        `lock_image_tower`); the projections stay trainable. A fully frozen tower runs without a backward graph."""
        lock_tower(self.vision_model, unlocked_layers)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        """Freeze the text tower except its last `unlocked_layers` encoder layers (open_clip's `lock_text_tower`);
        the projections stay trainable. A fully frozen tower runs without a backward graph."""
        lock_tower(self.text_model, unlocked_layers)

    @staticmethod
    def _tower_grad(tower: nn.Module, inputs: torch.Tensor):
        """No backward graph for a tower none of whose parameters trains, unless its input needs gradients
        (saliency on pixels, an input-embedding hook)."""
        frozen = not inputs.requires_grad and not any(p.requires_grad for p in tower.parameters())
        return torch.no_grad() if frozen else contextlib.nullcontext()

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> EGMAImageFeatures:
        """pixel_values (B, 3, H, W) -> `EGMAImageFeatures` with the projected global embedding in `.pooler_output`.

        `output_hidden_states` / `output_attentions` / `return_dict` work as in `CLIPModel.get_image_features`."""
        _check_kwargs(kwargs, "get_image_features")
        if pixel_values is None:
            raise ValueError("pixel_values is required (a float tensor of shape (batch, 3, height, width))")
        if pixel_values.ndim != 4 or pixel_values.shape[0] == 0 or pixel_values.shape[-1] == 0:
            raise ValueError("pixel_values must have shape (batch>0, channels, height, width), got "
                             f"{tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise TypeError("pixel_values must be a float tensor (the image processor's output), got "
                            f"{pixel_values.dtype}")
        with self._tower_grad(self.vision_model, pixel_values):
            outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        patches, grid, self._no_patch_grid_reason = self._patch_tokens(outputs.last_hidden_state)
        pooled = outputs.pooler_output
        if pooled is None:
            if patches is None:
                raise ValueError(f"cannot pool the vision tower's output: {self._no_patch_grid_reason}")
            pooled = patches.mean(1)
        pooled = pooled.flatten(1)  # some towers pool to (B, C, 1, 1)
        return EGMAImageFeatures(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.visual_projection(pooled),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
            patch_embeds=self.visual_projection(patches) if patches is not None else None,
            patch_grid=grid,
        )

    # ----------------------------------------------------------------------------------------------------------
    # Text side

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EGMATextFeatures:
        """input_ids (T, L) prompts or (T, M, L) reports -> `EGMATextFeatures`; `.pooler_output` is (T, D).

        `output_hidden_states` / `output_attentions` / `return_dict` work as in `CLIPModel.get_text_features`; hidden
        states and attentions are those of the real sentences, (S, L, H) each."""
        _check_kwargs(kwargs, "get_text_features")
        return self._encode_sentences(self._find_sentences(input_ids, attention_mask, token_type_ids), **kwargs)

    def _find_sentences(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> _Sentences:
        """Check the text inputs and locate their real sentences: the text path's only reads back to the host."""
        if input_ids is None:
            raise ValueError("input_ids is required: (texts, seq_len) or (reports, sentences, seq_len)")
        if input_ids.ndim == 2:
            input_ids = input_ids[:, None]
            attention_mask = attention_mask[:, None] if attention_mask is not None else None
            token_type_ids = token_type_ids[:, None] if token_type_ids is not None else None
        if input_ids.ndim != 3 or input_ids.shape[0] == 0 or input_ids.shape[-1] == 0:
            raise ValueError("input_ids must be (texts, seq_len) or (reports, sentences, seq_len), got "
                             f"{tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(tensor.shape)}")

        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")

        sentence_mask = attention_mask.bool().any(-1)  # (T, M)
        no_sentence = ~sentence_mask.any(-1)
        # One read back to the host for all three checks.
        any_empty, lowest, highest = torch.stack([no_sentence.any().long(), input_ids.min(), input_ids.max()]).tolist()
        if any_empty:
            empty = no_sentence.nonzero().flatten().tolist()
            raise ValueError(f"text(s) {empty} have no sentence: their attention_mask is all zero (empty report?)")
        vocab_size = self.config.text_config.vocab_size
        if lowest < 0 or highest >= vocab_size:
            raise ValueError(
                f"input_ids hold token ids in [{lowest}, {highest}], outside the text tower's vocabulary of "
                f"{vocab_size} (was the text tokenised with this model's tokenizer?)"
            )
        index = sentence_mask.nonzero(as_tuple=True)
        return _Sentences(input_ids, attention_mask, token_type_ids, sentence_mask, index)

    def _encode_sentences(
        self, sentences: _Sentences, output_hidden_states=None, **kwargs: Unpack[TransformersKwargs]
    ) -> EGMATextFeatures:
        """Run the real sentences through the text tower; no reads back to the host, so none stalls a GPU."""
        real = sentences.index  # (text, slot) of each real sentence, in row-major order
        token_mask = sentences.attention_mask[real]  # (S, L)
        token_type_ids = sentences.token_type_ids
        # The pooling needs the last layers whatever the caller asked for; what is returned follows the request.
        requested = _output_flag("output_hidden_states", output_hidden_states, self.config, self.config.text_config)
        with self._tower_grad(self.text_model, sentences.input_ids):
            outputs = self.text_model(
                input_ids=sentences.input_ids[real],
                attention_mask=token_mask,
                token_type_ids=token_type_ids[real] if token_type_ids is not None else None,
                output_hidden_states=True,
                return_dict=True,
                **kwargs,
            )
        layers = outputs.hidden_states[-self.config.text_pooling_layers :]
        hidden = torch.stack(layers).mean(0)  # (S, L, H)
        if self.config.text_pooling_mask_padding:
            weights = token_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        else:
            pooled = hidden.mean(1)
        projected = self.text_projection(pooled)  # (S, D)

        sentence_embeds = projected.new_zeros(*sentences.mask.shape, projected.shape[-1])
        sentence_embeds[real] = projected
        counts = sentences.mask.sum(-1, keepdim=True).to(projected.dtype)
        report_embeds = sentence_embeds.sum(1) / counts
        return EGMATextFeatures(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=report_embeds,
            hidden_states=_requested_hidden_states(outputs.hidden_states, requested),
            attentions=getattr(outputs, "attentions", None),
            sentence_embeds=sentence_embeds,
            sentence_mask=sentences.mask,
        )

    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def _any_gaze(gaze_heatmaps: torch.Tensor | None, has_gaze: torch.Tensor | None) -> bool:
        """Reject NaN, inf or negative heatmaps; return whether any sample has gaze. One read back to the host."""
        if gaze_heatmaps is None:
            if has_gaze is not None and bool(has_gaze.any()):
                raise ValueError("has_gaze marks samples with gaze but no gaze_heatmaps were given")
            return False
        if has_gaze is None:
            has_gaze = gaze_heatmaps.new_ones((), dtype=torch.bool)
        flags = [~torch.isfinite(gaze_heatmaps).all(), (gaze_heatmaps < 0).any(),
                 has_gaze.any().to(gaze_heatmaps.device)]
        non_finite, negative, any_gaze = torch.stack(flags).tolist()
        if non_finite:
            raise ValueError("gaze_heatmaps contain NaN or inf")
        if negative:
            raise ValueError("gaze_heatmaps contain negative values; heatmaps must be >= 0")
        return any_gaze

    def _gaze_maps(
        self,
        gaze_heatmaps: torch.Tensor,
        has_gaze: torch.Tensor | None,
        sentence_mask: torch.Tensor,
        image: EGMAImageFeatures,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the heatmaps' shape (B, M, h, w) and flatten them to GS (B, M, N), each map scaled to max 1.

        Their values were checked by `_any_gaze` before the towers ran."""
        if image.patch_embeds is None:
            raise ValueError(
                f"gaze_heatmaps were given but this vision tower has no patch grid to align them with: "
                f"{self._no_patch_grid_reason}"
            )
        batch, slots = sentence_mask.shape
        grid = image.patch_grid
        expected = (batch, slots, *grid)
        if gaze_heatmaps.ndim != 4 or tuple(gaze_heatmaps.shape) != expected:
            raise ValueError(
                f"gaze_heatmaps must have shape (batch, sentence slots, grid_h, grid_w) = {expected}: one heatmap per "
                f"sentence slot, pooled to the vision tower's {grid[0]}x{grid[1]} patch grid "
                f"(EGMAProcessor(gaze_grid_size={grid[0]}) does this); got {tuple(gaze_heatmaps.shape)}"
            )
        if has_gaze is None:
            has_gaze = torch.ones(batch, dtype=torch.bool, device=gaze_heatmaps.device)
        elif has_gaze.shape != (batch,):
            raise ValueError(f"has_gaze must have shape ({batch},), got {tuple(has_gaze.shape)}")
        maps = gaze_heatmaps.flatten(2).float()
        peak = maps.amax(-1, keepdim=True)
        maps = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), maps)
        return maps, has_gaze.bool()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        gaze_heatmaps: torch.Tensor | None = None,
        has_gaze: torch.Tensor | None = None,
        study_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EGMAOutput:
        r"""
        input_ids, attention_mask, token_type_ids: (T, L) one sentence per text, or (T, M, L) reports of M slots.
        pixel_values: (B, 3, H, W).
        gaze_heatmaps: optional (B, M, h, w) per-sentence heatmaps on the patch grid (see module docstring).
        has_gaze: optional (B,) bool, which samples have gaze (default: all, when `gaze_heatmaps` is given).
        study_ids: optional (B,) int64; pairs with the same id (images of one study, readings of one image) are
            positives of each other in the loss's contrastive terms instead of negatives.
        return_loss: compute the EGMA loss; needs B == T matching image-report pairs.
        output_hidden_states, output_attentions, return_dict: as in `CLIPModel`; the towers' hidden states and
            attentions are in `vision_model_output` / `text_model_output`.
        """
        _check_kwargs(kwargs, "EGMAModel.forward")
        # Every check that reads input values back to the host runs first: once the towers are queued on a GPU,
        # the rest of the step (loss included) is queued without waiting for them.
        sentences = self._find_sentences(input_ids, attention_mask, token_type_ids)
        any_gaze = self._any_gaze(gaze_heatmaps, has_gaze)
        vision_outputs = self.get_image_features(pixel_values=pixel_values, return_dict=True, **kwargs)
        text_outputs = self._encode_sentences(sentences, **kwargs)
        image_embeds = _l2_normalize(vision_outputs.pooler_output)
        text_embeds = _l2_normalize(text_outputs.pooler_output)
        logit_scale = self.logit_scale.clamp(max=self.config.logit_scale_max).exp()
        logits_per_text = logit_scale * text_embeds @ image_embeds.t()
        logits_per_image = logits_per_text.t()

        patch_embeds = vision_outputs.patch_embeds
        patch_embeds = _l2_normalize(patch_embeds) if patch_embeds is not None else None
        sentence_embeds = _l2_normalize(text_outputs.sentence_embeds)
        sentence_mask = text_outputs.sentence_mask

        gaze_maps = None
        if gaze_heatmaps is not None:
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"gaze_heatmaps need matching image-report pairs, got {image_embeds.shape[0]} images and "
                    f"{text_embeds.shape[0]} texts"
                )
            gaze_maps, has_gaze = self._gaze_maps(gaze_heatmaps, has_gaze, sentence_mask, vision_outputs)
            if not any_gaze:  # the loss skips its gaze work
                gaze_maps = has_gaze = None

        terms = {}
        if return_loss:
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss needs matching image-report pairs, got {image_embeds.shape[0]} images and "
                    f"{text_embeds.shape[0]} texts"
                )
            if patch_embeds is None:
                raise ValueError(f"EGMA's loss needs patch embeddings: {self._no_patch_grid_reason}")
            if study_ids is not None and (tuple(study_ids.shape) != (image_embeds.shape[0],)
                                          or study_ids.is_floating_point() or study_ids.dtype == torch.bool):
                raise ValueError(f"study_ids must be ({image_embeds.shape[0]},) integer ids, one per pair; got "
                                 f"{tuple(study_ids.shape)} {study_ids.dtype}")
            losses = self.loss_function(
                image_embeds,
                text_embeds,
                patch_embeds,
                sentence_embeds,
                sentence_mask,
                logit_scale,
                gaze_maps=gaze_maps,
                has_gaze=has_gaze if gaze_maps is not None else None,
                study_ids=study_ids,
            )
            terms = vars(losses)

        return EGMAOutput(
            **terms,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            patch_embeds=patch_embeds,
            sentence_embeds=sentence_embeds,
            sentence_mask=sentence_mask,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None = None) -> torch.Tensor:
    """EGMAForImageClassification's loss for `problem_type`: "multi_label_classification", BCE on (B, num_labels)
    float labels; "single_label_classification", cross-entropy on (B,) class ids; None, whichever the labels' dtype
    says (floats: multi-label). Computed in float32."""
    problem = problem_type or (
        "single_label_classification" if not labels.is_floating_point() else "multi_label_classification")
    if problem == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(f"multi-label labels must have shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    if problem == "single_label_classification":
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"class-id labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
        return F.cross_entropy(logits.float(), labels.long())
    raise ValueError(f"problem_type {problem!r} is not supported; use multi- or single-label classification")


class EGMAForImageClassification(EGMAPreTrainedModel):
    """EGMA's image tower with a linear head on its pooled, un-projected feature (the paper's linear probe).

    `from_pretrained(<EGMA checkpoint>, num_labels=..., problem_type=...)` keeps the pretrained image tower and
    starts a new head; the text tower's weights are not loaded. `freeze_vision_model()` makes it a linear probe.
    The loss follows `config.problem_type`: "multi_label_classification" (BCE on float labels, e.g. CheXpert
    findings), "single_label_classification" (cross-entropy on class ids; binary tasks use 2 labels), or, when
    unset, multi-label for float labels and single-label for integer labels.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: EGMAConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.vision_model.config = config.vision_config
        self.classifier = nn.Linear(_vision_width(self.vision_model, config.vision_config), config.num_labels)
        self.post_init()

    def freeze_vision_model(self):
        """Linear probe: only the head trains. The tower also stays in eval mode through `train()`, so batch-norm
        statistics and dropout do not change what a frozen tower computes."""
        self._vision_frozen = True
        self.vision_model.requires_grad_(False)
        self.vision_model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_vision_frozen", False):
            self.vision_model.eval()
        return self

    def get_pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C): the tower's pooled, un-projected feature, the classifier's input."""
        return self._pool(self.vision_model(pixel_values=pixel_values, return_dict=True))

    @staticmethod
    def _pool(outputs) -> torch.Tensor:
        pooled = outputs.pooler_output
        if pooled is None:  # towers without a pooler: the mean over all tokens or positions
            hidden = outputs.last_hidden_state
            pooled = hidden.flatten(2).mean(-1) if hidden.ndim == 4 else hidden.mean(1)
        return pooled.flatten(1)

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> ImageClassifierOutput:
        """pixel_values (B, 3, H, W); labels (B,) class ids or (B, num_labels) floats -> logits (B, num_labels).
        `output_hidden_states` / `output_attentions` / `return_dict` as in `CLIPForImageClassification`."""
        _check_kwargs(kwargs, "EGMAForImageClassification.forward")
        if pixel_values is None or pixel_values.ndim != 4 or pixel_values.shape[0] == 0:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError("pixel_values must be a float tensor of shape (batch>0, channels, height, width), "
                             f"got {shape}")
        outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        logits = self.classifier(self._pool(outputs))
        loss = None if labels is None else classification_loss(logits, labels, self.config.problem_type)
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )


__all__ = [
    "EGMAModel",
    "EGMAForImageClassification",
    "EGMAPreTrainedModel",
    "EGMAOutput",
    "EGMAImageFeatures",
    "EGMATextFeatures",
    "egma_checkpoint_problem",
]
