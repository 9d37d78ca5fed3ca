"""Publish a trained EGMA model on the Hugging Face Hub, in one commit: weights, config, processor, the remote code
(so `trust_remote_code=True` works for people without egma_hf installed, the medical zero-shot pipeline included)
and a model card filled in from egma_hf's template (egma_hf/templates/model_card.md).

    python examples/push_to_hub.py --model_dir egma-pretrain --repo_id you/egma-cxr \\
        --eval_report eval/rsna/report.json eval/chexpert_5x200/report.json
    python examples/push_to_hub.py --model_dir egma-pretrain --repo_id you/egma-cxr --dry_run staged/   # no upload

Log in first (`hf auth login` or HF_TOKEN). HF_ENDPOINT points it at another Hub (a private one, or a test server).
"""

import argparse
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from egma_hf import EGMAModel, EGMAProcessor
from egma_hf.conversion import check_egma_checkpoint
from egma_hf.model_card import build_model_card, check_repo_id
from egma_hf.pipeline_egma import CUSTOM_PIPELINES
from egma_hf.reporting import load_report


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


def prepare_card(args):
    """Check every input and build the model card, before anything is written or uploaded; SystemExit naming the
    argument or file that is wrong."""
    try:
        check_repo_id(args.repo_id)
        check_egma_checkpoint(args.model_dir, "--model_dir")
        reports = [load_report(path) for path in args.eval_report]
        card = build_model_card(args.model_dir, args.repo_id, reports, template_path=args.card_template,
                                license=args.license, datasets=args.datasets)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.dry_run:
        dry_run = Path(args.dry_run)
        if dry_run.exists() and not dry_run.is_dir():
            raise SystemExit(f"error: --dry_run {dry_run} is a file, not a folder")
        if dry_run.exists() and dry_run.resolve() == Path(args.model_dir).resolve():
            raise SystemExit("error: --dry_run is --model_dir; stage into another folder")
    return card


def stage(args, folder: Path, card) -> None:
    """Write everything the repository gets into `folder`."""
    model = EGMAModel.from_pretrained(args.model_dir)
    processor = EGMAProcessor.from_pretrained(args.model_dir)
    model.config.custom_pipelines = CUSTOM_PIPELINES  # pipeline("egma-zero-shot-image-classification", remote code)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    card.save(folder / "README.md")


def main(argv=None) -> int:
    args = parse_args(argv)
    card = prepare_card(args)
    if args.dry_run:
        stage(args, Path(args.dry_run), card)
        print(f"staged in {args.dry_run}/: " + ", ".join(sorted(p.name for p in Path(args.dry_run).iterdir())))
        return 0
    api = HfApi()
    with tempfile.TemporaryDirectory() as folder:
        stage(args, Path(folder), card)
        url = api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        commit = api.upload_folder(repo_id=args.repo_id, folder_path=folder, commit_message=args.commit_message)
    print(f"pushed to {url} (commit {commit.oid})")
    print(f'pipeline("egma-zero-shot-image-classification", model="{args.repo_id}", trust_remote_code=True)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
