"""The zero-shot and retrieval evaluation protocols (the paper's Sec. 4.1) on one of `egma_hf.data.EVALUATION_SETS`:
the set's rows, the model check, embedding, scoring and the written report (`examples/evaluate.py` is their CLI).

- `check_model_reference`: a saved EGMA folder (with its processor), or a Hub id whose config is EGMA's.
- `zero_shot_prompts`: the set's prompts (or `prompts`, a built-in name or a JSON file), checked for its task.
- `load_evaluation_rows` / `check_evaluation_rows`: the images of one split (the real set, or its synthetic twin
  built once under $EGMA_HF_CACHE), and that there are some and that every file reads.
- `evaluate_on(model, processor, dataset, ...)` -> (report, curves); `write_report` writes report.json, report.md
  and the PNG plots.

Every check raises ValueError or OSError (FileNotFoundError) naming the flag, file or split at fault.
"""

import json
import logging
from pathlib import Path

import datasets
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..configuration_egma import EGMAConfig
from ..conversion import check_egma_checkpoint
from ..data import EVALUATION_SETS, cached_synthetic_corpus, cached_synthetic_evaluation_sets
from ..zero_shot import ZeroShotClassifier
from .classification import read_class_prompts, score_zero_shot
from .embedding import check_images_readable, embed_images, image_file_batches
from .plots import plot_evaluation_report
from .reports import check_report, markdown_report
from .retrieval import expert_query_retrieval

logger = logging.getLogger(__name__)


def check_model_reference(name: str, argument: str = "--model") -> None:
    """`name` must be a saved EGMA folder (with its processor), or a Hub id whose config.json (read from the Hub or
    its cache, nothing else) has EGMA's model_type."""
    if Path(name).exists():
        check_egma_checkpoint(name, argument)
        return
    try:
        validate_repo_id(name)
    except ValueError:
        raise FileNotFoundError(f"{argument} {name}: no such directory (nor a Hub id)") from None
    config, _ = EGMAConfig.get_config_dict(name)
    if config.get("model_type") != EGMAConfig.model_type:
        raise ValueError(f"{argument} {name} is not an EGMA model: its config has model_type "
                         f"{config.get('model_type')!r}, expected {EGMAConfig.model_type!r}")


def zero_shot_prompts(dataset: str, prompts: str | None = None) -> tuple[str, str | dict] | None:
    """(the prompt set's name, its prompts as `ZeroShotClassifier.from_prompts` takes them) for a classification set:
    `prompts` (a built-in name or a JSON file) or the set's own. None for the retrieval set."""
    entry = EVALUATION_SETS[dataset]
    if entry.task == "retrieval":
        return None
    name = prompts or entry.zero_shot_prompts
    return name, read_class_prompts(name, entry.task == "multi_label", dataset)


def load_evaluation_rows(dataset: str, data=None, split: str = "test", images_root=None, test_ids=None,
                         limit: int | None = None) -> tuple[datasets.Dataset, str]:
    """The images of `split` ('all': every split), the first `limit` of them, as a Dataset with `image`, `label`,
    `labels` and `split`; and where they came from. `data` is the set's CSV (CheXpert sets) or root folder; None
    builds the synthetic twin (for mimic_eye the synthetic corpus) once under $EGMA_HF_CACHE."""
    rows, source = read_evaluation_set(dataset, data, images_root, test_ids)  # the readers name the file, row, column
    if split != "all":
        splits = sorted(set(rows["split"]))
        if split not in splits:
            raise ValueError(f"--split {split!r}: {source} has the splits {splits} (or pass 'all')")
        rows = rows.filter(lambda row_split: row_split == split, input_columns="split")
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return rows, source


