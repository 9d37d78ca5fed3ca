"""What a run is built from: its readings, its tokenizer, its model and processor, and the checks on its splits."""

import logging
import os
import re
from pathlib import Path

import datasets
import torch
from transformers import AutoTokenizer, BertTokenizerFast

from .. import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
from ..data import (
    FEATURES,
    HeatmapSettings,
    attach_gaze,
    build_once,
    cached_synthetic_corpus,
    load_chexpert_plus,
    load_egd_cxr,
    load_image_text,
    load_mimic_cxr,
    load_mimic_eye,
    load_prerendered_gaze,
    load_reflacx,
)
from ..data.chexpert_plus import CHEXPERT_PLUS_TABLE
from ..data.prerendered_gaze import EGMA_CSV_NAME
from ..evaluation.classification import class_targets
from ..evaluation.metrics import auroc_defined
from ..zero_shot import resolve_class_prompts
from .settings import LOSS_PRESETS, TrainingSettings

logger = logging.getLogger(__name__)

# The default preset trains from scratch in a few CPU minutes. A small CNN (timm's resnet10t, output stride 16:
# a 7x7 patch grid at 112 px, like Swin-T's at 224) learns the synthetic findings within ~150 steps; a tiny Swin
# from scratch did not learn them at all in 150 steps on this budget. Real runs pass --vision_model.
TINY_VISION = dict(model_type="timm_wrapper", architecture="resnet10t", model_args={"output_stride": 16})
TINY_IMAGE_SIZE = 112
TINY_TEXT = dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128, max_position_embeddings=80)
EVALUATION_PROMPTS = "chexpert_findings"  # zero-shot AUROC over these findings' positive/negative prompts
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_readings(settings: TrainingSettings, accelerator=None) -> tuple[datasets.Dataset, str]:
    """The readings as one Dataset with a `split` column, and a description of where they came from. With an
    `accelerator`, only its main process builds the synthetic corpus' caches; without one, this process does."""
    recipe = settings.heatmap_sigma_or_recipe()
    if settings.data is None:
        seed = settings.seed if settings.corpus_seed is None else settings.corpus_seed
        corpus = Path(settings.cache_dir) / f"synthetic-{settings.synthetic_samples}-seed{seed}"
        cached = corpus.with_name(corpus.name + f"-readings-{settings.heatmap_recipe}")
        if accelerator is None or accelerator.is_main_process:
            cached_synthetic_corpus(settings.synthetic_samples, seed, settings.cache_dir)
            heatmaps = HeatmapSettings(recipe=12.0 if recipe == "auto" else recipe)
            build_once(cached, lambda folder: load_mimic_eye(corpus, heatmaps).save_to_disk(str(folder)))
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return datasets.load_from_disk(cached), f"synthetic corpus ({settings.synthetic_samples} readings) in {corpus}"
    corpus, source = load_data_root(settings.data, settings)
    if settings.gaze_data is None:
        return corpus, source
    gaze, gaze_source = load_data_root(settings.gaze_data, settings, "--gaze_data", image_root=settings.data)
    if not any(gaze["has_gaze"]):
        raise SystemExit(f"--gaze_data {settings.gaze_data}: {gaze_source} has no reading with gaze")
    try:
        combined = attach_gaze(corpus, gaze)
    except ValueError as error:
        raise SystemExit(f"--data {settings.data} with --gaze_data {settings.gaze_data}: {error}") from error
    return combined, f"{source} with gaze from {gaze_source}"


