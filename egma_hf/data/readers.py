"""Readers for the eye-gaze chest X-ray data sets: EGD-CXR, REFLACX and MIMIC-EYE -> `datasets.Dataset`.

Every reader yields one row per reading (one radiologist dictating one image) with the columns in `FEATURES`:

- ids: `reading_id`, `source` ("egd-cxr" or "reflacx"), `subject_id`, `study_id`, `dicom_id`, `split`
- `image`: path of the image file (JPG/PNG, or DICOM: read it with `egma_hf.data.load_image`), and its
  `image_height` / `image_width` in pixels
- `report`: the dictated transcript, whose sentences are the ones aligned with gaze; `written_report`: the
  MIMIC-CXR report where the source has it (MIMIC-EYE), else ""
- `sentences`: the transcript's sentences, from its word timestamps (`group_words_into_sentences`)
- `sentence_heatmaps`: one float32 (h, w) map per sentence covering the whole image, longer side
  `heatmap_size` (64 by default), each scaled to max 1; `reading_heatmap`: the same from all fixations
- `has_gaze`, `num_fixations`, `labels` (names of positive CheXpert-style findings, where the source has them)

Nothing is dropped silently: fixations and readings that cannot be used are counted by reason, and the counts are
logged as one summary line per load (logger `egma_hf.data`) and kept in `dataset.info.description`. A reading
listed twice is kept once and counted; a path or id in a data file that would lead outside its folder (`../`, an
absolute path, a symbolic link pointing elsewhere) is a counted skip and is never opened. A file that cannot be
what the format says (a label cell outside the format's encoding, an image in two splits, a CSV that does not
parse) is an error naming the file, the row and the column.
"""

import functools
import gzip
import json
import logging
import math
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from .heatmaps import Fixations, Sentence, group_words_into_sentences, heatmap_shape, recipe_sigma, render_heatmaps
from .images import image_size_of

logger = logging.getLogger("egma_hf.data")

FEATURES = datasets.Features(
    {
        "reading_id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "subject_id": datasets.Value("string"),
        "study_id": datasets.Value("string"),
        "dicom_id": datasets.Value("string"),
        "split": datasets.Value("string"),
        "image": datasets.Value("string"),
        "image_height": datasets.Value("int32"),
        "image_width": datasets.Value("int32"),
        "report": datasets.Value("string"),
        "written_report": datasets.Value("string"),
        "sentences": datasets.List(datasets.Value("string")),
        "sentence_heatmaps": datasets.List(datasets.List(datasets.List(datasets.Value("float32")))),
        "reading_heatmap": datasets.List(datasets.List(datasets.Value("float32"))),
        "has_gaze": datasets.Value("bool"),
        "num_fixations": datasets.Value("int32"),
        "labels": datasets.List(datasets.Value("string")),
    }
)

SCREEN_WIDTH, SCREEN_HEIGHT = 1920, 1080  # EGD-CXR's display
EGD_FIXATION_COLUMNS = ["DICOM_ID", "FPOGS", "FPOGD", "FPOGX", "FPOGY", "FPOGV"]
REFLACX_FIXATION_COLUMNS = [
    "timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree",
    "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image", "ymax_shown_from_image",
]
REFLACX_LABELS_NOT_FINDINGS = {
    "id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id", "image_size_x", "image_size_y",
    "Other", "Quality issue",
}
REFLACX_METADATA_COLUMNS = ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id"]
MIMIC_SPLITS = ("train", "validate", "test")  # MIMIC-CXR's split names
MAX_HEATMAP_SIZE = 4096
CHEXPERT_CELLS = "expected 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned)"
REFLACX_CELLS = "expected a certainty 0-5, True / False (a finding without certainty) or blank"
REFLACX_READING_FILES = ("fixations.csv", "timestamps_transcription.csv", "timestamps_transcriptions.csv",
                         "transcription.txt")
PATH_ESCAPES = "readings whose listed path or id leads outside its folder skipped"


@dataclass
class HeatmapSettings:
    """How sentence heatmaps are made: recipe ("egma", "reflacx", "egd" or a sigma in pixels), the maps' longer
    side in pixels (1 to 4096), and how many seconds gaze leads speech (finite; negative: speech leads gaze)."""

    recipe: str | float = "egma"
    heatmap_size: int = 64
    gaze_lead: float = 0.0

    def __post_init__(self):
        recipe_sigma(self.recipe, "HeatmapSettings.recipe")
        size = self.heatmap_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= size <= MAX_HEATMAP_SIZE:
            raise ValueError(f"HeatmapSettings.heatmap_size (the maps' longer side in pixels) must be an integer in "
                             f"[1, {MAX_HEATMAP_SIZE}], got {size!r}")
        lead = self.gaze_lead
        if isinstance(lead, bool) or not isinstance(lead, numbers.Real) or not math.isfinite(lead):
            raise ValueError(f"HeatmapSettings.gaze_lead must be a finite number of seconds, got {lead!r}")


