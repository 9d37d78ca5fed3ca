"""Convert an original MedCLIP / EGMA `pytorch_model.bin` into an `EGMAModel`.

The released EGMA code (github.com/MoMarky/EGMA) reuses MedCLIP's `MedCLIPModel` layout (github.com/RyanWangZf/MedCLIP)
and was run with transformers 4.31; MedCLIP's `medclip-vit-pretrained` checkpoint, which EGMA starts from, has the
same layout:

    vision_model.model.<SwinModel keys>          vision_model.projection_head.weight   (512, 768), no bias
    text_model.model.<BertModel keys + pooler>   text_model.projection_head.weight     (512, 768), no bias
    logit_scale                                  ()

Keys are renamed by the prefix rules in `PREFIX_RULES`; inside a tower, keys that transformers 5 renamed are
translated with `TOWER_LEGACY_RENAMES` (Swin's attention and MLP). Keys in `KNOWN_OBSOLETE` (buffers that older
transformers saved, BERT's pooler, heads of EGMA's training code that its released configuration never uses) are
dropped and reported. Anything else that does not map onto an `EGMAModel` weight is reported key by key.

With `config=None` the model is `EGMAConfig()` (Swin-T, BERT-base with Bio_ClinicalBERT's vocabulary) with
`text_pooling_mask_padding=False`, the released code's text pooling (the mean over all token positions, padding
included), and `projection_dim` read from the checkpoint; every other size is checked against the weights.
"""

import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging

from .configuration_egma import EGMAConfig
from .modeling_egma import EGMAModel, egma_checkpoint_problem

logger = logging.get_logger(__name__)

WEIGHTS_NAME = "pytorch_model.bin"
# What a saved EGMA model folder holds (`save_pretrained`): one of these weight files, and its processor's files.
SAVED_WEIGHTS = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
SAVED_PROCESSOR = (("processor_config.json", "preprocessor_config.json"), ("tokenizer_config.json",))

# (original prefix, EGMAModel prefix); a rule matches the prefix itself or the prefix followed by ".".
PREFIX_RULES = (
    ("vision_model.model", "vision_model"),
    ("vision_model.projection_head", "visual_projection"),
    ("text_model.model", "text_model"),
    ("text_model.projection_head", "text_projection"),
    ("logit_scale", "logit_scale"),
)

# Key fragments that transformers 4.31 used and current transformers renamed, per tower `model_type`, applied in order
# and only when the plainly prefixed key is not an EGMAModel weight (so a transformers that still uses the 4.31 names
# needs none). They are the renames transformers' own `from_pretrained` applies to legacy Swin checkpoints.
TOWER_LEGACY_RENAMES = {
    "swin": (
        (".attention.self.query.", ".attention.q_proj."),
        (".attention.self.key.", ".attention.k_proj."),
        (".attention.self.value.", ".attention.v_proj."),
        (
            ".attention.self.relative_position_bias_table",
            ".attention.relative_position_bias.relative_position_bias_table",
        ),
        (".attention.output.dense.", ".attention.o_proj."),  # before ".output.dense." below
        (".intermediate.dense.", ".mlp.fc1."),
        (".output.dense.", ".mlp.fc2."),
    ),
}

# (pattern on the original key, why it is dropped)
KNOWN_OBSOLETE = (
    (
        r"^text_model\.model\.embeddings\.(position_ids|token_type_ids)$",
        "BERT buffer saved by older transformers; transformers 5 rebuilds it and does not store it",
    ),
    (
        r"^vision_model\.model\..*\.relative_position_index$",
        "Swin buffer saved by transformers 4.x; transformers 5 recomputes it from window_size",
    ),
    (
        r"^text_model\.model\.pooler\.",
        "BERT pooler: EGMA pools the last hidden layers itself, and its text tower has no pooler",
    ),
    (
        r"^vision_model\.projection_head[12]\.",
        "EGMA code's 28x28 / 14x14 patch heads, off in its released configuration (loss1024 = loss256 = 0)",
    ),
    (
        r"^word_local_atten_layer\.",
        "EGMA code's word attention layer, never called in its forward",
    ),
)

# The original code clamps logit_scale to [0, 4.6052]; EGMAModel clamps it to at most config.logit_scale_max.
ORIGINAL_LOGIT_SCALE_RANGE = (0.0, 4.6052)


