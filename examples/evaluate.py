"""Evaluate an EGMA model on a chest X-ray evaluation set: a JSON and a Markdown report, ROC curves and (for
single-label sets) a confusion matrix as PNG, every number with a 95% bootstrap interval.

    python examples/evaluate.py --model egma-pretrain --dataset rsna --data /data/rsna-pneumonia
    python examples/evaluate.py --model egma-pretrain --dataset chexpert_5x200 --data chexpert_5x200.csv \\
        --images_root /data/chexpert
    python examples/evaluate.py --model egma-pretrain --dataset rsna          # the synthetic twin, built once
    python examples/evaluate.py --model you/egma-cxr --dataset mimic_eye      # pre-training corpus, test split

Sets and what is measured (the paper's protocols, Sec. 4.1):
- chexpert_5x200, rsna, siim: single-label zero-shot classification with the set's prompts (`--prompts`), classes
  matched by name: accuracy, macro-F1, one-vs-rest AUROC, confusion matrix. A constant predictor is flagged.
- chexpert_8x200: image->text and text->image retrieval with the 40 expert queries: Precision@K (the paper's) and
  Recall@K.
- chexpert (official valid.csv), mimic_eye: multi-label zero-shot AUROC per finding from positive/negative prompt
  pairs (`--prompts chexpert_findings` by default).
`--data` is the set's CSV (CheXpert sets) or root folder (rsna, siim, mimic_eye); without it, a small synthetic set
in the same format is built once under $EGMA_HF_CACHE (default ~/.cache/egma_hf).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.utils import validate_repo_id

from egma_hf import EGMAConfig, EGMAModel, EGMAProcessor, ZeroShotClassifier, __version__
from egma_hf.conversion import check_egma_checkpoint
from egma_hf.data import (
    EVALUATION_SETS,
    cached_synthetic_corpus,
    cached_synthetic_evaluation_sets,
    image_size_of,
    load_mimic_eye,
)
from egma_hf.evaluation import (
    check_ks,
    embed_images,
    evaluate_multi_label,
    evaluate_single_label,
    image_file_batches,
    retrieval_metrics,
)
from egma_hf.reporting import check_report, markdown_report
from egma_hf.zero_shot import CHEXPERT_8X200_QUERIES, embed_prompts, resolve_class_prompts

logger = logging.getLogger("evaluate")

SETS = {  # name -> (task, default prompt set, readable name)
    "chexpert_5x200": ("single_label", "chexpert_5x200", "CheXpert 5x200"),
    "rsna": ("single_label", "rsna", "RSNA Pneumonia"),
    "siim": ("single_label", "siim_acr", "SIIM-ACR Pneumothorax"),
    "chexpert_8x200": ("retrieval", None, "CheXpert 8x200"),
    "chexpert": ("multi_label", "chexpert_findings", "CheXpert (official split)"),
    "mimic_eye": ("multi_label", "chexpert_findings", "MIMIC-EYE"),
}
SYNTHETIC_KEYS = {"chexpert": "chexpert_valid"}  # the synthetic tree's valid.csv is CheXpert's test set


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved EGMA directory or a Hub id")
    parser.add_argument("--dataset", required=True, choices=sorted(SETS))
    parser.add_argument("--data", help="the set's CSV (CheXpert sets) or root folder; default: a synthetic twin")
    parser.add_argument("--images_root", help="CheXpert sets: the folder holding train/ and valid/ (default: CSV's)")
    parser.add_argument("--test_ids", help="siim: a file of ImageIds forming the test split")
    parser.add_argument("--split", default="test", help="the split to evaluate, or 'all'")
    parser.add_argument("--prompts", help="a built-in prompt set name or a JSON file {class: prompts}")
    parser.add_argument("--ensemble", default="max", choices=["max", "mean"])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="retrieval cut-offs")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (a smoke run)")
    parser.add_argument("--output_dir", help="default: eval/<dataset>")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args) -> None:
    """Refuse flags that are out of range or do not apply to --dataset, before any work (argparse's usage error)."""
    for name in ("batch_size", "bootstrap", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    try:
        args.ks = check_ks(args.ks)
    except ValueError as error:
        parser.error(f"--ks: {error}")
    if args.test_ids and args.dataset != "siim":
        parser.error(f"--test_ids applies to --dataset siim only, not {args.dataset}")
    if args.images_root and not args.dataset.startswith("chexpert"):
        parser.error(f"--images_root applies to the CheXpert sets only, not {args.dataset}")
    if args.prompts and SETS[args.dataset][0] == "retrieval":
        parser.error("--prompts does not apply to chexpert_8x200 (retrieval uses the 40 expert queries)")
    output_dir = Path(args.output_dir or Path("eval") / args.dataset)
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output_dir {output_dir} is a file, not a folder")


def check_model(name: str) -> None:
    """--model must be a saved EGMA folder (with its processor), or a Hub id whose config is EGMA's."""
    try:
        if Path(name).exists():
            check_egma_checkpoint(name, "--model")
            return
        try:
            validate_repo_id(name)
        except ValueError:
            raise FileNotFoundError(f"--model {name}: no such directory (nor a Hub id)") from None
        config, _ = EGMAConfig.get_config_dict(name)  # config.json only, from the Hub or its cache
        if config.get("model_type") != EGMAConfig.model_type:
            raise ValueError(f"--model {name} is not an EGMA model: its config has model_type "
                             f"{config.get('model_type')!r}, expected {EGMAConfig.model_type!r}")
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None


def load_rows(args):
    """The evaluation images as a Dataset with `image`, `label` and `labels` columns, and where they came from."""
    if args.data is None:
        if args.dataset == "mimic_eye":
            root = cached_synthetic_corpus()
            return load_mimic_eye(root), f"synthetic MIMIC-EYE corpus {root}"
        sets = cached_synthetic_evaluation_sets()
        kwargs = make_paths_absolute(sets, SYNTHETIC_KEYS.get(args.dataset, args.dataset))
        return EVALUATION_SETS[args.dataset].loader(**kwargs), f"synthetic {args.dataset} twin in {sets}"
    data = Path(args.data)
    if args.dataset == "mimic_eye":
        return load_mimic_eye(data), f"MIMIC-EYE {data}"
    loader = EVALUATION_SETS[args.dataset].loader
    if args.dataset in ("rsna", "siim"):
        extra = {"test_ids": args.test_ids} if args.dataset == "siim" and args.test_ids else {}
        return loader(data, **extra), str(data)
    return loader(data, args.images_root or data.parent), str(data)


def make_paths_absolute(root: Path, name: str) -> dict:
    """Loader arguments of a synthetic set, rebuilt from its layout (the cache keeps files, not the returned dict)."""
    chexpert, rsna, siim = root / "CheXpert-v1.0-small", root / "rsna-pneumonia", root / "siim-acr-pneumothorax"
    return {
        "chexpert_5x200": {"csv_path": chexpert / "chexpert_5x200.csv", "images_root": chexpert},
        "chexpert_8x200": {"csv_path": chexpert / "chexpert_8x200.csv", "images_root": chexpert},
        "chexpert_valid": {"csv_path": chexpert / "valid.csv", "images_root": chexpert},
        "rsna": {"root": rsna},
        "siim": {"root": siim, "test_ids": siim / "test_ids.txt"},
    }[name]


def check_images(paths: list[str]) -> None:
    """Every image must exist and have a readable header before any model work starts."""
    failures = []
    for path in paths:
        try:
            image_size_of(path)
        except Exception as error:  # noqa: BLE001 - reported below, file by file
            failures.append(f"{path}: {type(error).__name__}: {error}")
    if failures:
        raise SystemExit(f"{len(failures)} of {len(paths)} images cannot be read:\n  " + "\n  ".join(failures[:10]))


def class_prompts(args, default: str, task: str):
    """(prompts, their name): a built-in set name or a JSON file, checked (and fitted to the task) before any work."""
    name = args.prompts or default
    prompts = name
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"error: --prompts {path}: no such file")
        try:
            prompts = json.loads(path.read_text())
        except (UnicodeDecodeError, ValueError) as error:
            raise SystemExit(f"error: --prompts {path} is not valid JSON: {error}") from None
    try:
        _, negatives = resolve_class_prompts(prompts)
    except ValueError as error:
        raise SystemExit(f"error: --prompts {name}: {error}") from None
    multi_label = task == "multi_label"
    if (negatives is not None) != multi_label:
        needed = "(positive, negative) prompt pairs per finding" if multi_label else "one prompt list per class"
        raise SystemExit(f"--prompts {name} does not fit {args.dataset}: it needs {needed}")
    return prompts, name


def retrieval(model, tokenizer, image_embeds, image_labels, ks, num_bootstrap, seed) -> dict:
    """The paper's 8x200 retrieval: every image against the 40 expert queries, relevant = same class. Precision@K and
    Recall@K per direction, each with a bootstrap interval over the queries; a k above the candidate count, and a
    query with no candidate of its class, are skipped and listed in the report."""
    texts = [(name, query) for name, queries in CHEXPERT_8X200_QUERIES.items() for query in queries]
    text_embeds = embed_prompts(model, tokenizer, [query for _, query in texts])
    text_labels = [name for name, _ in texts]
    return retrieval_metrics(image_embeds, image_labels, text_embeds, text_labels, ks, num_bootstrap, seed)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    task, default_prompts, readable = SETS[args.dataset]
    output_dir = Path(args.output_dir or Path("eval") / args.dataset)
    check_model(args.model)
    if task != "retrieval":  # refuse a bad prompt set before reading any data
        prompts, prompt_name = class_prompts(args, default_prompts, task)

    try:
        rows, source = load_rows(args)
    except (ValueError, OSError) as error:  # the readers name the file, row or column
        raise SystemExit(f"error: {error}") from None
    if args.split != "all":
        splits = sorted(set(rows["split"]))
        if args.split not in splits:
            raise SystemExit(f"error: --split {args.split!r}: {source} has the splits {splits} (or pass 'all')")
        rows = rows.filter(lambda split: split == args.split, input_columns="split")
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    if len(rows) == 0:
        raise SystemExit(f"no images in the {args.split!r} split of {source}")
    paths = list(rows["image"])
    check_images(paths)

    model = EGMAModel.from_pretrained(args.model).eval()
    processor = EGMAProcessor.from_pretrained(args.model)
    report = {"model": args.model, "dataset": args.dataset, "dataset_name": readable, "data": source,
              "split": args.split, "num_images": len(rows), "egma_hf_version": __version__,
              "bootstrap_samples": args.bootstrap}
    if task != "retrieval":
        classifier = ZeroShotClassifier.from_prompts(model, processor.tokenizer, prompts, args.ensemble)
        report.update(prompt_set=prompt_name, ensemble=args.ensemble)
    logger.info("embedding %d images from %s", len(rows), source)
    try:
        image_embeds = embed_images(model, image_file_batches(processor.image_processor, paths, args.batch_size))
    except ValueError as error:  # a file whose header read but whose pixels do not decode
        raise SystemExit(str(error)) from error

    curves = {}  # finding -> (truth, scores) for the ROC plot
    if task == "retrieval":
        report["retrieval"] = retrieval(model, processor.tokenizer, image_embeds, list(rows["label"]), args.ks,
                                        args.bootstrap, args.seed)
    else:
        multi_label = task == "multi_label"
        probabilities = classifier.probabilities(image_embeds).cpu().numpy()
        evaluate = evaluate_multi_label if multi_label else evaluate_single_label
        labels = list(rows["labels"] if multi_label else rows["label"])
        report["zero_shot"] = evaluate(classifier.class_names, probabilities, labels, args.bootstrap, args.seed)
        curves = {}
        for column, name in enumerate(classifier.class_names):
            if name in report["zero_shot"]["auroc"]:
                truth = np.array([name in row for row in labels] if multi_label else [row == name for row in labels])
                curves[name] = (truth, probabilities[:, column])

    report = json.loads(json.dumps(report, default=_json_default, allow_nan=False))  # NaN would fail here, unwritten
    check_report(report, "the evaluation report")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (output_dir / "report.md").write_text(markdown_report(report))
    write_plots(report, curves, output_dir)
    print(markdown_report(report))
    print(f"written to {output_dir}/")
    return 0


def write_plots(report: dict, curves: dict, output_dir: Path) -> None:
    try:
        from egma_hf.visualization import plot_confusion_matrix, plot_roc_curves
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'egma_hf[viz]'): no PNG plots")
        return
    title = f"{report['dataset_name']} ({report['split']})"
    if curves:
        plot_roc_curves(curves, output_dir / "roc_curves.png", title=title)
    if "confusion_matrix" in report.get("zero_shot", {}):
        names = list(report["zero_shot"]["class_counts"])
        plot_confusion_matrix(report["zero_shot"]["confusion_matrix"], names, output_dir / "confusion_matrix.png",
                              title=title)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


if __name__ == "__main__":
    sys.exit(main())