class SkipLog:
    """What a load could not use, counted by reason with up to three examples each, and what the caller chose to
    leave out. A skip may name its reading: the summary then also says in how many readings the reason occurred.
    Every reader (gaze sets and evaluation sets) keeps one and writes `summary()` into `dataset.info.description`.
    """

    def __init__(self, source: str | None = None):
        self.source = source
        self.counts: Counter = Counter()
        self.readings: dict[str, set] = defaultdict(set)
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.left_out: Counter = Counter()  # rows excluded by the caller's choice, not by a problem

    def skip(self, reason: str, reading: str | None = None, count: int = 1, example: str | None = None):
        if count:
            self.counts[reason] += int(count)
            if reading is not None:
                self.readings[reason].add(reading)
            if example is not None and len(self.examples[reason]) < 3:
                self.examples[reason].append(example)

    def leave_out(self, reason: str, count: int):
        if count:
            self.left_out[reason] += int(count)

    def summary(self) -> str:
        """One line, e.g. `EGD-CXR: skipped: 2 <reason> in 2 readings (e.g. a; b); left out: 3 <reason>`."""
        parts = []
        for reason, count in sorted(self.counts.items()):
            examples = self.examples.get(reason)
            parts.append(f"{count} {reason}" + (f" in {len(self.readings[reason])} readings" if reason in self.readings
                                                else "") + (f" (e.g. {'; '.join(examples)})" if examples else ""))
        text = "skipped: " + "; ".join(parts) if parts else "nothing skipped"
        if self.left_out:
            text += "; left out: " + "; ".join(f"{count} {reason}" for reason, count in sorted(self.left_out.items()))
        return text if self.source is None else f"{self.source}: {text}"


# ---------------------------------------------------------------------------------------------------------------
# Checked access to folders, listed paths and CSV files (also used by the evaluation-set readers)


class ListedPathError(ValueError):
    """A path or id read from a data file that would lead outside the folder it must stay in."""


@functools.lru_cache(maxsize=256)
def _resolved(root: Path) -> Path:
    """`root.resolve()`, once per root: readers check every listed path of a corpus against the same root."""
    return root.resolve()


def resolve_inside(root, listed, what: str = "listed path") -> Path:
    """`root / listed` for a path or id read from a data file, once checked to stay inside `root` with `..`, an
    absolute path and symbolic links resolved. Raises `ListedPathError` (naming `what`) if it leads outside. The
    file need not exist, and nothing is opened."""
    root = Path(root)
    candidate = root / str(listed)
    try:
        inside = candidate.resolve().is_relative_to(_resolved(root))
    except (OSError, ValueError) as error:  # a NUL byte, a symlink loop, a name too long
        raise ListedPathError(f"{what} {str(listed)!r} is not a usable path ({error})") from None
    if not inside:
        raise ListedPathError(f"{what} {str(listed)!r} leads outside {root}")
    return candidate


def existing_folder(path, argument: str) -> Path:
    """`path` as a Path if it is a folder; else an error naming `argument` and the path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a folder path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{argument} must be a folder, but {path} is a file")
    raise FileNotFoundError(f"{argument}: no such folder: {path}")


def check_columns(frame: pd.DataFrame, required, path, what: str | None = None) -> None:
    """ValueError naming the file and the missing columns (with a hint when the file seems to use another
    delimiter) unless `frame` has every column in `required`."""
    missing = [column for column in required if column not in frame.columns]
    if missing:
        found = list(frame.columns)
        hint = next((f" (is the file delimited by {d!r} instead of ','?)" for d in (";", "\t", "|")
                     if len(found) == 1 and d in str(found[0])), "")
        raise ValueError(f"{path}: missing column(s) {missing}{f' for {what}' if what else ''}; found {found}{hint}")


def read_csv_file(path, required=(), **kwargs) -> pd.DataFrame:
    """`pd.read_csv` whose errors name the file: missing, empty, not parseable, or lacking a required column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file (expected a CSV with a header row)") from None
    except (ValueError, EOFError, gzip.BadGzipFile) as error:  # pandas' ParserError, a bad encoding, a damaged .gz
        raise ValueError(f"{path}: not a readable CSV file ({type(error).__name__}: {error})") from None
    check_columns(frame, required, path)
    return frame


def _is_blank(cell) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() == ""


def _number_cell(cell, valid: Callable[[float], bool]) -> float | None:
    """A numeric cell -> its value, NaN for blank, None if it is no number or `valid` refuses it."""
    if _is_blank(cell):
        return math.nan
    try:
        value = float(str(cell).strip())
    except ValueError:
        return None
    return value if valid(value) else None


def _chexpert_cell(cell) -> float | None:
    """A CheXpert-style label cell -> 1 / 0 / -1, NaN for blank, None if it is none of these."""
    return _number_cell(cell, lambda value: value in (1.0, 0.0, -1.0))


def _reflacx_cell(cell) -> float | None:
    """A REFLACX label cell -> its certainty 0-5 (0: not selected), inf for True (a finding without certainty, such
    as Support devices, counts at any threshold), 0 for False, NaN for blank (not asked in that phase), None if
    it is none of these."""
    if _is_blank(cell):
        return math.nan
    text = str(cell).strip().lower()
    if text in ("true", "false"):
        return math.inf if text == "true" else 0.0
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value in (0, 1, 2, 3, 4, 5) else None


def _label_values(frame: pd.DataFrame, columns: list[str], path, id_column: str, parse, expected: str) -> pd.DataFrame:
    """Label cells -> floats (NaN for blank); ValueError naming the file, row, id and column of the first cell that
    `parse` rejects."""
    values = {}
    for column in columns:
        parsed = [parse(cell) for cell in frame[column]]
        bad = next((i for i, value in enumerate(parsed) if value is None), None)
        if bad is not None:
            raise ValueError(f"{path}: data row {bad + 1} ({id_column} {frame[id_column].iat[bad]!r}), column "
                             f"{column!r} holds {str(frame[column].iat[bad])!r}; {expected}")
        values[column] = np.asarray(parsed, dtype=float)
    return pd.DataFrame(values, index=frame.index, columns=list(columns))


