"""The settings of a pre-training run: one dataclass that the command line, a YAML/JSON `--config` file and Python
code all build."""

import argparse
import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..conversion import check_egma_checkpoint
from ..data import AugmentSettings, default_cache_dir
from ..data.heatmaps import RECIPE_SIGMAS

LOSS_PRESETS = {  # weights of (mlce, fine_grained, egm); the global term is --global_loss_weight
    "egma": (1.0, 1.0, 1.0),  # EGF + EGM, the paper's unified model
    "egf": (1.0, 1.0, 0.0),
    "egm": (0.0, 0.0, 1.0),
    "mlce": (1.0, 0.0, 0.0),
    "no_gaze": (0.0, 1.0, 0.0),  # fine-grained contrast only; implies --gaze_fraction 0
    "clip": (0.0, 0.0, 0.0),  # the global InfoNCE alone (needs --global_loss_weight > 0)
}
WITHOUT_GAZE = ("no_gaze", "clip")  # presets that train with --gaze_fraction 0
AUGMENT_FLAGS = ("crop_scale", "rotation", "translate", "brightness", "contrast", "hflip")


def flag(default=None, help: str | None = None, choices=None, default_factory=None):
    """A settings field that is also a command-line flag `--<name>` (an on/off switch when its default is False)."""
    metadata = {"help": help, "choices": choices}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingSettings:
    """Everything a pre-training run needs to know, with the command line's names and defaults.

    `TrainingSettings.from_args(argv)` parses flags (and `--config`), `TrainingSettings(lr=1e-4, ...)` builds them in
    Python, and `check()` refuses bad values before any work. The presets in `WITHOUT_GAZE` set `gaze_fraction` to 0.
    """

    config: str | None = flag(help="YAML or JSON file with any of these flags")
    data: str | None = flag(
        help="MIMIC-EYE / EGD-CXR / REFLACX / MIMIC-CXR-JPG root, a CheXpert Plus table, an image-text CSV / JSON "
             "lines / parquet file, or a dataset saved with save_to_disk (default: synthetic)")
    image_root: str | None = flag(help="MIMIC-CXR(-JPG) root, for EGD-CXR and REFLACX roots")
    gaze_data: str | None = flag(
        help="gaze readings to attach to --data's images by dicom_id: a MIMIC-EYE / EGD-CXR / REFLACX root, a "
             "pre-rendered heatmap folder (released EGMA code or CoGaze layout) or a saved dataset; --gaze_fraction "
             "is the fraction of these readings that keep their gaze")
    all_views: bool = flag(False, help="MIMIC-CXR / CheXpert Plus --data: every view, not only frontal images")
    labels: str | None = flag(help="CheXpert Plus --data: its CheXbert labels (JSON lines keyed by path_to_image)")
    image_column: str = flag("image", help="image-text --data (CSV / JSON lines / parquet): the image column")
    caption_column: str = flag("text", help="image-text --data: the text column")
    shards: str | None = flag(
        help="train from a shard folder (egma_hf.data.write_shards, examples/make_shards.py) or a Hub dataset repo "
             "id holding one, streamed and augmented; instead of --data")
    shuffle_buffer: int = flag(1000, help="--shards: rows each loader worker shuffles through")
    crop_scale: float = flag(0.8, help="--shards: smallest area share a random resized crop keeps (1: no crop)")
    rotation: float = flag(5.0, help="--shards: largest random rotation, in degrees")
    translate: float = flag(0.05, help="--shards: largest random shift, as a share of the side")
    brightness: float = flag(0.2, help="--shards: random brightness factor range (ColorJitter)")
    contrast: float = flag(0.2, help="--shards: random contrast factor range (ColorJitter)")
    hflip: bool = flag(False, help="--shards: random horizontal flips (off: reports say left and right)")
    cache_dir: str = flag(default_factory=lambda: str(default_cache_dir()))
    synthetic_samples: int = flag(640, help="readings in the synthetic corpus")
    corpus_seed: int | None = flag(
        help="seed of the synthetic corpus (default: --seed); fix it to train several seeds on one corpus")
    heatmap_recipe: str = flag("auto", help='"egma", "reflacx", "egd", a sigma in pixels, or auto')
    output_dir: str = flag("egma-pretrain")
    overwrite_output_dir: bool = flag(
        False, help="delete the previous run of this script in --output_dir first (any other folder is refused)")
    vision_model: str | None = flag(help="pretrained vision tower (local dir or Hub id)")
    text_model: str | None = flag(help="pretrained text tower and its tokenizer (local dir or Hub id)")
    init_from: str | None = flag(help="an EGMA checkpoint to continue pre-training from")
    image_size: int | None = flag(help="input size (default: the vision tower's)")
    losses: str = flag("egma", choices=sorted(LOSS_PRESETS))
    global_loss_weight: float = flag(1.0, help="global InfoNCE; the paper's total has none (0)")
    gaze_fraction: float = flag(1.0, help="fraction of training readings that keep their gaze")
    epochs: int = flag(20)
    max_steps: int | None = flag(help="stop after this many optimiser steps in total")
    batch_size: int = flag(32, help="per process")
    gradient_accumulation_steps: int = flag(1)
    lr: float = flag(1e-3)
    weight_decay: float = flag(1e-4)
    warmup_steps: int = flag(20)
    seed: int = flag(0)
    eval_every: int | None = flag(help="optimiser steps between validations (default: each epoch)")
    checkpoint_every: int | None = flag(help="optimiser steps between checkpoints (default: each epoch)")
    keep_checkpoints: int = flag(2)
    resume: str | None = flag(help='"latest" (the newest complete checkpoint in --output_dir) or a checkpoint folder')
    activation_checkpointing: bool = flag(False)
    no_gather_with_grad: bool = flag(False, help="contrast against the local batch only")
    lock_image_tower: bool = flag(False, help="freeze the image tower (LiT-style) except its last "
                                  "--lock_image_unlocked_layers layers/stages; the projections still train")
    lock_image_unlocked_layers: int = flag(0, help="with --lock_image_tower: how many last layers/stages of the image "
                                           "tower stay trainable (0: all frozen, run without a backward graph)")
    lock_text_tower: bool = flag(False, help="freeze the text tower except its last --lock_text_unlocked_layers "
                                 "encoder layers; the projections still train")
    lock_text_unlocked_layers: int = flag(0, help="with --lock_text_tower: how many last encoder layers of the text "
                                          "tower stay trainable (0: all frozen, run without a backward graph)")
    same_study: str = flag(
        "positives", choices=["positives", "negatives"],
        help="pairs of one study (frontal + lateral images of one report, readings of one image): positives of each "
             "other in the contrastive terms, or negatives as in CLIP")
    report_to: str = flag("none", choices=["none", "tensorboard"])
    log_every: int = flag(10, help="optimiser steps between logged losses (reading a loss makes the host wait for "
                                   "the GPU); also the steps between checks that the loss is finite")
    num_workers: int = flag(0)
    num_threads: int | None = flag(
        help="CPU threads for one process on a CPU (default: all cores; accelerate launch would otherwise set 1)")

    def __post_init__(self):
        if self.losses in WITHOUT_GAZE:
            self.gaze_fraction = 0.0

    # -- the command line ---------------------------------------------------------------------------------------

    @classmethod
    def argument_parser(cls, description: str | None = None, exit_on_error: bool = True,
                        only=None) -> argparse.ArgumentParser:
        """A parser with one flag per field (or per field named in `only`), typed, with the field's default, choices
        and help."""
        parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                         exit_on_error=exit_on_error)
        for setting in dataclasses.fields(cls):
            if only is not None and setting.name not in only:
                continue
            factory = setting.default_factory
            default = setting.default if factory is dataclasses.MISSING else factory()
            kwargs = {"default": default, "help": setting.metadata["help"]}
            if default is False:
                kwargs["action"] = "store_true"
            else:
                types = typing.get_args(setting.type) or (setting.type,)  # int | None -> int
                kwargs["type"] = next(t for t in types if t is not type(None))
                kwargs["choices"] = setting.metadata["choices"]
            parser.add_argument(f"--{setting.name}", **kwargs)
        return parser

    @classmethod
    def from_args(cls, argv=None, description: str | None = None) -> "TrainingSettings":
        """The settings that command-line flags give (default: sys.argv); a `--config` file's settings count as flags
        in front of the command line's, so that the command line wins."""
        argv = sys.argv[1:] if argv is None else list(argv)
        parser = cls.argument_parser(description)
        args = parser.parse_args(argv)
        if args.config:
            # argparse checks the file's types and choices as it checks flags
            args = parser.parse_args([*config_file_flags(args.config), *argv])
        return cls(**vars(args))

    def to_dict(self) -> dict:
        """What a run is, as written to its training_config.json (not how it was started: config, overwrite)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("config", "overwrite_output_dir")}

    def augment_settings(self) -> AugmentSettings:
        """The --shards augmentation as `AugmentSettings` (ValueError naming the setting when out of range)."""
        return AugmentSettings(**{name: getattr(self, name) for name in AUGMENT_FLAGS})

    def heatmap_sigma_or_recipe(self) -> float | str:
        """--heatmap_recipe as HeatmapSettings takes it: a sigma in pixels as a number, else the recipe's name."""
        try:
            return float(self.heatmap_recipe)
        except ValueError:
            return self.heatmap_recipe

    # -- the check ----------------------------------------------------------------------------------------------

    def check(self):
        """SystemExit naming the flag when a value or an input path is bad (before any work starts)."""
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("gradient_accumulation_steps", 1),
                              ("keep_checkpoints", 1), ("synthetic_samples", 2), ("warmup_steps", 0),
                              ("num_workers", 0), ("max_steps", 1), ("eval_every", 1), ("checkpoint_every", 1),
                              ("image_size", 1), ("num_threads", 1), ("shuffle_buffer", 0), ("log_every", 1),
                              ("lock_image_unlocked_layers", 0), ("lock_text_unlocked_layers", 0)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise SystemExit(f"--{name} must be at least {minimum}, got {value}")
        for tower in ("image", "text"):
            unlocked = getattr(self, f"lock_{tower}_unlocked_layers")
            if unlocked and not getattr(self, f"lock_{tower}_tower"):
                raise SystemExit(f"--lock_{tower}_unlocked_layers {unlocked} needs --lock_{tower}_tower")
        for name in ("seed", "corpus_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32:
                raise SystemExit(f"--{name} must be in [0, 2**32), got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SystemExit(f"--lr must be a positive number, got {self.lr}")
        for name in ("weight_decay", "global_loss_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SystemExit(f"--{name} must be a number >= 0, got {value}")
        if not 0.0 <= self.gaze_fraction <= 1.0:  # also refuses NaN
            raise SystemExit(f"--gaze_fraction must be in [0, 1], got {self.gaze_fraction}")
        if self.losses == "clip" and self.global_loss_weight == 0:
            raise SystemExit("--losses clip trains the global InfoNCE alone: it needs --global_loss_weight > 0")
        recipe = self.heatmap_sigma_or_recipe()
        if isinstance(recipe, float) and not (math.isfinite(recipe) and recipe > 0):
            raise SystemExit("--heatmap_recipe: a sigma in pixels must be a positive number, got "
                             f"{self.heatmap_recipe}")
        if isinstance(recipe, str) and recipe not in ("auto", *RECIPE_SIGMAS):
            raise SystemExit(f"--heatmap_recipe must be auto, {', '.join(sorted(RECIPE_SIGMAS))} or a sigma in pixels, "
                             f"got {recipe!r}")
        for name in ("vision_model", "text_model", "init_from", "data", "image_root", "gaze_data", "labels", "shards"):
            value = getattr(self, name)
            local = name in ("data", "image_root", "init_from", "gaze_data", "labels")
            local = local or str(value).startswith((".", "/"))
            if value and local and not Path(value).exists():
                raise SystemExit(f"--{name}: {value} does not exist")
        if self.shards and (self.data or self.gaze_data):
            raise SystemExit("--shards already holds the images, reports and gaze: give it instead of --data / "
                             "--gaze_data, not with them")
        try:
            self.augment_settings()
        except ValueError as error:
            raise SystemExit(f"--{error}") from None
        changed = [name for name in AUGMENT_FLAGS if getattr(self, name) != getattr(TrainingSettings, name)]
        if changed and not self.shards:
            raise SystemExit(f"--{', --'.join(changed)}: augmentation applies to training from --shards (the "
                             "in-memory path decodes each image once at the training size)")
        if self.gaze_data and not self.data:
            raise SystemExit("--gaze_data attaches gaze readings to the images of --data: give --data too")
        if bool(self.vision_model) != bool(self.text_model):
            raise SystemExit("--vision_model and --text_model go together")
        if self.init_from and self.vision_model:
            raise SystemExit("--init_from and --vision_model/--text_model exclude each other")
        if self.init_from:
            try:
                check_egma_checkpoint(self.init_from, "--init_from")
            except (FileNotFoundError, ValueError) as error:
                raise SystemExit(str(error)) from error
        if self.resume and self.resume != "latest" and not Path(self.resume).exists():
            raise SystemExit(f"--resume {self.resume}: no such checkpoint folder (give \"latest\" or a step_N folder)")
        if self.resume and self.overwrite_output_dir:
            raise SystemExit("--resume continues the run in --output_dir, --overwrite_output_dir deletes it: "
                             "choose one")


def config_file_flags(path: str) -> list[str]:
    """The settings of a YAML or JSON `--config` file as command-line flags; SystemExit naming the file and the
    setting when the file is missing, unreadable, not a mapping, or holds an unknown or ill-typed setting."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--config {path}: no such file")
    kind = "YAML" if file.suffix.lower() in (".yaml", ".yml") else "JSON"
    try:
        text = file.read_text()
        values = None if not text.strip() else yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except (UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as error:
        raise SystemExit(f"--config {path} is not valid {kind}: {error}") from error
    if values is None:  # no text, or only comments; an explicit {} is a config without settings
        raise SystemExit(f"--config {path} is empty; expected a mapping of flag names to values, e.g. `lr: 0.001`")
    if not isinstance(values, dict):
        raise SystemExit(f"--config {path} must hold a mapping of flag names to values (e.g. `lr: 0.001`), not "
                         f"{type(values).__name__} {str(values)[:60]}")
    checker = TrainingSettings.argument_parser(exit_on_error=False)
    defaults = vars(checker.parse_args([]))
    unknown = sorted(str(key) for key in values if key not in defaults)
    if unknown:
        hints = {name: difflib.get_close_matches(name, list(defaults), n=1) for name in unknown}
        said = ", ".join(f"{name} (did you mean {hints[name][0]}?)" if hints[name] else name for name in unknown)
        raise SystemExit(f"{path}: unknown setting(s) {said}")
    if "config" in values:
        raise SystemExit(f"{path}: a --config file cannot name another config file")
    flags = []
    for key, value in values.items():
        if value is None:
            if defaults[key] is not None:
                raise SystemExit(f"{path}: {key} is null; give a value (its default is {defaults[key]!r})")
            continue
        if isinstance(value, (list, dict)):
            raise SystemExit(f"{path}: {key} must be a single value, not a {type(value).__name__}")
        if isinstance(value, bool) and defaults[key] is False:  # an on/off flag
            given = [f"--{key}"] if value else []
        else:
            given = [f"--{key}={value}"]
        try:
            checker.parse_args(given)
        except argparse.ArgumentError as error:
            raise SystemExit(f"{path}: {key}: {value!r}: {error}") from error
        flags += given
    return flags
