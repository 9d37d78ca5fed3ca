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
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import datasets
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertTokenizerFast, get_cosine_schedule_with_warmup

from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
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
from egma_hf.evaluation import zero_shot_auroc
from egma_hf.model_card import build_model_card

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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    add("--overwrite_output_dir", action="store_true")
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
    add("--resume", help='"latest" or a checkpoint folder')
    add("--activation_checkpointing", action="store_true")
    add("--no_gather_with_grad", action="store_true", help="contrast against the local batch only")
    add("--report_to", choices=["none", "tensorboard"], default="none")
    add("--num_workers", type=int, default=0)
    add("--num_threads", type=int, default=None,
        help="CPU threads for one process on a CPU (default: all cores; accelerate launch would otherwise set 1)")
    add("--max_steps_this_run", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash
    args = parser.parse_args(argv)
    if args.config:
        text = Path(args.config).read_text()
        values = yaml.safe_load(text) if args.config.endswith((".yaml", ".yml")) else json.loads(text)
        unknown = set(values) - set(vars(args))
        if unknown:
            parser.error(f"{args.config}: unknown setting(s) {sorted(unknown)}")
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    return args


def check_args(args):
    """Everything that can be wrong with the settings, before any work starts."""
    if not 0.0 <= args.gaze_fraction <= 1.0:
        raise SystemExit(f"--gaze_fraction must be in [0, 1], got {args.gaze_fraction}")
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
    output = Path(args.output_dir)
    config_file = output / "training_config.json"
    if output.exists() and any(output.iterdir()) and not args.overwrite_output_dir:
        if not config_file.is_file():
            raise SystemExit(f"--output_dir {output} is not empty and holds no run; use --overwrite_output_dir")
        previous = json.loads(config_file.read_text())
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
    """Written to step_N.tmp, then renamed: a kill during the save never leaves a half checkpoint named step_N."""
    final = output_dir / "checkpoints" / f"step_{state['step']:07d}"
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every rank has written its part (its RNG state) before the rename
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps(state, indent=1))
        os.replace(partial, final)
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


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
    return zero_shot_auroc(model, tokenizer, batches, list(dataset["labels"]))


def main(argv=None, keep_process_group: bool = False):
    """Train as the flags say. `keep_process_group=True` leaves torch.distributed's process group up at the end, for
    a caller that trains again in the same processes (examples/ablation.py)."""
    args = parse_args(argv)
    if args.losses in ("no_gaze", "clip"):
        args.gaze_fraction = 0.0
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
    check_args(args)
    accelerator.wait_for_everyone()  # every rank has checked the output dir before the main process writes to it
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1:
        torch.set_num_threads(args.num_threads or len(os.sched_getaffinity(0)))
    set_seed(args.seed)
    if accelerator.is_main_process:
        if args.overwrite_output_dir and output_dir.exists() and not args.resume:
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_config.json").write_text(json.dumps(run_settings(args), indent=1))
    accelerator.wait_for_everyone()

    readings, source = load_readings(args, accelerator)
    splits = dict(by_split(readings))
    if "train" not in splits:
        raise SystemExit(f"{source}: no training readings (split column values: {sorted(set(readings['split']))})")
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
    steps_per_epoch = max(1, len(loader) // (accelerator.num_processes * args.gradient_accumulation_steps))
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, total_steps // 2), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    state = {"step": 0, "best_metric": None, "best_step": None}
    if args.resume:
        found = checkpoints(output_dir)
        path = (found[-1] if found else None) if args.resume == "latest" else Path(args.resume)
        if path is None or not path.is_dir():
            raise SystemExit(f"--resume {args.resume}: no checkpoint in {output_dir / 'checkpoints'}")
        accelerator.load_state(str(path))
        state = json.loads((path / "trainer_state.json").read_text())
        logger.info("resumed from %s at step %d", path, state["step"])

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
    best_file = output_dir / "best_weights.safetensors"
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
        (output_dir / "eval_results.json").write_text(json.dumps(results, indent=1))
        build_model_card(output_dir, repo_id=output_dir.name).save(output_dir / "README.md")  # MODEL_CARD.md filled in
        print(f"saved to {output_dir}/ (EGMAModel.from_pretrained or pipeline('zero-shot-image-classification'))")
    if keep_process_group:
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()


if __name__ == "__main__":
    sys.exit(main())
