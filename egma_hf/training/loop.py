"""The pre-training loop: `train(settings)` takes a run from its settings to a saved, evaluated model."""

import itertools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import send_to_device, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data import EGMADataCollator, by_split, expand_pixels, prepare_for_training, with_gaze_fraction
from ..evaluation import zero_shot_auroc
from ..hub import build_model_card
from ..losses import EGMALoss
from .accelerator import make_accelerator
from .checkpoints import (
    BEST_WEIGHTS,
    TRAINER_STATE,
    TRAINING_CONFIG,
    check_output_dir,
    resume_checkpoint,
    save_checkpoint,
)
from .settings import TrainingSettings
from .setup import EVALUATION_PROMPTS, build_model_and_processor, check_splits, load_readings
from .shard_data import ShardData, open_shard_data, shard_stream

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "global_loss", "mlce_loss", "fine_grained_loss", "egm_loss")


@dataclass
class TrainingResult:
    """What `train` did. `test` is the zero-shot result on the test split, on the main process only."""

    output_dir: Path
    steps: int  # optimiser steps done, those before a resume included
    best_step: int | None  # the validation step whose weights were kept; None without a validate split
    best_validation_auroc: float | None
    test: dict | None  # zero_shot_auroc's result; None without a test split, off the main process, or stopped early
    stopped_early: bool  # ended by stop_after_steps: its checkpoints are written, its model is not


@dataclass
class _Run:
    """A run's prepared objects, between set-up and the end."""

    model: torch.nn.Module  # as accelerate prepared it (DDP and the like)
    unwrapped: torch.nn.Module
    processor: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: torch.utils.data.DataLoader | None  # the in-memory training split's, as accelerate prepared it
    stream: object | None  # with --shards: this process' ShardStream of training batches
    splits: dict  # the prepared validate and test splits (and train)
    collate: EGMADataCollator
    steps_per_epoch: int
    total_steps: int
    gaze_readings: int  # training readings that keep their gaze


class WithReadingIds:
    """The collator, with each batch's `reading_id` list (named in errors); a class so loader workers can take it."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows):
        batch = self.collate(rows)
        batch["reading_id"] = [row["reading_id"] for row in rows]
        return batch


def train(settings: TrainingSettings, accelerator=None, stop_after_steps: int | None = None) -> TrainingResult:
    """Train as `settings` say: check them, build the data and model, train with checkpoints and validation, keep
    the best validation weights, and save model, processor, eval_results.json and a model card in `output_dir`.

    Without `accelerator`, one is made (`make_accelerator`) and ended at the end. With one, the caller owns it
    (e.g. several runs in one process group): it is not ended, and what this run prepared on it is released at the
    end, so that the next `train` on it saves and loads only its own model. `stop_after_steps` ends the run after
    that many optimiser steps in all, as a crash would: checkpoints are kept, nothing else is written.
    """
    settings.check()
    check_output_dir(settings)
    if stop_after_steps is not None and stop_after_steps < 1:
        raise ValueError(f"stop_after_steps must be at least 1, got {stop_after_steps}")
    owns_accelerator = accelerator is None
    if owns_accelerator:
        accelerator = make_accelerator(settings.gradient_accumulation_steps,
                                       log_with=None if settings.report_to == "none" else settings.report_to,
                                       project_dir=settings.output_dir, num_threads=settings.num_threads)
    else:
        check_accelerator(accelerator, settings)
    callers_trackers = len(accelerator.trackers)
    try:
        return _train(settings, accelerator, stop_after_steps)
    finally:
        if owns_accelerator:
            accelerator.end_training()
        else:  # end this run's trackers only, and release what it prepared
            for tracker in accelerator.trackers[callers_trackers:]:
                tracker.finish()
            del accelerator.trackers[callers_trackers:]
            accelerator.free_memory()


def check_accelerator(accelerator, settings: TrainingSettings):
    """A caller's Accelerator must accumulate and log as the settings say."""
    if accelerator.gradient_accumulation_steps != settings.gradient_accumulation_steps:
        raise ValueError(f"the accelerator accumulates gradients over {accelerator.gradient_accumulation_steps} "
                         f"steps and the settings' gradient_accumulation_steps is "
                         f"{settings.gradient_accumulation_steps}: make it with make_accelerator("
                         f"gradient_accumulation_steps={settings.gradient_accumulation_steps})")
    if settings.report_to != "none" and settings.report_to not in {str(t) for t in accelerator.log_with}:
        raise ValueError(f"the settings report to {settings.report_to}, and the accelerator does not log with it: "
                         f"make it with make_accelerator(log_with={settings.report_to!r}, project_dir=...)")


