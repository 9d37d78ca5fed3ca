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

from huggingface_hub.utils import validate_repo_id

from egma_hf import EGMAConfig, EGMAModel, EGMAProcessor, ZeroShotClassifier, __version__
from egma_hf.conversion import check_egma_checkpoint
from egma_hf.data import EVALUATION_SETS, cached_synthetic_corpus, cached_synthetic_evaluation_sets
from egma_hf.evaluation import (
    check_images_readable,
    check_ks,
    check_report,
    embed_images,
    expert_query_retrieval,
    image_file_batches,
    markdown_report,
    read_class_prompts,
    score_zero_shot,
)
from egma_hf.evaluation.plots import plot_evaluation_report

logger = logging.getLogger("evaluate")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved EGMA directory or a Hub id")
    parser.add_argument("--dataset", required=True, choices=sorted(EVALUATION_SETS))
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
    for name in ("batch_size", "bootstrap", "limit"):  # before any work, as argparse's usage error
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
    if args.prompts and EVALUATION_SETS[args.dataset].task == "retrieval":
        parser.error("--prompts does not apply to chexpert_8x200 (retrieval uses the 40 expert queries)")
    args.output_dir = Path(args.output_dir or Path("eval") / args.dataset)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output_dir {args.output_dir} is a file, not a folder")
    return args


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
    """The evaluation images (a Dataset with `image`, `label`, `labels` and `split`) and where they came from."""
    entry = EVALUATION_SETS[args.dataset]
    if entry.synthetic is None:  # mimic_eye: the pre-training corpus, by default the synthetic one
        if args.data is None:
            root = cached_synthetic_corpus()
            return entry.loader(root), f"synthetic {entry.title} corpus {root}"
        return entry.loader(Path(args.data)), f"{entry.title} {args.data}"
    if args.data is None:
        tree = cached_synthetic_evaluation_sets()
        return entry.loader(**entry.synthetic_arguments(tree)), f"synthetic {args.dataset} twin in {tree}"
    data = Path(args.data)
    if args.dataset.startswith("chexpert"):
        return entry.loader(data, args.images_root or data.parent), str(data)
    return entry.loader(data, **({"test_ids": args.test_ids} if args.test_ids else {})), str(data)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    entry = EVALUATION_SETS[args.dataset]
    check_model(args.model)
    try:
        if entry.task != "retrieval":  # refuse a bad prompt set before reading any data
            prompt_name = args.prompts or entry.zero_shot_prompts
            prompts = read_class_prompts(prompt_name, entry.task == "multi_label", args.dataset)
    except ValueError as error:
        raise SystemExit(f"error: --prompts {error}") from None
    try:
        rows, source = load_rows(args)  # the readers name the file, row or column
        if args.split != "all":
            splits = sorted(set(rows["split"]))
            if args.split not in splits:
                raise ValueError(f"--split {args.split!r}: {source} has the splits {splits} (or pass 'all')")
            rows = rows.filter(lambda split: split == args.split, input_columns="split")
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    if len(rows) == 0:
        raise SystemExit(f"no images in the {args.split!r} split of {source}")
    paths = list(rows["image"])
    try:
        check_images_readable(paths)
    except ValueError as error:
        raise SystemExit(str(error)) from None

    model = EGMAModel.from_pretrained(args.model).eval()
    processor = EGMAProcessor.from_pretrained(args.model)
    report = {"model": args.model, "dataset": args.dataset, "dataset_name": entry.title, "data": source,
              "split": args.split, "num_images": len(rows), "egma_hf_version": __version__,
              "bootstrap_samples": args.bootstrap}
    if entry.task != "retrieval":
        classifier = ZeroShotClassifier.from_prompts(model, processor.tokenizer, prompts, args.ensemble)
        report.update(prompt_set=prompt_name, ensemble=args.ensemble)
    logger.info("embedding %d images from %s", len(rows), source)
    try:
        image_embeds = embed_images(model, image_file_batches(processor.image_processor, paths, args.batch_size))
    except ValueError as error:  # a file whose header read but whose pixels do not decode
        raise SystemExit(str(error)) from error

    curves = {}  # class -> (truth, scores) for the ROC plot
    if entry.task == "retrieval":
        report["retrieval"] = expert_query_retrieval(model, processor.tokenizer, image_embeds, list(rows["label"]),
                                                     args.ks, args.bootstrap, args.seed)
    else:
        labels = list(rows["labels"] if entry.task == "multi_label" else rows["label"])
        report["zero_shot"], curves = score_zero_shot(classifier, image_embeds, labels, args.bootstrap, args.seed)

    report = json.loads(json.dumps(report, default=to_json, allow_nan=False))  # NaN would fail here, unwritten
    check_report(report, "the evaluation report")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (args.output_dir / "report.md").write_text(markdown_report(report))
    try:
        plot_evaluation_report(report, curves, args.output_dir)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'egma_hf[viz]'): no PNG plots")
    print(markdown_report(report))
    print(f"written to {args.output_dir}/")
    return 0


def to_json(value):
    """numpy scalars and tensors as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


if __name__ == "__main__":
    sys.exit(main())
