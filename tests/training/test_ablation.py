"""egma_hf.training.ablation and examples/ablation.py: the planner and summary, and the quick ablation writes a
consistent table, JSON and plot, and a second call resumes."""

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from egma_hf.training import ablation
from tests.helpers import REPO_ROOT, load_example

SCRIPT = REPO_ROOT / "examples" / "ablation.py"

pytestmark = pytest.mark.slow  # trains or starts processes: excluded from the fast loop, `pytest -m "not slow"`

TABLE4_ROWS = [name for name, _ in ablation.TABLE4]
SWEEP_ROWS = ["EGF+EGM, 0% gaze", "EGF+EGM, 10% gaze", "EGF+EGM, 100% gaze"]


def run(args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `--quick` ablation (2 seeds x 7 runs), shared by the tests below; the resume test changes it."""
    out = tmp_path_factory.mktemp("ablation")
    cache = tmp_path_factory.mktemp("egma-cache")
    args = ["--quick", "--output_dir", str(out), "--cache_dir", str(cache)]
    result = run(args)
    return out, args, result.stdout + result.stderr


def test_plan_trains_each_setting_once_and_the_0_percent_sweep_point_separately():
    rows = ablation.plan_rows([0.0, 0.01, 0.05, 0.1, 0.5, 1.0])
    runs = ablation.plan_runs(rows, [0, 1, 2])
    assert len(rows) == 11 and len(runs) == 30  # 100% of the sweep is the EGF+EGM run; 0% is not the baseline
    assert [r.name for r in runs[:10]] == ["no_gaze-gaze0-seed0", "mlce-gaze1-seed0", "egf-gaze1-seed0",
                                           "egm-gaze1-seed0", "egma-gaze1-seed0", "egma-gaze0-seed0",
                                           "egma-gaze0.01-seed0", "egma-gaze0.05-seed0", "egma-gaze0.1-seed0",
                                           "egma-gaze0.5-seed0"]
    assert [row["row"] for row in rows[5:]] == [f"EGF+EGM, {p} gaze" for p in ("0%", "1%", "5%", "10%", "50%", "100%")]


def test_summary_is_the_mean_and_sample_std_over_seeds():
    rows = [dict(row="r", group="table4", losses="egma", gaze_fraction=1.0)]
    runs = [ablation.Run("egma", 1.0, seed) for seed in (0, 1, 2)]
    metrics = {run.name: {m: 0.1 * seed + i for i, m in enumerate(ablation.METRICS)} for seed, run in enumerate(runs)}
    metrics[runs[0].name].pop("t2i_R@10")  # missing in one run: left out of the row, not averaged over fewer seeds
    (summary,) = ablation.summarize(rows, lambda row: runs, metrics)
    assert summary["n"] == 3 and "t2i_R@10" not in summary["mean"]
    assert summary["mean"]["zero_shot_auroc"] == pytest.approx(0.1)
    assert summary["std"]["zero_shot_auroc"] == pytest.approx(0.1)  # values 0, 0.1, 0.2: sample std 0.1


def test_rows_are_compared_with_the_baseline_seed_by_seed():
    rows = [dict(row="base", group="table4", losses="no_gaze", gaze_fraction=0.0),
            dict(row="gaze", group="table4", losses="egma", gaze_fraction=1.0)]
    runs = {row["losses"]: [ablation.Run(row["losses"], row["gaze_fraction"], seed) for seed in (0, 1, 2)]
            for row in rows}
    base = [0.80, 0.70, 0.90]
    gaze = [0.83, 0.69, 0.95]  # per seed: +0.03, -0.01, +0.05
    metrics = {run.name: {"zero_shot_auroc": value} for run, value in zip(runs["no_gaze"] + runs["egma"], base + gaze)}
    first, second = ablation.summarize(rows, lambda row: runs[row["losses"]], metrics)
    gains = np.subtract(gaze, base)
    assert second["vs_baseline"]["mean"] == pytest.approx(gains.mean())
    assert second["vs_baseline"]["std"] == pytest.approx(np.std(gains, ddof=1))  # 0.03, far below the rows' ~0.1
    assert (second["vs_baseline"]["higher"], second["vs_baseline"]["n"]) == (2, 3)
    assert first["vs_baseline"]["mean"] == 0 and first["vs_baseline"]["higher"] == 0
    table = ablation.markdown_table([first, second],
                                    dict(data="d", max_steps=1, batch_size=1, seeds=[0, 1, 2], test_readings=3,
                                         global_loss_weight=1.0))
    assert f"| {gains.mean():+.3f} ± {np.std(gains, ddof=1):.3f} (higher in 2/3) | 3 |" in table


class LookupModel(torch.nn.Module):
    """Image k (all pixels k) and the report starting with word k both embed as the k-th basis vector (shifted by
    `shift` for reports), so retrieval outcomes are known exactly."""

    def __init__(self, token_ids, shift=0):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.token_ids, self.shift, self.n = token_ids, shift, len(token_ids)

    def get_image_features(self, pixel_values):
        index = pixel_values.mean((1, 2, 3)).round().long()
        return SimpleNamespace(pooler_output=torch.eye(self.n)[index])

    def get_text_features(self, input_ids, **kwargs):
        index = torch.tensor([self.token_ids.index(t) for t in input_ids[:, 0, 1].tolist()])
        return SimpleNamespace(pooler_output=torch.eye(self.n)[(index + self.shift) % self.n])


def test_retrieval_pairs_each_image_with_its_own_report(processor):
    import datasets

    words = ["heart", "lungs", "pneumonia", "edema", "effusion", "opacity"]
    rows = datasets.Dataset.from_dict({
        "reading_id": [f"r{k}" for k in range(6)],
        "sentences": [[f"{word} is normal.", "no pneumothorax."] for word in words],
        "pixel_values": [np.full((32, 32), k, np.float16) for k in range(6)],
        "gaze_grid": [np.zeros((2, 4, 4), np.float32)] * 6,
        "has_gaze": [False] * 6,
    }).with_format("numpy", columns=["pixel_values", "gaze_grid"], output_all_columns=True)
    token_ids = processor.tokenizer.convert_tokens_to_ids(words)
    found = ablation.retrieval_recall(LookupModel(token_ids), processor, rows, ks=(1, 5, 10), batch_size=4)
    assert found == {"i2t_R@1": 1.0, "i2t_R@5": 1.0, "t2i_R@1": 1.0, "t2i_R@5": 1.0}  # K = 10 > 6 pairs: left out
    found = ablation.retrieval_recall(LookupModel(token_ids, shift=1), processor, rows, ks=(1,), batch_size=4)
    assert found == {"i2t_R@1": 0.0, "t2i_R@1": 0.0}  # every report now looks like the next image


def test_quick_ablation_writes_table_json_and_plot(quick):
    from PIL import Image

    out, _, log = quick
    assert "run 14/14" in log
    results = json.loads((out / "results.json").read_text())
    rows = {row["row"]: row for row in results["rows"]}
    assert list(rows) == TABLE4_ROWS + SWEEP_ROWS
    assert len(results["runs"]) == 14 and results["settings"]["seeds"] == [0, 1]
    for row in rows.values():
        assert row["n"] == 2 and len(row["runs"]) == 2
        assert {"zero_shot_auroc", "i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"} <= set(row["mean"])
        for metric, mean in row["mean"].items():
            values = [results["runs"][name][metric] for name in row["runs"]]
            assert mean == pytest.approx(np.mean(values))
            assert row["std"][metric] == pytest.approx(np.std(values, ddof=1))
    for run in results["runs"].values():
        assert 0.0 <= run["zero_shot_auroc"] <= 1.0 and run["test_readings"] == results["settings"]["test_readings"]
        assert run["i2t_R@1"] <= run["i2t_R@5"] and run["t2i_R@1"] <= run["t2i_R@5"]
        assert "i2t_R@10" not in run  # fewer than 10 test pairs in the quick corpus

    baseline, egma = rows[TABLE4_ROWS[0]], rows["EGF+EGM"]
    assert baseline["runs"] == ["no_gaze-gaze0-seed0", "no_gaze-gaze0-seed1"] and baseline["gaze_fraction"] == 0.0
    assert rows["EGF+EGM, 100% gaze"]["runs"] == egma["runs"] == ["egma-gaze1-seed0", "egma-gaze1-seed1"]
    assert rows["EGF+EGM, 0% gaze"]["runs"] == ["egma-gaze0-seed0", "egma-gaze0-seed1"]
    settings = json.loads((out / "runs" / "no_gaze-gaze0-seed1" / "training_config.json").read_text())
    chosen = (settings["losses"], settings["gaze_fraction"], settings["seed"], settings["corpus_seed"])
    assert chosen == ("no_gaze", 0.0, 1, 0)
    assert settings["max_steps"] == 2 and settings["image_size"] == 64

    for row in rows.values():  # paired with the baseline run of the same seed
        gains = [results["runs"][name]["zero_shot_auroc"] - results["runs"][base]["zero_shot_auroc"]
                 for name, base in zip(row["runs"], baseline["runs"])]
        assert row["vs_baseline"]["mean"] == pytest.approx(np.mean(gains))
        assert row["vs_baseline"]["higher"] == sum(g > 0 for g in gains)

    table = (out / "results.md").read_text()
    for name, row in rows.items():
        mean, std = row["mean"]["zero_shot_auroc"], row["std"]["zero_shot_auroc"]
        assert f"| {name} |" in table and f"{mean:.3f} ± {std:.3f}" in table
    with Image.open(out / "gaze_fraction.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 800


def test_changed_settings_or_owned_flags_are_refused(quick, capsys):
    out, args, _ = quick
    script = load_example("ablation")
    with pytest.raises(SystemExit, match=r"trained with other settings \(\['max_steps'\]\)"):
        script.main([*args, "--max_steps", "3"])
    with pytest.raises(SystemExit):
        script.main([*args, "--losses", "egm"])
    assert "set by the ablation itself" in capsys.readouterr().err


def test_second_call_skips_finished_runs_and_redoes_only_what_is_missing(quick):
    out, args, _ = quick
    runs = out / "runs"
    stamps = {p.name: (p / "model.safetensors").stat().st_mtime_ns for p in runs.iterdir()}
    (runs / "egm-gaze1-seed1" / "ablation_metrics.json").unlink()  # trained, not evaluated: evaluate only
    lost = json.loads((runs / "mlce-gaze1-seed0" / "ablation_metrics.json").read_text())
    for name in ("ablation_metrics.json", "eval_results.json", "model.safetensors"):  # killed mid-training
        (runs / "mlce-gaze1-seed0" / name).unlink()
    log = run(args).stderr
    assert log.count("done before, skipped") == 12
    assert "resumed from" in log  # the killed run continued from its checkpoint
    again = {p.name: (p / "model.safetensors").stat().st_mtime_ns for p in runs.iterdir()}
    assert {name for name in stamps if again[name] != stamps[name]} == {"mlce-gaze1-seed0"}
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["mlce-gaze1-seed0"]["zero_shot_auroc"] == pytest.approx(lost["zero_shot_auroc"])


def test_two_processes_train_every_run_on_both(tmp_path):
    """Under `accelerate launch`, one process group serves every run of the ablation."""
    with socket.socket() as probe:  # a free port, so a concurrent 2-process run elsewhere cannot collide with it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = ["--quick", "--seeds", "0", "--gaze_fractions", "1.0", "--output_dir", str(tmp_path / "ddp"),
            "--cache_dir", str(tmp_path / "cache")]
    result = subprocess.run([*launcher, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stderr.count("processes 2, global batch 16") == 5
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert sorted(results["runs"]) == ["egf-gaze1-seed0", "egm-gaze1-seed0", "egma-gaze1-seed0", "mlce-gaze1-seed0",
                                       "no_gaze-gaze0-seed0"]
