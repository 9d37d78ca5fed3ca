"""The paper's Table 4 ablations: which runs to train, each run's test metrics, and the summary over seeds as JSON,
a Markdown table and a plot against the gaze fraction. examples/ablation.py is the command line over this."""

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import EGMAModel, EGMAProcessor
from ..data import EGMADataCollator, by_split, prepare_for_training
from ..evaluation import retrieval_metrics
from ..evaluation.plots import pyplot
from ..zero_shot import embed_pixel_values
from .accelerator import make_accelerator
from .checkpoints import RESUME_INSENSITIVE, TRAINING_CONFIG, changed_settings, list_checkpoints
from .loop import train
from .settings import TrainingSettings
from .setup import load_readings

logger = logging.getLogger(__name__)

TABLE4 = [  # (row, --losses preset), the paper's Table 4 order
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
# settings that may change between invocations without changing what a finished run means
SETTINGS_INSENSITIVE = RESUME_INSENSITIVE | {"cache_dir"}


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


def plan_rows(gaze_fractions, sweep_only: bool = False) -> list[dict]:
    """The table's rows; each names the (preset, gaze fraction) its runs train. Rows may share runs. With
    `sweep_only`, the EGF+EGM gaze-fraction sweep alone (its first fraction is then the baseline)."""
    rows = [] if sweep_only else [
        dict(row=name, group="table4", losses=preset, gaze_fraction=0.0 if preset == "no_gaze" else 1.0)
        for name, preset in TABLE4]
    for fraction in sorted(gaze_fractions):
        rows.append(dict(row=f"EGF+EGM, {percent(fraction)} gaze", group="gaze_sweep", losses=SWEEP_PRESET,
                         gaze_fraction=float(fraction)))
    return rows


def plan_runs(rows, seeds) -> list[Run]:
    """Every distinct run, seed by seed (a stopped ablation has whole seeds done first)."""
    settings = list(dict.fromkeys((row["losses"], row["gaze_fraction"]) for row in rows))
    return [Run(losses, fraction, seed) for seed in seeds for losses, fraction in settings]


@dataclass
class AblationPlan:
    """An ablation: `base` holds the settings every run shares (towers, data, steps, batch...); each run sets its
    losses, gaze fraction, seed and folder `output_dir/runs/<name>`. `passed_to_pretrain` records, in results.json,
    the flags that `base` came from beyond the ablation's own."""

    base: TrainingSettings
    seeds: list[int]
    gaze_fractions: list[float]
    output_dir: Path
    passed_to_pretrain: list[str] = field(default_factory=list)
    sweep_only: bool = False  # the EGF+EGM gaze-fraction sweep without Table 4's other configurations

    def rows(self) -> list[dict]:
        return plan_rows(self.gaze_fractions, self.sweep_only)

    def runs(self) -> list[Run]:
        return plan_runs(self.rows(), self.seeds)

    def settings_for(self, run: Run) -> TrainingSettings:
        return dataclasses.replace(self.base, losses=run.losses, gaze_fraction=run.gaze_fraction, seed=run.seed,
                                   output_dir=str(Path(self.output_dir) / "runs" / run.name))


def check_same_settings(settings: TrainingSettings):
    """A finished or half-finished run in its folder must have been trained with the settings asked for now."""
    folder = Path(settings.output_dir)
    config_file = folder / TRAINING_CONFIG
    if not config_file.is_file():
        return
    changed = changed_settings(json.loads(config_file.read_text()), settings.to_dict(), SETTINGS_INSENSITIVE)
    if changed:
        raise SystemExit(f"{folder} was trained with other settings ({changed}); use another --output_dir")


# ---------------------------------------------------------------------------------------------------------------
# Evaluation

_TEST_SPLITS = {}  # prepared test split per corpus and image geometry: every run of an ablation shares one


def held_out_split(settings: TrainingSettings, image_processor):
    key = (settings.data, settings.gaze_data, settings.synthetic_samples, settings.corpus_seed,
           image_processor.to_json_string())
    if key not in _TEST_SPLITS:
        readings, source = load_readings(settings)  # built by the first run already
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
    return {f"{direction}_R@{k}": value for direction in ("i2t", "t2i")
            for k, value in found[direction]["recall"].items()}


def evaluate_run(settings: TrainingSettings, device="cpu") -> dict:
    """The test metrics of a finished run (its kept, best-validation weights)."""
    folder = Path(settings.output_dir)
    results = json.loads((folder / "eval_results.json").read_text())
    if "test" not in results:
        raise SystemExit(f"{folder}: the data have no test split to evaluate on")
    model = EGMAModel.from_pretrained(folder).to(device)
    processor = EGMAProcessor.from_pretrained(folder)
    rows = held_out_split(settings, processor.image_processor)
    return {"zero_shot_auroc": results["test"]["mean_auroc"], **retrieval_recall(model, processor, rows),
            "validate_auroc": results["validate_mean_auroc"], "best_step": results["best_step"],
            "test_readings": len(rows)}


def train_and_evaluate(settings: TrainingSettings, accelerator) -> tuple[dict, bool]:
    """A run's metrics, training and evaluating only what is not on disk yet. Returns (metrics, skipped)."""
    folder = Path(settings.output_dir)
    metrics_file = folder / "ablation_metrics.json"
    check_same_settings(settings)
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text()), True
    started = time.perf_counter()
    if not (folder / "eval_results.json").is_file():
        if list_checkpoints(folder):
            settings = dataclasses.replace(settings, resume="latest")
        elif folder.exists():
            settings = dataclasses.replace(settings, overwrite_output_dir=True)
        train(settings, accelerator)
    if accelerator.is_main_process:
        metrics = {**evaluate_run(settings, accelerator.device), "wall_s": round(time.perf_counter() - started, 1)}
        metrics_file.with_suffix(".tmp").write_text(json.dumps(metrics, indent=1))
        os.replace(metrics_file.with_suffix(".tmp"), metrics_file)
    accelerator.wait_for_everyone()
    return json.loads(metrics_file.read_text()), False


