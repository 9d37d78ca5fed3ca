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
import sys

from egma_hf.data.evaluation_sets import UNCERTAIN_POLICIES
from egma_hf.evaluation import LINEAR_PROBE_SETS, LinearProbeSettings, linear_probe_table, run_linear_probe
from egma_hf.training import make_accelerator


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="a saved EGMA directory or a Hub id (with its processor)")
    add("--dataset", required=True, choices=sorted(LINEAR_PROBE_SETS))
    add("--data", help="chexpert: the folder with train.csv/valid.csv; rsna, siim: the root (default: synthetic)")
    add("--images_root", help="chexpert: the folder holding train/ and valid/ (default: --data)")
    add("--test_ids", help="siim: a file of ImageIds forming the test split")
    add("--uncertain", choices=UNCERTAIN_POLICIES, default="per_task",
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


def main(argv=None) -> int:
    try:
        settings = LinearProbeSettings(**vars(parse_args(argv))).check()
    except (ValueError, OSError) as error:
        raise SystemExit(str(error)) from error
    accelerator = make_accelerator(num_threads=settings.num_threads)
    try:
        report = run_linear_probe(settings, accelerator)
    except (ValueError, OSError) as error:  # data that cannot be probed, a model without its image tower
        raise SystemExit(str(error)) from error
    if accelerator.is_main_process:
        print(linear_probe_table(report))
        print(f"written to {settings.output_path}/")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
