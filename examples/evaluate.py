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
import logging
import sys
from pathlib import Path

from egma_hf import EGMAModel, EGMAProcessor
from egma_hf.data import EVALUATION_SETS
from egma_hf.evaluation import (
    check_evaluation_rows,
    check_ks,
    check_model_reference,
    evaluate_on,
    load_evaluation_rows,
    markdown_report,
    write_report,
    zero_shot_prompts,
)


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


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        check_model_reference(args.model)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    try:
        zero_shot_prompts(args.dataset, args.prompts)  # refuse a bad prompt set before reading any data
    except ValueError as error:
        raise SystemExit(f"error: --prompts {error}") from None
    try:
        rows = load_evaluation_rows(args.dataset, args.data, args.split, args.images_root, args.test_ids, args.limit)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    try:
        check_evaluation_rows(*rows, args.split)  # before the model loads
    except ValueError as error:
        raise SystemExit(str(error)) from None

    model = EGMAModel.from_pretrained(args.model).eval()
    processor = EGMAProcessor.from_pretrained(args.model)
    try:
        report, curves = evaluate_on(model, processor, args.dataset, split=args.split, rows=rows,
                                     prompts=args.prompts, ensemble=args.ensemble, ks=args.ks,
                                     batch_size=args.batch_size, bootstrap=args.bootstrap, seed=args.seed)
    except OSError as error:  # a file whose header read but whose pixels do not decode
        raise SystemExit(str(error)) from error
    write_report(report, curves, args.output_dir)
    print(markdown_report(report))
    print(f"written to {args.output_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
