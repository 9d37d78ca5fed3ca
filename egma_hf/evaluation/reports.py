"""Evaluation reports as tables: one list of metric rows feeds the Markdown report of `examples/evaluate.py`, the
model card's results table and its Hub `model-index`, so the three never disagree. `linear_probe_table` is the
linear probe's results table (`egma_hf.evaluation.linear_probe`), `format_agreement` a line of gaze agreement.

A report is the dict `examples/evaluate.py` writes as JSON: `dataset`, `dataset_name`, `split`, `num_images`,
`prompt_set`, `ensemble`, and `zero_shot` (the output of `evaluate_single_label` or `evaluate_multi_label`) and/or
`retrieval` (precision/recall per direction and k, each with a bootstrap interval).
"""

import json
import math
import numbers
from pathlib import Path

from huggingface_hub import EvalResult

TASK_TYPES = {"zero_shot": "zero-shot-image-classification", "retrieval": "zero-shot-retrieval"}
REQUIRED_KEYS = {"dataset": str, "split": str, "num_images": int}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number a report may hold (write null, with a reason)")


def load_report(path) -> dict:
    """Read and check one report.json of examples/evaluate.py; ValueError / FileNotFoundError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation report {path}: no such file")
    try:
        report = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"evaluation report {path} is not valid JSON: {error}") from None
    return check_report(report, str(path))


def check_report(report, source: str = "report") -> dict:
    """`report` when it has what the tables need (see the module docstring) and no NaN or inf anywhere; else a
    ValueError naming `source` and the key."""
    if not isinstance(report, dict):
        raise ValueError(f"{source}: a report must be a JSON object, got {type(report).__name__}")
    for key, kind in REQUIRED_KEYS.items():
        if key not in report:
            raise ValueError(f"{source}: missing key {key!r} (a report of examples/evaluate.py has "
                             f"{sorted(REQUIRED_KEYS)}, and 'zero_shot' and/or 'retrieval')")
        if not isinstance(report[key], kind) or isinstance(report[key], bool):
            raise ValueError(f"{source}: {key!r} must be a {kind.__name__}, got {report[key]!r:.60}")
    if report.get("zero_shot") is None and report.get("retrieval") is None:
        raise ValueError(f"{source}: no results: the report has neither 'zero_shot' nor 'retrieval'")
    _check_finite_everywhere(report, source)
    zero_shot = report.get("zero_shot")
    if zero_shot is not None:
        if not isinstance(zero_shot, dict):
            raise ValueError(f"{source}: 'zero_shot' must be an object, got {type(zero_shot).__name__}")
        if "accuracy" in zero_shot:
            for key in ("accuracy", "macro_f1"):
                _check_interval(zero_shot.get(key), f"{source}: zero_shot.{key}")
        else:
            if not isinstance(zero_shot.get("auroc"), dict):
                raise ValueError(f"{source}: zero_shot needs 'accuracy' (single-label) or an 'auroc' object "
                                 "(multi-label)")
            for name, interval in zero_shot["auroc"].items():
                _check_interval(interval, f"{source}: zero_shot.auroc.{name}")
        if "mean_auroc" in zero_shot and zero_shot["mean_auroc"] is not None:
            _check_number(zero_shot["mean_auroc"], f"{source}: zero_shot.mean_auroc")
    retrieval = report.get("retrieval")
    if retrieval is not None:
        if not isinstance(retrieval, dict):
            raise ValueError(f"{source}: 'retrieval' must be an object, got {type(retrieval).__name__}")
        for direction, entry in retrieval.items():
            for kind in ("precision", "recall"):
                values = (entry or {}).get(kind, {}) if isinstance(entry, dict) else None
                if not isinstance(values, dict):
                    raise ValueError(f"{source}: retrieval.{direction}.{kind} must be an object {{k: interval}}")
                for k, interval in values.items():
                    _check_interval(interval, f"{source}: retrieval.{direction}.{kind}.{k}")
    return report


def _check_number(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} must be a number, got {value!r:.60}")


def _check_interval(interval, where: str) -> None:
    if isinstance(interval, numbers.Real) and not isinstance(interval, bool):
        return  # a bare value (e.g. the pre-training report's AUROC), no interval
    if not isinstance(interval, dict) or "value" not in interval:
        raise ValueError(f"{where} must be a number or an object with a 'value', got {interval!r:.80}")
    _check_number(interval["value"], f"{where}.value")
    for bound in ("low", "high"):
        if interval.get(bound) is not None:
            _check_number(interval[bound], f"{where}.{bound}")


def _check_finite_everywhere(value, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}: a report may not hold NaN or inf (null, with a reason, instead)")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite_everywhere(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_finite_everywhere(item, f"{where}[{index}]")


def metric_rows(report: dict) -> list[dict]:
    """[{"task", "metric", "metric_type", "value", "low", "high"}] for every headline number of a report."""
    rows = []
    zero_shot = report.get("zero_shot")
    if zero_shot is not None and "accuracy" in zero_shot:  # single-label
        for key, name, metric_type in (("accuracy", "Accuracy", "accuracy"), ("macro_f1", "Macro-F1", "f1")):
            rows.append(_row("zero_shot", name, metric_type, zero_shot[key]))
        if zero_shot.get("mean_auroc") is not None:
            rows.append(_row("zero_shot", "Mean one-vs-rest AUROC", "roc_auc", {"value": zero_shot["mean_auroc"]}))
    elif zero_shot is not None:  # multi-label
        for name, interval in zero_shot["auroc"].items():
            rows.append(_row("zero_shot", f"AUROC {name}", "roc_auc", interval))
        if zero_shot.get("mean_auroc") is not None:  # None: no finding had an AUROC (the report says why)
            rows.append(_row("zero_shot", "Mean AUROC", "roc_auc", {"value": zero_shot["mean_auroc"]}))
    for direction, label in (("i2t", "image→text"), ("t2i", "text→image")):
        for kind, short in (("precision", "P"), ("recall", "R")):
            for k, interval in report.get("retrieval", {}).get(direction, {}).get(kind, {}).items():
                rows.append(_row("retrieval", f"{label} {short}@{k}", f"{kind}_at_{k}", interval))
    return rows


def _row(task: str, metric: str, metric_type: str, interval) -> dict:
    if not isinstance(interval, dict):
        interval = {"value": interval}
    return {"task": task, "metric": metric, "metric_type": metric_type, "value": float(interval["value"]),
            "low": interval.get("low"), "high": interval.get("high")}


def format_value(row: dict) -> str:
    """'61.3 (58.2–64.5)': percent with its 95% interval, when there is one."""
    text = f"{100 * row['value']:.1f}"
    if row.get("low") is not None:
        text += f" ({100 * row['low']:.1f}–{100 * row['high']:.1f})"
    return text


def percent_cell(interval: dict | None) -> str:
    """`format_value` of a `bootstrap_ci` interval; "(no CI)" when it has no bounds, "n/a" for None (undefined)."""
    if interval is None:
        return "n/a"
    return format_value(interval) + (" (no CI)" if interval["low"] is None else "")


def results_table(reports: list[dict]) -> str:
    """A Markdown table of every report's headline numbers (percent, 95% bootstrap intervals)."""
    lines = ["| Data set | Split | Images | Task | Metric | Value (95% CI) |", "|---|---|---|---|---|---|"]
    for index, report in enumerate(reports):
        check_report(report, f"reports[{index}]")
        for row in metric_rows(report):
            lines.append(f"| {report.get('dataset_name', report['dataset'])} | {report['split']} | "
                         f"{report['num_images']} | {row['task'].replace('_', '-')} | {row['metric']} | "
                         f"{format_value(row)} |")
    return "\n".join(lines)


