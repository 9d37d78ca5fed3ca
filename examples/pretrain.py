"""Pre-train EGMA with 🤗 Accelerate, from one CPU to many GPUs.

    accelerate launch examples/pretrain.py                      # synthetic gaze corpus, tiny model, ~3 min on 2 CPUs
    python examples/pretrain.py --data /data/mimic-eye --vision_model microsoft/swin-tiny-patch4-window7-224 \\
        --text_model emilyalsentzer/Bio_ClinicalBERT --gaze_fraction 0.1 --losses egma --epochs 50
    accelerate launch --multi_gpu --num_processes 4 examples/pretrain.py --config my_run.yaml
    python examples/pretrain.py --output_dir runs/a --resume latest   # continue a killed run exactly

With no arguments it builds (once, cached) the synthetic MIMIC-EYE corpus, trains a tokenizer on its training
reports, trains a small EGMA model (a small CNN and a 2-layer BERT), keeps the checkpoint with the best validation zero-shot AUROC, and prints the
zero-shot AUROC on the held-out test split (reports phrased differently from training). The output directory loads
with `EGMAModel.from_pretrained` and `pipeline("zero-shot-image-classification", model=<dir>)`.

Every flag can also come from a YAML or JSON file (`--config`); flags on the command line win.
"""

import argparse
import difflib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

import datasets
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertTokenizerFast, get_cosine_schedule_with_warmup

from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
from egma_hf.conversion import check_egma_checkpoint
from egma_hf.data import (
    EGMADataCollator,
    HeatmapSettings,
    build_once,
    by_split,
    cached_synthetic_corpus,
    default_cache_dir,
    load_egd_cxr,
    load_mimic_eye,
    load_reflacx,
    prepare_for_training,
    with_gaze_fraction,
)
from egma_hf.data.heatmaps import RECIPE_SIGMAS
from egma_hf.evaluation import zero_shot_auroc
from egma_hf.model_card import build_model_card, check_repo_id
from egma_hf.zero_shot import resolve_class_prompts

logger = logging.getLogger("pretrain")

LOSS_PRESETS = {  # weights of (mlce, fine_grained, egm); the global term is --global_loss_weight
    "egma": (1.0, 1.0, 1.0),  # EGF + EGM, the paper's unified model
    "egf": (1.0, 1.0, 0.0),
    "egm": (0.0, 0.0, 1.0),
    "mlce": (1.0, 0.0, 0.0),
    "no_gaze": (0.0, 1.0, 0.0),  # fine-grained contrast only; implies --gaze_fraction 0
    "clip": (0.0, 0.0, 0.0),  # the global InfoNCE alone (needs --global_loss_weight > 0)
}
# The default preset trains from scratch in a few CPU minutes. A small CNN (timm's resnet10t, output stride 16:
# a 7x7 patch grid at 112 px, like Swin-T's at 224) learns the synthetic findings within ~150 steps; a tiny Swin
# from scratch did not learn them at all in 150 steps on this budget. Real runs pass --vision_model.
TINY_VISION = dict(model_type="timm_wrapper", architecture="resnet10t", model_args={"output_stride": 16})
TINY_IMAGE_SIZE = 112
TINY_TEXT = dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128, max_position_embeddings=80)
RESUME_INSENSITIVE = {"resume", "max_steps_this_run", "report_to", "num_workers", "num_threads"}
TRAINER_STATE = "trainer_state.json"  # in each checkpoint: step, best so far, processes, files and their sizes
BEST_WEIGHTS = "best_weights.safetensors"  # in the output folder: the weights of the best validation step so far
EVALUATION_PROMPTS = "chexpert_findings"  # zero-shot AUROC over these findings' positive/negative prompts