def _one_value_per_key(keys, values, key: str, value: str, path) -> dict:
    """{key: value} over the rows; a key listed twice with different values is a ValueError naming the file, the
    key and both values (never "last row wins")."""
    mapping = {}
    for row, (k, v) in enumerate(zip(keys, values)):
        previous = mapping.setdefault(k, v)
        if previous != v:
            raise ValueError(f"{path}: {key} {k!r} is listed with {value} {previous!r} and {v!r} (data row {row + 1});"
                             f" each {key} must have one {value}")
    return mapping


def read_split_file(path: Path, columns: list[str]) -> pd.DataFrame:
    """A MIMIC-CXR split file (`dicom_id`, ..., `split`) as stripped text; blank ids and split names other than
    train / validate / test are errors naming the row."""
    frame = read_csv_file(path, columns, dtype=str, keep_default_na=False)
    frame = frame[columns].apply(lambda column: column.str.strip())
    for row, (dicom_id, split) in enumerate(zip(frame["dicom_id"], frame["split"])):
        if not dicom_id or split not in MIMIC_SPLITS:
            raise ValueError(f"{path}: data row {row + 1} has dicom_id {dicom_id!r} and split {split!r}; expected a "
                             f"dicom_id and one of {MIMIC_SPLITS}")
    return frame


def _checked_settings(heatmaps) -> "HeatmapSettings":
    if heatmaps is None:
        return HeatmapSettings()
    if not isinstance(heatmaps, HeatmapSettings):
        raise TypeError(f"heatmaps must be a HeatmapSettings or None, got {type(heatmaps).__name__}")
    return heatmaps


def _checked_certainty(min_certainty) -> int:
    if (isinstance(min_certainty, bool) or not isinstance(min_certainty, numbers.Integral)
            or not 1 <= min_certainty <= 5):
        raise ValueError(f"min_certainty must be an integer in [1, 5] (REFLACX certainties; 0 means not selected), "
                         f"got {min_certainty!r}")
    return int(min_certainty)


def _numeric(frame: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, int]:
    """Coerce columns to numbers; drop rows where any is missing or malformed. Returns (frame, rows dropped)."""
    frame = frame.copy()
    for column in columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    good = frame[columns].notna().all(axis=1)
    return frame[good], int((~good).sum())


def _usable_fixations(fixations: Fixations, settings: HeatmapSettings, reading: str, skips: SkipLog) -> Fixations:
    """Drop (and count) fixations with a non-finite position or time, or, for the "reflacx" recipe, without a
    finite positive pixels-per-degree, so no map is NaN."""
    usable = np.ones(len(fixations), bool)
    for values in (fixations.x, fixations.y, fixations.start, fixations.end):
        usable &= np.isfinite(np.asarray(values, np.float64))
    if isinstance(settings.recipe, str) and settings.recipe == "reflacx" and fixations.sigma_x is not None:
        for sigma in (fixations.sigma_x, fixations.sigma_y):
            sigma = np.asarray(sigma, np.float64)
            usable &= np.isfinite(sigma) & (sigma > 0)
    dropped = int((~usable).sum())
    if not dropped:
        return fixations
    skips.skip("fixations with a non-finite value (or non-positive pixels per degree) dropped", reading, dropped)
    return fixations.select(usable)


def _build_row(
    *,
    skips: SkipLog,
    reading_id: str,
    source: str,
    subject_id,
    study_id,
    dicom_id: str,
    split: str,
    image: Path,
    image_size: tuple[int, int],
    report: str,
    written_report: str,
    sentences: list[Sentence],
    fixations: Fixations,
    labels: list[str],
    settings: HeatmapSettings,
) -> dict:
    if isinstance(settings.recipe, str) and settings.recipe == "reflacx" and fixations.sigma_x is None:
        raise ValueError(f"HeatmapSettings(recipe='reflacx') needs REFLACX's pixels per degree, which {source} reading "
                         f"{reading_id} does not have; use 'egma', 'egd' or a sigma in pixels")
    fixations = _usable_fixations(fixations, settings, str(reading_id), skips)
    shape = heatmap_shape(image_size, settings.heatmap_size)
    windows = [(s.start, s.end) for s in sentences] + [(-math.inf, math.inf)]
    maps = render_heatmaps(fixations, windows, image_size, shape, settings.recipe, settings.gaze_lead)
    return dict(
        reading_id=str(reading_id), source=source, subject_id=str(subject_id), study_id=str(study_id),
        dicom_id=str(dicom_id), split=split, image=str(image), image_height=image_size[0],
        image_width=image_size[1], report=report, written_report=written_report,
        sentences=[s.text for s in sentences], sentence_heatmaps=maps[:-1], reading_heatmap=maps[-1],
        has_gaze=len(fixations) > 0, num_fixations=len(fixations), labels=sorted(labels),
    )


def rows_to_dataset(rows: list[dict], skips: SkipLog, what: str) -> datasets.Dataset:
    """Rows in `FEATURES` -> a Dataset whose `info.description` is the skip summary (also logged); no rows is a
    ValueError naming `what` and the summary."""
    summary = skips.summary()
    (logger.warning if skips.counts else logger.info)(summary)
    if not rows:
        raise ValueError(f"no readable readings in {what} ({summary})")
    info = datasets.DatasetInfo(description=summary, features=FEATURES)
    return datasets.Dataset.from_list(rows, features=FEATURES, info=info)


