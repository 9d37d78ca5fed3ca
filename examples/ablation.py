"""The paper's Table 4 ablations with 🤗 Accelerate: which loss terms help, and how much gaze they need.

    python examples/ablation.py                       # synthetic corpus, 3 seeds, 30 runs (~2.4 h on 2 CPU cores)
    python examples/ablation.py --quick               # smoke run (the tests): tiny corpus, 2 steps, 2 seeds
    python examples/ablation.py --seeds 0 1 2 3 4 --output_dir ablation-5seeds
    python examples/ablation.py --data /data/mimic-eye --vision_model microsoft/swin-tiny-patch4-window7-224 \\
        --text_model emilyalsentzer/Bio_ClinicalBERT --max_steps 2000 --lr 1e-5 --global_loss_weight 0
    accelerate launch --multi_gpu --num_processes 4 examples/ablation.py --data ...   # every run on 4 GPUs

For every seed it trains, through examples/pretrain.py (in this process, one run after the other):
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
`--global_loss_weight`, `--warmup_steps`, `--num_threads`); see `python examples/pretrain.py --help`.
"""

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain  # noqa: E402  (examples/pretrain.py)

from egma_hf import EGMAModel, EGMAProcessor  # noqa: E402
from egma_hf.data import EGMADataCollator, by_split, default_cache_dir, prepare_for_training  # noqa: E402
from egma_hf.evaluation import retrieval_metrics  # noqa: E402
from egma_hf.visualization import _pyplot  # noqa: E402
from egma_hf.zero_shot import embed_pixel_values  # noqa: E402

logger = logging.getLogger("ablation")

TABLE4 = [  # (row, pretrain.py --losses preset), the paper's Table 4 order
    ("Baseline: global + fine-grained, no gaze", "no_gaze"),
    ("MLCE only", "mlce"),
    ("EGF (MLCE + fine-grained)", "egf"),
    ("EGM only", "egm"),
    ("EGF+EGM", "egma"),
]
SWEEP_PRESET = "egma"
METRICS = ["zero_shot_auroc", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"]
METRIC_TITLES = {"zero_shot_auroc": "zero-shot AUROC", "i2t_R@1": "I→R R@1", "i2t_R@5": "I→R R@5",
                 "i2t_R@10": "I→R R@10", "t2i_R@1": "R→I R@1", "t2i_R@5": "R→I R@5", "t2i_R@10": "R→I R@10"}
PLOTTED = ["zero_shot_auroc", "i2t_R@5", "t2i_R@5"]
PAIRED = "zero_shot_auroc"  # compared with the baseline seed by seed
SIZES = {  # defaults of the size flags, without and with --quick
    "default": dict(synthetic_samples=640, max_steps=260, batch_size=32, seeds=[0, 1, 2],
                    gaze_fractions=[0.0, 0.01, 0.05, 0.1, 0.5, 1.0], output_dir="ablation"),
    "quick": dict(synthetic_samples=48, max_steps=2, batch_size=8, image_size=64, seeds=[0, 1],
                  gaze_fractions=[0.0, 0.1, 1.0], output_dir="ablation-quick"),
}
# pretrain.py flags this script sets itself, per run or for all runs
OWN_FLAGS = {"--losses", "--gaze_fraction", "--seed", "--output_dir", "--overwrite_output_dir", "--resume", "--config",
             "--max_steps_this_run", "--epochs"}
# settings that may change between invocations without changing what a finished run means
SETTINGS_INSENSITIVE = pretrain.RESUME_INSENSITIVE | {"cache_dir"}


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add = parser.add_argument
    add("--quick", action="store_true",
        help="smoke run: 48 readings, 64 px, 2 steps, 1 thread, seeds 0 1, gaze 0/10/100%%")
    add("--output_dir", help=f"default {SIZES['default']['output_dir']}/ ({SIZES['quick']['output_dir']}/ with --quick)")
    add("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; 0 1 with --quick)")
    add("--gaze_fractions", type=float, nargs="+", help="EGF+EGM sweep, fractions of training readings with gaze")
    add("--max_steps", type=int, help="optimiser steps of every run (default 260; 2 with --quick)")
    add("--batch_size", type=int, help="per process (default 32; 8 with --quick)")
    add("--synthetic_samples", type=int, help="readings in the synthetic corpus (default 640; 48 with --quick)")
    add("--corpus_seed", type=int, default=0, help="seed of the one synthetic corpus that every run uses")
    add("--data", help="a real data root or saved dataset, as pretrain.py's --data (default: synthetic corpus)")
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


# ---------------------------------------------------------------------------------------------------------------
# What is trained


@dataclass(frozen=True)
class Run:
    losses: str
    gaze_fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.losses}-gaze{self.gaze_fraction:g}-seed{self.seed}"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def plan_rows(gaze_fractions) -> list[dict]:
    """The table's rows; each names the (preset, gaze fraction) its runs train. Rows may share runs."""
    rows = [dict(row=name, group="table4", losses=preset, gaze_fraction=0.0 if preset == "no_gaze" else 1.0)
            for name, preset in TABLE4]
    for fraction in sorted(gaze_fractions):
        rows.append(dict(row=f"EGF+EGM, {percent(fraction)} gaze", group="gaze_sweep", losses=SWEEP_PRESET,
                         gaze_fraction=float(fraction)))
    return rows


