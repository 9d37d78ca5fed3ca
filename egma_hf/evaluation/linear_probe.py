"""The paper's supervised protocol (Table 1, Sec. 4.1) on EGMA's image tower: 1%, 10% and 100% of the training labels,
each from the same pretrained weights; a linear probe on the frozen tower, or full fine-tuning; the epoch with the
best validation (mean) AUROC kept; test AUROC with 95% bootstrap intervals.

- Sets (`LINEAR_PROBE_SETS`): CheXpert (train.csv's frontal views, tested on valid.csv; the five competition tasks,
  multi-label BCE, mean AUROC), RSNA Pneumonia and SIIM-ACR (binary: two logits, cross-entropy, AUROC of the
  positive class's softmax probability).
- Validation: the data's own validate split; for CheXpert MGCA's `valid_split.csv` with `train_split.csv` when the
  folder has them, else `carve_validation`: a seeded share of train.csv's patients, stratified by label pattern.
- Label fractions (`label_subset`): per stratum (the class, or CheXpert's pattern of positive tasks) of n images,
  max(1, floor(fraction * n + 0.5)), the first of a seeded shuffle; nested across fractions for a seed.
- Feature cache: a frozen tower (kept in eval mode) computes the same features every epoch, so they are computed
  once per split (`cache_features`) and the head trains on them, with the results of running the tower each step.

`run_linear_probe(settings, accelerator)` runs it all and writes `results.json`, `results.md`, `predictions.npz`,
`label_subsets.json` (and, with `save_models`, each fraction's classifier) to `settings.output_path`.
"""

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from accelerate.utils import set_seed
from transformers import get_cosine_schedule_with_warmup

from .. import __version__
from ..conversion import check_egma_checkpoint
from ..data import CHEXPERT_COMPETITION_TASKS, EVALUATION_SETS, cached_synthetic_evaluation_sets, load_chexpert
from ..data.evaluation_sets import UNCERTAIN_POLICIES
from ..data.images import load_image
from ..modeling_egma import EGMAForImageClassification, classification_loss
from ..processing_egma import EGMAProcessor
from .metrics import auroc_defined, bootstrap_ci, column_aurocs, mean_auroc, roc_auc
from .reports import linear_probe_table, percent_cell

logger = logging.getLogger(__name__)

LINEAR_PROBE_SETS = tuple(name for name, entry in EVALUATION_SETS.items() if entry.linear_probe)
MULTI_LABEL, SINGLE_LABEL = "multi_label_classification", "single_label_classification"