# ---------------------------------------------------------------------------------------------------------------
# Labels


def chexpert_positives(frame: pd.DataFrame, columns, path, id_column: str) -> list[list[str]]:
    """Per row of a CheXpert-style label table, the names of `columns` holding 1.0 (0.0, -1.0 uncertain and blank
    are not positive); any other cell is a ValueError naming the file, the row, its `id_column` and the column."""
    values = _label_values(frame, list(columns), path, id_column, _chexpert_cell, CHEXPERT_CELLS).to_numpy()
    return [[column for column, value in zip(columns, row) if value >= 1.0] for row in values]


def _chexpert_name(column: str) -> str:
    """EGD's `pleural_effusion__chx` -> "Pleural Effusion"."""
    return " ".join(word.capitalize() for word in column.removesuffix("__chx").split("_") if word)


def _positive(values, columns, threshold=1.0, rename=lambda c: c) -> list[str]:
    """Names of the columns whose parsed label value (`_label_values`) reaches `threshold`."""
    return [rename(column) for column in columns if values[column] >= threshold]


# ---------------------------------------------------------------------------------------------------------------
# EGD-CXR


def _egd_pad_columns(sheet: pd.DataFrame, path: Path) -> list[str]:
    """The (top, bottom, left, right) letter-box pad columns; the released sheet says `image_top_pad`, the
    scripts `image_top`."""
    columns = []
    for side in ("top", "bottom", "left", "right"):
        column = next((c for c in (f"image_{side}_pad", f"image_{side}") if c in sheet.columns), None)
        if column is None:
            raise ValueError(f"{path}: no image_{side}_pad (or image_{side}) column; found {list(sheet.columns)}")
        columns.append(column)
    return columns


def _egd_pads(sheet_row, columns: list[str]) -> tuple[float, float, float, float]:
    """(top, bottom, left, right) pads of one sheet row; ValueError naming the column unless they are numbers
    >= 0 that leave part of the 1920 x 1080 screen for the image."""
    pads = []
    for column in columns:
        try:
            pads.append(float(sheet_row[column]))
        except (TypeError, ValueError):
            pads.append(math.nan)
        if not (math.isfinite(pads[-1]) and pads[-1] >= 0):
            raise ValueError(f"column {column!r} holds {sheet_row[column]!r}; expected pixels >= 0")
    top, bottom, left, right = pads
    if top + bottom >= SCREEN_HEIGHT or left + right >= SCREEN_WIDTH:
        raise ValueError(f"pads (top, bottom, left, right) {tuple(pads)} leave no room for the image on a "
                         f"{SCREEN_WIDTH} x {SCREEN_HEIGHT} screen")
    return top, bottom, left, right


def _egd_fixations(frame: pd.DataFrame, pads, image_size, reading: str, skips: SkipLog) -> Fixations:
    """Gazepoint fixation rows of one image -> fixations in image pixels (screen -> image via the pads)."""
    frame, malformed = _numeric(frame, EGD_FIXATION_COLUMNS[1:])
    skips.skip("malformed fixation rows dropped", reading, malformed)
    valid = frame["FPOGV"] == 1
    skips.skip("invalid fixations (FPOGV=0) dropped", reading, int((~valid).sum()))
    frame = frame[valid]
    top, bottom, left, right = pads
    height, width = image_size
    x_screen, y_screen = frame["FPOGX"].to_numpy() * SCREEN_WIDTH, frame["FPOGY"].to_numpy() * SCREEN_HEIGHT
    inside = ((x_screen > left) & (x_screen < SCREEN_WIDTH - right)
              & (y_screen > top) & (y_screen < SCREEN_HEIGHT - bottom))
    skips.skip("fixations outside the image dropped", reading, int((~inside).sum()))
    start = frame["FPOGS"].to_numpy()[inside]
    duration = frame["FPOGD"].to_numpy()[inside]
    backwards = duration < 0
    skips.skip("fixations with negative duration dropped", reading, int(backwards.sum()))
    keep = ~backwards
    x = (x_screen[inside] - left) * width / (SCREEN_WIDTH - left - right)
    y = (y_screen[inside] - top) * height / (SCREEN_HEIGHT - top - bottom)
    return Fixations(x[keep], y[keep], start[keep], (start + duration)[keep])


def _egd_transcript(path: Path) -> tuple[str, list[Sentence]]:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    data = json.loads(path.read_text())
    phrases = data.get("time_stamped_text")
    if not isinstance(phrases, list):
        raise ValueError(f"{path}: no 'time_stamped_text' list")
    try:
        words = [p["phrase"] for p in phrases]
        starts = [float(p["begin_time"]) for p in phrases]
        ends = [float(p["end_time"]) for p in phrases]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: malformed time_stamped_text entry ({error})") from None
    try:
        sentences = group_words_into_sentences(words, starts, ends)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return data.get("full_text") or " ".join(words), sentences


ImageFinder = Callable[[str, str, str, str], Path | None]  # (dicom_id, study_id, subject_id, mimic path) -> file