def plan_runs(rows, seeds) -> list[Run]:
    """Every distinct run, seed by seed (a stopped ablation has whole seeds done first)."""
    settings = list(dict.fromkeys((row["losses"], row["gaze_fraction"]) for row in rows))
    return [Run(losses, fraction, seed) for seed in seeds for losses, fraction in settings]


def run_folder(args, run: Run) -> Path:
    return Path(args.output_dir) / "runs" / run.name


def pretrain_argv(args, passed_on, run: Run) -> list[str]:
    argv = ["--losses", run.losses, "--gaze_fraction", str(run.gaze_fraction), "--seed", str(run.seed),
            "--output_dir", str(run_folder(args, run)), "--max_steps", str(args.max_steps),
            "--batch_size", str(args.batch_size), "--cache_dir", args.cache_dir]
    if args.data:
        argv += ["--data", args.data] + (["--image_root", args.image_root] if args.image_root else [])
    else:
        argv += ["--synthetic_samples", str(args.synthetic_samples), "--corpus_seed", str(args.corpus_seed)]
    for flag in ("vision_model", "text_model", "image_size"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    return argv + passed_on


def check_same_settings(folder: Path, argv: list[str]):
    """A finished or half-finished run in `folder` must have been trained with the settings asked for now."""
    config_file = folder / "training_config.json"
    if not config_file.is_file():
        return
    previous = json.loads(config_file.read_text())
    current = pretrain.run_settings(pretrain.parse_args(argv))
    changed = sorted(k for k in current if k not in SETTINGS_INSENSITIVE and previous.get(k) != current[k])
    if changed:
        raise SystemExit(f"{folder} was trained with other settings ({changed}); use another --output_dir")


# ---------------------------------------------------------------------------------------------------------------
# Evaluation

_TEST_SPLITS = {}  # prepared test split per image geometry: every run of an ablation shares one


def held_out_split(pretrain_args, image_processor):
    key = (pretrain_args.data, pretrain_args.synthetic_samples, pretrain_args.corpus_seed, image_processor.to_json_string())
    if key not in _TEST_SPLITS:
        readings, source = pretrain.load_readings(pretrain_args)  # built by the first run already
        splits = by_split(readings)
        if "test" not in splits:
            raise SystemExit(f"{source}: no test split to evaluate on")
        _TEST_SPLITS[key] = prepare_for_training(splits["test"], image_processor)
    return _TEST_SPLITS[key]


@torch.no_grad()
def retrieval_recall(model, processor, rows, ks=(1, 5, 10), batch_size: int = 64) -> dict:
    """Image->report ("i2t") and report->image ("t2i") Recall@K among `rows`' own image-report pairs: a report is
    relevant to its own image only, so R@K is the fraction of queries whose partner ranks in the top K. A report's
    embedding is the model's global text embedding: the mean of its sentence embeddings, normalised. K larger than
    the number of pairs is left out."""
    model.eval()
    collate = EGMADataCollator(processor)
    device = next(model.parameters()).device
    images, reports = [], []
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        images.append(embed_pixel_values(model, batch["pixel_values"]))
        text = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        reports.append(F.normalize(model.get_text_features(**text).pooler_output.float(), dim=-1))
    ids = list(rows["reading_id"])
    found = retrieval_metrics(torch.cat(images), ids, torch.cat(reports), ids, ks)
    return {f"{direction}_R@{k}": value for direction in ("i2t", "t2i") for k, value in found[direction]["recall"].items()}


def evaluate_run(folder: Path, argv: list[str]) -> dict:
    """The test metrics of a finished pretrain.py run (its kept, best-validation weights)."""
    results = json.loads((folder / "eval_results.json").read_text())
    if "test" not in results:
        raise SystemExit(f"{folder}: the data have no test split to evaluate on")
    model = EGMAModel.from_pretrained(folder).to("cuda" if torch.cuda.is_available() else "cpu")
    processor = EGMAProcessor.from_pretrained(folder)
    rows = held_out_split(pretrain.parse_args(argv), processor.image_processor)
    return {"zero_shot_auroc": results["test"]["mean_auroc"], **retrieval_recall(model, processor, rows),
            "validate_auroc": results["validate_mean_auroc"], "best_step": results["best_step"],
            "test_readings": len(rows)}


def train_and_evaluate(args, passed_on, run: Run, state) -> tuple[dict, bool]:
    """A run's metrics, training and evaluating only what is not on disk yet. Returns (metrics, skipped)."""
    folder = run_folder(args, run)
    argv = pretrain_argv(args, passed_on, run)
    metrics_file = folder / "ablation_metrics.json"
    check_same_settings(folder, argv)
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text()), True
    started = time.perf_counter()
    if not (folder / "eval_results.json").is_file():
        if pretrain.checkpoints(folder):
            argv += ["--resume", "latest"]
        elif folder.exists():
            argv += ["--overwrite_output_dir"]
        pretrain.main(argv, keep_process_group=True)
    if state.is_main_process:
        metrics = {**evaluate_run(folder, argv), "wall_s": round(time.perf_counter() - started, 1)}
        metrics_file.with_suffix(".tmp").write_text(json.dumps(metrics, indent=1))
        os.replace(metrics_file.with_suffix(".tmp"), metrics_file)
    state.wait_for_everyone()
    return json.loads(metrics_file.read_text()), False