@dataclass
class LinearProbeSettings:
    """One run of the protocol; the fields are examples/finetune_classification.py's flags. `check()` refuses what
    cannot run, before any data is read."""

    model: str  # a saved EGMA directory or a Hub id (with its processor)
    dataset: str  # one of LINEAR_PROBE_SETS
    data: str | None = None  # chexpert: the folder with train.csv / valid.csv; rsna, siim: the root (None: synthetic)
    images_root: str | None = None  # chexpert: the folder holding train/ and valid/ (default: data)
    test_ids: str | None = None  # siim: a file of ImageIds forming the test split
    uncertain: str = "per_task"  # chexpert: how uncertain (-1) training labels are read
    validation_fraction: float = 0.1  # chexpert without valid_split.csv: share of patients held out
    label_fraction: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    full_finetune: bool = False  # train the image tower too (default: a linear probe)
    no_feature_cache: bool = False  # linear probe: run the frozen tower on every batch (same results, slower)
    epochs: int = 30
    batch_size: int = 32  # per process, for training and inference
    lr: float | None = None  # AdamW; check() sets 1e-3 for a linear probe, 1e-5 for full fine-tuning
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0  # linear warm-up before the cosine decay
    seed: int = 0
    bootstrap: int = 1000  # bootstrap resamples for the 95% intervals
    output_dir: str | None = None  # default: finetune/<dataset>
    save_models: bool = False  # save each fraction's best classifier under output_dir
    num_workers: int = 0
    num_threads: int | None = None  # CPU threads for one process on a CPU (default: all cores)

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir or Path("finetune") / self.dataset)

    def check(self) -> "LinearProbeSettings":
        """ValueError (or FileNotFoundError) naming the flag for everything that can be wrong with the settings;
        sorts the label fractions and fills in the default learning rate."""
        if self.dataset not in LINEAR_PROBE_SETS:
            raise ValueError(f"--dataset must be one of {list(LINEAR_PROBE_SETS)}, got {self.dataset!r}")
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"--uncertain must be one of {list(UNCERTAIN_POLICIES)}, got {self.uncertain!r}")
        for fraction in self.label_fraction:
            if not 0.0 < fraction <= 1.0:  # also refuses NaN
                raise ValueError(f"--label_fraction must be in (0, 1], got {fraction}")
        self.label_fraction = sorted(set(self.label_fraction))
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.full_finetune and self.no_feature_cache:
            raise ValueError("--no_feature_cache is for linear probes; full fine-tuning never caches features")
        for flag, minimum in (("epochs", 1), ("batch_size", 1), ("bootstrap", 1), ("num_workers", 0),
                              ("num_threads", 1)):
            value = getattr(self, flag)
            if value is not None and value < minimum:
                raise ValueError(f"--{flag} must be at least {minimum}, got {value}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight_decay must be a number >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:  # also refuses NaN
            raise ValueError(f"--warmup_epochs must be in [0, --epochs {self.epochs}], got {self.warmup_epochs}")
        for flag in ("data", "images_root", "test_ids"):
            value = getattr(self, flag)
            if value and not Path(value).exists():
                raise ValueError(f"--{flag}: {value} does not exist")
        if self.test_ids and self.dataset != "siim":
            raise ValueError("--test_ids is for --dataset siim")
        if self.images_root and self.dataset != "chexpert":
            raise ValueError("--images_root is for --dataset chexpert (RSNA and SIIM images are read from --data)")
        if self.model.startswith((".", "/")) or Path(self.model).exists():  # a local folder, not a Hub id
            check_egma_checkpoint(self.model, "--model")
        output = self.output_path
        if output.exists() and not output.is_dir():
            raise ValueError(f"--output_dir {output} is a file, not a folder")
        for flag in ("model", "data", "images_root"):
            value = getattr(self, flag)
            if value and Path(value).exists() and output.resolve() == Path(value).resolve():
                raise ValueError(f"--output_dir {output} is --{flag}: results and classifiers would be written "
                                 "among the inputs; choose another --output_dir")
        if self.lr is None:
            self.lr = 1e-5 if self.full_finetune else 1e-3
        return self


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


def load_rows(settings: LinearProbeSettings, accelerator) -> tuple[datasets.Dataset, str, bool]:
    """All rows with a `split` column, where they came from, and whether the data has its own validate split."""
    entry = EVALUATION_SETS[settings.dataset]
    if settings.data is None:
        if accelerator.is_main_process:
            cached_synthetic_evaluation_sets()  # the same tree as examples/evaluate.py's
        accelerator.wait_for_everyone()
        arguments = entry.synthetic_arguments(cached_synthetic_evaluation_sets())
        root = arguments.get("root", arguments.get("images_root"))
        test_ids = arguments.get("test_ids")  # siim: the twin of Saab et al.'s subset
        source = f"synthetic {settings.dataset} twin in {root}"
    else:
        root, test_ids, source = Path(settings.data), settings.test_ids, settings.data
    if settings.dataset == "rsna":
        return entry.loader(root), source, True
    if settings.dataset == "siim":
        return entry.loader(root, test_ids=test_ids), source, True
    folder = root.parent if root.is_file() else root
    images = settings.images_root or folder
    files = ["train_split.csv", "valid_split.csv"] if (folder / "valid_split.csv").is_file() else ["train.csv"]
    parts = [load_chexpert(folder / name, images, uncertain=settings.uncertain) for name in files + ["valid.csv"]]
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


def stratum_share(fraction: float, count: int) -> int:
    """floor(fraction * count + 0.5): round half up; round() first absorbs 0.3 * 5 = 1.4999..."""
    return math.floor(round(fraction * count, 6) + 0.5)


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
        kept += [members[i] for i in order[: max(1, stratum_share(fraction, len(members)))]]
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
        held_out.update(groups[key][i] for i in order[: stratum_share(fraction, len(groups[key]))])
    validate = sorted(i for p in held_out for i in patients[p])
    train = sorted(set(range(len(split))) - set(validate))
    return split.select(train), split.select(validate)


def load_splits(settings: LinearProbeSettings, accelerator, task: Task) -> tuple[dict[str, Split], str, str]:
    """train / validate / test Splits, where they came from, and where the validation split came from."""
    try:
        rows, source, has_validate = load_rows(settings, accelerator)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"--dataset {settings.dataset}: {error}") from error
    split_of = np.asarray(rows["split"])
    splits = {name: to_split(rows.select(np.flatnonzero(split_of == name)), task)
              for name in ("train", "validate", "test")}
    validation = "the data's validate split"
    if settings.dataset == "chexpert" and not has_validate:
        splits["train"], splits["validate"] = carve_validation(splits["train"], task, settings.validation_fraction,
                                                               settings.seed)
        validation = f"{settings.validation_fraction:g} of train.csv's patients (seed {settings.seed}, stratified)"
    for name, split in splits.items():
        if len(split) == 0:
            raise ValueError(f"{source}: the {name} split is empty")
    for name in ("validate", "test"):
        defined = [t for t, ok in zip(task.reported, auroc_defined(truth(splits[name], task))) if ok]
        if not defined:
            raise ValueError(f"{source}: AUROC is undefined on the {name} split ({len(splits[name])} images): no "
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


def load_classifier(settings: LinearProbeSettings, task: Task) -> EGMAForImageClassification:
    """The pretrained image tower with a new head; refuses a checkpoint whose image tower did not load."""
    with quiet_transformers():
        model, info = EGMAForImageClassification.from_pretrained(
            settings.model, num_labels=len(task.classes), problem_type=task.problem_type, output_loading_info=True,
            id2label=dict(enumerate(task.classes)), label2id={name: i for i, name in enumerate(task.classes)})
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("classifier."))
    if missing:  # a tower left at its random init would still train, and quietly report a meaningless AUROC
        raise ValueError(f"--model {settings.model}: {len(missing)} image-tower weights are not in the checkpoint "
                         f"(e.g. {missing[:3]}); is it an EGMA checkpoint?")
    if not settings.full_finetune:
        model.freeze_vision_model()
    return model