@dataclass
class ConversionReport:
    """What happened to each key. `mapped`: original key -> EGMAModel key. `dropped`: original key -> why (known
    obsolete). `missing`: EGMAModel keys the checkpoint does not provide (left at their initialisation).
    `unexpected`: original keys with no EGMAModel weight. `notes`: behaviour differences worth knowing."""

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every EGMAModel weight was found and every original key was used or knowingly dropped."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        lines = [
            f"MedCLIP/EGMA -> EGMAModel: {len(self.mapped)} mapped, {len(self.dropped)} dropped (known), "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
        ]
        if self.mapped:
            lines.append("mapped:")
        for source, target in PREFIX_RULES:
            keys = [key for key in self.mapped if _matches(key, source)]
            if keys:
                rule = f"{source} -> {target}" if keys == [source] else f"{source}.* -> {target}.*"
                lines.append(f"  {rule}: {len(keys)}")
        by_reason = {}
        for key, reason in self.dropped.items():
            by_reason.setdefault(reason, []).append(key)
        if by_reason:
            lines.append("dropped (known):")
            for reason, keys in by_reason.items():
                lines.append(f"  {reason} ({len(keys)}):")
                lines += [f"    {key}" for key in keys]
        if self.missing:
            lines.append("missing (not in the checkpoint; left at their initialisation):")
            lines += [f"  {key}" for key in self.missing]
        if self.unexpected:
            lines.append("unexpected (no EGMAModel weight to load them into):")
            lines += [f"  {key}" for key in self.unexpected]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _matches(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _known_obsolete_reason(key: str) -> str | None:
    return next((reason for pattern, reason in KNOWN_OBSOLETE if re.search(pattern, key)), None)


def _legacy_renames(config: EGMAConfig, target_key: str) -> tuple:
    towers = {"vision_model": config.vision_config, "text_model": config.text_config}
    tower_config = towers.get(target_key.split(".")[0])
    return TOWER_LEGACY_RENAMES.get(getattr(tower_config, "model_type", None), ())


def _target_key(key: str, config: EGMAConfig, target_keys) -> str | None:
    """The EGMAModel key for an original key (it may not exist in EGMAModel), or None when no prefix rule applies."""
    rule = next((rule for rule in PREFIX_RULES if _matches(key, rule[0])), None)
    if rule is None:
        return None
    source, target = rule
    candidate = target + key[len(source):]
    if candidate in target_keys:
        return candidate
    renamed = candidate
    for old, new in _legacy_renames(config, candidate):
        renamed = renamed.replace(old, new, 1)
    return renamed if renamed in target_keys else candidate


def config_for_original_checkpoint(state_dict: dict[str, torch.Tensor] | None = None, **overrides) -> EGMAConfig:
    """The EGMAConfig for a MedCLIP/EGMA checkpoint: the paper's towers (Swin-T, BERT-base with Bio_ClinicalBERT's
    vocabulary) with the released code's text pooling (`text_pooling_mask_padding=False`: the mean over all token
    positions, padding included). `projection_dim` is read from the projection heads when `state_dict` is given;
    `overrides` go to `EGMAConfig`."""
    kwargs = {"text_pooling_mask_padding": False}
    if state_dict is not None:
        heads = {
            name: state_dict[name].shape
            for name in ("vision_model.projection_head.weight", "text_model.projection_head.weight")
            if name in state_dict
        }
        if len({shape[0] for shape in heads.values()}) > 1:
            raise ValueError(
                "the checkpoint's projection heads disagree on the joint dimension: "
                + ", ".join(f"{name} {tuple(shape)}" for name, shape in heads.items())
            )
        if heads:
            kwargs["projection_dim"] = next(iter(heads.values()))[0]
    kwargs.update(overrides)
    return EGMAConfig(**kwargs)


def _convert(state_dict: dict[str, torch.Tensor], config: EGMAConfig, target: dict[str, torch.Tensor]):
    if not state_dict:
        raise ValueError("the checkpoint holds no tensors (an empty state dict)")
    own_keys = [key for key in state_dict if key in target and key != "logit_scale"]
    if len(own_keys) > len(state_dict) / 2:
        raise ValueError(f"the checkpoint's keys are EGMAModel's own (e.g. {own_keys[0]!r}), not the original "
                         "MedCLIP/EGMA layout: it needs no conversion; save it with EGMAModel.save_pretrained and "
                         "load that")
    if not any(_target_key(key, config, ()) is not None for key in state_dict):
        hint = " (keys start with 'module.': strip that DataParallel prefix first)" if all(
            key.startswith("module.") for key in state_dict) else ""
        raise ValueError(
            f"none of the checkpoint's {len(state_dict)} keys follows the MedCLIP/EGMA layout "
            f"({', '.join(source + '.*' for source, _ in PREFIX_RULES[:4])}, logit_scale){hint}; "
            f"first keys: {list(state_dict)[:5]}"
        )
    report = ConversionReport()
    converted, mismatches = {}, []
    for key, tensor in state_dict.items():
        reason = _known_obsolete_reason(key)
        if reason is not None:
            report.dropped[key] = reason
            continue
        new_key = _target_key(key, config, target)
        if new_key is None or new_key not in target or new_key in converted:
            report.unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(target[new_key].shape):
            mismatches.append(
                f"  {key} -> {new_key}: checkpoint {tuple(tensor.shape)}, EGMAModel {tuple(target[new_key].shape)}"
            )
            continue
        converted[new_key] = tensor
        report.mapped[key] = new_key
    if mismatches:
        raise ValueError(
            "shape mismatch between the checkpoint and the EGMA config (is the config the checkpoint's "
            "architecture?):\n" + "\n".join(mismatches)
        )
    report.missing = [key for key in target if key not in converted]

    if config.text_pooling_mask_padding:
        report.notes.append(
            "config.text_pooling_mask_padding=True: text embeddings differ from the original code's, which "
            "averages padding tokens too (set it to False to reproduce them)"
        )
    if "logit_scale" in converted:
        value = float(converted["logit_scale"])
        low, high = ORIGINAL_LOGIT_SCALE_RANGE
        if value > config.logit_scale_max or value < low:
            report.notes.append(
                f"logit_scale {value:.6g}: the original code clamps it to [{low}, {high}], EGMAModel to at most "
                f"config.logit_scale_max={config.logit_scale_max:.6g}, so logits are scaled by "
                f"{math.exp(min(value, config.logit_scale_max)):.6g} here instead of "
                f"{math.exp(min(max(value, low), high)):.6g}"
            )
    return converted, report


def convert_medclip_state_dict(
    state_dict: dict[str, torch.Tensor], config: EGMAConfig | None = None
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename an original MedCLIP/EGMA state dict to `EGMAModel` keys.

    Returns `(new_state_dict, report)`; missing and unexpected keys are only reported (see `load_original_checkpoint`
    for the strict check). Raises ValueError, naming each key and both shapes, when a tensor's shape does not match
    the `EGMAModel` built from `config` (default: `config_for_original_checkpoint(state_dict)`).
    """
    config = config if config is not None else config_for_original_checkpoint(state_dict)
    with torch.device("meta"):  # only the key names and shapes are needed
        target = EGMAModel(config).state_dict()
    return _convert(state_dict, config, target)


def _resolve_checkpoint(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS_NAME).is_file() and any((path / name).is_file() for name in SAVED_WEIGHTS[:2]):
            raise FileNotFoundError(f"{path} holds no {WEIGHTS_NAME} but a model.safetensors: if it is a saved "
                                    "EGMA model, it needs no conversion (load it with EGMAModel.from_pretrained)")
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no MedCLIP/EGMA checkpoint at {path} (expected a {WEIGHTS_NAME} file or its folder)")
    return path


def _read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """torch.load of an original checkpoint, with any failure reported as a ValueError naming the file."""
    try:
        state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused an object, or the bytes are no pickle at all
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", str(error), re.S)
        detail = detail.group(1) if detail else (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{checkpoint} is not a PyTorch state dict of tensors (torch.load with weights_only=True "
                         f"refused it: {detail[:200]})") from None
    except Exception as error:  # noqa: BLE001 - arbitrary bytes make the unpickler raise anything (IndexError, ...)
        raise ValueError(f"{checkpoint} cannot be read as a PyTorch checkpoint; is it truncated or another kind of "
                         f"file? ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        nested = [key for key, value in state_dict.items() if isinstance(value, dict)] if isinstance(
            state_dict, dict) else []
        hint = f" (it nests dicts under {nested[:3]}: pass the state dict itself)" if nested else ""
        raise ValueError(f"{checkpoint} is not a state dict of tensors (a dict of key -> torch.Tensor){hint}")
    return state_dict


def _resolve_config(config, state_dict) -> EGMAConfig:
    if config is None:
        return config_for_original_checkpoint(state_dict)
    if isinstance(config, EGMAConfig):
        return config
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no EGMA config at {path} (expected a config.json file or a folder with one)")
    _egma_config_dict(path, "config")
    return EGMAConfig.from_json_file(path)


def _egma_config_dict(path: Path, argument: str) -> dict:
    """The parsed config.json at `path`, which must describe an EGMA model; ValueError naming the file otherwise."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{argument}: {path} is not a readable JSON config ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{argument}: {path} must hold a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type != EGMAConfig.model_type:
        raise ValueError(f"{argument}: {path} is not an EGMA config: model_type is {model_type!r}, expected "
                         f"{EGMAConfig.model_type!r} (original MedCLIP/EGMA weights: examples/convert_checkpoint.py)")
    return config


def check_egma_checkpoint(path: str | os.PathLike, argument: str = "model", processor: bool = True) -> dict:
    """Check that `path` is a folder saved by `EGMAModel.save_pretrained` (and, with `processor`, by
    `EGMAProcessor.save_pretrained`) before any work starts; return its config as a dict.

    Raises FileNotFoundError or ValueError naming `argument` and what is missing or wrong: no such folder, a file,
    no config.json, a config of another model type, no weights file, an unreadable one (`from_pretrained`'s own
    check, `egma_checkpoint_problem`), no processor files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{argument} {path}: no such directory")
    if not path.is_dir():
        raise ValueError(f"{argument} {path} is a file, not a saved model directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{argument} {path} is not a saved model: it has no config.json")
    config = _egma_config_dict(path / "config.json", argument)
    if not any((path / name).is_file() for name in SAVED_WEIGHTS):
        raise FileNotFoundError(f"{argument} {path} has no weights file (one of {list(SAVED_WEIGHTS)})")
    problem = egma_checkpoint_problem(path)
    if problem:
        raise ValueError(f"{argument}: {problem}")
    if processor:
        for alternatives in SAVED_PROCESSOR:
            if not any((path / name).is_file() for name in alternatives):
                raise FileNotFoundError(f"{argument} {path} has no processor ({' or '.join(alternatives)} missing): "
                                        "save it with EGMAProcessor.save_pretrained into the same folder")
    return config


def check_output_folder(folder, source, argument: str = "output_dir", source_argument: str = "the input") -> Path:
    """`folder` can take a new model: it is not a file, and not the folder of `source` (the file or folder it is
    made from, which writing there could overwrite). ValueError naming `argument` and `source_argument` otherwise."""
    folder, source = Path(folder), Path(source)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{argument} {folder} is a file, not a folder")
    source_folder = source if source.is_dir() else source.parent
    if folder.exists() and folder.resolve() == source_folder.resolve():
        raise ValueError(f"{argument} {folder} is the folder of {source_argument}; write into another folder")
    return folder


def load_original_checkpoint(
    path: str | os.PathLike,
    config: EGMAConfig | str | os.PathLike | None = None,
    strict: bool = True,
    return_report: bool = False,
) -> EGMAModel | tuple[EGMAModel, ConversionReport]:
    """Load a MedCLIP/EGMA `pytorch_model.bin` (the file or its folder) into a new `EGMAModel` in eval mode.

    `config`: an `EGMAConfig`, a config.json file or a folder with one; default `config_for_original_checkpoint`.
    With `strict=True` (default) any missing or unexpected key raises ValueError listing them; with `strict=False`
    the available weights are loaded, the rest keep their initialisation, and the report is logged as a warning.
    `return_report=True` returns `(model, report)`.
    """
    checkpoint = _resolve_checkpoint(path)
    state_dict = _read_state_dict(checkpoint)
    config = _resolve_config(config, state_dict)
    with torch.device("meta"):
        target = EGMAModel(config).state_dict()
    try:
        converted, report = _convert(state_dict, config, target)
    except ValueError as error:
        raise ValueError(f"{checkpoint}: {error}") from None
    if not report.complete and strict:
        raise ValueError(
            f"{checkpoint} does not match EGMAModel exactly (pass strict=False to load it anyway):\n{report}"
        )

    model = EGMAModel(config)
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != set(report.missing):  # conversion bug, not user error
        raise RuntimeError(f"EGMAModel.load_state_dict disagrees with the conversion report: {result}")
    if report.complete:
        logger.info(f"loaded {checkpoint}\n{report}")
    else:
        logger.warning(f"loaded {checkpoint} partially\n{report}")
    model.eval()
    return (model, report) if return_report else model


__all__ = [
    "ConversionReport",
    "check_egma_checkpoint",
    "check_output_folder",
    "config_for_original_checkpoint",
    "convert_medclip_state_dict",
    "load_original_checkpoint",
]