# ---------------------------------------------------------------------------------------------------------------
# Results


def summarize(rows, runs_of, metrics_of) -> list[dict]:
    """Each row with its runs, and per metric the mean and sample standard deviation (ddof 1) over its seeds.

    Each row also gets `vs_baseline`: its zero-shot AUROC minus the first row's (the no-gaze baseline) seed by seed,
    as mean, sample std and how many seeds it was higher. Within a seed both runs start from the same weights and
    see the same batches, so the paired difference is far less noisy than the two rows' means."""
    baseline = {run.seed: metrics_of[run.name][PAIRED] for run in runs_of(rows[0])}
    summary = []
    for row in rows:
        runs = runs_of(row)
        names = [run.name for run in runs]
        values = {m: [metrics_of[n][m] for n in names if metrics_of[n].get(m) is not None] for m in METRICS}
        values = {m: v for m, v in values.items() if len(v) == len(names)}  # e.g. R@10 on fewer than 10 pairs
        gains = [metrics_of[run.name][PAIRED] - baseline[run.seed] for run in runs if run.seed in baseline]
        summary.append({**row, "runs": names, "n": len(names),
                        "mean": {m: float(np.mean(v)) for m, v in values.items()},
                        "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in values.items()},
                        "vs_baseline": {"metric": PAIRED, "mean": float(np.mean(gains)),
                                        "std": float(np.std(gains, ddof=1)) if len(gains) > 1 else None,
                                        "higher": int(sum(g > 0 for g in gains)), "n": len(gains)}})
    return summary


