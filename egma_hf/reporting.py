"""Evaluation reports as tables: one list of metric rows feeds the Markdown report of `examples/evaluate.py`, the
model card's results table and its Hub `model-index`, so the three never disagree.

A report is the dict `examples/evaluate.py` writes as JSON: `dataset`, `dataset_name`, `split`, `num_images`,
`prompt_set`, `ensemble`, and `zero_shot` (the output of `evaluate_single_label` or `evaluate_multi_label`) and/or
`retrieval` (precision/recall per direction and k, each with a bootstrap interval).
"""

from huggingface_hub import EvalResult

TASK_TYPES = {"zero_shot": "zero-shot-image-classification", "retrieval": "zero-shot-retrieval"}


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
        rows.append(_row("zero_shot", "Mean AUROC", "roc_auc", {"value": zero_shot["mean_auroc"]}))
    for direction, label in (("i2t", "image→text"), ("t2i", "text→image")):
        for kind, short in (("precision", "P"), ("recall", "R")):
            for k, interval in report.get("retrieval", {}).get(direction, {}).get(kind, {}).items():
                rows.append(_row("retrieval", f"{label} {short}@{k}", f"{kind}_at_{k}", interval))
    return rows


def _row(task: str, metric: str, metric_type: str, interval: dict) -> dict:
    return {"task": task, "metric": metric, "metric_type": metric_type, "value": float(interval["value"]),
            "low": interval.get("low"), "high": interval.get("high")}


def format_value(row: dict) -> str:
    """'61.3 (58.2–64.5)': percent with its 95% interval, when there is one."""
    text = f"{100 * row['value']:.1f}"
    if row["low"] is not None:
        text += f" ({100 * row['low']:.1f}–{100 * row['high']:.1f})"
    return text


def results_table(reports: list[dict]) -> str:
    """A Markdown table of every report's headline numbers (percent, 95% bootstrap intervals)."""
    lines = ["| Data set | Split | Images | Task | Metric | Value (95% CI) |", "|---|---|---|---|---|---|"]
    for report in reports:
        for row in metric_rows(report):
            lines.append(f"| {report.get('dataset_name', report['dataset'])} | {report['split']} | "
                         f"{report['num_images']} | {row['task'].replace('_', '-')} | {row['metric']} | "
                         f"{format_value(row)} |")
    return "\n".join(lines)


def eval_results(reports: list[dict]) -> list[EvalResult]:
    """Hub `model-index` entries (values in percent, as the table)."""
    results = []
    for report in reports:
        for row in metric_rows(report):
            results.append(EvalResult(
                task_type=TASK_TYPES[row["task"]], dataset_type=report["dataset"],
                dataset_name=report.get("dataset_name", report["dataset"]), dataset_split=report["split"],
                metric_type=row["metric_type"], metric_name=row["metric"], metric_value=round(100 * row["value"], 2),
            ))
    return results


def markdown_report(report: dict) -> str:
    """A readable report of one evaluation: the headline table, warnings, per-class numbers, confusion matrix."""
    zero_shot = report.get("zero_shot") or {}
    lines = [f"# {report.get('dataset_name', report['dataset'])}: {report['split']} split", "",
             f"- model: `{report['model']}`", f"- images: {report['num_images']}"]
    if zero_shot:
        lines.append(f"- prompts: {report['prompt_set']} (ensemble: {report['ensemble']})")
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
        lines += [f"Findings without both positive and negative images (no AUROC): {', '.join(zero_shot['skipped'])}", ""]
    if zero_shot.get("labels_not_scored"):
        counts = ", ".join(f"{k} ({v})" for k, v in zero_shot["labels_not_scored"].items())
        lines += [f"Labels outside the prompt set, not scored: {counts}", ""]
    return "\n".join(lines)
