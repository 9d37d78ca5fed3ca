"""Publish a trained EGMA model on the Hugging Face Hub, in one commit: weights, config, processor, the remote code
(so `trust_remote_code=True` works for people without egma_hf installed, the medical zero-shot pipeline included)
and a model card filled in from egma_hf's template (egma_hf/templates/model_card.md). See `egma_hf.hub`.

    python examples/push_to_hub.py --model_dir egma-pretrain --repo_id you/egma-cxr \\
        --eval_report eval/rsna/report.json eval/chexpert_5x200/report.json
    python examples/push_to_hub.py --model_dir egma-pretrain --repo_id you/egma-cxr --dry_run staged/   # no upload

Log in first (`hf auth login` or HF_TOKEN). HF_ENDPOINT points it at another Hub (a private one, or a test server).
"""

import argparse
import sys

from egma_hf.conversion import check_output_folder
from egma_hf.evaluation.reports import load_report
from egma_hf.hub import prepare_upload, push_to_hub, save_for_hub


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a directory written by pretrain.py or save_pretrained")
    parser.add_argument("--repo_id", required=True, help="user/name or org/name on the Hub")
    parser.add_argument("--eval_report", nargs="*", default=[], help="report.json files from examples/evaluate.py")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--datasets", nargs="*", help="dataset names for the card metadata (default: training data)")
    parser.add_argument("--card_template", help="model card template (default: egma_hf/templates/model_card.md)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--commit_message", default="Upload EGMA model")
    parser.add_argument("--dry_run", metavar="DIR", help="write what would be uploaded to DIR and stop")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # every input is checked before anything is written or uploaded
        reports = [load_report(path) for path in args.eval_report]
        card = prepare_upload(args.model_dir, args.repo_id, reports, template_path=args.card_template,
                              license=args.license, datasets=args.datasets)
        if args.dry_run:
            check_output_folder(args.dry_run, args.model_dir, "--dry_run", "--model_dir")
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.dry_run:
        print(f"staged in {args.dry_run}/: " + ", ".join(save_for_hub(args.model_dir, args.dry_run, card)))
        return 0
    commit = push_to_hub(args.model_dir, args.repo_id, card, private=args.private, commit_message=args.commit_message)
    print(f"pushed to {commit.repo_url} (commit {commit.oid})")
    print(f'pipeline("egma-zero-shot-image-classification", model="{args.repo_id}", trust_remote_code=True)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