def head_step(head, batch, problem_type: str):
    logits = head(batch["features"])
    return logits, classification_loss(logits, batch["labels"], problem_type)


def model_step(model, batch, problem_type: str):
    out = model(pixel_values=batch["pixel_values"], labels=batch["labels"])  # the same classification_loss
    return out.logits, out.loss


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


# ---------------------------------------------------------------------------------------------------------------
# Test scores


def auroc_interval(metric, targets, scores, num_bootstrap: int, seed: int) -> dict:
    """bootstrap_ci, or the value with null bounds and the reason when every resample was undefined (a tiny split)."""
    try:
        return bootstrap_ci(metric, targets, scores, num_samples=num_bootstrap, seed=seed)
    except ValueError as error:
        return {"value": metric(targets, scores), "low": None, "high": None, "num_samples": 0,
                "skipped": num_bootstrap, "note": f"no 95% interval: {error}"}


def score_test_split(targets: np.ndarray, scores: np.ndarray, task: Task, num_bootstrap: int, seed: int) -> dict:
    """AUROC with an interval per reported task (None where it is undefined) and of their mean."""
    def interval(truth, scores):
        return auroc_interval(roc_auc, truth, scores, num_bootstrap, seed)

    per_task, _ = column_aurocs(targets, scores, task.reported, interval)
    defined = auroc_defined(targets)
    return {"auroc": {name: per_task.get(name) for name in task.reported},
            "mean_auroc": auroc_interval(mean_auroc, targets[:, defined], scores[:, defined], num_bootstrap, seed),
            "num_images": len(targets),
            "positives": {name: int(t.sum()) for name, t in zip(task.reported, targets.T)}}