def eval_results(reports: list[dict]) -> list[EvalResult]:
    """Hub `model-index` entries (values in percent, as the table)."""
    results = []
    for index, report in enumerate(reports):
        check_report(report, f"reports[{index}]")
        for row in metric_rows(report):
            results.append(EvalResult(
                task_type=TASK_TYPES[row["task"]], dataset_type=report["dataset"],
                dataset_name=report.get("dataset_name", report["dataset"]), dataset_split=report["split"],
                metric_type=row["metric_type"], metric_name=row["metric"], metric_value=round(100 * row["value"], 2),
            ))
    return results


def markdown_report(report: dict) -> str:
    """A readable report of one evaluation: the headline table, warnings, per-class numbers, confusion matrix."""
    check_report(report)
    zero_shot = report.get("zero_shot") or {}
    lines = [f"# {report.get('dataset_name', report['dataset'])}: {report['split']} split", "",
             f"- model: `{report.get('model', 'not recorded')}`", f"- images: {report['num_images']}"]
    if zero_shot:
        lines.append(f"- prompts: {report.get('prompt_set', 'not recorded')} "
                     f"(ensemble: {report.get('ensemble', 'not recorded')})")
    if report.get("skipped_images"):
        lines.append(f"- images skipped while loading: {report['skipped_images']}")
    lines += ["", results_table([report]), ""]
    if zero_shot.get("constant_prediction") is not None:
        baseline = zero_shot["majority_baseline"]
        lines += [f"**Warning: every image was predicted as {zero_shot['constant_prediction']!r}.** This is a "
                  f"constant predictor. Always predicting the majority class ({baseline['class']!r}) scores "
                  f"accuracy {100 * baseline['accuracy']:.1f} and macro-F1 {100 * baseline['macro_f1']:.1f}.", ""]
    elif "majority_baseline" in zero_shot:
        baseline = zero_shot["majority_baseline"]
        lines += [f"For comparison, always predicting the majority class ({baseline['class']!r}) scores accuracy "
                  f"{100 * baseline['accuracy']:.1f} and macro-F1 {100 * baseline['macro_f1']:.1f}.", ""]
    if "confusion_matrix" in zero_shot:
        names = list(zero_shot["class_counts"])
        lines += ["Confusion matrix (rows: true class, columns: predicted):", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
                  for name, row in zip(names, zero_shot["confusion_matrix"])]
        lines.append("")
    if zero_shot.get("skipped"):
        reasons = zero_shot.get("skipped_reasons", {})
        named = ", ".join(f"{name} ({reasons[name]})" if name in reasons else name for name in zero_shot["skipped"])
        lines += [f"Findings without both positive and negative images (no AUROC): {named}", ""]
    if zero_shot.get("auroc_undefined"):
        named = ", ".join(f"{name} ({reason})" for name, reason in zero_shot["auroc_undefined"].items())
        lines += [f"Classes without a one-vs-rest AUROC: {named}", ""]
    if zero_shot.get("mean_auroc_undefined"):
        lines += [f"No mean AUROC: {zero_shot['mean_auroc_undefined']}.", ""]
    for direction, entry in (report.get("retrieval") or {}).items():
        for k, reason in (entry.get("skipped_ks") or {}).items():
            lines.append(f"- {direction}: K={k} skipped: {reason}")
        if entry.get("skipped_queries"):
            skipped = entry["skipped_queries"]
            lines.append(f"- {direction}: {skipped['count']} queries skipped: {skipped['reason']}")
    if zero_shot.get("labels_not_scored"):
        counts = ", ".join(f"{k} ({v})" for k, v in zero_shot["labels_not_scored"].items())
        lines += [f"Labels outside the prompt set, not scored: {counts}", ""]
    return "\n".join(lines)


