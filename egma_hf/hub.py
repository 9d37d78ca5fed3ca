"""Publishing a trained EGMA model on the Hugging Face Hub, in one commit: weights, config, processor, the remote code
(so `trust_remote_code=True` works for people without egma_hf installed, the medical zero-shot pipeline included)
and a model card.

The card is the template `egma_hf/templates/model_card.md` (package data, so it is there in a non-editable install)
filled in from the model's config, its `training_config.json` / `eval_results.json` (written by pre-training) and
evaluation reports (written by examples/evaluate.py), with Hub metadata (`pipeline_tag`, `library_name`, license,
datasets, tags, `model-index`).

    card = prepare_upload("egma-pretrain", "you/egma-cxr", reports)   # every input checked, nothing written yet
    save_for_hub("egma-pretrain", "staged", card)                     # what would be uploaded, to look at
    push_to_hub("egma-pretrain", "you/egma-cxr", card)                # one commit
"""

import json
import numbers
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from .configuration_egma import EGMAConfig
from .conversion import check_egma_checkpoint
from .evaluation.reports import check_report, eval_results, results_table
from .modeling_egma import EGMAModel
from .pipeline_egma import CUSTOM_PIPELINES
from .processing_egma import EGMAProcessor

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
TAGS = ["egma", "chest-x-ray", "radiology", "eye-gaze", "medical", "clip", "vision-language"]
SYNTHETIC_DATA = "egma_hf-synthetic-mimic-eye"