def run_ablation(plan: AblationPlan) -> str | None:
    """Train and evaluate every run of `plan` that is not done yet, all in one Accelerator (one process group), and
    write results.json, results.md and gaze_fraction.png to its folder. Returns the Markdown table (None off the
    main process). Every run's settings are checked before the first run starts."""
    rows, runs = plan.rows(), plan.runs()
    for run in runs:  # bad settings stop here, not mid-way
        plan.settings_for(run).check()
    base = plan.base
    accelerator = make_accelerator(base.gradient_accumulation_steps,
                                   log_with=None if base.report_to == "none" else base.report_to,
                                   project_dir=plan.output_dir, num_threads=base.num_threads)
    out = Path(plan.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_of, started = {}, time.perf_counter()
    for index, run in enumerate(runs, start=1):
        metrics, skipped = train_and_evaluate(plan.settings_for(run), accelerator)
        metrics_of[run.name] = metrics
        logger.info("run %d/%d %s: %s; test zero-shot AUROC %.3f, I->R R@1 %.3f, R->I R@1 %.3f", index, len(runs),
                    run.name, "done before, skipped" if skipped else f"{metrics['wall_s']:.0f} s",
                    metrics["zero_shot_auroc"], metrics["i2t_R@1"], metrics["t2i_R@1"])

    def runs_of(row):
        return [r for r in runs if (r.losses, r.gaze_fraction) == (row["losses"], row["gaze_fraction"])]

    summary = summarize(rows, runs_of, metrics_of)
    table = None
    if accelerator.is_main_process:
        table = write_results(plan, summary, metrics_of)
        print("\n" + table)
        print(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s; wrote {out}/results.md, results.json, "
              "gaze_fraction.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return table


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
             f"Data: {settings['data']}"
             + (f" with gaze from {settings['gaze_data']}" if settings.get("gaze_data") else "")
             + f"; {settings['max_steps']} optimiser steps per run, "
             f"batch {settings['batch_size']}; "
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
              "- The sweep's 100% row is the EGF+EGM row above (the same runs). Its 0% row is a run of its own: "
              "with no gaze, MLCE is zero but EGM still maps each modality onto the other with the model's own "
              "similarities, so it differs from the baseline (global + fine-grained only)." if not
              settings.get("sweep_only") else "- The baseline is the sweep's first row: the same corpus, texts and "
              "runs with gaze on fewer (or no) training readings.",
              "- Every configuration adds the global InfoNCE (weight "
              f"{settings['global_loss_weight']}); all runs share towers, data and step count."]
    return "\n".join(lines) + "\n"


def plot_gaze_fraction(summary, path: Path, metrics=PLOTTED):
    """One panel per metric: EGF+EGM against the gaze fraction (mean, +-std band), the other Table 4
    configurations as horizontal reference lines at their mean."""
    plt = pyplot()
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


def write_results(plan: AblationPlan, summary, metrics_of) -> str:
    """results.json, results.md and gaze_fraction.png in the plan's folder; returns the Markdown table."""
    base, out = plan.base, Path(plan.output_dir)
    first = next(iter(metrics_of.values()))
    synthetic = f"synthetic corpus, {base.synthetic_samples} readings, corpus seed {base.corpus_seed}"
    settings = {"data": base.data or synthetic, "gaze_data": base.gaze_data, "sweep_only": plan.sweep_only,
                "max_steps": base.max_steps, "batch_size": base.batch_size, "seeds": plan.seeds,
                "gaze_fractions": plan.gaze_fractions, "vision_model": base.vision_model, "text_model": base.text_model,
                "passed_to_pretrain": plan.passed_to_pretrain, "test_readings": first["test_readings"],
                "global_loss_weight": base.global_loss_weight}
    results = {"settings": settings, "metrics": METRICS, "rows": summary, "runs": metrics_of}
    table = markdown_table(summary, settings)
    for name, text in (("results.json", json.dumps(results, indent=1)), ("results.md", table)):
        (out / (name + ".tmp")).write_text(text)
        os.replace(out / (name + ".tmp"), out / name)
    plot_gaze_fraction(summary, out / "gaze_fraction.png")
    return table