def _train(settings: TrainingSettings, accelerator, stop_after_steps: int | None) -> TrainingResult:
    output_dir = Path(settings.output_dir)
    resume_from = None
    if settings.resume:
        resume_from, skipped = resume_checkpoint(settings, accelerator.num_processes)
        for problem in skipped if accelerator.is_main_process else ():
            logger.warning("--resume latest: skipping incomplete checkpoint %s (it is replaced when the run gets "
                           "there)", problem)
    accelerator.wait_for_everyone()  # every rank has checked the output dir before the main process writes to it
    set_seed(settings.seed)

    shard_data = None
    if settings.shards:
        shard_data = open_shard_data(settings)
        splits, source = shard_data.splits, shard_data.source
    else:
        readings, source = load_readings(settings, accelerator)
        splits = dict(by_split(readings))
        if "train" not in splits:
            raise SystemExit(f"{source}: no training readings (split column values: "
                             f"{sorted(set(readings['split']))})")
    check_splits(splits, source, settings.batch_size, accelerator.num_processes)
    prepare_output_dir(settings, accelerator)  # only now: data that cannot train leave the folder untouched
    if shard_data is None:
        splits["train"] = with_gaze_fraction(splits["train"], settings.gaze_fraction, seed=settings.seed)
    run = prepare_run(settings, accelerator, splits, shard_data)
    state = {"step": 0, "best_metric": None, "best_step": None}  # as trainer_state.json keeps it
    if resume_from:
        state = restore(accelerator, resume_from, state)

    global_batch = settings.batch_size * accelerator.num_processes * settings.gradient_accumulation_steps
    logger.info("data: %s; train/validate/test readings %s; gaze kept on %d training readings",
                source, [len(splits.get(k, ())) for k in ("train", "validate", "test")], run.gaze_readings)
    logger.info("processes %d, global batch %d (%d per process x %d accumulation), %d steps, loss terms %s",
                accelerator.num_processes, global_batch, settings.batch_size, settings.gradient_accumulation_steps,
                run.total_steps, settings.losses)
    if settings.report_to != "none":
        accelerator.project_configuration.logging_dir = str(output_dir)  # this run's folder, whoever made it
        accelerator.init_trackers("egma", config={k: v for k, v in settings.to_dict().items() if v is not None})

    stopped_early = train_steps(settings, accelerator, run, state, stop_after_steps)
    test = None if stopped_early else finish(settings, accelerator, run, state, source)
    return TrainingResult(output_dir=output_dir, steps=state["step"], best_step=state["best_step"],
                          best_validation_auroc=state["best_metric"], test=test, stopped_early=stopped_early)


def prepare_output_dir(settings: TrainingSettings, accelerator):
    """Empty it if asked to, and write training_config.json (never half written: it marks the folder as a run)."""
    output_dir = Path(settings.output_dir)
    if accelerator.is_main_process:
        if settings.overwrite_output_dir and output_dir.exists() and not settings.resume:
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        settings_file = output_dir / TRAINING_CONFIG
        settings_file.with_suffix(".tmp").write_text(json.dumps(settings.to_dict(), indent=1))
        os.replace(settings_file.with_suffix(".tmp"), settings_file)
    accelerator.wait_for_everyone()