def check_repo_id(repo_id, namespace: bool = True) -> str:
    """A Hub model id, "namespace/name" when `namespace` (pushing needs one); ValueError otherwise."""
    if not isinstance(repo_id, str) or (namespace and repo_id.count("/") != 1):
        raise ValueError(f"repo_id must be 'user/name' or 'org/name', got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except ValueError as error:  # huggingface_hub's HFValidationError
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub id: {error}") from None
    return repo_id


def _read_json(path: Path):
    """The JSON object in `path`, None when there is no such file; ValueError naming the file when it is not one."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _tower(config) -> str:
    name = getattr(config, "_name_or_path", "") or getattr(config, "architecture", "") or ""  # timm: architecture
    sizes = {key: getattr(config, key) for key in ("hidden_size", "embed_dim", "num_hidden_layers", "depths")
             if getattr(config, key, None) is not None}
    described = config.model_type + (f" ({', '.join(f'{k} {v}' for k, v in sizes.items())})" if sizes else "")
    return f"`{name}` — {described}" if name else described


def _losses(config: EGMAConfig) -> str:
    weights = {"global InfoNCE": config.global_loss_weight, "gaze-guided MLCE": config.mlce_loss_weight,
               "fine-grained contrast": config.fine_grained_loss_weight,
               "gaze-guided mapping (EGM)": config.egm_loss_weight}
    used = [f"{name} × {weight:g}" for name, weight in weights.items() if weight]
    return ", ".join(used) or "none recorded"


def pretraining_report(eval_results_json: dict, source: str = "eval_results.json") -> dict | None:
    """Pre-training's held-out zero-shot AUROC as a report (no intervals), or None if it has none.
    `source` names the file in errors."""
    test = (eval_results_json or {}).get("test")
    if not test:
        return None
    missing = [key for key in ("num_images", "auroc", "mean_auroc") if key not in test]
    if missing or not isinstance(test["auroc"], dict):
        raise ValueError(f"{source}: its 'test' entry lacks {missing or ['an auroc object']} (written by "
                         "examples/pretrain.py as {num_images, auroc: {finding: value}, mean_auroc})")
    return {"dataset": "pretraining-test-split", "dataset_name": "Pre-training data, held-out test split",
            "split": "test", "num_images": test["num_images"],
            "zero_shot": {"auroc": {k: {"value": v} for k, v in test["auroc"].items()},
                          "mean_auroc": test["mean_auroc"]}}


def build_model_card(model_dir, repo_id: str, reports=(), template_path=None, license: str = "apache-2.0",
                     datasets=None, model_name: str | None = None) -> ModelCard:
    """Fill the template for the model saved in `model_dir` (no processor needed: pre-training writes its card with
    this before anything is published).

    Args:
        repo_id: where it will live ("user/name", or a bare name for a local run), used in the usage snippets.
        reports: evaluation report dicts (examples/evaluate.py JSON); without any, the pre-training run's held-out
            zero-shot AUROC is used when `eval_results.json` has it.
        datasets: Hub dataset ids or names for the metadata; default: the training data named in
            `training_config.json` (the synthetic corpus when it names none).
    """
    from . import __version__

    model_dir = Path(model_dir)
    check_repo_id(repo_id, namespace=False)  # a card written beside a local run names the folder
    template_path = Path(template_path) if template_path else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template not found: {template_path}")
    check_egma_checkpoint(model_dir, "model_dir", processor=False)
    if not isinstance(license, str) or not license.strip():
        raise ValueError(f"license must be a license id such as 'apache-2.0', got {license!r}")
    if datasets is not None and (isinstance(datasets, str) or not all(isinstance(d, str) and d for d in datasets)):
        raise ValueError(f"datasets must be a list of dataset names, got {datasets!r}")
    reports = [check_report(report, f"reports[{index}]") for index, report in enumerate(reports)]
    config = EGMAConfig.from_pretrained(model_dir)
    training = _read_json(model_dir / "training_config.json") or {}
    gaze = training.get("gaze_fraction")
    if gaze is not None and (isinstance(gaze, bool) or not isinstance(gaze, numbers.Real) or not 0 <= gaze <= 1):
        raise ValueError(f"{model_dir / 'training_config.json'}: gaze_fraction must be a number in [0, 1], "
                         f"got {gaze!r}")
    if reports:
        summary = "Zero-shot results, computed with egma_hf's `examples/evaluate.py`:"
    else:
        reports = [r for r in [pretraining_report(_read_json(model_dir / "eval_results.json"),
                                                     str(model_dir / "eval_results.json"))] if r]
        summary = ("Zero-shot AUROC of positive-vs-negative finding prompts on the held-out test split of the "
                   "pre-training data, from `examples/pretrain.py` (no intervals):" if reports else
                   "No evaluation results were supplied with this model.")
    data = training.get("data")
    datasets = list(datasets) if datasets else [Path(data).name if data else SYNTHETIC_DATA]

    if data:
        training_data = f"Readings from `{data}` (EGD-CXR / REFLACX / MIMIC-EYE format)."
        scope = "adult chest radiographs from the MIMIC-CXR population (Beth Israel Deaconess Medical Center, Boston)"
    elif training:
        training_data = (f"The synthetic MIMIC-EYE-format corpus of egma_hf ({training.get('synthetic_samples')} "
                         "readings of drawn chest-X-ray-like images with generated reports and gaze). It exists "
                         "to test the software: **this model has not seen real X-rays.**")
        scope = "synthetic images only"
    else:
        training_data, scope = "Not recorded with this model (no `training_config.json`).", "unknown data"
    details = [f"- {label}: {training[key]}" for key, label in (("epochs", "Epochs"), ("batch_size", "Batch size"),
               ("lr", "Learning rate"), ("seed", "Seed"), ("init_from", "Initialised from")) if training.get(key)]

    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="zero-shot-image-classification", license=license,
        datasets=datasets, tags=TAGS, model_name=model_name or repo_id.split("/")[-1],
        eval_results=eval_results(reports) or None,
    )
    return ModelCard.from_template(
        card_data, template_path=str(template_path), repo_id=repo_id, model_name=card_data.model_name,
        egma_hf_version=__version__, projection_dim=config.projection_dim, vision_model=_tower(config.vision_config),
        text_model=_tower(config.text_config), losses=_losses(config), training_data=training_data,
        training_data_scope=scope, gaze_fraction=f"{gaze:.0%}" if gaze is not None else "an unrecorded fraction",
        training_details="\n".join(details), evaluation_summary=summary,
        results_table=results_table(reports) if reports else "",
    )


def prepare_upload(model_dir, repo_id: str, reports=(), **card_options) -> ModelCard:
    """Check everything a push needs before anything is written or uploaded (a "namespace/name" `repo_id`, a model
    folder with its processor, the reports) and return the model card; `card_options` go to `build_model_card`.
    ValueError / OSError naming the argument or file that is wrong."""
    check_repo_id(repo_id)
    check_egma_checkpoint(model_dir, "model_dir")
    return build_model_card(model_dir, repo_id, reports, **card_options)


def save_for_hub(model_dir, save_directory, card: ModelCard) -> list[str]:
    """Write what the Hub repository gets into `save_directory` (a folder other than `model_dir`): the model with
    its code and `config.custom_pipelines`, the processor and `card` as README.md. Returns the file names."""
    save_directory = Path(save_directory)
    model = EGMAModel.from_pretrained(model_dir)
    processor = EGMAProcessor.from_pretrained(model_dir)
    model.config.custom_pipelines = CUSTOM_PIPELINES  # pipeline("egma-zero-shot-image-classification", remote code)
    model.save_pretrained(save_directory)
    processor.save_pretrained(save_directory)
    card.save(save_directory / "README.md")
    return sorted(path.name for path in save_directory.iterdir())


def push_to_hub(model_dir, repo_id: str, card: ModelCard | None = None, private: bool = False,
                commit_message: str = "Upload EGMA model", token: str | None = None) -> CommitInfo:
    """Publish the model saved in `model_dir` to `repo_id` in one commit, creating the repository if needed.
    `card`: from `prepare_upload` (default: its card without evaluation reports). The login (`hf auth login`,
    HF_TOKEN) or `token` decides the account; HF_ENDPOINT another Hub."""
    card = prepare_upload(model_dir, repo_id) if card is None else card
    check_repo_id(repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(model_dir, folder, card)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)


__all__ = [
    "DEFAULT_TEMPLATE",
    "build_model_card",
    "check_repo_id",
    "prepare_upload",
    "pretraining_report",
    "push_to_hub",
    "save_for_hub",
]