# ---------------------------------------------------------------------------------------------------------------
# Training


def fit(settings: LinearProbeSettings, accelerator, module, step, train_rows, validate_rows, validate_truth,
        task: Task) -> dict:
    """Train `module` (a head on features, or the classifier on images); keep the epoch with the best validation
    AUROC. Returns {"best_epoch", "validate_mean_auroc", "history"} and leaves the best weights in `module`."""
    parameters = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in parameters if p.ndim >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for n, p in parameters if p.ndim < 2], "weight_decay": 0.0},  # biases, norms
    ], lr=settings.lr)
    loader = torch.utils.data.DataLoader(train_rows, batch_size=settings.batch_size, shuffle=True,
                                         num_workers=settings.num_workers,
                                         generator=torch.Generator().manual_seed(settings.seed))
    validate_loader = torch.utils.data.DataLoader(validate_rows, batch_size=settings.batch_size,
                                                  num_workers=settings.num_workers)
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes)
    total = settings.epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(settings.warmup_epochs * steps_per_epoch), total)
    module, optimizer, loader, validate_loader, scheduler = accelerator.prepare(
        module, optimizer, loader, validate_loader, scheduler)
    unwrapped = accelerator.unwrap_model(module)
    best, history = None, []
    for epoch in range(settings.epochs):
        loader.set_epoch(epoch)
        module.train()  # a frozen tower stays in eval mode (EGMAForImageClassification.train)
        losses = []
        for batch in loader:
            _, loss = step(module, batch, task.problem_type)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss ({loss.item()}) in epoch {epoch + 1}; try a "
                                         f"smaller --lr (now {settings.lr})")
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
    logger.info("  best epoch %d of %d: validation mean AUROC %.3f", best["best_epoch"], settings.epochs,
                best["validate_mean_auroc"])
    return {**best, "history": history}


def run_fraction(settings, accelerator, task, splits, subset, image_processor, features) -> tuple[dict, np.ndarray,
                                                                                                   torch.nn.Module]:
    """Train from the pretrained weights on `subset` of the training images; test scores of the best epoch."""
    set_seed(settings.seed)  # the head starts the same in every fraction and on both linear-probe paths
    model = load_classifier(settings, task)
    truth_validate = truth(splits["validate"], task)
    if features is not None:
        model.to(accelerator.device)
        head = model.classifier
        rows = {name: FeatureRows(features[name], splits[name].labels) for name in features}
        rows["train"] = FeatureRows(features["train"][subset], splits["train"].labels[subset])
        result = fit(settings, accelerator, head, head_step, rows["train"], rows["validate"], truth_validate, task)
        module, step = head, head_step
    else:
        rows = {name: ImageRows(split, image_processor) for name, split in splits.items()}
        rows["train"] = ImageRows(splits["train"].select(subset), image_processor)
        result = fit(settings, accelerator, model, model_step, rows["train"], rows["validate"], truth_validate, task)
        module, step = model, model_step
    test_loader = accelerator.prepare(torch.utils.data.DataLoader(rows["test"], batch_size=settings.batch_size,
                                                                  num_workers=settings.num_workers))
    scores = predict(accelerator, module, step, test_loader, task)
    return result, scores, model


def cache_features(settings, accelerator, task, splits, image_processor) -> dict[str, torch.Tensor]:
    """Each split's frozen-tower features, computed once for all fractions."""
    model = load_classifier(settings, task)
    features = {}
    for name, split in splits.items():
        loader = accelerator.prepare(torch.utils.data.DataLoader(ImageRows(split, image_processor),
                                                                 batch_size=settings.batch_size,
                                                                 num_workers=settings.num_workers))
        started = time.perf_counter()
        features[name] = extract_features(accelerator, accelerator.prepare_model(model, evaluation_mode=True), loader)
        logger.info("features of the %s split: %s in %.1f s", name, tuple(features[name].shape),
                    time.perf_counter() - started)
    accelerator.free_memory()
    return features


