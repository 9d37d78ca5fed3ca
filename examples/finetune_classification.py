"""Supervised classification on EGMA's image tower with 1%, 10% and 100% of the training labels (the paper's Table 1
protocol, Sec. 4.1): a linear probe on the frozen tower by default, or full fine-tuning; test AUROC with 95% bootstrap
intervals. Runs with `python` or `accelerate launch`.

    python examples/finetune_classification.py --model egma-pretrain --dataset rsna     # synthetic twin, 1/10/100%
    python examples/finetune_classification.py --model egma-pretrain --dataset chexpert \\
        --data /data/CheXpert-v1.0-small --label_fraction 0.01 0.1 1.0
    python examples/finetune_classification.py --model you/egma-cxr --dataset siim --data /data/siim-acr \\
        --test_ids saab_test_ids.txt
    accelerate launch examples/finetune_classification.py --model egma-pretrain --dataset rsna \\
        --data /data/rsna-pneumonia --full_finetune --lr 1e-5 --epochs 10

Data (`--data`; without it, the set's synthetic twin, built once under $EGMA_HF_CACHE, default ~/.cache/egma_hf):
- chexpert: the folder holding `train.csv` and `valid.csv` (images under it or under `--images_root`). Trains on
  train.csv (frontal views), tests on valid.csv, the five competition tasks, multi-label BCE, mean AUROC. The
  validation split for model selection is MGCA's `valid_split.csv` with `train_split.csv` when the folder has them,
  else a seeded `--validation_fraction` of train.csv's patients, stratified by label pattern.
- rsna: the Kaggle download folder; MGCA's 70/15/15 split. siim: the Kaggle folder; `--test_ids` (e.g. Saab et al.'s
  subset) is the test split, else a seeded stratified 70/15/15. Both binary: two logits, cross-entropy, AUROC of the
  positive class's softmax probability.

Label fractions (`--label_fraction`, any values in (0, 1], all run from the same pretrained weights): the training
images are grouped into strata (the class for single-label sets, the pattern of positive tasks for CheXpert); each
stratum keeps max(1, floor(fraction * n + 0.5)) of its n images, the first ones of a seeded shuffle of that stratum.
So every class (every label pattern) keeps at least one image, and for a seed a smaller fraction's images are always
inside a larger one's (nested). The kept ids are written to `label_subsets.json`.

Linear probe: the tower is frozen (and kept in eval mode, so BatchNorm statistics and dropout stay fixed), hence its
features do not change during training. They are computed once per split, before any fraction runs, and the head is
trained on them: each epoch costs a matrix product instead of a pass through the tower. `--no_feature_cache` runs
the frozen tower on every batch instead; it gives the same results (tested), only slower.

Model selection: the epoch with the best validation (mean) AUROC. Outputs in `--output_dir`: `results.json` (one
entry per fraction), `results.md` (the printed table), `predictions.npz` (test ids, targets and each fraction's test
scores), `label_subsets.json`, and with `--save_models` each fraction's classifier (loads with
`EGMAForImageClassification.from_pretrained`).
"""

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from transformers import get_cosine_schedule_with_warmup

from egma_hf import EGMAForImageClassification, EGMAProcessor, __version__
from egma_hf.conversion import check_egma_checkpoint
from egma_hf.data import (
    CHEXPERT_COMPETITION_TASKS,
    EVALUATION_SETS,
    cached_synthetic_evaluation_sets,
    load_chexpert,
    load_image,
)
from egma_hf.metrics import bootstrap_ci, roc_auc

logger = logging.getLogger("finetune_classification")

