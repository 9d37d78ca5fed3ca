"""The paper's Table 4 ablations with 🤗 Accelerate: which loss terms help, and how much gaze they need.

    python examples/ablation.py                       # synthetic corpus, 3 seeds, 30 runs (~2.4 h on 2 CPU cores)
    python examples/ablation.py --quick               # smoke run (the tests): tiny corpus, 2 steps, 2 seeds
    python examples/ablation.py --seeds 0 1 2 3 4 --output_dir ablation-5seeds
    python examples/ablation.py --data /data/mimic-cxr-jpg --gaze_data /data/mimic-eye --sweep_only \
        --gaze_fractions 0 1 --output_dir ablation-corpus   # gaze on MIMIC-CXR's gaze subset, or none
    python examples/ablation.py --data /data/mimic-eye --vision_model microsoft/swin-tiny-patch4-window7-224 \\
        --text_model emilyalsentzer/Bio_ClinicalBERT --max_steps 2000 --lr 1e-5 --global_loss_weight 0
    accelerate launch --multi_gpu --num_processes 4 examples/ablation.py --data ...   # every run on 4 GPUs

For every seed it trains, with pretrain.py's loop (egma_hf.training.train, in this process, one run after
the other):
- the Table 4 configurations: the no-gaze baseline (global + fine-grained contrast, no gaze), MLCE only, EGF
  (MLCE + fine-grained), EGM only and EGF+EGM, the last four with gaze on every training reading;
- the gaze-fraction sweep of EGF+EGM (`--gaze_fractions`, default 0, 1, 5, 10, 50, 100 %). Its 100 % point is the
  EGF+EGM run above, not trained twice. Its 0 % point is a run of its own: without gaze, MLCE is zero but EGM still
  maps each modality onto the other with the model's own similarities, so it is not the baseline.
Every configuration adds the global InfoNCE (`--global_loss_weight`, default 1, which a model trained from scratch
needs; the paper's continued pre-training uses 0).

Equal compute: every run has the same towers, the same data and the same number of optimiser steps (`--max_steps`),
and keeps the weights with the best validation zero-shot AUROC. Within a seed, every configuration starts from the
same initial weights and sees the same batches; the seed changes the initialisation, the batch order, dropout and
which training readings keep their gaze (nested: a seed's 1 % readings are inside its 5 %). All runs use one
synthetic corpus (`--corpus_seed`), so the spread over seeds is the training's, and every configuration is tested on
the same held-out readings.

Measured on the held-out test split (its reports are phrased differently from training): zero-shot mean AUROC of
positive-vs-negative finding prompts (as pretrain.py reports), and image->report / report->image Recall@K
(K = 1, 5, 10) among the split's own pairs, each report relevant to its own image only. Written to `--output_dir`:
`results.json` (every run's metrics, and mean and sample std over seeds per row), `results.md` (the table) and
`gaze_fraction.png` (each metric against the gaze fraction: EGF+EGM with a +-std band, the other configurations as
reference lines). A run whose results exist is skipped, and a killed run resumes from its last checkpoint, so a
stopped ablation continues where it was; changed settings in an existing `--output_dir` are refused.

Default size: pretrain.py's default run, a data-scarce regime like the paper's (MIMIC-EYE has 3.7k images): the
640-reading synthetic corpus (447 train / 60 validate / 130 test readings), batch 32, 260 steps (20 epochs) per run.
Where the cores are busy with other work, use `--num_threads 1`, since two threads then mostly wait for each
other; `--max_steps 130` roughly halves a run. Run times and results: docs/ablation.md.
Flags that this script does not know are passed to every pretrain.py run as they are (e.g. `--lr`,
`--global_loss_weight`, `--warmup_steps`, `--num_threads`); see `python examples/pretrain.py --help`. The planner,
evaluation and summary are `egma_hf.training.ablation`.
"""

import argparse
import dataclasses
from pathlib import Path

from egma_hf.data import default_cache_dir
from egma_hf.training import TrainingSettings
from egma_hf.training.ablation import AblationPlan, run_ablation