def _skip_escape(skips: SkipLog, reading: str, path: Path, error: ListedPathError) -> None:
    logger.warning("skipping reading %s of %s: %s", reading, path, error)
    skips.skip(PATH_ESCAPES, reading, example=f"{path.name} {reading}: {error}")


def _skip_reading(skips: SkipLog, source: str, reading: str, reason: str, error: Exception) -> None:
    logger.warning("skipping %s reading %s: %s", source, reading, error)
    skips.skip(reason, reading)


def _located(skips: SkipLog, reading: str, listing: Path, locate: Callable[..., tuple], *args) -> tuple | None:
    """`locate(*args)` -> (image file, *other files of the reading), or None with the skip counted: a path listed
    in `listing` that leaves its root, or no image file."""
    try:
        image, *others = locate(*args)
    except ListedPathError as error:
        _skip_escape(skips, reading, listing, error)
        return None
    if image is None:
        skips.skip("readings without an image file skipped", reading)
        return None
    return image, *others


def _locate_egd(egd_root: Path, find_image: ImageFinder, written_reports, dicom_id, study_id, subject_id, listed):
    """(image, transcript.json, written report) of an EGD-CXR reading; ListedPathError if a path leaves its root."""
    transcript = resolve_inside(egd_root / "audio_segmentation_transcripts", f"{dicom_id}/transcript.json", "dicom_id")
    return find_image(dicom_id, study_id, subject_id, listed), transcript, written_reports(study_id)


def _locate_reflacx(main_data: Path, find_image: ImageFinder, written_reports, reading, dicom_id, study_id, subject_id,
                    listed):
    """(image, reading folder, written report) of a REFLACX reading; ListedPathError if a path leaves its root."""
    folder = resolve_inside(main_data, reading, "id")
    for name in REFLACX_READING_FILES:  # a file of the reading's folder may itself be a link elsewhere
        resolve_inside(main_data, f"{reading}/{name}", "id")
    return find_image(dicom_id, study_id, subject_id, listed), folder, written_reports(study_id)


def _read_egd(
    egd_root: Path,
    find_image: ImageFinder,
    settings: HeatmapSettings,
    skips: SkipLog,
    splits: dict[str, str],
    seen: set[str],
    chexpert: dict[str, list[str]] | None = None,
    written_reports: Callable[[str], str] = lambda study_id: "",
) -> list[dict]:
    sheet_path = egd_root / "master_sheet.csv"
    sheet = read_csv_file(sheet_path, ["dicom_id", "path", "study_id", "patient_id"], dtype=str)
    fixations = read_csv_file(egd_root / "fixations.csv", EGD_FIXATION_COLUMNS, dtype={"DICOM_ID": str})
    known = set(sheet["dicom_id"])
    calibration = ~fixations["DICOM_ID"].isin(known)
    for dicom_id, count in fixations[calibration]["DICOM_ID"].value_counts().items():
        skips.skip("calibration-image fixations skipped", f"calibration:{dicom_id}", int(count))
    by_image = dict(tuple(fixations[~calibration].groupby("DICOM_ID")))
    pad_columns = _egd_pad_columns(sheet, sheet_path) if by_image else []
    chx_columns = [c for c in sheet.columns if c.endswith("__chx")]
    label_values = _label_values(sheet, chx_columns, sheet_path, "dicom_id", _chexpert_cell, CHEXPERT_CELLS)

    rows = []
    for position, (index, sheet_row) in enumerate(sheet.iterrows()):
        dicom_id, study_id, subject_id = sheet_row["dicom_id"], sheet_row["study_id"], sheet_row["patient_id"]
        if _is_blank(dicom_id):
            skips.skip("master_sheet.csv rows without a dicom_id skipped", f"{sheet_path}:{position + 1}",
                       example=f"{sheet_path.name} data row {position + 1}")
            continue
        dicom_id = dicom_id.strip()
        if dicom_id in seen:
            skips.skip("readings listed twice skipped (the first kept)", dicom_id,
                       example=f"{sheet_path.name} dicom_id {dicom_id}")
            continue
        seen.add(dicom_id)
        located = _located(skips, dicom_id, sheet_path, _locate_egd, egd_root, find_image, written_reports, dicom_id,
                           study_id, subject_id, sheet_row["path"])
        if located is None:
            continue
        image, transcript, written_report = located
        try:
            report, sentences = _egd_transcript(transcript)
        except (FileNotFoundError, ValueError) as error:
            _skip_reading(skips, "EGD-CXR", dicom_id, "readings with a missing or bad transcript skipped", error)
            continue
        if not sentences:
            skips.skip("readings whose transcript has no sentence skipped", dicom_id)
            continue
        try:
            image_size = image_size_of(image)
        except (OSError, ValueError) as error:
            _skip_reading(skips, "EGD-CXR", dicom_id, "readings whose image file cannot be read skipped", error)
            continue
        gaze = by_image.get(dicom_id)
        if gaze is None:
            points = Fixations(*(np.zeros(0) for _ in range(4)))
        else:
            try:
                pads = _egd_pads(sheet_row, pad_columns)
            except ValueError as error:
                logger.warning("skipping EGD-CXR reading %s: %s: %s", dicom_id, sheet_path, error)
                skips.skip("readings with malformed letter-box pads skipped", dicom_id,
                           example=f"{sheet_path.name} dicom_id {dicom_id}: {error}")
                continue
            points = _egd_fixations(gaze, pads, image_size, dicom_id, skips)
        labels = chexpert.get(study_id) if chexpert is not None and study_id in chexpert else _positive(
            label_values.loc[index], chx_columns, rename=_chexpert_name)
        rows.append(_build_row(
            skips=skips, reading_id=dicom_id, source="egd-cxr", subject_id=subject_id, study_id=study_id,
            dicom_id=dicom_id, split=splits.get(dicom_id, "unknown"), image=image, image_size=image_size,
            report=report, written_report=written_report, sentences=sentences, fixations=points, labels=labels,
            settings=settings,
        ))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# REFLACX


