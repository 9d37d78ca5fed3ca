"""egma_hf.evaluation: what a trained EGMA model is worth, as the paper measures it (Sec. 4.1, 5.1), every number with
a bootstrap interval. The evaluation sets themselves are `egma_hf.data.EVALUATION_SETS`.

- `metrics`: accuracy, macro-F1, AUROC (and where it is defined), ROC curve, confusion matrix, P@K, R@K,
  `bootstrap_ci`; plain numpy, checked against scikit-learn.
- `embedding`: image files -> pixel batches -> L2-normalised image embeddings.
- `classification`: zero-shot classification scored against labels (single- and multi-label), `zero_shot_auroc`.
- `retrieval`: Precision@K / Recall@K in both directions, the CheXpert 8x200 expert-query protocol.
- `linear_probe`: supervised classification with 1/10/100% of the labels on the (frozen) image tower.
- `analysis`: embedding clusters and sentence->patch similarity against radiologists' gaze.
- `plots` and `reports`: the figures (matplotlib) and the Markdown / model-card tables.
- `protocol`: examples/evaluate.py's run on one evaluation set, `evaluate_on` (rows, model check, report files).
"""

from ..data.images import load_image  # noqa: F401  (importable from the flat egma_hf.evaluation before 0.2)
from ..zero_shot import ZeroShotClassifier, check_positive_int, embed_pixel_values  # noqa: F401  (likewise)
from .classification import (
    check_labels,
    class_targets,
    evaluate_multi_label,
    evaluate_single_label,
    read_class_prompts,
    score_zero_shot,
    zero_shot_auroc,
)
from .embedding import check_images_readable, embed_images, image_file_batches
from .linear_probe import LINEAR_PROBE_SETS, LinearProbeSettings, run_linear_probe
from .metrics import (
    accuracy,
    auroc_defined,
    bootstrap_ci,
    column_aurocs,
    confusion_matrix,
    macro_f1,
    mean_auroc,
    precision_at_k,
    recall_at_k,
    roc_auc,
    roc_curve,
)
from .protocol import (
    check_evaluation_rows,
    check_model_reference,
    evaluate_on,
    load_evaluation_rows,
    write_report,
    zero_shot_prompts,
)
from .reports import check_report, linear_probe_table, load_report, markdown_report, metric_rows, results_table
from .retrieval import check_ks, expert_query_retrieval, retrieval_metrics

__all__ = [
    "LINEAR_PROBE_SETS",
    "LinearProbeSettings",
    "accuracy",
    "auroc_defined",
    "bootstrap_ci",
    "check_evaluation_rows",
    "check_images_readable",
    "check_ks",
    "check_labels",
    "check_model_reference",
    "check_report",
    "class_targets",
    "column_aurocs",
    "confusion_matrix",
    "embed_images",
    "evaluate_multi_label",
    "evaluate_on",
    "evaluate_single_label",
    "expert_query_retrieval",
    "image_file_batches",
    "linear_probe_table",
    "load_evaluation_rows",
    "load_report",
    "macro_f1",
    "markdown_report",
    "mean_auroc",
    "metric_rows",
    "precision_at_k",
    "read_class_prompts",
    "recall_at_k",
    "results_table",
    "retrieval_metrics",
    "roc_auc",
    "roc_curve",
    "run_linear_probe",
    "score_zero_shot",
    "write_report",
    "zero_shot_auroc",
"zero_shot_prompts",
]