def read_evaluation_set(dataset: str, data=None, images_root=None, test_ids=None) -> tuple[datasets.Dataset, str]:
    """Every split of `dataset` from `data` (None: its synthetic twin) through the set's reader, and the source."""
    entry = EVALUATION_SETS[dataset]
    if entry.synthetic is None:  # mimic_eye: the pre-training corpus, by default the synthetic one
        if data is None:
            root = cached_synthetic_corpus()
            return entry.loader(root), f"synthetic {entry.title} corpus {root}"
        return entry.loader(Path(data)), f"{entry.title} {data}"
    if data is None:
        tree = cached_synthetic_evaluation_sets()
        return entry.loader(**entry.synthetic_arguments(tree)), f"synthetic {dataset} twin in {tree}"
    data = Path(data)
    if dataset.startswith("chexpert"):
        return entry.loader(data, images_root or data.parent), str(data)
    return entry.loader(data, **({"test_ids": test_ids} if test_ids else {})), str(data)


def check_evaluation_rows(rows: datasets.Dataset, split: str, source: str) -> None:
    """ValueError when `rows` is empty or any image is missing or has no readable header (before a model loads)."""
    if len(rows) == 0:
        raise ValueError(f"no images in the {split!r} split of {source}")
    check_images_readable(list(rows["image"]))


def evaluate_on(model, processor, dataset: str, data=None, split: str = "test", *, prompts: str | None = None,
                ensemble: str = "max", ks=(1, 5, 10), batch_size: int = 32, bootstrap: int = 1000, seed: int = 0,
                limit: int | None = None, images_root=None, test_ids=None, rows=None) -> tuple[dict, dict]:
    """Evaluate `model` (an EGMAModel) on `dataset`'s `split`: zero-shot classification with `prompts` (see
    `zero_shot_prompts`) or, for chexpert_8x200, expert-query retrieval at `ks`; every number with a `bootstrap`
    interval. `rows`: (rows, source) from `load_evaluation_rows`, already checked; else they are read from `data`.

    Returns (the report, checked and JSON-ready; {class: (truth (N,), scores (N,))} for the ROC plot). An image that
    cannot be decoded is an OSError naming it."""
    entry = EVALUATION_SETS[dataset]
    prompt_set = zero_shot_prompts(dataset, prompts)  # refuse a bad prompt set before reading any data
    if rows is None:
        rows = load_evaluation_rows(dataset, data, split, images_root, test_ids, limit)
        check_evaluation_rows(*rows, split)
    rows, source = rows
    report = {"model": model.name_or_path, "dataset": dataset, "dataset_name": entry.title, "data": source,
              "split": split, "num_images": len(rows), "egma_hf_version": __version__, "bootstrap_samples": bootstrap}
    if prompt_set is not None:
        classifier = ZeroShotClassifier.from_prompts(model, processor.tokenizer, prompt_set[1], ensemble)
        report.update(prompt_set=prompt_set[0], ensemble=ensemble)
    logger.info("embedding %d images from %s", len(rows), source)
    try:
        batches = image_file_batches(processor.image_processor, list(rows["image"]), batch_size)
        image_embeds = embed_images(model, batches)
    except ValueError as error:  # a file whose header read but whose pixels do not decode
        raise OSError(str(error)) from error

    curves = {}
    if entry.task == "retrieval":
        report["retrieval"] = expert_query_retrieval(model, processor.tokenizer, image_embeds, list(rows["label"]),
                                                     ks, bootstrap, seed)
    else:
        labels = list(rows["labels"] if entry.task == "multi_label" else rows["label"])
        report["zero_shot"], curves = score_zero_shot(classifier, image_embeds, labels, bootstrap, seed)
    report = json.loads(json.dumps(report, default=json_value, allow_nan=False))  # NaN would fail here, unwritten
    return check_report(report, "the evaluation report"), curves


def json_value(value):
    """numpy scalars and tensors as JSON numbers and lists (`json.dumps`'s `default`)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_report(report: dict, curves: dict, output_dir) -> None:
    """report.json, report.md and (with matplotlib) the PNG plots in `output_dir`, created if needed."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (output_dir / "report.md").write_text(markdown_report(report))
    try:
        plot_evaluation_report(report, curves, output_dir)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'egma_hf[viz]'): no PNG plots")
