"""The benchmarks still run: their `--quick` variants as subprocesses, asserting on what they print."""

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow  # trains or starts processes: excluded from the fast loop, `pytest -m "not slow"`

NUMBER = r"(\d+(?:\.\d+)?)"


def run_benchmark(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *args], capture_output=True,
                            text=True, timeout=600, cwd=REPO_ROOT)  # a hang guard: the GPU smoke run
                                                                    # takes 100 s alone here, more under load
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_zero_shot_throughput_quick():
    out = run_benchmark("zero_shot_throughput.py", "--quick")

    def row(name, pattern):
        match = re.search(rf"^{re.escape(name)}\s+{pattern}", out, re.MULTILINE)
        assert match, f"no row {name!r} like {pattern!r} in:\n{out}"
        return match.groups()

    images = int(re.search(r"text passes per\n.*\b(\d+) images \(EGMA, CLIP\)", out).group(1))
    assert images > 1
    paired = rf"{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+(\d+), (\d+)$"  # images/s, ratios, text passes
    *speeds, egma_passes, clip_passes = row("embedding path, cached prompts", paired)
    assert all(float(value) > 0 for value in speeds) and (egma_passes, clip_passes) == ("0", "0")
    # The standard pipeline runs the text tower for every image (pipeline batch 1), EGMA's pipeline once per run.
    *speeds, egma_passes, clip_passes = row("standard pipeline (prompts per image)", paired)
    assert all(float(value) > 0 for value in speeds) and int(egma_passes) == int(clip_passes) == images
    speed, speedup, passes = row("egma pipeline, cached prompts", rf"{NUMBER}\s+-\s+{NUMBER}\s+(\d+)\s")
    assert float(speed) > 0 and float(speedup) > 0 and passes == "1"
    assert all(float(value) > 0 for value in row("preprocessing only (per image)", paired)[:4])
    assert float(row("reference: tiny Swin + tiny BERT (--quick), embedding path", NUMBER)[0]) > 0

    calls = re.search(r"get_text_features calls: candidate labels \(5 prompts\): (\d+) for (\d+) images, (\d+) for "
                      r"\d+ more; CheXpert 5x200 \((\d+) prompts\): (\d+) for \d+ images "
                      r"\(prompt batches of 64: (\d+)\)", out)
    assert calls, out
    first, images_again, again, prompts, ensemble, prompt_batches = (int(value) for value in calls.groups())
    assert (first, again, images_again) == (1, 0, images)
    assert prompts > 64 and ensemble == prompt_batches == -(-prompts // 64)  # one classifier build, whatever N


def test_mimic_cxr_reading_small():
    out = run_benchmark("mimic_cxr_reading.py", "--num_images", "300", "--reports", "zip")
    rows = re.findall(rf"^\s+301\s+(\d+)\s+(zip)\s+(True|False)\s+(\d+)\s+{NUMBER}\s+{NUMBER}.*\s+0\s+"
                      rf"{NUMBER}\s+{NUMBER}\s+(yes\*?|no)$", out, re.MULTILINE)
    assert len(rows) == 2, out  # frontal views and all views
    rows_of = {r[2]: int(r[3]) for r in rows}
    assert rows_of["True"] < rows_of["False"]  # frontal_only leaves the lateral views out
    assert all(float(r[5]) > 0 for r in rows)  # rows/s


def test_corpus_step_cost_quick():
    out = run_benchmark("corpus_step_cost.py", "--quick")
    rows = {name: values for name, *values in re.findall(
        rf"^(gaze-only \(MIMIC-EYE\)|combined \(MIMIC-CXR \+ gaze\)|combined, no gaze kept)\s+(\d+)\s+{NUMBER}%\s+"
        rf"{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.MULTILINE)}
    assert len(rows) == 3, out
    assert float(rows["gaze-only (MIMIC-EYE)"][1]) == 100.0 and float(rows["combined, no gaze kept"][1]) == 0.0
    assert 0 < float(rows["combined (MIMIC-CXR + gaze)"][1]) < 100
    assert float(rows["gaze-only (MIMIC-EYE)"][5]) == 1.0 and all(float(v[4]) > 0 for v in rows.values())


def test_shard_preprocessing_quick():
    out = run_benchmark("shard_preprocessing.py", "--quick")
    rows = re.findall(rf"^\s+(floor \(open\+draft\+load\)|decode_image|write_shards num_proc=1)\s+{NUMBER} ms/row$",
                      out, re.MULTILINE)
    assert len(rows) == 3 and all(float(ms) > 0 for _, ms in rows), out
    ratio = re.search(rf"floor / full = {NUMBER}", out)
    assert ratio and 0 < float(ratio.group(1)) < 5, out
    speeds = re.findall(rf"^\s+num_proc=([12]):\s+{NUMBER} rows/s$", out, re.MULTILINE)
    assert [p for p, _ in speeds] == ["1", "2"] and all(float(s) > 0 for _, s in speeds), out
    assert re.search(rf"speed-up 2 vs 1 = {NUMBER}x", out), out
    table = re.findall(rf"^\| (\d+) \| {NUMBER} \| (\d+) \| {NUMBER} \| (\d+) \| (\d+) \| {NUMBER} \|$", out,
                       re.MULTILINE)
    assert [int(r[0]) for r in table] == [40, 80], out
    # 256² uint8 pixels plus the reader's text: ~65 KB a row without gaze
    assert all(64 < float(r[-1]) < 80 and int(r[4]) > 0 for r in table), out


def test_shard_loading_quick():
    out = run_benchmark("shard_loading.py", "--quick", "--profile")
    found = re.findall(rf"^(no gaze|gaze|mix)\s+([01])\s+{NUMBER}%\s+{NUMBER}\s+{NUMBER}$", out, re.MULTILINE)
    rows = {(case, int(workers)): (float(share), float(speed)) for case, workers, share, _, speed in found}
    assert len(rows) == 6 and all(speed > 0 for _, speed in rows.values()), out
    assert rows[("no gaze", 0)][0] == 0.0 and rows[("gaze", 1)][0] == 100.0
    table = re.findall(rf"^\| (\d+) \| (\d+) \| {NUMBER} \| (\d+) \| (\d+) \| (\d+) \|$", out, re.MULTILINE)
    assert len(table) == 1 and int(table[0][0]) == 64 and 0 < int(table[0][1]) < 64 and int(table[0][3]) > 0, out
    assert "(3) profile" in out and "tottime" in out


def test_shard_training_gpu_quick():
    out = run_benchmark("shard_training_gpu.py", "--device", "cpu", "--quick")
    assert re.search(r"towers tiny, batch 4, 1 loader workers", out), out
    assert float(re.search(rf"^samples/s: {NUMBER}$", out, re.MULTILINE).group(1)) > 0
    assert 0 <= float(re.search(rf"^data_wait_fraction: {NUMBER}$", out, re.MULTILINE).group(1)) <= 1
    assert re.search(r"^host-GPU syncs per step: None$", out, re.MULTILINE), out  # counted on a GPU only
    assert float(re.search(rf"projected 377,110-image epoch: {NUMBER} h", out).group(1)) > 0