def fraction_key(fraction: float) -> str:
    return f"{fraction:g}"


def run_linear_probe(settings: LinearProbeSettings, accelerator) -> dict:
    """The whole protocol for checked `settings`; writes its files (main process) and returns the report."""
    task = task_of(settings.dataset)
    try:  # before any data is read
        image_processor = EGMAProcessor.from_pretrained(settings.model).image_processor
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {settings.model}: no EGMA processor to prepare images with ({error})") from error
    splits, source, validation = load_splits(settings, accelerator, task)
    mode = "full_finetune" if settings.full_finetune else "linear_probe"
    use_cache = not settings.full_finetune and not settings.no_feature_cache
    logger.info("%s on %s; images train/validate/test %d/%d/%d (validation: %s); %s, %s", mode, source,
                *(len(splits[k]) for k in ("train", "validate", "test")), validation, task.problem_type,
                "cached features" if use_cache else "images every step")
    output_dir = settings.output_path
    subsets = {fraction: label_subset(splits["train"], task, fraction, settings.seed)
               for fraction in settings.label_fraction}
    for fraction, subset in subsets.items():
        positives = truth(splits["train"].select(subset), task).sum(0)
        logger.info("label fraction %g keeps %d of %d training images; positives %s", fraction, len(subset),
                    len(splits["train"]), dict(zip(task.reported, positives.tolist())))
    features = cache_features(settings, accelerator, task, splits, image_processor) if use_cache else None

    test_truth = truth(splits["test"], task)
    report = {"model": settings.model, "dataset": settings.dataset,
              "dataset_name": EVALUATION_SETS[settings.dataset].title, "data": source, "mode": mode,
              "feature_cache": use_cache, "problem_type": task.problem_type, "classes": task.classes,
              "tasks": task.reported, "validation": validation,
              "splits": {name: len(split) for name, split in splits.items()},
              "settings": dataclasses.asdict(settings), "egma_hf_version": __version__, "results": []}
    predictions = {"test_ids": np.asarray(splits["test"].ids), "test_targets": test_truth.astype(np.int8)}
    for fraction, subset in subsets.items():
        logger.info("label fraction %g: training on %d images", fraction, len(subset))
        started = time.perf_counter()
        result, scores, model = run_fraction(settings, accelerator, task, splits, subset, image_processor, features)
        test = score_test_split(test_truth, scores, task, settings.bootstrap, settings.seed)
        kept = truth(splits["train"].select(subset), task).sum(0)
        report["results"].append({"label_fraction": fraction, "train_images": len(subset),
                                  "train_positives": dict(zip(task.reported, kept.tolist())), **result,
                                  "test": test, "seconds": round(time.perf_counter() - started, 2)})
        predictions[f"test_scores_{fraction_key(fraction)}"] = scores
        logger.info("  test mean AUROC %s", percent_cell(test["mean_auroc"]))
        if settings.save_models and accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(output_dir / f"model_fraction_{fraction_key(fraction)}")
            image_processor.save_pretrained(output_dir / f"model_fraction_{fraction_key(fraction)}")
        accelerator.free_memory()
    if accelerator.is_main_process:
        write_outputs(report, predictions, {fraction_key(f): [splits["train"].ids[i] for i in subset]
                                            for f, subset in subsets.items()}, output_dir)
    return report


def write_outputs(report: dict, predictions: dict, label_subsets: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(report, indent=1, allow_nan=False)
    except ValueError as error:
        raise FloatingPointError(f"not writing {output_dir / 'results.json'}: a value is not finite") from error
    (output_dir / "results.json").write_text(text)
    (output_dir / "results.md").write_text(linear_probe_table(report))
    np.savez(output_dir / "predictions.npz", **predictions)
    (output_dir / "label_subsets.json").write_text(json.dumps(label_subsets))