def linear_probe_table(report: dict) -> str:
    """The linear probe's (or full fine-tuning's) Markdown table: test AUROC per label fraction and task, with the
    mean over tasks, each with its 95% interval."""
    tasks = report["tasks"]
    columns = tasks + ["Mean"] if len(tasks) > 1 else tasks
    lines = [f"# {report['dataset_name']}: {report['mode'].replace('_', ' ')}, test AUROC % (95% CI)", "",
             f"- model: `{report['model']}`; data: {report['data']}",
             f"- images: train {report['splits']['train']}, validate {report['splits']['validate']} "
             f"({report['validation']}), test {report['splits']['test']}", "",
             "| Label fraction | Train images | Best epoch | " + " | ".join(columns) + " |",
             "|---" * (3 + len(columns)) + "|"]
    for entry in report["results"]:
        test = entry["test"]
        cells = [test["auroc"][name] for name in tasks] + ([test["mean_auroc"]] if len(tasks) > 1 else [])
        lines.append(f"| {entry['label_fraction']:.0%} | {entry['train_images']} | {entry['best_epoch']} | "
                     + " | ".join(percent_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def format_agreement(summary: dict | None) -> str:
    """One line of `test_split_agreement`'s "matched" or "shuffled" entry: correlation and AUROC, mean ± std."""
    if summary is None:
        return "n/a"
    correlation, auroc = summary["correlation"], summary["auroc"]
    if not correlation["n"]:
        return "no scored sentence"
    return (f"r = {correlation['mean']:.3f} ± {correlation['std']:.3f}, AUROC = {auroc['mean']:.3f} ± "
            f"{auroc['std']:.3f} (n = {auroc['n']})")


__all__ = [
    "REQUIRED_KEYS",
    "TASK_TYPES",
    "check_report",
    "eval_results",
    "format_agreement",
    "format_value",
    "linear_probe_table",
    "load_report",
    "markdown_report",
    "metric_rows",
    "percent_cell",
    "results_table",
]