def _flag_cell(cell) -> bool | None:
    text = str(cell).strip().lower()
    return True if text in ("true", "1", "1.0") else False if text in ("false", "0", "0.0") else None


def _image_size_cell(cell) -> float | None:
    """A metadata image size -> pixels (NaN for blank: read from the image), None unless a whole number >= 1."""
    return _number_cell(cell, lambda value: math.isfinite(value) and value >= 1 and value == int(value))


def _reflacx_metadata(paths: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """The metadata files, checked and concatenated -> (frame, label columns). `eye_tracking_data_discarded`
    becomes a bool, image sizes and labels floats (`_reflacx_cell`); a cell outside these encodings is a
    ValueError naming the file, row, reading id and column."""
    frames, label_columns = [], []
    for path in paths:
        frame = read_csv_file(path, REFLACX_METADATA_COLUMNS, dtype={"id": str, "dicom_id": str, "subject_id": str})
        flags = [_flag_cell(cell) for cell in frame["eye_tracking_data_discarded"]]
        bad = next((i for i, flag in enumerate(flags) if flag is None), None)
        if bad is not None:
            cell = str(frame["eye_tracking_data_discarded"].iat[bad])
            raise ValueError(f"{path}: data row {bad + 1} (id {frame['id'].iat[bad]!r}), column "
                             f"'eye_tracking_data_discarded' holds {cell!r}; expected True or False")
        frame["eye_tracking_data_discarded"] = flags
        sizes = [c for c in ("image_size_x", "image_size_y") if c in frame.columns]
        labels = [c for c in frame.columns if c not in REFLACX_LABELS_NOT_FINDINGS]
        parsed = [_label_values(frame, sizes, path, "id", _image_size_cell, "expected a whole number of pixels >= 1 "
                                "or blank"), _label_values(frame, labels, path, "id", _reflacx_cell, REFLACX_CELLS)]
        frame = pd.concat([frame.drop(columns=sizes + labels), *parsed], axis=1)  # one copy, not one per column
        label_columns += [c for c in labels if c not in label_columns]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), label_columns


def _reflacx_transcript(folder: Path) -> tuple[str, list[Sentence]]:
    for name in ("timestamps_transcription.csv", "timestamps_transcriptions.csv"):  # both spellings exist
        if (folder / name).is_file():
            words = read_csv_file(folder / name, ["word", "timestamp_start_word", "timestamp_end_word"],
                                  keep_default_na=False)
            break
    else:
        raise FileNotFoundError(f"missing file: {folder / 'timestamps_transcription.csv'}")
    words, malformed = _numeric(words, ["timestamp_start_word", "timestamp_end_word"])
    if malformed:
        raise ValueError(f"{folder / name}: {malformed} malformed timestamp row(s)")
    try:
        sentences = group_words_into_sentences(
            words["word"].tolist(), words["timestamp_start_word"].tolist(), words["timestamp_end_word"].tolist())
    except ValueError as error:
        raise ValueError(f"{folder / name}: {error}") from None
    text_file = folder / "transcription.txt"
    report = text_file.read_text().strip() if text_file.is_file() else " ".join(s.text for s in sentences)
    return report, sentences


def _reflacx_fixations(path: Path, image_size, reading: str, skips: SkipLog) -> Fixations:
    frame, malformed = _numeric(read_csv_file(path, REFLACX_FIXATION_COLUMNS), REFLACX_FIXATION_COLUMNS)
    skips.skip("malformed fixation rows dropped", reading, malformed)
    height, width = image_size
    x, y = frame["x_position"].to_numpy(), frame["y_position"].to_numpy()
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    skips.skip("fixations outside the image dropped", reading, int((~inside).sum()))
    start, end = frame["timestamp_start_fixation"].to_numpy(), frame["timestamp_end_fixation"].to_numpy()
    ordered = end >= start
    skips.skip("fixations ending before they start dropped", reading, int((inside & ~ordered).sum()))
    keep = inside & ordered
    box = frame[["xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image", "ymax_shown_from_image"]]
    return Fixations(
        x[keep], y[keep], start[keep], end[keep],
        sigma_x=frame["angular_resolution_x_pixels_per_degree"].to_numpy()[keep],
        sigma_y=frame["angular_resolution_y_pixels_per_degree"].to_numpy()[keep],
        shown_box=box.to_numpy(dtype=np.float64)[keep],
    )


def _report_split_disagreements(metadata: pd.DataFrame, splits: dict[str, str], skips: SkipLog) -> None:
    """Count images whose REFLACX readings carry different splits (where no image-level split file decides);
    each reading keeps its own split, as listed."""
    listed: dict[str, set] = defaultdict(set)
    for dicom_id, split in zip(metadata["dicom_id"], metadata["split"]):
        if dicom_id not in splits:
            listed[dicom_id].add(str(split))
    for dicom_id, names in sorted(listed.items(), key=lambda item: str(item[0])):
        if len(names) > 1:
            skips.skip("images whose REFLACX readings disagree on the split (each reading keeps its own)",
                       str(dicom_id), example=f"{dicom_id}: {' / '.join(sorted(names))}")


