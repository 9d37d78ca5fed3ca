"""Pre-rendered gaze heatmaps that people already have -> gaze rows in the readers' schema (`FEATURES`).

Two public layouts of per-image heatmap JPGs are read, so that their gaze can be attached to a larger corpus by
`dicom_id`:

- `"egma"`: the released EGMA code's layout (github.com/MoMarky/EGMA, `egma/dataset.py`), one folder per image with
  `src.jpg`, `hm_array.jpg` (whole-reading map) and `sentence_hm/{i}_sent_hm_array.jpg` (sentence i), listed by a
  training CSV `imgpath, report, <14 CheXpert labels>` (released name `mimic_eye_pair_data_v1.csv`).
- `"cogaze"`: CoGaze's layout, `<root>/<image_dir>/report_heatmap.jpg`, `sentence-heatmap-lookup.json`
  (`{key: transcript sentence, ..., "full_text": transcript}`) and `<key>_heatmap.jpg` per sentence.

Each heatmap JPG is read as grayscale (JPEG draft mode decodes a big map at 1/2-1/8 scale, never below 4x the
map's size), resized to the readers' map shape (longer side `heatmap_size`, the source image's aspect ratio: a map
covers the whole image) by area averaging (bilinear along a side that grows) in floating point, and scaled to max 1;
an all-zero map stays zero (counted).
"""

import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .evaluation_sets import CHEXPERT_LABEL_COLUMNS
from .heatmaps import heatmap_shape
from .images import image_size_of
from .readers import (
    PATH_ESCAPES,
    HeatmapSettings,
    ListedPathError,
    SkipLog,
    chexpert_positives,
    existing_folder,
    read_csv_file,
    resolve_inside,
    rows_to_dataset,
)

logger = logging.getLogger("egma_hf.data")

LAYOUTS = ("egma", "cogaze")
EGMA_CSV_NAME = "mimic_eye_pair_data_v1.csv"  # the released code's training CSV (not released itself)
EGMA_IMAGE_NAME, EGMA_READING_MAP = "src.jpg", "hm_array.jpg"
COGAZE_LOOKUP, COGAZE_READING_MAP = "sentence-heatmap-lookup.json", "report_heatmap.jpg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")
DRAFT_MARGIN = 4

# skip reasons shared by both layouts
MISSING_SENTENCE_MAP = "readings missing a sentence map skipped"
UNREADABLE_JPG = "readings with an unreadable heatmap or image file skipped"
ZERO_MAPS = "all-zero heatmaps (kept as zero maps)"
EGMA_FALLBACK = "blank sentence maps replaced by hm_array.jpg (the released EGMA code's fallback)"

# The released code's sentence splitter (`_split_report_into_segment` of the dataset class the training script uses)
_NUMBERED_ITEM = re.compile(r"[0-9]+\.+[^0-9]")
_WORD_PUNCT = re.compile(r"\w+|[^\w\s]+")  # nltk.wordpunct_tokenize's pattern
_NUMBER_RUN = re.compile(r"(\d+)")
_SUBJECT_FOLDER = re.compile(r"(?:p|patient_)(\d{3,})")  # MIMIC-CXR's p10000032, MIMIC-EYE's patient_10000032
_STUDY_FOLDER = re.compile(r"s(\d+)")


def split_report_like_released_egma(report: str) -> list[str]:
    """A report -> its sentences in the order the released EGMA code numbers them (`{i}_sent_hm_array.jpg`).

    The released code replaces line breaks by spaces, splits on the regex `[0-9]+\\.+[^0-9]` (numbered items; the
    match, including the character after the dots, is dropped), then on `". "`, and keeps every piece with at least
    one ASCII word or punctuation token (`nltk.wordpunct_tokenize`, non-ASCII characters dropped). It then
    lower-cases the pieces and re-joins their tokens with spaces; here each kept piece keeps its own text instead
    (case and spacing, white space collapsed), with the "." that the `". "` split removed put back, so
    `"No effusion. Heart normal."` gives `["No effusion.", "Heart normal."]` (the released code: `["no effusion",
    "heart normal ."]`). The index of a sentence is the same in both.
    """
    if not isinstance(report, str):
        raise TypeError(f"a report must be a str, got {type(report).__name__}")
    sentences = []
    for item in _NUMBERED_ITEM.split(report.replace("\n", " ")):
        pieces = item.split(". ")
        for position, piece in enumerate(pieces):
            piece = piece.replace("\ufffd\ufffd", " ")
            tokens = (token.encode("ascii", "ignore") for token in _WORD_PUNCT.findall(piece.lower()))
            if not any(tokens):
                continue
            text = " ".join(piece.split())
            sentences.append(text + "." if position < len(pieces) - 1 else text)
    return sentences