DATASETS = {"chexpert": "CheXpert (official split)", "rsna": "RSNA Pneumonia", "siim": "SIIM-ACR Pneumothorax"}
SYNTHETIC_ROOTS = {"chexpert": "CheXpert-v1.0-small", "rsna": "rsna-pneumonia", "siim": "siim-acr-pneumothorax"}
MULTI_LABEL, SINGLE_LABEL = "multi_label_classification", "single_label_classification"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="a saved EGMA directory or a Hub id (with its processor)")
    add("--dataset", required=True, choices=sorted(DATASETS))
    add("--data", help="chexpert: the folder with train.csv/valid.csv; rsna, siim: the root (default: synthetic)")
    add("--images_root", help="chexpert: the folder holding train/ and valid/ (default: --data)")
    add("--test_ids", help="siim: a file of ImageIds forming the test split")
    add("--uncertain", choices=["zeros", "ones", "per_task"], default="per_task",
        help="chexpert: how uncertain (-1) training labels are read (per_task: MGCA's)")
    add("--validation_fraction", type=float, default=0.1,
        help="chexpert without valid_split.csv: share of train.csv's patients held out for model selection")
    add("--label_fraction", type=float, nargs="+", default=[0.01, 0.1, 1.0],
        help="fractions of the training labels to train with, each in (0, 1]")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--linear_probe", dest="full_finetune", action="store_false",
                      help="train the head on the frozen image tower (default)")
    mode.add_argument("--full_finetune", action="store_true", help="train the image tower too")
    parser.set_defaults(full_finetune=False)  # store_false's default would otherwise win
    add("--no_feature_cache", action="store_true",
        help="linear probe: run the frozen tower on every batch instead of caching its features (same results)")
    add("--epochs", type=int, default=30)
    add("--batch_size", type=int, default=32, help="per process, for training and inference")
    add("--lr", type=float, help="AdamW learning rate (default: 1e-3 for a linear probe, 1e-5 for full fine-tuning)")
    add("--weight_decay", type=float, default=1e-4)
    add("--warmup_epochs", type=float, default=0.0, help="linear warm-up before the cosine decay")
    add("--seed", type=int, default=0)
    add("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    add("--output_dir", help="default: finetune/<dataset>")
    add("--save_models", action="store_true", help="save each fraction's best classifier under --output_dir")
    add("--num_workers", type=int, default=0)
    add("--num_threads", type=int, help="CPU threads for one process on a CPU (default: all cores)")
    return parser.parse_args(argv)


def check_args(args):
    """Everything that can be wrong with the settings, before any data is read."""
    for fraction in args.label_fraction:
        if not 0.0 < fraction <= 1.0:  # also refuses NaN
            raise SystemExit(f"--label_fraction must be in (0, 1], got {fraction}")
    args.label_fraction = sorted(set(args.label_fraction))
    if not 0.0 < args.validation_fraction < 1.0:
        raise SystemExit(f"--validation_fraction must be in (0, 1), got {args.validation_fraction}")
    if args.full_finetune and args.no_feature_cache:
        raise SystemExit("--no_feature_cache is for linear probes; full fine-tuning never caches features")
    for flag, minimum in (("epochs", 1), ("batch_size", 1), ("bootstrap", 1), ("num_workers", 0), ("num_threads", 1)):
        value = getattr(args, flag)
        if value is not None and value < minimum:
            raise SystemExit(f"--{flag} must be at least {minimum}, got {value}")
    if not 0 <= args.seed < 2**32:
        raise SystemExit(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise SystemExit(f"--lr must be a positive number, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise SystemExit(f"--weight_decay must be a number >= 0, got {args.weight_decay}")
    if not 0 <= args.warmup_epochs <= args.epochs:  # also refuses NaN
        raise SystemExit(f"--warmup_epochs must be in [0, --epochs {args.epochs}], got {args.warmup_epochs}")
    for flag in ("data", "images_root", "test_ids"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            raise SystemExit(f"--{flag}: {value} does not exist")
    if args.test_ids and args.dataset != "siim":
        raise SystemExit("--test_ids is for --dataset siim")
    if args.images_root and args.dataset != "chexpert":
        raise SystemExit("--images_root is for --dataset chexpert (RSNA and SIIM images are read from --data)")
    if args.model.startswith((".", "/")) or Path(args.model).exists():  # a local folder, not a Hub id
        try:
            check_egma_checkpoint(args.model, "--model")
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(str(error)) from error
    output = Path(args.output_dir or Path("finetune") / args.dataset)
    if output.exists() and not output.is_dir():
        raise SystemExit(f"--output_dir {output} is a file, not a folder")
    for flag in ("model", "data", "images_root"):
        value = getattr(args, flag)
        if value and Path(value).exists() and output.resolve() == Path(value).resolve():
            raise SystemExit(f"--output_dir {output} is --{flag}: results and classifiers would be written among "
                             "the inputs; choose another --output_dir")
    if args.lr is None:
        args.lr = 1e-5 if args.full_finetune else 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Task:
    """What the head predicts: `classes` are its logit columns, `reported` the columns AUROC is reported for."""

    problem_type: str
    classes: list[str]
    reported: list[str]


@dataclass
class Split:
    ids: list[str]
    paths: list[str]
    labels: np.ndarray  # (N,) class ids (single-label) or (N, tasks) float 0/1 (multi-label)

    def __len__(self):
        return len(self.ids)

    def select(self, indices) -> "Split":
        return Split([self.ids[i] for i in indices], [self.paths[i] for i in indices], self.labels[indices])


def task_of(dataset: str) -> Task:
    if dataset == "chexpert":
        return Task(MULTI_LABEL, list(CHEXPERT_COMPETITION_TASKS), list(CHEXPERT_COMPETITION_TASKS))
    classes = list(EVALUATION_SETS[dataset].classes)
    return Task(SINGLE_LABEL, classes, classes[1:] if len(classes) == 2 else classes)


def load_rows(args, accelerator) -> tuple[datasets.Dataset, str, bool]:
    """All rows with a `split` column, where they came from, and whether the data has its own validate split."""
    if args.data is None:
        if accelerator.is_main_process:
            cached_synthetic_evaluation_sets()  # the same tree as examples/evaluate.py's
        accelerator.wait_for_everyone()
        root = cached_synthetic_evaluation_sets() / SYNTHETIC_ROOTS[args.dataset]
        test_ids = root / "test_ids.txt" if args.dataset == "siim" else None  # the twin of Saab et al.'s subset
        source = f"synthetic {args.dataset} twin in {root}"
    else:
        root, test_ids, source = Path(args.data), args.test_ids, args.data
    if args.dataset == "rsna":
        return EVALUATION_SETS["rsna"].loader(root), source, True
    if args.dataset == "siim":
        return EVALUATION_SETS["siim"].loader(root, test_ids=test_ids), source, True
    folder = root.parent if root.is_file() else root
    images = args.images_root or folder
    files = ["train_split.csv", "valid_split.csv"] if (folder / "valid_split.csv").is_file() else ["train.csv"]
    parts = [load_chexpert(folder / name, images, uncertain=args.uncertain) for name in files + ["valid.csv"]]
    return datasets.concatenate_datasets(parts), source, len(files) == 2


def to_split(rows: datasets.Dataset, task: Task) -> Split:
    if task.problem_type == MULTI_LABEL:
        labels = np.asarray(rows["targets"], np.float32).reshape(len(rows), len(task.classes))
    else:
        labels = np.asarray([task.classes.index(label) for label in rows["label"]], np.int64)
    return Split(list(rows["id"]), list(rows["image"]), labels)


def strata(split: Split, task: Task) -> list[str]:
    """The class (single-label) or the pattern of positive tasks (multi-label) of each image."""
    if task.problem_type == SINGLE_LABEL:
        return [task.classes[i] for i in split.labels]
    return ["".join("1" if value == 1 else "0" for value in row) for row in split.labels]


def _share(fraction: float, count: int) -> int:
    return math.floor(round(fraction * count, 6) + 0.5)  # round half up; round() first absorbs 0.3 * 5 = 1.4999...


def label_subset(split: Split, task: Task, fraction: float, seed: int) -> list[int]:
    """Indices of the images a label fraction keeps: per stratum max(1, floor(fraction * n + 0.5)), the first of a
    seeded shuffle of the stratum (sorted by id first, so row order does not matter). Nested across fractions."""
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(strata(split, task)):
        groups.setdefault(key, []).append(index)
    rng = np.random.default_rng(seed)
    kept = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda i: split.ids[i])
        order = rng.permutation(len(members))  # drawn for every stratum, whatever the fraction
        kept += [members[i] for i in order[: max(1, _share(fraction, len(members)))]]
    return sorted(kept)


def carve_validation(split: Split, task: Task, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, validate): a seeded `fraction` of the patients, stratified by the label pattern of each patient's
    first image; all of a patient's images go to the same side."""
    patients: dict[str, list[int]] = {}
    for index, image_id in enumerate(split.ids):
        patients.setdefault(image_id.split("/")[0], []).append(index)
    keys = strata(split, task)
    groups: dict[str, list[str]] = {}
    for patient in sorted(patients):
        groups.setdefault(keys[min(patients[patient], key=lambda i: split.ids[i])], []).append(patient)
    rng = np.random.default_rng(seed)
    held_out = set()
    for key in sorted(groups):
        order = rng.permutation(len(groups[key]))
        held_out.update(groups[key][i] for i in order[: _share(fraction, len(groups[key]))])
    validate = sorted(i for p in held_out for i in patients[p])
    train = sorted(set(range(len(split))) - set(validate))
    return split.select(train), split.select(validate)


def load_splits(args, accelerator, task: Task) -> tuple[dict[str, Split], str, str]:
    """train / validate / test Splits, where they came from, and where the validation split came from."""
    try:
        rows, source, has_validate = load_rows(args, accelerator)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--dataset {args.dataset}: {error}") from error
    split_of = np.asarray(rows["split"])
    splits = {name: to_split(rows.select(np.flatnonzero(split_of == name)), task)
              for name in ("train", "validate", "test")}
    validation = "the data's validate split"
    if args.dataset == "chexpert" and not has_validate:
        splits["train"], splits["validate"] = carve_validation(splits["train"], task, args.validation_fraction,
                                                               args.seed)
        validation = f"{args.validation_fraction:g} of train.csv's patients (seed {args.seed}, stratified)"
    for name, split in splits.items():
        if len(split) == 0:
            raise SystemExit(f"{source}: the {name} split is empty")
    for name in ("validate", "test"):
        defined = [t for t, column in zip(task.reported, truth(splits[name], task).T) if 0 < column.sum() < len(column)]
        if not defined:
            raise SystemExit(f"{source}: AUROC is undefined on the {name} split ({len(splits[name])} images): no "
                             f"task in {task.reported} has both positives and negatives there")
        if len(defined) < len(task.reported):
            logger.warning("%s split: AUROC undefined for %s (one class only); they are left out of the mean",
                           name, sorted(set(task.reported) - set(defined)))
    return splits, source, validation


def truth(split: Split, task: Task) -> np.ndarray:
    """(N, reported) bool: is each image positive for each reported task / class."""
    if task.problem_type == MULTI_LABEL:
        return split.labels == 1
    return split.labels[:, None] == np.array([task.classes.index(name) for name in task.reported])[None, :]


class ImageRows(torch.utils.data.Dataset):
    def __init__(self, split: Split, image_processor):
        self.split, self.image_processor = split, image_processor

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        path = self.split.paths[index]
        try:
            pixels = self.image_processor(images=load_image(path), return_tensors="pt")["pixel_values"][0]
        except Exception as error:
            raise RuntimeError(f"cannot read {path}: {type(error).__name__}: {error}") from error
        return {"pixel_values": pixels, "labels": torch.as_tensor(self.split.labels[index])}


class FeatureRows(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, labels: np.ndarray):
        self.features, self.labels = features, torch.as_tensor(labels)

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return {"features": self.features[index], "labels": self.labels[index]}


# ---------------------------------------------------------------------------------------------------------------
# Model


@contextlib.contextmanager
def quiet_transformers():
    """from_pretrained would print its whole load report (every unused text-tower key) for each fraction."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def load_classifier(args, task: Task) -> EGMAForImageClassification:
    """The pretrained image tower with a new head; refuses a checkpoint whose image tower did not load."""
    with quiet_transformers():
        model, info = EGMAForImageClassification.from_pretrained(
            args.model, num_labels=len(task.classes), problem_type=task.problem_type, output_loading_info=True,
            id2label=dict(enumerate(task.classes)), label2id={name: i for i, name in enumerate(task.classes)})
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("classifier."))
    if missing:  # a tower left at its random init would still train, and quietly report a meaningless AUROC
        raise SystemExit(f"--model {args.model}: {len(missing)} image-tower weights are not in the checkpoint "
                         f"(e.g. {missing[:3]}); is it an EGMA checkpoint?")
    if not args.full_finetune:
        model.freeze_vision_model()
    return model


def head_step(head, batch, problem_type: str):
    logits = head(batch["features"])
    return logits, classification_loss(logits, batch["labels"], problem_type)


def model_step(model, batch, problem_type: str):
    out = model(pixel_values=batch["pixel_values"], labels=batch["labels"])  # EGMAForImageClassification's loss
    return out.logits, out.loss


def classification_loss(logits, labels, problem_type: str):
    """The loss EGMAForImageClassification computes for `problem_type`, on head outputs."""
    if problem_type == MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def scores_of(logits: torch.Tensor, task: Task) -> np.ndarray:
    """(N, reported) probabilities: sigmoid per task (multi-label), softmax column per class (single-label)."""
    logits = logits.float()
    if task.problem_type == MULTI_LABEL:
        return torch.sigmoid(logits).numpy()
    columns = [task.classes.index(name) for name in task.reported]
    return torch.softmax(logits, -1)[:, columns].numpy()


@torch.no_grad()
def predict(accelerator, module, step, loader, task: Task) -> np.ndarray:
    module.eval()
    chunks = [accelerator.gather_for_metrics(step(module, batch, task.problem_type)[0]) for batch in loader]
    scores = scores_of(torch.cat(chunks).cpu(), task)
    if not np.isfinite(scores).all():  # AUROC would rank NaN scores as if they were numbers
        raise FloatingPointError(f"the classifier gives non-finite scores on {int((~np.isfinite(scores)).any(1).sum())}"
                                 " images; try a smaller --lr")
    return scores


@torch.no_grad()
def extract_features(accelerator, model, loader) -> torch.Tensor:
    """(N, C): the frozen tower's pooled features, exactly what EGMAForImageClassification feeds its head."""
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    chunks = [accelerator.gather_for_metrics(unwrapped.get_pooled_features(batch["pixel_values"])) for batch in loader]
    return torch.cat(chunks).cpu()


def mean_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean over the columns with both classes; ValueError if there is none (a bootstrap resample skips it)."""
    values = [roc_auc(t, s) for t, s in zip(targets.T, scores.T) if 0 < t.sum() < len(t)]
    if not values:
        raise ValueError("AUROC is undefined for every task")
    return float(np.mean(values))


def auroc_interval(metric, targets, scores, args) -> dict:
    """bootstrap_ci, or the value with null bounds and the reason when every resample was undefined (a tiny split)."""
    try:
        return bootstrap_ci(metric, targets, scores, num_samples=args.bootstrap, seed=args.seed)
    except ValueError as error:
        return {"value": metric(targets, scores), "low": None, "high": None, "num_samples": 0,
                "skipped": args.bootstrap, "note": f"no 95% interval: {error}"}


def score_test_split(targets: np.ndarray, scores: np.ndarray, task: Task, args) -> dict:
    per_task = {}
    for name, t, s in zip(task.reported, targets.T, scores.T):
        per_task[name] = auroc_interval(roc_auc, t, s, args) if 0 < t.sum() < len(t) else None
    defined = [i for i, name in enumerate(task.reported) if per_task[name] is not None]
    mean = auroc_interval(mean_auroc, targets[:, defined], scores[:, defined], args)
    return {"auroc": per_task, "mean_auroc": mean, "num_images": len(targets),
            "positives": {name: int(t.sum()) for name, t in zip(task.reported, targets.T)}}


# ---------------------------------------------------------------------------------------------------------------
# Training


def fit(args, accelerator, module, step, train_rows, validate_rows, validate_truth, task: Task) -> dict:
    """Train `module` (a head on features, or the classifier on images); keep the epoch with the best validation
    AUROC. Returns {"best_epoch", "validate_mean_auroc", "history"} and leaves the best weights in `module`."""
    parameters = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in parameters if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for n, p in parameters if p.ndim < 2], "weight_decay": 0.0},  # biases, norms
    ], lr=args.lr)
    loader = torch.utils.data.DataLoader(train_rows, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.num_workers,
                                         generator=torch.Generator().manual_seed(args.seed))
    validate_loader = torch.utils.data.DataLoader(validate_rows, batch_size=args.batch_size,
                                                  num_workers=args.num_workers)
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes)
    total = args.epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(args.warmup_epochs * steps_per_epoch), total)
    module, optimizer, loader, validate_loader, scheduler = accelerator.prepare(
        module, optimizer, loader, validate_loader, scheduler)
    unwrapped = accelerator.unwrap_model(module)
    best, history = None, []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        module.train()  # a frozen tower stays in eval mode (EGMAForImageClassification.train)
        losses = []
        for batch in loader:
            _, loss = step(module, batch, task.problem_type)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss ({loss.item()}) in epoch {epoch + 1}; try a "
                                         f"smaller --lr (now {args.lr})")
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        metric = mean_auroc(validate_truth, predict(accelerator, module, step, validate_loader, task))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "validate_mean_auroc": metric})
        if best is None or metric > best["validate_mean_auroc"]:
            state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
            best = {"best_epoch": epoch + 1, "validate_mean_auroc": metric, "state": state}
    unwrapped.load_state_dict(best.pop("state"))
    logger.info("  best epoch %d of %d: validation mean AUROC %.3f", best["best_epoch"], args.epochs,
                best["validate_mean_auroc"])
    return {**best, "history": history}


def run_fraction(args, accelerator, task, splits, subset, image_processor, features) -> tuple[dict, np.ndarray, object]:
    """Train from the pretrained weights on `subset` of the training images; test scores of the best epoch."""
    set_seed(args.seed)  # the head starts the same in every fraction and on both linear-probe paths
    model = load_classifier(args, task)
    truth_validate = truth(splits["validate"], task)
    if features is not None:
        model.to(accelerator.device)
        head = model.classifier
        rows = {name: FeatureRows(features[name], splits[name].labels) for name in features}
        rows["train"] = FeatureRows(features["train"][subset], splits["train"].labels[subset])
        result = fit(args, accelerator, head, head_step, rows["train"], rows["validate"], truth_validate, task)
        module, step = head, head_step
    else:
        rows = {name: ImageRows(split, image_processor) for name, split in splits.items()}
        rows["train"] = ImageRows(splits["train"].select(subset), image_processor)
        result = fit(args, accelerator, model, model_step, rows["train"], rows["validate"], truth_validate, task)
        module, step = model, model_step
    test_loader = accelerator.prepare(torch.utils.data.DataLoader(rows["test"], batch_size=args.batch_size,
                                                                  num_workers=args.num_workers))
    scores = predict(accelerator, module, step, test_loader, task)
    return result, scores, model


def cache_features(args, accelerator, task, splits, image_processor) -> dict[str, torch.Tensor]:
    """Each split's frozen-tower features, computed once for all fractions."""
    model = load_classifier(args, task)
    features = {}
    for name, split in splits.items():
        loader = accelerator.prepare(torch.utils.data.DataLoader(ImageRows(split, image_processor),
                                                                 batch_size=args.batch_size,
                                                                 num_workers=args.num_workers))
        started = time.perf_counter()
        features[name] = extract_features(accelerator, accelerator.prepare_model(model, evaluation_mode=True), loader)
        logger.info("features of the %s split: %s in %.1f s", name, tuple(features[name].shape),
                    time.perf_counter() - started)
    accelerator.free_memory()
    return features


# ---------------------------------------------------------------------------------------------------------------
# Reports


def fraction_key(fraction: float) -> str:
    return f"{fraction:g}"


def markdown_table(report: dict) -> str:
    tasks = report["tasks"]
    columns = tasks + ["Mean"] if len(tasks) > 1 else tasks
    lines = [f"# {report['dataset_name']}: {report['mode'].replace('_', ' ')}, test AUROC % (95% CI)", "",
             f"- model: `{report['model']}`; data: {report['data']}",
             f"- images: train {report['splits']['train']}, validate {report['splits']['validate']} "
             f"({report['validation']}), test {report['splits']['test']}", "",
             "| Label fraction | Train images | Best epoch | " + " | ".join(columns) + " |",
             "|---" * (3 + len(columns)) + "|"]
    for entry in report["results"]:
        test = entry["test"]
        cells = [test["auroc"][name] for name in tasks] + ([test["mean_auroc"]] if len(tasks) > 1 else [])
        lines.append(f"| {entry['label_fraction']:.0%} | {entry['train_images']} | {entry['best_epoch']} | "
                     + " | ".join(percent_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def percent_cell(interval) -> str:
    if interval is None:
        return "n/a"
    if interval["low"] is None:
        return f"{100 * interval['value']:.1f} (no CI)"
    return f"{100 * interval['value']:.1f} ({100 * interval['low']:.1f}–{100 * interval['high']:.1f})"


def main(argv=None) -> int:
    args = parse_args(argv)
    accelerator = Accelerator(
        # several processes on a machine without GPUs: accelerate sets up gloo only when told it runs on the CPU
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    check_args(args)
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1:
        torch.set_num_threads(args.num_threads or len(os.sched_getaffinity(0)))
    task = task_of(args.dataset)
    try:  # before any data is read
        image_processor = EGMAProcessor.from_pretrained(args.model).image_processor
    except (OSError, ValueError) as error:
        raise SystemExit(f"--model {args.model}: no EGMA processor to prepare images with ({error})") from error
    splits, source, validation = load_splits(args, accelerator, task)
    mode = "full_finetune" if args.full_finetune else "linear_probe"
    use_cache = not args.full_finetune and not args.no_feature_cache
    logger.info("%s on %s; images train/validate/test %d/%d/%d (validation: %s); %s, %s", mode, source,
                *(len(splits[k]) for k in ("train", "validate", "test")), validation, task.problem_type,
                "cached features" if use_cache else "images every step")
    output_dir = Path(args.output_dir or Path("finetune") / args.dataset)
    subsets = {fraction: label_subset(splits["train"], task, fraction, args.seed) for fraction in args.label_fraction}
    for fraction, subset in subsets.items():
        positives = truth(splits["train"].select(subset), task).sum(0)
        logger.info("label fraction %g keeps %d of %d training images; positives %s", fraction, len(subset),
                    len(splits["train"]), dict(zip(task.reported, positives.tolist())))
    features = cache_features(args, accelerator, task, splits, image_processor) if use_cache else None

    test_truth = truth(splits["test"], task)
    report = {"model": args.model, "dataset": args.dataset, "dataset_name": DATASETS[args.dataset], "data": source,
              "mode": mode, "feature_cache": use_cache, "problem_type": task.problem_type, "classes": task.classes,
              "tasks": task.reported, "validation": validation,
              "splits": {name: len(split) for name, split in splits.items()},
              "settings": {k: v for k, v in vars(args).items()}, "egma_hf_version": __version__, "results": []}
    predictions = {"test_ids": np.asarray(splits["test"].ids), "test_targets": test_truth.astype(np.int8)}
    for fraction, subset in subsets.items():
        logger.info("label fraction %g: training on %d images", fraction, len(subset))
        started = time.perf_counter()
        result, scores, model = run_fraction(args, accelerator, task, splits, subset, image_processor, features)
        test = score_test_split(test_truth, scores, task, args)
        kept = truth(splits["train"].select(subset), task).sum(0)
        report["results"].append({"label_fraction": fraction, "train_images": len(subset),
                                  "train_positives": dict(zip(task.reported, kept.tolist())), **result,
                                  "test": test, "seconds": round(time.perf_counter() - started, 2)})
        predictions[f"test_scores_{fraction_key(fraction)}"] = scores
        logger.info("  test mean AUROC %s", percent_cell(test["mean_auroc"]))
        if args.save_models and accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(output_dir / f"model_fraction_{fraction_key(fraction)}")
            image_processor.save_pretrained(output_dir / f"model_fraction_{fraction_key(fraction)}")
        accelerator.free_memory()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            text = json.dumps(report, indent=1, allow_nan=False)
        except ValueError as error:
            raise FloatingPointError(f"not writing {output_dir / 'results.json'}: a value is not finite") from error
        (output_dir / "results.json").write_text(text)
        (output_dir / "results.md").write_text(markdown_table(report))
        np.savez(output_dir / "predictions.npz", **predictions)
        (output_dir / "label_subsets.json").write_text(json.dumps(
            {fraction_key(f): [splits["train"].ids[i] for i in subset] for f, subset in subsets.items()}))
        print(markdown_table(report))
        print(f"written to {output_dir}/")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