def _read_reflacx(
    metadata: pd.DataFrame,
    label_columns: list[str],
    metadata_path: Path,
    main_data: Path,
    find_image: ImageFinder,
    settings: HeatmapSettings,
    skips: SkipLog,
    min_certainty: int,
    seen: set[str],
    chexpert: dict[str, list[str]] | None = None,
    study_of: Callable[[str], str] = lambda dicom_id: "",
    written_reports: Callable[[str], str] = lambda study_id: "",
    splits: dict[str, str] | None = None,
) -> list[dict]:
    _report_split_disagreements(metadata, splits or {}, skips)
    rows = []
    for position, (_, meta) in enumerate(metadata.iterrows()):
        if _is_blank(meta["id"]):
            skips.skip("metadata rows without a reading id skipped", f"{metadata_path}:{position + 1}",
                       example=f"{metadata_path.name} data row {position + 1}")
            continue
        reading = meta["id"].strip()
        if reading in seen:
            skips.skip("readings listed twice skipped (the first kept)", reading,
                       example=f"{metadata_path.name} id {reading}")
            continue
        seen.add(reading)
        if meta["eye_tracking_data_discarded"]:
            skips.skip("readings marked eye_tracking_data_discarded skipped", reading)
            continue
        dicom_id, subject_id = str(meta["dicom_id"]).strip(), str(meta["subject_id"])
        study_id = study_of(dicom_id)
        listed = "" if _is_blank(meta["image"]) else str(meta["image"])
        located = _located(skips, reading, metadata_path, _locate_reflacx, main_data, find_image, written_reports,
                           reading, dicom_id, study_id, subject_id, listed)
        if located is None:
            continue
        image, folder, written_report = located
        try:
            report, sentences = _reflacx_transcript(folder)
            listed_size = (meta.get("image_size_y", math.nan), meta.get("image_size_x", math.nan))
            image_size = tuple(int(side) for side in listed_size) if not any(map(math.isnan, listed_size)) else \
                image_size_of(image)
            points = _reflacx_fixations(folder / "fixations.csv", image_size, reading, skips)
        except (OSError, ValueError) as error:
            _skip_reading(skips, "REFLACX", reading, "readings with missing or bad files skipped", error)
            continue
        if not sentences:
            skips.skip("readings whose transcript has no sentence skipped", reading)
            continue
        if chexpert is not None and study_id in chexpert:
            labels = chexpert[study_id]
        else:
            labels = _positive(meta, label_columns, threshold=min_certainty)
        rows.append(_build_row(
            skips=skips, reading_id=reading, source="reflacx", subject_id=subject_id, study_id=study_id,
            dicom_id=dicom_id, split=(splits or {}).get(dicom_id, str(meta["split"])), image=image,
            image_size=image_size, report=report, written_report=written_report, sentences=sentences,
            fixations=points, labels=labels, settings=settings,
        ))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Public loaders


def _mimic_path_finder(image_root: Path) -> ImageFinder:
    """Resolve MIMIC-CXR paths (`files/p10/p10000032/s5.../<dicom_id>.dcm`) under a MIMIC-CXR or -JPG root; a
    listed path that leads outside it raises ListedPathError."""
    image_root = existing_folder(image_root, "image_root")

    def find(dicom_id, study_id, subject_id, mimic_path):
        if _is_blank(mimic_path):
            return None
        mimic_path = str(mimic_path).strip()
        relative = mimic_path[mimic_path.rfind("files/"):] if "files/" in mimic_path else mimic_path
        listed = resolve_inside(image_root, relative, "image path")
        if listed.is_file():
            return listed
        try:
            as_jpg = Path(relative).with_suffix(".jpg")  # MIMIC-CXR-JPG
        except ValueError:  # no file name to give a suffix to (".", "a/..")
            return None
        jpg = resolve_inside(image_root, as_jpg, "image path")
        return jpg if jpg.is_file() else None

    return find


def _mimic_splits(image_root: Path) -> dict[str, str]:
    for name in ("mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-split.csv.gz"):
        path = Path(image_root) / name
        if path.is_file():
            frame = read_split_file(path, ["dicom_id", "split"])
            return _one_value_per_key(frame["dicom_id"], frame["split"], "dicom_id", "split", path)
    return {}


def load_egd_cxr(root, image_root, heatmaps: HeatmapSettings | None = None) -> datasets.Dataset:
    """EGD-CXR ("Eye Gaze Data for Chest X-rays", PhysioNet `egd-cxr/1.0.0`) -> one row per image.

    Args:
        root: the folder holding `master_sheet.csv`, `fixations.csv` and `audio_segmentation_transcripts/`.
        image_root: a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG root; the sheet's `path` (`files/p../<dicom_id>.dcm`) is
            looked up there, then the same path with `.jpg`. Its split file, if present, gives the `split` column
            (else "unknown").
    """
    root = existing_folder(root, "root")
    settings = _checked_settings(heatmaps)
    find_image = _mimic_path_finder(image_root)
    skips = SkipLog("EGD-CXR")
    rows = _read_egd(root, find_image, settings, skips, _mimic_splits(image_root), set())
    return rows_to_dataset(rows, skips, str(root))