def build_parser(exit_on_error: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     exit_on_error=exit_on_error)
    add = parser.add_argument
    add("--config", help="YAML or JSON file with any of these flags")
    add("--data", help="MIMIC-EYE / EGD-CXR / REFLACX root, or a dataset saved with save_to_disk (default: synthetic)")
    add("--image_root", help="MIMIC-CXR(-JPG) root, for EGD-CXR and REFLACX roots")
    add("--cache_dir", default=str(default_cache_dir()))
    add("--synthetic_samples", type=int, default=640, help="readings in the synthetic corpus")
    add("--corpus_seed", type=int, default=None,
        help="seed of the synthetic corpus (default: --seed); fix it to train several seeds on one corpus")
    add("--heatmap_recipe", default="auto", help='"egma", "reflacx", "egd", a sigma in pixels, or auto')
    add("--output_dir", default="egma-pretrain")
    add("--overwrite_output_dir", action="store_true",
        help="delete the previous run of this script in --output_dir first (any other folder is refused)")
    add("--vision_model", help="pretrained vision tower (local dir or Hub id)")
    add("--text_model", help="pretrained text tower and its tokenizer (local dir or Hub id)")
    add("--init_from", help="an EGMA checkpoint to continue pre-training from")
    add("--image_size", type=int, default=None, help="input size (default: the vision tower's)")
    add("--losses", choices=sorted(LOSS_PRESETS), default="egma")
    add("--global_loss_weight", type=float, default=1.0, help="global InfoNCE; the paper's total has none (0)")
    add("--gaze_fraction", type=float, default=1.0, help="fraction of training readings that keep their gaze")
    add("--epochs", type=int, default=20)
    add("--max_steps", type=int, default=None, help="stop after this many optimiser steps in total")
    add("--batch_size", type=int, default=32, help="per process")
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--lr", type=float, default=1e-3)
    add("--weight_decay", type=float, default=1e-4)
    add("--warmup_steps", type=int, default=20)
    add("--seed", type=int, default=0)
    add("--eval_every", type=int, default=None, help="optimiser steps between validations (default: each epoch)")
    add("--checkpoint_every", type=int, default=None, help="optimiser steps between checkpoints (default: each epoch)")
    add("--keep_checkpoints", type=int, default=2)
    add("--resume", help='"latest" (the newest complete checkpoint in --output_dir) or a checkpoint folder')
    add("--activation_checkpointing", action="store_true")
    add("--no_gather_with_grad", action="store_true", help="contrast against the local batch only")
    add("--report_to", choices=["none", "tensorboard"], default="none")
    add("--num_workers", type=int, default=0)
    add("--num_threads", type=int, default=None,
        help="CPU threads for one process on a CPU (default: all cores; accelerate launch would otherwise set 1)")
    add("--max_steps_this_run", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        # the file's settings become flags in front of the command line's: argparse checks their types and
        # choices as it checks flags, and a flag given on the command line wins
        args = parser.parse_args([*config_file_flags(args.config), *argv])
    return args


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
    checker = build_parser(exit_on_error=False)
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


def check_args(args):
    """Everything that can be wrong with the settings and the output folder, before any work starts."""
    check_settings(args)
    check_output_dir(args)


def check_settings(args):
    """The flags' values and the input paths (examples/ablation.py checks each of its runs' flags with this)."""
    for flag, minimum in (("epochs", 1), ("batch_size", 1), ("gradient_accumulation_steps", 1), ("keep_checkpoints", 1),
                          ("synthetic_samples", 2), ("warmup_steps", 0), ("num_workers", 0), ("max_steps", 1),
                          ("eval_every", 1), ("checkpoint_every", 1), ("image_size", 1), ("num_threads", 1),
                          ("max_steps_this_run", 1)):
        value = getattr(args, flag)
        if value is not None and value < minimum:
            raise SystemExit(f"--{flag} must be at least {minimum}, got {value}")
    for flag in ("seed", "corpus_seed"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value < 2**32:
            raise SystemExit(f"--{flag} must be in [0, 2**32), got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise SystemExit(f"--lr must be a positive number, got {args.lr}")
    for flag in ("weight_decay", "global_loss_weight"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= 0):
            raise SystemExit(f"--{flag} must be a number >= 0, got {value}")
    if not 0.0 <= args.gaze_fraction <= 1.0:  # also refuses NaN
        raise SystemExit(f"--gaze_fraction must be in [0, 1], got {args.gaze_fraction}")
    if args.losses == "clip" and args.global_loss_weight == 0:
        raise SystemExit("--losses clip trains the global InfoNCE alone: it needs --global_loss_weight > 0")
    recipe = _recipe(args.heatmap_recipe)
    if isinstance(recipe, float) and not (math.isfinite(recipe) and recipe > 0):
        raise SystemExit(f"--heatmap_recipe: a sigma in pixels must be a positive number, got {args.heatmap_recipe}")
    if isinstance(recipe, str) and recipe not in ("auto", *RECIPE_SIGMAS):
        raise SystemExit(f"--heatmap_recipe must be auto, {', '.join(sorted(RECIPE_SIGMAS))} or a sigma in pixels, "
                         f"got {recipe!r}")
    for flag in ("vision_model", "text_model", "init_from", "data", "image_root"):
        value = getattr(args, flag)
        if value and flag in ("data", "image_root", "init_from") and not Path(value).exists():
            raise SystemExit(f"--{flag}: {value} does not exist")
        if value and flag in ("vision_model", "text_model") and value.startswith((".", "/")) and not Path(value).exists():
            raise SystemExit(f"--{flag}: {value} does not exist")
    if bool(args.vision_model) != bool(args.text_model):
        raise SystemExit("--vision_model and --text_model go together")
    if args.init_from and args.vision_model:
        raise SystemExit("--init_from and --vision_model/--text_model exclude each other")
    if args.init_from:
        try:
            check_egma_checkpoint(args.init_from, "--init_from")
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(str(error)) from error
    if args.resume and args.resume != "latest" and not Path(args.resume).exists():
        raise SystemExit(f"--resume {args.resume}: no such checkpoint folder (give \"latest\" or a step_N folder)")
    if args.resume and args.overwrite_output_dir:
        raise SystemExit("--resume continues the run in --output_dir, --overwrite_output_dir deletes it: choose one")


def overlap(path: Path, other: Path) -> str | None:
    """How `path` and `other` share files: "is", "is inside" or "contains"; None if they do not."""
    path, other = path.resolve(), other.resolve()
    if path == other:
        return "is"
    if other in path.parents:
        return "is inside"
    if path in other.parents:
        return "contains"
    return None


def previous_run_settings(output: Path) -> dict | None:
    """The settings of the pretrain.py run in `output` (its training_config.json), None if it holds no such run."""
    try:
        settings = json.loads((output / "training_config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return settings if isinstance(settings, dict) and {"losses", "output_dir"} <= settings.keys() else None


def check_output_dir(args):
    """--output_dir shares no folder with an input, and holds nothing but a previous run of this script."""
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise SystemExit(f"--output_dir {output} is a file, not a folder")
    try:  # the model card written there at the end names the model by the folder's name
        check_repo_id(output.resolve().name, namespace=False)
    except ValueError as error:
        raise SystemExit(f"--output_dir {output}: its name names the model in the model card written there, and "
                         f"{error}") from error
    for flag in ("data", "image_root", "init_from", "vision_model", "text_model", "config", "cache_dir"):
        value = getattr(args, flag)
        relation = overlap(output, Path(value)) if value and Path(value).exists() else None
        if relation:
            raise SystemExit(f"--output_dir {output} {relation} --{flag} {value}: a run writes into its output folder "
                             "(and --overwrite_output_dir deletes it), so it must not share files with an input; "
                             "choose another --output_dir")
    if not (output.is_dir() and any(output.iterdir())):
        return
    previous = previous_run_settings(output)
    if previous is None:
        what = "refusing to delete it" if args.overwrite_output_dir else "choose an empty or new folder"
        raise SystemExit(f"--output_dir {output} is not empty and holds no run of this script (no readable "
                         f"training_config.json); {what}")
    if args.overwrite_output_dir:
        return
    current = run_settings(args)
    changed = {k for k in current if k not in RESUME_INSENSITIVE and previous.get(k) != current[k]}
    if changed:
        raise SystemExit(f"--output_dir {output} holds a different run (settings differ: {sorted(changed)})")
    if not args.resume:
        raise SystemExit(f"--output_dir {output} holds this run already; add --resume latest to continue it")


def run_settings(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("config", "overwrite_output_dir")}


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_readings(args, accelerator=None) -> tuple[datasets.Dataset, str]:
    """The readings as one Dataset with a `split` column, and a description of where they came from. With an
    `accelerator`, only its main process builds the synthetic corpus' caches; without one, this process does."""
    recipe = args.heatmap_recipe
    if args.data is None:
        seed = args.seed if args.corpus_seed is None else args.corpus_seed
        corpus = Path(args.cache_dir) / f"synthetic-{args.synthetic_samples}-seed{seed}"
        cached = corpus.with_name(corpus.name + f"-readings-{recipe}")
        if accelerator is None or accelerator.is_main_process:
            cached_synthetic_corpus(args.synthetic_samples, seed, args.cache_dir)
            settings = HeatmapSettings(recipe=12.0 if recipe == "auto" else _recipe(recipe))
            build_once(cached, lambda folder: load_mimic_eye(corpus, settings).save_to_disk(str(folder)))
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return datasets.load_from_disk(cached), f"synthetic corpus ({args.synthetic_samples} readings) in {corpus}"
    root = Path(args.data)
    settings = HeatmapSettings(recipe="egma" if recipe == "auto" else _recipe(recipe))
    if (root / "dataset_info.json").is_file() or (root / "state.json").is_file():
        return datasets.load_from_disk(root), f"saved dataset {root}"
    if any(root.glob("patient_*")):
        return load_mimic_eye(root, settings), f"MIMIC-EYE {root}"
    if args.image_root is None:
        raise SystemExit(f"--data {root} is not MIMIC-EYE: give --image_root (the MIMIC-CXR images)")
    if (root / "master_sheet.csv").is_file():
        return load_egd_cxr(root, args.image_root, settings), f"EGD-CXR {root}"
    if (root / "main_data").is_dir():
        return load_reflacx(root, args.image_root, settings), f"REFLACX {root}"
    raise SystemExit(f"--data {root}: not a saved dataset, MIMIC-EYE, EGD-CXR or REFLACX root")


def _recipe(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def build_tokenizer(texts: list[str], out_dir: Path) -> BertTokenizerFast:
    """A word-level WordPiece vocabulary of the training reports, plus single characters (and their "##"
    continuations) so that unseen words still tokenize. Deterministic, no download; reused when it exists."""
    vocab_file = out_dir / "vocab.txt"
    if not vocab_file.is_file():
        words = sorted({w for text in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())})
        chars = sorted({c for w in words for c in w})
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars, *(f"##{c}" for c in chars)]
        out_dir.mkdir(parents=True, exist_ok=True)
        vocab_file.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    vocab = vocab_file.read_text().splitlines()
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)


def build_model_and_processor(args, train: datasets.Dataset, work_dir: Path):
    mlce, fine, egm = LOSS_PRESETS[args.losses]
    weights = dict(global_loss_weight=args.global_loss_weight, mlce_loss_weight=mlce,
                   fine_grained_loss_weight=fine, egm_loss_weight=egm)
    if args.init_from:
        model = EGMAModel.from_pretrained(args.init_from)
        for key, value in weights.items():
            setattr(model.config, key, value)
        processor = EGMAProcessor.from_pretrained(args.init_from)
        return model, processor
    if args.vision_model:
        model = EGMAModel.from_vision_text_pretrained(args.vision_model, args.text_model, **weights)
        tokenizer = AutoTokenizer.from_pretrained(args.text_model)
    else:
        tokenizer = build_tokenizer(list(train["report"]), work_dir / "tokenizer")
        config = EGMAConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT, vocab_size=tokenizer.vocab_size),
                            projection_dim=64, **weights)
        model = EGMAModel(config)
    image_size = args.image_size or getattr(model.config.vision_config, "image_size", None) or TINY_IMAGE_SIZE
    with torch.no_grad():
        probe = model.get_image_features(pixel_values=torch.zeros(1, 3, image_size, image_size))
    if probe.patch_grid is None:
        raise SystemExit("the vision tower has no patch grid for gaze; choose a Swin, ViT or ConvNeXt-like tower")
    processor = EGMAProcessor(EGMAImageProcessor(size=image_size, gaze_grid_size=probe.patch_grid[0]), tokenizer)
    return model, processor


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoints(output_dir: Path) -> list[Path]:
    folder = output_dir / "checkpoints"
    found = [p for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int):
    """Written to step_N.tmp, then renamed: a kill during the save never leaves a half checkpoint named step_N. Its
    trainer_state.json lists every file with its size, so that a file lost or truncated later is noticed on resume."""
    final = output_dir / "checkpoints" / f"step_{state['step']:07d}"
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every rank has written its part (its RNG state) before the rename
    if accelerator.is_main_process:
        files = {str(f.relative_to(partial)): f.stat().st_size for f in sorted(partial.rglob("*")) if f.is_file()}
        saved = {**state, "num_processes": accelerator.num_processes, "files": files}
        (partial / TRAINER_STATE).write_text(json.dumps(saved, indent=1))
        if final.exists():  # this step's checkpoint from before a resume from an earlier one: redone now
            shutil.rmtree(final)
        os.replace(partial, final)
        # checkpoints after this step are left from before a resume from an earlier one (e.g. an incomplete one
        # skipped); they are replaced when the run gets there, and never count among the kept
        done = [p for p in checkpoints(output_dir) if int(p.name[5:]) <= state["step"]]
        for old in done[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def checkpoint_problem(folder: Path, num_processes: int) -> str | None:
    """What makes `folder` unusable as a checkpoint for `num_processes` processes (naming the file), or None if it
    is complete. SystemExit if it is complete but was written by another number of processes."""
    state_file = folder / TRAINER_STATE
    if not state_file.is_file():
        return f"{state_file} is missing"
    try:
        saved = json.loads(state_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{state_file} is not valid JSON ({error})"
    if not (isinstance(saved, dict) and isinstance(saved.get("step"), int) and saved["step"] >= 0
            and {"best_metric", "best_step"} <= saved.keys()):
        return f"{state_file} holds no training state (step, best_metric, best_step)"
    written_by = saved.get("num_processes", len(list(folder.glob("random_states_*.pkl"))))
    if "num_processes" in saved or written_by > num_processes:
        if written_by != num_processes:
            raise SystemExit(f"--resume: {folder} was written by {written_by} process(es) and this run has "
                             f"{num_processes}; resume with {written_by} (their data shards and RNG states differ)")
    for index in range(num_processes):
        rng = folder / f"random_states_{index}.pkl"
        if not rng.is_file():
            return f"{rng} (the RNG state of process {index}) is missing"
        if not _intact_zip(rng, check_crc=True):  # accelerate would drop an unreadable RNG state with no word
            return f"{rng} (the RNG state of process {index}) is corrupt"
    files = saved.get("files", {})  # absent in checkpoints written before the file list was kept
    if not isinstance(files, dict):
        return f"{state_file}: its file list is not a mapping"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} when it was written (truncated?)"
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), "pt"):
                    pass
            except (SafetensorError, OSError) as error:
                return f"{path} is not a readable safetensors file ({error})"
        elif path.suffix in (".bin", ".pkl", ".pt") and _starts_like_zip(path) and not _intact_zip(path):
            return f"{path} is truncated or corrupt"  # torch.save writes zip archives
    return None