def load_data_root(path, settings: TrainingSettings, flag: str = "--data", image_root=None):
    """The rows under one data root or file, whatever its format, and a description; SystemExit naming `flag` when
    it is none of the known formats. `image_root` is the default MIMIC-CXR root of EGD-CXR / REFLACX roots and of
    CoGaze heatmap folders."""
    root = Path(path)
    recipe = settings.heatmap_sigma_or_recipe()
    heatmaps = HeatmapSettings(recipe="egma" if recipe == "auto" else recipe)
    image_root = settings.image_root or image_root
    if root.is_file() or (root / CHEXPERT_PLUS_TABLE).is_file():
        return _load_table(root, settings)
    if (root / "dataset_info.json").is_file() or (root / "state.json").is_file():
        saved = datasets.load_from_disk(root)
        if isinstance(saved, datasets.Dataset) and set(FEATURES) <= set(saved.column_names):
            return saved, f"saved dataset {root}"
        return _image_text(root, settings), f"image-text dataset {root}"
    if any(root.glob("patient_*")):
        return load_mimic_eye(root, heatmaps), f"MIMIC-EYE {root}"
    if any(root.glob("mimic-cxr-2.0.0-split.csv*")):
        views = "all views" if settings.all_views else "frontal views"
        return load_mimic_cxr(root, frontal_only=not settings.all_views), f"MIMIC-CXR-JPG {root} ({views})"
    if (root / EGMA_CSV_NAME).is_file():
        return load_prerendered_gaze(root, "egma"), f"pre-rendered gaze (released EGMA code's layout) {root}"
    if any(root.glob("*/sentence-heatmap-lookup.json")):
        return load_prerendered_gaze(root, "cogaze", image_root=image_root), f"pre-rendered gaze (CoGaze) {root}"
    egd, reflacx = (root / "master_sheet.csv").is_file(), (root / "main_data").is_dir()
    if (egd or reflacx) and image_root is None:
        raise SystemExit(f"{flag} {root} is {'EGD-CXR' if egd else 'REFLACX'}: give --image_root (the MIMIC-CXR "
                         "images)")
    if egd:
        return load_egd_cxr(root, image_root, heatmaps), f"EGD-CXR {root}"
    if reflacx:
        return load_reflacx(root, image_root, heatmaps), f"REFLACX {root}"
    raise SystemExit(f"{flag} {root}: not a saved dataset, MIMIC-EYE, EGD-CXR, REFLACX, MIMIC-CXR-JPG, CheXpert Plus, "
                     "pre-rendered gaze folder or image-text file")


def _load_table(path: Path, settings: TrainingSettings):
    """--data as a file: the CheXpert Plus table (or its folder), else an image-text CSV / JSON lines / parquet."""
    table = path / CHEXPERT_PLUS_TABLE if path.is_dir() else path
    if table.name.startswith("df_chexpert_plus"):
        image_root = Path(settings.image_root) if settings.image_root else table.parent
        views = "all views" if settings.all_views else "frontal views"
        rows = load_chexpert_plus(table, image_root, labels=settings.labels, frontal_only=not settings.all_views)
        return rows, f"CheXpert Plus {table} ({views})"
    return _image_text(path, settings), f"image-text file {path}"


def _image_text(path: Path, settings: TrainingSettings):
    try:
        return load_image_text(path, image_column=settings.image_column, text_column=settings.caption_column,
                               image_dir=settings.image_root)
    except ValueError as error:
        raise SystemExit(f"--data {path}: {error}") from error


def build_tokenizer(texts, save_dir=None, characters: bool = True, **tokenizer_kwargs) -> BertTokenizerFast:
    """A WordPiece tokenizer whose vocabulary is BERT's special tokens, then every word and punctuation mark of
    `texts` (lower-cased, sorted): deterministic, no download.

    With `characters`, single characters and their "##" continuations follow, so that unseen words still tokenize
    (without, they are [UNK]). With `save_dir`, the vocabulary is written to `save_dir/vocab.txt`, or read from it
    when it exists. `tokenizer_kwargs` go to BertTokenizerFast (e.g. `model_input_names`).
    """
    vocab_file = None if save_dir is None else Path(save_dir) / "vocab.txt"
    if vocab_file is not None and vocab_file.is_file():
        tokens = vocab_file.read_text().splitlines()
        if tokens[:len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
            raise ValueError(f"{vocab_file} does not start with the special tokens {list(SPECIAL_TOKENS)} that "
                             "build_tokenizer writes first: it is not a vocabulary this function wrote; delete it "
                             "to build it again")
    else:
        words = sorted({w for text in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())})
        chars = sorted({c for w in words for c in w}) if characters else []
        tokens = list(dict.fromkeys([*SPECIAL_TOKENS, *words, *chars, *(f"##{c}" for c in chars)]))
        if vocab_file is not None:  # processes of one launch build the same file: each renames its own copy in
            vocab_file.parent.mkdir(parents=True, exist_ok=True)  # place, so none reads a half-written one
            partial = vocab_file.with_name(f"{vocab_file.name}.{os.getpid()}.tmp")
            partial.write_text("\n".join(tokens) + "\n")
            os.replace(partial, vocab_file)
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True,
                             **tokenizer_kwargs)