SIZES = {  # defaults of the size flags, without and with --quick
    "default": dict(synthetic_samples=640, max_steps=260, batch_size=32, seeds=[0, 1, 2],
                    gaze_fractions=[0.0, 0.01, 0.05, 0.1, 0.5, 1.0], output_dir="ablation"),
    "quick": dict(synthetic_samples=48, max_steps=2, batch_size=8, image_size=64, seeds=[0, 1],
                  gaze_fractions=[0.0, 0.1, 1.0], output_dir="ablation-quick"),
}
# pretrain.py flags this script sets itself, per run or for all runs
OWN_FLAGS = {"--losses", "--gaze_fraction", "--seed", "--output_dir", "--overwrite_output_dir", "--resume", "--config",
             "--epochs"}


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """This script's flags, and the others (for every pretrain.py run)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add = parser.add_argument
    add("--quick", action="store_true",
        help="smoke run: 48 readings, 64 px, 2 steps, 1 thread, seeds 0 1, gaze 0/10/100%%")
    add("--output_dir",
        help=f"default {SIZES['default']['output_dir']}/ ({SIZES['quick']['output_dir']}/ with --quick)")
    add("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; 0 1 with --quick)")
    add("--gaze_fractions", type=float, nargs="+", help="EGF+EGM sweep, fractions of training readings with gaze")
    add("--max_steps", type=int, help="optimiser steps of every run (default 260; 2 with --quick)")
    add("--batch_size", type=int, help="per process (default 32; 8 with --quick)")
    add("--synthetic_samples", type=int, help="readings in the synthetic corpus (default 640; 48 with --quick)")
    add("--corpus_seed", type=int, default=0, help="seed of the one synthetic corpus that every run uses")
    add("--data", help="a real data root or saved dataset, as pretrain.py's --data (default: synthetic corpus)")
    add("--sweep_only", action="store_true",
        help="train only the EGF+EGM gaze-fraction sweep, e.g. --gaze_fractions 0 1 with --gaze_data: gaze on a "
             "corpus' gaze subset against the same corpus without it")
    add("--image_root", help="MIMIC-CXR(-JPG) root, for EGD-CXR and REFLACX roots")
    add("--vision_model", help="pretrained vision tower (default: pretrain.py's small CNN from scratch)")
    add("--text_model", help="pretrained text tower and its tokenizer (default: a 2-layer BERT from scratch)")
    add("--image_size", type=int, help="input size (default: the vision tower's; 64 px with --quick)")
    add("--cache_dir", default=str(default_cache_dir()))
    args, passed_on = parser.parse_known_args(argv)
    for key, value in SIZES["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick and "--num_threads" not in {flag.split("=")[0] for flag in passed_on}:
        passed_on += ["--num_threads", "1"]  # tiny steps: a second thread only waits, and on a busy machine long
    owned = sorted({flag.split("=")[0] for flag in passed_on if flag.split("=")[0] in OWN_FLAGS})
    if owned:
        parser.error(f"{owned} are set by the ablation itself")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.gaze_fractions)) != len(args.gaze_fractions):
        parser.error("--seeds and --gaze_fractions must not repeat a value")
    if not all(0.0 <= f <= 1.0 for f in args.gaze_fractions):
        parser.error("--gaze_fractions must lie in [0, 1]")
    return args, passed_on


def plan_of(args, passed_on) -> AblationPlan:
    """The runs' shared settings: pretrain.py's flags that this script passes on, then this script's own."""
    data = dict(data=args.data, image_root=args.image_root) if args.data else \
        dict(synthetic_samples=args.synthetic_samples, corpus_seed=args.corpus_seed)
    base = dataclasses.replace(TrainingSettings.from_args(passed_on), max_steps=args.max_steps,
                               batch_size=args.batch_size, cache_dir=args.cache_dir, vision_model=args.vision_model,
                               text_model=args.text_model, image_size=args.image_size, **data)
    return AblationPlan(base, seeds=args.seeds, gaze_fractions=args.gaze_fractions, output_dir=Path(args.output_dir),
                        passed_to_pretrain=passed_on, sweep_only=args.sweep_only)


def main(argv=None):
    run_ablation(plan_of(*parse_args(argv)))


if __name__ == "__main__":
    main()