def _starts_like_zip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"PK"


def _intact_zip(path: Path, check_crc: bool = False) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return not check_crc or archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def resume_checkpoint(args, num_processes: int) -> tuple[Path, list[str]]:
    """The checkpoint to resume from, and what was wrong with each newer one skipped on the way. `--resume latest`
    takes the newest complete checkpoint; SystemExit, naming the file, if there is none, or if the checkpoint named
    by `--resume <folder>` is incomplete."""
    output_dir = Path(args.output_dir)
    if args.resume != "latest":
        folder = Path(args.resume)
        if not folder.is_dir():
            raise SystemExit(f"--resume {folder} is not a checkpoint folder")
        problem = checkpoint_problem(folder, num_processes)
        if problem:
            raise SystemExit(f"--resume {folder} is not a complete checkpoint: {problem}")
        chosen, skipped = folder, []
    else:
        found = checkpoints(output_dir)
        if not found:
            raise SystemExit(f"--resume latest: no checkpoint in {output_dir / 'checkpoints'}")
        skipped, chosen = [], None
        for folder in reversed(found):
            problem = checkpoint_problem(folder, num_processes)
            if problem is None:
                chosen = folder
                break
            skipped.append(f"{folder.name}: {problem}")
        if chosen is None:
            raise SystemExit(f"--resume latest: no complete checkpoint in {output_dir / 'checkpoints'} ("
                             + "; ".join(skipped) + ")")
    saved = json.loads((chosen / TRAINER_STATE).read_text())
    best_file = output_dir / BEST_WEIGHTS
    if saved["best_step"] is not None:
        try:
            with safe_open(str(best_file), "pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise SystemExit(f"--resume {chosen}: its best validation step {saved['best_step']} has its weights in "
                             f"{best_file}, which is missing or unreadable ({error}); start the run again") from error
    return chosen, skipped