def load_reflacx(root, image_root, heatmaps: HeatmapSettings | None = None, min_certainty: int = 4) -> datasets.Dataset:
    """REFLACX (PhysioNet `reflacx-xray-localization/1.0.0`) -> one row per reading (several per image).

    Args:
        root: the folder holding `main_data/` (with `metadata_phase_*.csv` and one folder per reading id).
        image_root: a MIMIC-CXR or MIMIC-CXR-JPG root (the metadata `image` path is resolved as for EGD-CXR).
        min_certainty: REFLACX labels are certainties 0-5; a finding is listed in `labels` from this value on
            (1-5; 4 = "Probably"). A finding recorded as True / False instead (Support devices) is listed when True.
    """
    root = existing_folder(root, "root")
    settings, min_certainty = _checked_settings(heatmaps), _checked_certainty(min_certainty)
    main_data = root / "main_data"
    metadata_files = sorted(main_data.glob("metadata_phase_*.csv"))
    if not metadata_files:
        raise FileNotFoundError(f"root: no main_data/metadata_phase_*.csv under {root}")
    find_image = _mimic_path_finder(image_root)
    skips = SkipLog("REFLACX")
    metadata, label_columns = _reflacx_metadata(metadata_files)
    rows = _read_reflacx(metadata, label_columns, main_data / "metadata_phase_*.csv", main_data, find_image, settings,
                         skips, min_certainty, set())
    return rows_to_dataset(rows, skips, str(root))


def load_mimic_eye(root, heatmaps: HeatmapSettings | None = None, min_certainty: int = 4) -> datasets.Dataset:
    """MIMIC-EYE (PhysioNet `mimic-eye-multimodal-datasets/1.0.0`) -> one row per EGD-CXR or REFLACX reading.

    `root` holds `patient_<subject_id>/` folders; each may have an `EyeGaze/` part (EGD-CXR files for that
    patient) and a `REFLACX/` part (`metadata.csv`, `main_data/<id>/`), with images in `CXR-JPG/s<study>/`,
    CheXpert labels and splits in `CXR-JPG/cxr_chexpert.csv` / `cxr_split.csv`, and the written report in
    `CXR-DICOM/s<study>.txt`. The image-level split of `cxr_split.csv` wins over REFLACX's own, so that all
    readings of one image land in the same split.
    """
    root = existing_folder(root, "root")
    settings, min_certainty = _checked_settings(heatmaps), _checked_certainty(min_certainty)
    patients = sorted(p for p in root.glob("patient_*") if p.is_dir())
    if not patients:
        raise FileNotFoundError(f"root: no patient_* folders under {root} (expected MIMIC-EYE's layout)")
    skips = SkipLog("MIMIC-EYE")
    rows, seen = [], set()
    for patient in patients:
        jpg = patient / "CXR-JPG"
        splits, study_of, chexpert = {}, {}, {}
        if (jpg / "cxr_split.csv").is_file():
            path = jpg / "cxr_split.csv"
            frame = read_split_file(path, ["dicom_id", "study_id", "split"])
            splits = _one_value_per_key(frame["dicom_id"], frame["split"], "dicom_id", "split", path)
            study_of = _one_value_per_key(frame["dicom_id"], frame["study_id"], "dicom_id", "study_id", path)
        if (jpg / "cxr_chexpert.csv").is_file():
            path = jpg / "cxr_chexpert.csv"
            frame = read_csv_file(path, ["study_id"], dtype=str)
            finding_columns = [c for c in frame.columns if c not in ("subject_id", "study_id")]
            positives = chexpert_positives(frame, finding_columns, path, "study_id")
            chexpert = _one_value_per_key(frame["study_id"], positives, "study_id", "positive labels", path)

        def find_image(dicom_id, study_id, subject_id, mimic_path, jpg=jpg, study_of=study_of):
            study = study_id if isinstance(study_id, str) and study_id else study_of.get(dicom_id, "")
            candidate = resolve_inside(jpg, f"s{study}/{dicom_id}.jpg", "dicom_id / study_id")
            return candidate if candidate.is_file() else None

        def written_report(study_id, patient=patient):
            path = resolve_inside(patient / "CXR-DICOM", f"s{study_id}.txt", "study_id")
            return path.read_text().strip() if path.is_file() else ""

        if (patient / "EyeGaze" / "master_sheet.csv").is_file():
            rows += _read_egd(patient / "EyeGaze", find_image, settings, skips, splits, seen, chexpert,
                              written_report)
        if (patient / "REFLACX" / "metadata.csv").is_file():
            metadata_path = patient / "REFLACX" / "metadata.csv"
            metadata, label_columns = _reflacx_metadata([metadata_path])
            rows += _read_reflacx(metadata, label_columns, metadata_path, patient / "REFLACX" / "main_data",
                                  find_image, settings, skips, min_certainty, seen, chexpert,
                                  lambda d, s=study_of: s.get(d, ""), written_report, splits)
    return rows_to_dataset(rows, skips, str(root))


def by_split(dataset: datasets.Dataset) -> datasets.DatasetDict:
    """Rows grouped by their `split` column -> DatasetDict (e.g. train / validate / test)."""
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    if "split" not in dataset.column_names:
        raise ValueError(f"dataset has no 'split' column; found {dataset.column_names}")
    names = sorted(set(dataset["split"]))
    return datasets.DatasetDict(
        {name: dataset.filter(lambda s, n=name: s == n, input_columns="split") for name in names})