def build_model_and_processor(settings: TrainingSettings, train: datasets.Dataset, work_dir: Path):
    """The model to train and its processor: from `--init_from`, from pretrained towers, or the tiny preset from
    scratch with a tokenizer of the training reports (kept in `work_dir/tokenizer`). The loss weights follow
    `--losses` and `--global_loss_weight`."""
    mlce, fine, egm = LOSS_PRESETS[settings.losses]
    weights = dict(global_loss_weight=settings.global_loss_weight, mlce_loss_weight=mlce,
                   fine_grained_loss_weight=fine, egm_loss_weight=egm)
    if settings.init_from:
        model = EGMAModel.from_pretrained(settings.init_from)
        for key, value in weights.items():
            setattr(model.config, key, value)
        processor = EGMAProcessor.from_pretrained(settings.init_from)
        return model, processor
    if settings.vision_model:
        model = EGMAModel.from_vision_text_pretrained(settings.vision_model, settings.text_model, **weights)
        tokenizer = AutoTokenizer.from_pretrained(settings.text_model)
    else:
        tokenizer = build_tokenizer(list(train["report"]), Path(work_dir) / "tokenizer")
        config = EGMAConfig(vision_config=dict(TINY_VISION),
                            text_config=dict(TINY_TEXT, vocab_size=tokenizer.vocab_size), projection_dim=64, **weights)
        model = EGMAModel(config)
    image_size = settings.image_size or getattr(model.config.vision_config, "image_size", None) or TINY_IMAGE_SIZE
    with torch.no_grad():
        probe = model.get_image_features(pixel_values=torch.zeros(1, 3, image_size, image_size))
    if probe.patch_grid is None:
        raise SystemExit("the vision tower has no patch grid for gaze; choose a Swin, ViT or ConvNeXt-like tower")
    processor = EGMAProcessor(EGMAImageProcessor(size=image_size, gaze_grid_size=probe.patch_grid[0]), tokenizer)
    return model, processor


def check_splits(splits, source: str, batch_size: int, num_processes: int):
    """Once the data are known, before training: every process gets a training batch (drop_last would otherwise
    leave an epoch with no step, and the run would never end), and the validate and test splits can be scored."""
    train = len(splits["train"])
    if train // batch_size < num_processes:
        per_process = f" per process x {num_processes} processes" if num_processes > 1 else ""
        raise SystemExit(f"--batch_size {batch_size}{per_process} needs at least {batch_size * num_processes} training "
                         f"readings, and {source} has {train}: lower --batch_size"
                         + (" or use fewer processes" if num_processes > 1 else ""))
    findings = list(resolve_class_prompts(EVALUATION_PROMPTS)[0])
    for name in ("validate", "test"):
        if name not in splits:
            continue
        labels = list(splits[name]["labels"])
        defined = auroc_defined(class_targets(labels, findings, multi_label=True))
        scored = [finding for finding, ok in zip(findings, defined) if ok]
        if not scored:
            raise SystemExit(f"{source}: the {name} split ({len(labels)} reading{'s' * (len(labels) != 1)}) cannot be "
                             "scored: zero-shot AUROC "
                             f"needs a finding of {findings} with both positive and negative readings there")
        if len(scored) < len(findings):
            logger.warning("%s split: %s have positives only or negatives only and are left out of its mean AUROC",
                           name, sorted(set(findings) - set(scored)))