# ---------------------------------------------------------------------------------------------------------------


def peak_memory_mb() -> float:
    """Peak GPU memory of this process, or its peak resident memory on a CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def evaluate(model, tokenizer, dataset, collate, batch_size) -> dict:
    batches = (collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])["pixel_values"]
               for start in range(0, len(dataset), batch_size))
    return zero_shot_auroc(model, tokenizer, batches, list(dataset["labels"]), class_prompts=EVALUATION_PROMPTS)


def check_splits(splits, source: str, batch_size: int, num_processes: int):
    """Once the data are known, before training: every process gets a training batch (drop_last would otherwise
    leave an epoch with no step, and the run would never end), and the validate and test splits can be scored."""
    train = len(splits["train"])
    if train // batch_size < num_processes:
        per_process = f" per process x {num_processes} processes" if num_processes > 1 else ""
        raise SystemExit(f"--batch_size {batch_size}{per_process} needs at least {batch_size * num_processes} training "
                         f"readings, and {source} has {train}: lower --batch_size"
                         + (" or use fewer processes" if num_processes > 1 else ""))
    findings = list(resolve_class_prompts(EVALUATION_PROMPTS)[0])
    for name in ("validate", "test"):
        if name not in splits:
            continue
        labels = list(splits[name]["labels"])
        scored = [finding for finding in findings if 0 < sum(finding in row for row in labels) < len(labels)]
        if not scored:
            raise SystemExit(f"{source}: the {name} split ({len(labels)} reading{'s' * (len(labels) != 1)}) cannot be "
                             "scored: zero-shot AUROC "
                             f"needs a finding of {findings} with both positive and negative readings there")
        if len(scored) < len(findings):
            logger.warning("%s split: %s have positives only or negatives only and are left out of its mean AUROC",
                           name, sorted(set(findings) - set(scored)))


def main(argv=None, keep_process_group: bool = False):
    """Train as the flags say. `keep_process_group=True` leaves torch.distributed's process group up at the end, for
    a caller that trains again in the same processes (examples/ablation.py)."""
    args = parse_args(argv)
    if args.losses in ("no_gaze", "clip"):
        args.gaze_fraction = 0.0
    check_args(args)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        # several processes on a machine without GPUs (`accelerate launch --multi_gpu` starts them through torchrun):
        # accelerate sets up gloo only when told it runs on the CPU
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # not every checkpoint's file list; resumes are logged here
    resume_from, skipped = resume_checkpoint(args, accelerator.num_processes) if args.resume else (None, [])
    for problem in skipped if accelerator.is_main_process else ():
        logger.warning("--resume latest: skipping incomplete checkpoint %s (it is replaced when the run gets there)",
                       problem)
    accelerator.wait_for_everyone()  # every rank has checked the output dir before the main process writes to it
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1:
        torch.set_num_threads(args.num_threads or len(os.sched_getaffinity(0)))
    set_seed(args.seed)

    readings, source = load_readings(args, accelerator)
    splits = dict(by_split(readings))
    if "train" not in splits:
        raise SystemExit(f"{source}: no training readings (split column values: {sorted(set(readings['split']))})")
    check_splits(splits, source, args.batch_size, accelerator.num_processes)
    if accelerator.is_main_process:  # only now: data that cannot train leave the folder untouched
        if args.overwrite_output_dir and output_dir.exists() and not args.resume:
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        settings_file = output_dir / "training_config.json"
        settings_file.with_suffix(".tmp").write_text(json.dumps(run_settings(args), indent=1))
        os.replace(settings_file.with_suffix(".tmp"), settings_file)  # never half written: it marks the folder as a run
    accelerator.wait_for_everyone()
    splits["train"] = with_gaze_fraction(splits["train"], args.gaze_fraction, seed=args.seed)
    model, processor = build_model_and_processor(args, splits["train"], output_dir)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    if args.no_gather_with_grad:
        from egma_hf.losses import EGMALoss

        model.loss_function = EGMALoss(model.config, gather_with_grad=False)
    with accelerator.main_process_first():
        prepared = {name: prepare_for_training(data, processor.image_processor) for name, data in splits.items()}
    collate = EGMADataCollator(processor)

    def collate_with_ids(rows):
        batch = collate(rows)
        batch["reading_id"] = [row["reading_id"] for row in rows]
        return batch

    loader = torch.utils.data.DataLoader(prepared["train"], batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate_with_ids, num_workers=args.num_workers,
                                         # its own generator: starting an epoch must not draw from the global RNG,
                                         # or a resumed run's dropout would differ from an uninterrupted one
                                         generator=torch.Generator().manual_seed(args.seed))
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    # each process gets len(loader) // processes batches (drop_last); accelerate steps at the end of each epoch
    # even when the last accumulation is short
    steps_per_epoch = math.ceil(len(loader) // accelerator.num_processes / args.gradient_accumulation_steps)
    total_steps = args.max_steps if args.max_steps is not None else args.epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, total_steps // 2), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    state = {"step": 0, "best_metric": None, "best_step": None}
    if resume_from:
        try:
            accelerator.load_state(str(resume_from))
        except Exception as error:  # checked complete, yet unreadable: name it rather than deserialisation internals
            raise SystemExit(f"--resume: cannot load checkpoint {resume_from}: {type(error).__name__}: "
                             f"{error}") from error
        saved = json.loads((resume_from / TRAINER_STATE).read_text())
        state = {key: saved[key] for key in state}
        logger.info("resumed from %s at step %d", resume_from, state["step"])

    global_batch = args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("data: %s; train/validate/test readings %s; gaze kept on %d training readings",
                source, [len(splits.get(k, ())) for k in ("train", "validate", "test")], sum(splits["train"]["has_gaze"]))
    logger.info("processes %d, global batch %d (%d per process x %d accumulation), %d steps, loss terms %s",
                accelerator.num_processes, global_batch, args.batch_size, args.gradient_accumulation_steps,
                total_steps, args.losses)
    if args.report_to != "none":
        accelerator.init_trackers("egma", config={k: v for k, v in run_settings(args).items() if v is not None})
    eval_every = args.eval_every or steps_per_epoch
    checkpoint_every = args.checkpoint_every or steps_per_epoch
    best_file = output_dir / BEST_WEIGHTS
    progress = tqdm(total=total_steps, initial=state["step"], disable=not accelerator.is_local_main_process)
    started, samples = time.perf_counter(), 0
    while state["step"] < total_steps:
        epoch = state["step"] // steps_per_epoch
        loader.set_epoch(epoch)
        skip = (state["step"] % steps_per_epoch) * args.gradient_accumulation_steps
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        model.train()
        for batch in epoch_loader:
            reading_ids = batch.pop("reading_id")
            with accelerator.accumulate(model):
                out = model(**batch, return_loss=True)
                terms = {k: getattr(out, k).item() for k in ("loss", "global_loss", "mlce_loss", "fine_grained_loss", "egm_loss")
                         if getattr(out, k) is not None}
                if not math.isfinite(terms["loss"]):
                    raise FloatingPointError(f"non-finite loss at step {state['step']} on readings {reading_ids}: "
                                             f"{terms}; the last good checkpoint is in {output_dir / 'checkpoints'}")
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            samples += len(reading_ids) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            with torch.no_grad():
                unwrapped.logit_scale.clamp_(0, unwrapped.config.logit_scale_max)
            state["step"] += 1
            progress.update(1)
            logs = {**terms, "logit_scale": unwrapped.logit_scale.exp().item(), "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": samples / (time.perf_counter() - started), "memory_mb": peak_memory_mb()}
            progress.set_postfix(loss=f"{terms['loss']:.3f}", scale=f"{logs['logit_scale']:.1f}")
            accelerator.log(logs, step=state["step"])
            if "validate" in prepared and (state["step"] % eval_every == 0 or state["step"] == total_steps):
                metric = evaluate(unwrapped, processor.tokenizer, prepared["validate"], collate, 64)["mean_auroc"]
                if not math.isfinite(metric):
                    raise FloatingPointError(f"validation zero-shot AUROC is {metric} at step {state['step']}; the "
                                             f"last good checkpoint is in {output_dir / 'checkpoints'}")
                accelerator.log({"validate/mean_auroc": metric}, step=state["step"])
                logger.info("step %d: validation zero-shot mean AUROC %.3f (loss %.3f)", state["step"], metric, terms["loss"])
                if state["best_metric"] is None or metric > state["best_metric"]:
                    state["best_metric"], state["best_step"] = metric, state["step"]
                    if accelerator.is_main_process:  # on disk, so that a resumed run still has it
                        save_file({k: v.contiguous() for k, v in unwrapped.state_dict().items()}, str(best_file) + ".tmp")
                        os.replace(str(best_file) + ".tmp", best_file)
                model.train()
            if state["step"] % checkpoint_every == 0 or state["step"] == total_steps:
                save_checkpoint(accelerator, output_dir, state, args.keep_checkpoints)
            if args.max_steps_this_run and state["step"] >= args.max_steps_this_run:
                logger.info("stopping at step %d as asked", state["step"])
                return
            if state["step"] >= total_steps:
                break
    progress.close()

    accelerator.wait_for_everyone()
    if state["best_step"] is not None:
        unwrapped.load_state_dict(load_file(str(best_file)))
        logger.info("keeping the step-%d weights (best validation mean AUROC %.3f)", state["best_step"], state["best_metric"])
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        results = {"source": source, "best_step": state["best_step"], "validate_mean_auroc": state["best_metric"]}
        if "test" in prepared:
            test = evaluate(unwrapped, processor.tokenizer, prepared["test"], collate, 64)
            results["test"] = test
            print(f"\nZero-shot AUROC on the held-out test split ({test['num_images']} readings, chance = 0.5):")
            for name, value in test["auroc"].items():
                print(f"  {name:<18} {value:.3f}")
            print(f"  {'mean':<18} {test['mean_auroc']:.3f}")
        else:
            results["test_note"] = f"{source} has no test split: no held-out AUROC"
            logger.warning(results["test_note"])
        if state["best_step"] is None:  # validate_mean_auroc is null: say why
            results["validate_note"] = f"{source} has no validate split: the weights of the last step are kept"
        try:
            text = json.dumps(results, indent=1, allow_nan=False)
        except ValueError as error:
            raise FloatingPointError(f"not writing {output_dir / 'eval_results.json'}: a metric is not finite "
                                     f"({results})") from error
        (output_dir / "eval_results.json").write_text(text)
        card = build_model_card(output_dir, repo_id=output_dir.resolve().name)  # egma_hf's model card template filled in
        card.save(output_dir / "README.md")
        print(f"saved to {output_dir}/ (EGMAModel.from_pretrained or pipeline('zero-shot-image-classification'))")
    if keep_process_group:
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()


if __name__ == "__main__":
    sys.exit(main())