def prepare_run(settings: TrainingSettings, accelerator, splits: dict, shard_data: ShardData | None = None) -> _Run:
    """Model, processor, prepared splits, loader (or shard stream), optimiser and cosine schedule, prepared by
    `accelerator`."""
    with accelerator.main_process_first():  # the main process writes the tokenizer the others then read
        model, processor = build_model_and_processor(settings, splits["train"], Path(settings.output_dir))
    for tower in ("image", "text"):
        if getattr(settings, f"lock_{tower}_tower"):
            try:
                getattr(model, f"lock_{tower}_tower")(getattr(settings, f"lock_{tower}_unlocked_layers"))
            except ValueError as error:
                raise SystemExit(f"--lock_{tower}_unlocked_layers: {error}") from None
    if settings.activation_checkpointing:
        model.activation_checkpointing_enable()
    if settings.no_gather_with_grad:
        model.loss_function = EGMALoss(model.config, gather_with_grad=False)
    collate = EGMADataCollator(processor, same_study_positives=settings.same_study == "positives")
    loader = stream = None
    if shard_data is not None:
        compact = EGMADataCollator(processor, same_study_positives=settings.same_study == "positives",
                                   compact_pixels=True)
        stream, prepared = shard_stream(settings, shard_data, processor.image_processor, WithReadingIds(compact),
                                        accelerator)
        gaze_readings = len(shard_data.gaze_kept)
    else:
        with accelerator.main_process_first():
            prepared = {name: prepare_for_training(data, processor.image_processor) for name, data in splits.items()}
        loader = torch.utils.data.DataLoader(prepared["train"], batch_size=settings.batch_size, shuffle=True,
                                             drop_last=True, collate_fn=WithReadingIds(collate),
                                             num_workers=settings.num_workers,
                                             # its own generator: starting an epoch must not draw from the global
                                             # RNG, or a resumed run's dropout would differ from an uninterrupted one
                                             generator=torch.Generator().manual_seed(settings.seed))
        gaze_readings = sum(splits["train"]["has_gaze"])
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # frozen towers left out
    no_decay = [p for n, p in trainable if p.ndim < 2 or "logit_scale" in n]
    decay = [p for n, p in trainable if p.ndim >= 2 and "logit_scale" not in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    if stream is not None:  # whole accumulations only: an epoch's last short one is left out
        steps_per_epoch = stream.batches_per_epoch // settings.gradient_accumulation_steps
    else:  # each process gets len(loader) // processes batches (drop_last); accelerate steps at the end of each
        # epoch even when the last accumulation is short
        steps_per_epoch = math.ceil(len(loader) // accelerator.num_processes / settings.gradient_accumulation_steps)
    total_steps = settings.max_steps if settings.max_steps is not None else settings.epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(settings.warmup_steps, total_steps // 2), total_steps)
    if stream is not None:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    return _Run(model=model, unwrapped=accelerator.unwrap_model(model), processor=processor, optimizer=optimizer,
                scheduler=scheduler, loader=loader, stream=stream, splits=prepared, collate=collate,
                steps_per_epoch=steps_per_epoch, total_steps=total_steps, gaze_readings=gaze_readings)


def restore(accelerator, checkpoint: Path, state: dict) -> dict:
    """Load a checkpoint into the prepared objects; returns its training state."""
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # checked complete, yet unreadable: name it rather than deserialisation internals
        raise SystemExit(f"--resume: cannot load checkpoint {checkpoint}: {type(error).__name__}: {error}") from error
    saved = json.loads((checkpoint / TRAINER_STATE).read_text())
    logger.info("resumed from %s at step %d", checkpoint, saved["step"])
    return {key: saved[key] for key in state}


def train_steps(settings: TrainingSettings, accelerator, run: _Run, state: dict, stop_after_steps=None) -> bool:
    """Optimiser steps from `state["step"]` to the last, validating and checkpointing on the way; True if
    `stop_after_steps` ended them first."""
    output_dir = Path(settings.output_dir)
    eval_every = settings.eval_every or run.steps_per_epoch
    checkpoint_every = settings.checkpoint_every or run.steps_per_epoch
    progress = tqdm(total=run.total_steps, initial=state["step"], disable=not accelerator.is_local_main_process)
    started, samples, waited = time.perf_counter(), 0, 0.0
    model, unwrapped, optimizer, scheduler = run.model, run.unwrapped, run.optimizer, run.scheduler
    pending = []  # (step, reading ids, loss terms as tensors) of the batches since the losses were last read
    stopped = False
    while state["step"] < run.total_steps and not stopped:
        epoch = state["step"] // run.steps_per_epoch
        skip = (state["step"] % run.steps_per_epoch) * settings.gradient_accumulation_steps
        if run.stream is not None:
            epoch_loader = None
            batches = itertools.islice(run.stream.loader(epoch, skip),
                                       run.steps_per_epoch * settings.gradient_accumulation_steps - skip)
        else:
            run.loader.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
            batches = iter(epoch_loader)
        model.train()
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            if run.stream is not None:
                batch = send_to_device(batch, accelerator.device, non_blocking=True)
                batch["pixel_values"] = expand_pixels(batch["pixel_values"])
            reading_ids = batch.pop("reading_id")
            with accelerator.accumulate(model):
                out = model(**batch, return_loss=True)
                pending.append((state["step"], reading_ids,
                                {k: getattr(out, k).detach() for k in LOSS_TERMS if getattr(out, k) is not None}))
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
            step = state["step"]
            progress.update(1)
            due_validation = "validate" in run.splits and (step % eval_every == 0 or step == run.total_steps)
            due_checkpoint = step % checkpoint_every == 0 or step == run.total_steps
            stopped = bool(stop_after_steps) and stop_after_steps <= step < run.total_steps
            if due_validation or due_checkpoint or stopped or step % settings.log_every == 0:
                terms = read_losses(pending, output_dir)  # the host waits for the device here only
                pending.clear()
                elapsed = time.perf_counter() - started
                logs = {**terms, "logit_scale": unwrapped.logit_scale.exp().item(), "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": samples / elapsed, "data_wait_fraction": waited / elapsed,
                        "memory_mb": peak_memory_mb()}
                progress.set_postfix(loss=f"{terms['loss']:.3f}", scale=f"{logs['logit_scale']:.1f}")
                accelerator.log(logs, step=step)
            if due_validation:
                validate(settings, accelerator, run, state, terms["loss"])
                model.train()
            if due_checkpoint:
                save_checkpoint(accelerator, output_dir, state, settings.keep_checkpoints)
            if stopped:
                logger.info("stopping at step %d as asked", step)
            if stopped or step >= run.total_steps:
                break
        if epoch_loader is not None:
            epoch_loader.end()  # left before its end, it would stay registered with accelerate's gradient state
    progress.close()
    elapsed = time.perf_counter() - started
    logger.info("%d samples in %.1f s: %.1f samples/s, %.1f %% of the time waiting for data", samples, elapsed,
                samples / elapsed, 100 * waited / elapsed)
    return stopped


def read_losses(pending: list, output_dir: Path) -> dict:
    """The mean loss terms of the batches in `pending`, read from the device at once; FloatingPointError naming the
    first batch (step and readings) whose loss is not finite."""
    losses = torch.stack([terms["loss"] for _, _, terms in pending]).float().tolist()
    for (step, reading_ids, terms), loss in zip(pending, losses):
        if not math.isfinite(loss):
            values = {k: v.item() for k, v in terms.items()}
            raise FloatingPointError(f"non-finite loss at step {step} on readings {reading_ids}: {values}; the last "
                                     f"good checkpoint is in {output_dir / 'checkpoints'}")
    names = pending[0][2].keys()
    return {k: torch.stack([terms[k] for _, _, terms in pending]).float().mean().item() for k in names}


def validate(settings: TrainingSettings, accelerator, run: _Run, state: dict, loss: float):
    """Score the validate split; the best step so far keeps its weights on disk, so that a resumed run has them."""
    scores = zero_shot_metrics(run.unwrapped, run.processor.tokenizer, run.splits["validate"], run.collate)
    metric = scores["mean_auroc"]
    if not math.isfinite(metric):
        raise FloatingPointError(f"validation zero-shot AUROC is {metric} at step {state['step']}; the "
                                 f"last good checkpoint is in {Path(settings.output_dir) / 'checkpoints'}")
    accelerator.log({"validate/mean_auroc": metric}, step=state["step"])
    logger.info("step %d: validation zero-shot mean AUROC %.3f (loss %.3f)", state["step"], metric, loss)
    if state["best_metric"] is None or metric > state["best_metric"]:
        state["best_metric"], state["best_step"] = metric, state["step"]
        if accelerator.is_main_process:
            best_file = Path(settings.output_dir) / BEST_WEIGHTS
            save_file({k: v.contiguous() for k, v in run.unwrapped.state_dict().items()}, str(best_file) + ".tmp")
            os.replace(str(best_file) + ".tmp", best_file)


def finish(settings: TrainingSettings, accelerator, run: _Run, state: dict, source: str) -> dict | None:
    """Keep the best validation weights, save model and processor, score the test split once, and write
    eval_results.json and the model card (main process). Returns the test result (None where there is none)."""
    output_dir = Path(settings.output_dir)
    accelerator.wait_for_everyone()
    if state["best_step"] is not None:
        run.unwrapped.load_state_dict(load_file(str(output_dir / BEST_WEIGHTS)))
        logger.info("keeping the step-%d weights (best validation mean AUROC %.3f)", state["best_step"],
                    state["best_metric"])
    if not accelerator.is_main_process:
        return None
    run.unwrapped.save_pretrained(output_dir)
    run.processor.save_pretrained(output_dir)
    results = {"source": source, "best_step": state["best_step"], "validate_mean_auroc": state["best_metric"]}
    test = None
    if "test" in run.splits:
        test = results["test"] = zero_shot_metrics(run.unwrapped, run.processor.tokenizer, run.splits["test"],
                                                   run.collate)
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
    return test


def zero_shot_metrics(model, tokenizer, dataset, collate, batch_size: int = 64) -> dict:
    """zero_shot_auroc over a prepared split, on the run's evaluation prompts."""
    batches = (collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])["pixel_values"]
               for start in range(0, len(dataset), batch_size))
    return zero_shot_auroc(model, tokenizer, batches, list(dataset["labels"]), class_prompts=EVALUATION_PROMPTS)


def peak_memory_mb() -> float:
    """Peak GPU memory of this process, or its peak resident memory on a CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