def _cell(row, metric) -> str:
    if metric not in row["mean"]:
        return "–"
    std = row["std"][metric]
    return f"{row['mean'][metric]:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _gain_cell(row, baseline_row) -> str:
    if row is baseline_row:
        return "–"
    gain = row["vs_baseline"]
    spread = f" ± {gain['std']:.3f}" if gain["std"] is not None else ""
    return f"{gain['mean']:+.3f}{spread} (higher in {gain['higher']}/{gain['n']})"


def markdown_table(summary, settings: dict) -> str:
    metrics = [m for m in METRICS if any(m in row["mean"] for row in summary)]
    lines = ["# EGMA ablation (paper Table 4 and gaze fraction)", "",
             f"Data: {settings['data']}; {settings['max_steps']} optimiser steps per run, batch {settings['batch_size']}; "
             f"seeds {settings['seeds']}. Held-out test split ({settings['test_readings']} readings). "
             "Cells: mean ± sample std (ddof 1) over seeds.", "",
             "| Configuration | gaze | " + " | ".join(METRIC_TITLES[m] for m in metrics)
             + f" | {METRIC_TITLES[PAIRED]} − baseline, paired by seed | n |",
             "|---|---|" + "---|" * len(metrics) + "---|---|"]
    group = "table4"
    for row in summary:
        if row["group"] != group:  # a caption row before the sweep
            group = row["group"]
            lines.append("| *EGF+EGM, gaze-fraction sweep* | | " + " | " * (len(metrics) + 1) + " |")
        cells = " | ".join(_cell(row, m) for m in metrics)
        lines.append(f"| {row['row']} | {percent(row['gaze_fraction'])} | {cells} | {_gain_cell(row, summary[0])} "
                     f"| {row['n']} |")
    lines += ["", "- zero-shot AUROC: mean over findings of the AUROC of positive-vs-negative prompt scores.",
              "- − baseline, paired by seed: the row's zero-shot AUROC minus the baseline's in the same seed (same "
              "initial weights and batches), mean ± sample std over seeds, and in how many seeds the row was higher.",
              "- I→R / R→I R@K: image→report / report→image Recall@K among the test pairs (each report matches only "
              "its own image; chance R@1 = 1 / test readings).",
              "- The sweep's 100% row is the EGF+EGM row above (the same runs). Its 0% row is a run of its own: with no "
              "gaze, MLCE is zero but EGM still maps each modality onto the other with the model's own similarities, "
              "so it differs from the baseline (global + fine-grained only).",
              "- Every configuration adds the global InfoNCE (weight "
              f"{settings['global_loss_weight']}); all runs share towers, data and step count."]
    return "\n".join(lines) + "\n"