def read_heatmap_jpgs(paths: list[Path], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap image files -> ((n, h, w) float32 maps scaled to max 1, (n,) bool: the file was blank).

    A file is blank when every decoded grayscale pixel is 0; its map is all zero. Each file is resized to `shape`
    (area averaging, bilinear along a side that grows). Raises ValueError naming the file if it cannot be read.
    """
    height, width = shape
    maps = np.zeros((len(paths), height, width), np.float32)
    blank = np.zeros(len(paths), bool)
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                # JPEG: decode at the smallest 1/2^k scale that is still DRAFT_MARGIN x the map (less blur at edges)
                image.draft("L", (DRAFT_MARGIN * width, DRAFT_MARGIN * height))
                gray = image.convert("L")
        except (UnidentifiedImageError, OSError) as error:  # also FileNotFoundError, a truncated file
            raise ValueError(f"{path}: not a readable heatmap image ({error})") from None
        blank[index] = gray.getbbox() is None
        if not blank[index]:
            grows = gray.width < width or gray.height < height
            resample = Image.Resampling.BILINEAR if grows else Image.Resampling.BOX
            maps[index] = np.asarray(gray.convert("F").resize((width, height), resample), np.float32)
    peaks = maps.reshape(len(paths), -1).max(axis=1) if len(paths) else np.zeros(0, np.float32)
    lit = peaks > 0
    maps[lit] /= peaks[lit, None, None]
    return maps, blank


def _gaze_row(*, reading_id, source, subject_id, study_id, dicom_id, image, image_size, report, sentences, maps,
              labels) -> dict:
    """A row in `FEATURES`; `maps` is (len(sentences) + 1, h, w), the whole-reading map last."""
    return dict(
        reading_id=reading_id, source=source, subject_id=subject_id, study_id=study_id, dicom_id=dicom_id,
        split="train", image=image, image_height=image_size[0], image_width=image_size[1], report=report,
        written_report="", sentences=sentences, sentence_heatmaps=maps[:-1], reading_heatmap=maps[-1],
        has_gaze=True, num_fixations=0, labels=sorted(labels),
    )


def _skip_with_error(skips: SkipLog, reason: str, reading: str, error: Exception) -> None:
    logger.warning("skipping pre-rendered gaze reading %s: %s", reading, error)
    skips.skip(reason, reading, example=f"{reading}: {error}")


# ---------------------------------------------------------------------------------------------------------------
# The released EGMA code's layout


def _egma_dicom_id(folder: Path) -> str:
    """The image folder's name; if that name contains "MIMIC", its parent folder's name (the released code's rule
    for finding a MIMIC-EYE image by dicom_id, `egma/dataset.py`, the 1083AUG datasets)."""
    return folder.parent.name if "MIMIC" in folder.name else folder.name


def _relative_folder(root: Path, folder: Path) -> str:
    """`folder` (from an imgpath checked to stay inside `root`) relative to `root`, `..` collapsed; the same for
    an absolute imgpath written through a symbolic link of root's path."""
    folder = Path(os.path.normpath(folder.absolute()))
    try:
        return folder.relative_to(os.path.normpath(root.absolute())).as_posix()
    except ValueError:
        return folder.resolve().relative_to(root.resolve()).as_posix()


def _text_column(frame: pd.DataFrame, column: str) -> list[str]:
    return [str(cell).strip() for cell in frame[column]] if column in frame.columns else [""] * len(frame)


def _read_egma(root: Path, csv_path, heatmap_size: int) -> datasets.Dataset:
    csv_path = Path(csv_path) if csv_path is not None else root / EGMA_CSV_NAME
    frame = read_csv_file(csv_path, ["imgpath", "report", *CHEXPERT_LABEL_COLUMNS], dtype=str, keep_default_na=False)
    labels_of_row = chexpert_positives(frame, CHEXPERT_LABEL_COLUMNS, csv_path, "imgpath")
    subjects, studies = _text_column(frame, "subject_id"), _text_column(frame, "study_id")
    skips, rows, seen = SkipLog("EGMA pre-rendered"), [], set()
    for position, (listed, report) in enumerate(zip(frame["imgpath"].str.strip(), frame["report"])):
        where = f"{csv_path.name} data row {position + 1}"
        if not listed:
            skips.skip("CSV rows without an imgpath skipped", where, example=where)
            continue
        try:
            image = resolve_inside(root, listed, "imgpath")
        except ListedPathError as error:
            skips.skip(PATH_ESCAPES, where, example=f"{where}: {error}")
            continue
        if image.name != EGMA_IMAGE_NAME:
            skips.skip(f"CSV rows whose imgpath is not a {EGMA_IMAGE_NAME} skipped", where,
                       example=f"{where}: {listed}")
            continue
        folder = image.parent
        reading = _relative_folder(root, folder)
        if reading in seen:
            skips.skip("readings listed twice skipped (the first kept)", reading, example=where)
            continue
        seen.add(reading)
        sentences = split_report_like_released_egma(report)
        if not sentences:
            skips.skip("readings whose report is empty (no sentence) skipped", reading, example=where)
            continue
        names = [EGMA_IMAGE_NAME, EGMA_READING_MAP] + [f"sentence_hm/{i}_sent_hm_array.jpg"
                                                       for i in range(len(sentences))]
        try:  # a file of the folder may itself be a link elsewhere
            files = [resolve_inside(root, f"{reading}/{name}", "file") for name in names]
        except ListedPathError as error:
            skips.skip(PATH_ESCAPES, reading, example=f"{where}: {error}")
            continue
        missing = [name for name, path in zip(names, files) if not path.is_file()]
        if missing[:1] and missing[0] in (EGMA_IMAGE_NAME, EGMA_READING_MAP):
            skips.skip(f"image folders without {EGMA_IMAGE_NAME} or {EGMA_READING_MAP} skipped", reading,
                       example=f"{reading}/{missing[0]}")
            continue
        if missing:
            skips.skip(MISSING_SENTENCE_MAP, reading, example=f"{reading}/{missing[0]} (of {len(sentences)} "
                                                              "sentences)")
            continue
        try:
            image_size = image_size_of(files[0])
            maps, blank = read_heatmap_jpgs(files[1:], heatmap_shape(image_size, heatmap_size))
        except (OSError, ValueError) as error:
            _skip_with_error(skips, UNREADABLE_JPG, reading, error)
            continue
        sentence_maps, reading_map = maps[1:], maps[0]
        sentence_maps[blank[1:]] = reading_map
        skips.skip(EGMA_FALLBACK, reading, int(blank[1:].sum()))
        skips.skip(ZERO_MAPS, reading, int((maps.reshape(len(maps), -1).max(axis=1) == 0).sum()))
        rows.append(_gaze_row(
            reading_id=reading, source="egma-prerendered", subject_id=subjects[position], study_id=studies[position],
            dicom_id=_egma_dicom_id(folder), image=str(files[0]), image_size=image_size, report=report.strip(),
            sentences=sentences, maps=np.concatenate([sentence_maps, reading_map[None]]),
            labels=labels_of_row[position],
        ))
    return rows_to_dataset(rows, skips, f"{root} (listed by {csv_path})")


# ---------------------------------------------------------------------------------------------------------------
# CoGaze's layout


def _natural_key(text: str) -> list:
    """"s2" < "s10": digit runs compare as numbers (re.split keeps text at even and numbers at odd positions)."""
    return [int(part) if index % 2 else part for index, part in enumerate(_NUMBER_RUN.split(text))]


def cogaze_sentence_keys(lookup: dict) -> list[str]:
    """The sentence keys of a CoGaze lookup (all but "full_text"): sorted naturally ("2" before "10") when every
    key holds a number, else in the file's order."""
    keys = [key for key in lookup if key != "full_text"]
    return sorted(keys, key=_natural_key) if all(_NUMBER_RUN.search(key) for key in keys) else keys


def _image_index(image_root: Path) -> dict[str, list[Path]]:
    """{file stem: image files under image_root with that stem} (JPG, PNG or DICOM), walked once."""
    index = defaultdict(list)
    for folder, _, names in os.walk(image_root):
        for name in names:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES:
                index[stem].append(Path(folder) / name)
    return index


def ids_from_image_path(path: Path, image_root: Path) -> tuple[str, str]:
    """(subject_id, study_id) from an image path under image_root: the study from the image's folder `s<digits>`,
    the subject from the nearest folder above it named `p<digits>` (MIMIC-CXR) or `patient_<digits>` (MIMIC-EYE);
    "" where the path has none."""
    folders = path.relative_to(image_root).parts[:-1]
    study = _STUDY_FOLDER.fullmatch(folders[-1]) if folders else None
    above = folders[:-1] if study else folders
    subject = next((match for match in map(_SUBJECT_FOLDER.fullmatch, reversed(above)) if match), None)
    return (subject[1] if subject else ""), (study[1] if study else "")


def _cogaze_lookup(path: Path) -> tuple[list[str], list[str], str]:
    """(sentence keys, their sentences, full text) of a lookup file; ValueError naming the file if it does not
    parse or is not an object of strings."""
    try:
        lookup = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(lookup, dict) or not all(isinstance(value, str) for value in lookup.values()):
        raise ValueError(f"{path}: expected a JSON object {{key: sentence, ..., \"full_text\": text}} of strings")
    keys = cogaze_sentence_keys(lookup)
    return keys, [" ".join(lookup[key].split()) for key in keys], lookup.get("full_text", "").strip()


def _read_cogaze(root: Path, image_root, heatmap_size: int) -> datasets.Dataset:
    image_root = existing_folder(image_root, "image_root") if image_root is not None else None
    images = _image_index(image_root) if image_root is not None else {}
    skips, rows = SkipLog("CoGaze"), []
    for name in sorted(entry.name for entry in os.scandir(root) if entry.is_dir()):
        try:
            folder = resolve_inside(root, name, "image folder")
            lookup_path = resolve_inside(folder, COGAZE_LOOKUP, "lookup file")
            reading_map = resolve_inside(folder, COGAZE_READING_MAP, "heatmap file")
        except ListedPathError as error:
            skips.skip(PATH_ESCAPES, name, example=f"{name}: {error}")
            continue
        if not (lookup_path.is_file() and reading_map.is_file()):
            skips.skip(f"image folders without {COGAZE_READING_MAP} or {COGAZE_LOOKUP} skipped", name, example=name)
            continue
        try:
            keys, sentences, full_text = _cogaze_lookup(lookup_path)
        except (OSError, ValueError) as error:
            _skip_with_error(skips, f"readings whose {COGAZE_LOOKUP} does not parse skipped", name, error)
            continue
        blank_keys = [key for key, sentence in zip(keys, sentences) if not sentence]
        skips.skip("blank sentences in lookups dropped (with their maps)", name, len(blank_keys),
                   example=f"{name}: key {blank_keys[0]!r}" if blank_keys else None)
        keys, sentences = [k for k in keys if k not in blank_keys], [s for s in sentences if s]
        if not sentences:
            skips.skip("readings whose lookup has no sentence skipped", name, example=name)
            continue
        try:
            files = [resolve_inside(folder, f"{key}_heatmap.jpg", "lookup key") for key in keys] + [reading_map]
        except ListedPathError as error:
            skips.skip(PATH_ESCAPES, name, example=f"{name}: {error}")
            continue
        missing = [path.name for path in files if not path.is_file()]
        if missing:
            skips.skip(MISSING_SENTENCE_MAP, name, example=f"{name}/{missing[0]}")
            continue
        subject_id = study_id = image = ""
        if image_root is not None:
            found = images.get(name, [])
            if len(found) != 1:
                reason = ("readings whose image is not under image_root skipped" if not found else
                          "readings whose dicom_id names several images under image_root skipped")
                skips.skip(reason, name, example=f"{name}: {len(found)} files")
                continue
            try:
                image = str(resolve_inside(image_root, found[0].relative_to(image_root), "image file"))
            except ListedPathError as error:
                skips.skip(PATH_ESCAPES, name, example=f"{name}: {error}")
                continue
            subject_id, study_id = ids_from_image_path(found[0], image_root)
        try:
            image_size = image_size_of(image or reading_map)
            maps, _ = read_heatmap_jpgs(files, heatmap_shape(image_size, heatmap_size))
        except (OSError, ValueError) as error:
            _skip_with_error(skips, UNREADABLE_JPG, name, error)
            continue
        skips.skip(ZERO_MAPS, name, int((maps.reshape(len(maps), -1).max(axis=1) == 0).sum()))
        rows.append(_gaze_row(
            reading_id=name, source="cogaze", subject_id=subject_id, study_id=study_id, dicom_id=name, image=image,
            image_size=image_size, report=full_text or " ".join(sentences), sentences=sentences, maps=maps, labels=[],
        ))
    return rows_to_dataset(rows, skips, str(root))


# ---------------------------------------------------------------------------------------------------------------
# Public loader


def load_prerendered_gaze(root, layout: str, csv_path=None, image_root=None, heatmap_size: int = 64
                          ) -> datasets.Dataset:
    """Pre-rendered gaze heatmaps -> one gaze row per image folder, in `FEATURES` (`has_gaze=True`).

    Args:
        root: the folder holding the image folders.
        layout: `"egma"` (the released EGMA code's layout) or `"cogaze"` (CoGaze's).
        csv_path: egma only: the training CSV (`imgpath, report, <14 CheXpert labels>`); default
            `<root>/mimic_eye_pair_data_v1.csv`, the released code's name.
        image_root: cogaze only: a folder searched (once, all depths) for the image `<dicom_id>.jpg` (or .jpeg,
            .png, .dcm) of each image folder, e.g. a MIMIC-CXR-JPG root; `image` points at it, its header gives
            `image_height` / `image_width`, and its path the `subject_id` (`p<digits>` or `patient_<digits>`
            folder) and `study_id` (`s<digits>` folder). Without it `image` is "", the ids are "" and the image
            size is taken from `report_heatmap.jpg` (CoGaze renders maps over the image).
        heatmap_size: the longer side of the maps in pixels (1-4096), the gaze readers' default 64; the maps keep
            the source image's aspect ratio.

    egma: one row per CSV row. `imgpath` (relative to `root`, or absolute inside it) names a `src.jpg`; its folder
    holds `hm_array.jpg` (`reading_heatmap`) and `sentence_hm/{i}_sent_hm_array.jpg` for sentence i of `report` as
    the released code splits it (`split_report_like_released_egma`). As in the released code, a blank (all-zero)
    sentence map is replaced by `hm_array.jpg` (counted). `dicom_id` is the name of the folder holding `src.jpg`,
    or of its parent if that name contains "MIMIC" (the released code's rule); `reading_id` is that folder's path
    relative to `root`. `labels`: the CSV's 1.0 cells of the 14 CheXpert columns, read by name (0.0, -1.0
    uncertain and blank are not positive). `subject_id` / `study_id` come from such CSV columns if present, else "".

    cogaze: one row per folder directly under `root`; `dicom_id` and `reading_id` are the folder's name. Sentences
    are the lookup's values except `"full_text"` (the `report`; the sentences joined if absent), keys sorted
    naturally (`cogaze_sentence_keys`) when all hold a number, else in the file's order; sentence k's map is
    `<k>_heatmap.jpg`, the whole-reading map `report_heatmap.jpg`. `labels` are [].

    Both: `split` is "train" (neither layout records one; combine with a corpus to get its split), `source`
    "egma-prerendered" or "cogaze", `written_report` "", `num_fixations` 0 (the fixations are not in the files).
    Counted skips, with examples, in `dataset.info.description`: folders without the needed files, a sentence
    map missing, an unreadable JPG, a lookup that does not parse, a path leaving `root` (`..`, absolute, a link),
    an empty report, a reading listed twice; all-zero maps are kept and counted. A missing CSV or column, or a
    label cell other than 1.0 / 0.0 / -1.0 / blank is an error naming the file (and row and column).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} (the released EGMA code's, CoGaze's), got {layout!r}")
    root = existing_folder(root, "root")
    heatmap_size = HeatmapSettings(heatmap_size=heatmap_size).heatmap_size  # the gaze readers' check
    if layout == "egma":
        if image_root is not None:
            raise ValueError("image_root is for layout='cogaze'; the 'egma' layout has its images (src.jpg)")
        return _read_egma(root, csv_path, heatmap_size)
    if csv_path is not None:
        raise ValueError("csv_path is for layout='egma'; the 'cogaze' layout has no CSV (its lookups hold the text)")
    return _read_cogaze(root, image_root, heatmap_size)