def plot_gaze_fraction(summary, path: Path, metrics=PLOTTED):
    """One panel per metric: EGF+EGM against the gaze fraction (mean, +-std band), the other Table 4
    configurations as horizontal reference lines at their mean."""
    plt = _pyplot()
    metrics = [m for m in metrics if all(m in row["mean"] for row in summary)]
    sweep = [row for row in summary if row["group"] == "gaze_sweep"]
    others = [row for row in summary if row["group"] == "table4" and row["losses"] != SWEEP_PRESET]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2), dpi=100, squeeze=False)
    x = np.array([100 * row["gaze_fraction"] for row in sweep])
    for axis, metric in zip(axes[0], metrics):
        mean = np.array([row["mean"][metric] for row in sweep])
        std = np.array([row["std"][metric] or 0.0 for row in sweep])
        axis.plot(x, mean, "o-", color="C0", label="EGF+EGM (its 100% point is the Table 4 row)")
        axis.fill_between(x, mean - std, mean + std, color="C0", alpha=0.2)
        for index, row in enumerate(others, start=1):
            axis.axhline(row["mean"][metric], color=f"C{index}", linestyle="--", linewidth=1.2,
                         label=f"{row['row']} ({percent(row['gaze_fraction'])} gaze)")
        axis.set_xscale("symlog", linthresh=1.0)
        axis.set_xlim(-0.3, 130)
        axis.set_xticks(x, [f"{value:g}" for value in x])
        axis.set_xlabel("training readings with gaze (%)")
        axis.set_title(f"{METRIC_TITLES[metric]} (test, mean ± std, n={sweep[0]['n']})")
        axis.grid(alpha=0.3)
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.13, 1, 1))
    figure.savefig(path)
    plt.close(figure)


def write_results(args, passed_on, summary, metrics_of, out: Path) -> str:
    """results.json, results.md and gaze_fraction.png in `out`; returns the Markdown table."""
    first = next(iter(metrics_of.values()))
    settings = {"data": args.data or f"synthetic corpus, {args.synthetic_samples} readings, corpus seed {args.corpus_seed}",
                "max_steps": args.max_steps, "batch_size": args.batch_size, "seeds": args.seeds,
                "gaze_fractions": args.gaze_fractions, "vision_model": args.vision_model, "text_model": args.text_model,
                "passed_to_pretrain": passed_on, "test_readings": first["test_readings"],
                "global_loss_weight": pretrain.parse_args(passed_on).global_loss_weight}
    results = {"settings": settings, "metrics": METRICS, "rows": summary, "runs": metrics_of}
    table = markdown_table(summary, settings)
    for name, text in (("results.json", json.dumps(results, indent=1)), ("results.md", table)):
        (out / (name + ".tmp")).write_text(text)
        os.replace(out / (name + ".tmp"), out / name)
    plot_gaze_fraction(summary, out / "gaze_fraction.png")
    return table


def main(argv=None):
    args, passed_on = parse_args(argv)
    for run in plan_runs(plan_rows(args.gaze_fractions), args.seeds):  # bad or unknown flags stop here, not mid-way
        pretrain.check_settings(pretrain.parse_args(pretrain_argv(args, passed_on, run)))
    # the same process setup as pretrain.py's Accelerator, which shares this state: gloo for several CPU processes
    state = PartialState(cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO if state.is_main_process else logging.WARNING)
    rows = plan_rows(args.gaze_fractions)
    runs = plan_runs(rows, args.seeds)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_of, started = {}, time.perf_counter()
    for index, run in enumerate(runs, start=1):
        metrics, skipped = train_and_evaluate(args, passed_on, run, state)
        metrics_of[run.name] = metrics
        logger.info("run %d/%d %s: %s; test zero-shot AUROC %.3f, I->R R@1 %.3f, R->I R@1 %.3f", index, len(runs),
                    run.name, "done before, skipped" if skipped else f"{metrics['wall_s']:.0f} s",
                    metrics["zero_shot_auroc"], metrics["i2t_R@1"], metrics["t2i_R@1"])

    def runs_of(row):
        return [r for r in runs if (r.losses, r.gaze_fraction) == (row["losses"], row["gaze_fraction"])]

    summary = summarize(rows, runs_of, metrics_of)
    if state.is_main_process:
        print("\n" + write_results(args, passed_on, summary, metrics_of, out))
        print(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s; wrote {out}/results.md, results.json, "
              "gaze_fraction.png")
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
