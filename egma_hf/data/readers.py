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
logged as one summary line per load (logger `egma_hf.data`) and kept in `dataset.info.description`.
"""

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from .heatmaps import Fixations, Sentence, group_words_into_sentences, heatmap_shape, render_heatmaps
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


@dataclass
class HeatmapSettings:
    """How sentence heatmaps are made: recipe ("egma", "reflacx", "egd" or a sigma in pixels), the maps' longer
    side in pixels, and how many seconds gaze leads speech."""

    recipe: str | float = "egma"
    heatmap_size: int = 64
    gaze_lead: float = 0.0


class SkipLog:
    """Counts what a load could not use, by reason, and in how many readings."""

    def __init__(self, source: str):
        self.source = source
        self.counts: Counter = Counter()
        self.readings: dict[str, set] = defaultdict(set)

    def skip(self, reason: str, reading: str, count: int = 1):
        if count:
            self.counts[reason] += count
            self.readings[reason].add(reading)

    def summary(self) -> str:
        if not self.counts:
            return f"{self.source}: nothing skipped"
        parts = [f"{n} {reason} in {len(self.readings[reason])} readings" for reason, n in sorted(self.counts.items())]
        return f"{self.source}: " + "; ".join(parts)


def _read_csv(path: Path, required: list[str] | None = None, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    frame = pd.read_csv(path, **kwargs)
    missing = [column for column in (required or []) if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def _numeric(frame: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, int]:
    """Coerce columns to numbers; drop rows where any is missing or malformed. Returns (frame, rows dropped)."""
    frame = frame.copy()
    for column in columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    good = frame[columns].notna().all(axis=1)
    return frame[good], int((~good).sum())


def _build_row(
    *,
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


def _to_dataset(rows: list[dict], skips: SkipLog, what: str) -> datasets.Dataset:
    summary = skips.summary()
    (logger.warning if skips.counts else logger.info)(summary)
    if not rows:
        raise ValueError(f"no readable readings in {what} ({summary})")
    info = datasets.DatasetInfo(description=summary, features=FEATURES)
    return datasets.Dataset.from_list(rows, features=FEATURES, info=info)


# ---------------------------------------------------------------------------------------------------------------
# Labels


def _chexpert_name(column: str) -> str:
    """EGD's `pleural_effusion__chx` -> "Pleural Effusion"."""
    return " ".join(word.capitalize() for word in column.removesuffix("__chx").split("_") if word)


def _positive(row, columns, threshold=1.0, rename=lambda c: c) -> list[str]:
    values = pd.to_numeric(pd.Series({c: row[c] for c in columns}), errors="coerce")
    return [rename(column) for column, value in values.items() if value >= threshold]


# ---------------------------------------------------------------------------------------------------------------
# EGD-CXR


def _egd_pads(sheet_row) -> tuple[float, float, float, float]:
    """(top, bottom, left, right) letter-box pads; the released sheet says `image_top_pad`, the scripts `image_top`."""
    pads = []
    for side in ("top", "bottom", "left", "right"):
        for column in (f"image_{side}_pad", f"image_{side}"):
            if column in sheet_row and pd.notna(sheet_row[column]):
                pads.append(float(sheet_row[column]))
                break
        else:
            raise ValueError(f"master_sheet.csv row {sheet_row.get('dicom_id')}: no image_{side}_pad column")
    return tuple(pads)


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
    inside = (x_screen > left) & (x_screen < SCREEN_WIDTH - right) & (y_screen > top) & (y_screen < SCREEN_HEIGHT - bottom)
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


def _read_egd(
    egd_root: Path,
    find_image: ImageFinder,
    settings: HeatmapSettings,
    skips: SkipLog,
    splits: dict[str, str],
    chexpert: dict[str, list[str]] | None = None,
    written_reports: Callable[[str], str] = lambda study_id: "",
) -> list[dict]:
    sheet = _read_csv(egd_root / "master_sheet.csv", ["dicom_id", "path", "study_id", "patient_id"], dtype=str)
    fixations = _read_csv(egd_root / "fixations.csv", EGD_FIXATION_COLUMNS, dtype={"DICOM_ID": str})
    known = set(sheet["dicom_id"])
    calibration = ~fixations["DICOM_ID"].isin(known)
    for dicom_id, count in fixations[calibration]["DICOM_ID"].value_counts().items():
        skips.skip("calibration-image fixations skipped", f"calibration:{dicom_id}", int(count))
    by_image = dict(tuple(fixations[~calibration].groupby("DICOM_ID")))
    chx_columns = [c for c in sheet.columns if c.endswith("__chx")]

    rows = []
    for _, sheet_row in sheet.iterrows():
        dicom_id, study_id, subject_id = sheet_row["dicom_id"], sheet_row["study_id"], sheet_row["patient_id"]
        image = find_image(dicom_id, study_id, subject_id, sheet_row["path"])
        if image is None:
            skips.skip("readings without an image file skipped", dicom_id)
            continue
        try:
            report, sentences = _egd_transcript(egd_root / "audio_segmentation_transcripts" / dicom_id / "transcript.json")
        except (FileNotFoundError, ValueError) as error:
            logger.warning("skipping EGD-CXR reading %s: %s", dicom_id, error)
            skips.skip("readings with a missing or bad transcript skipped", dicom_id)
            continue
        if not sentences:
            skips.skip("readings whose transcript has no sentence skipped", dicom_id)
            continue
        image_size = image_size_of(image)
        gaze = by_image.get(dicom_id)
        if gaze is None:
            points = Fixations(*(np.zeros(0) for _ in range(4)))
        else:
            points = _egd_fixations(gaze, _egd_pads(sheet_row), image_size, dicom_id, skips)
        labels = chexpert.get(study_id) if chexpert is not None and study_id in chexpert else _positive(
            sheet_row, chx_columns, rename=_chexpert_name)
        rows.append(_build_row(
            reading_id=dicom_id, source="egd-cxr", subject_id=subject_id, study_id=study_id, dicom_id=dicom_id,
            split=splits.get(dicom_id, "unknown"), image=image, image_size=image_size, report=report,
            written_report=written_reports(study_id), sentences=sentences, fixations=points, labels=labels,
            settings=settings,
        ))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# REFLACX


def _reflacx_metadata(paths: list[Path]) -> pd.DataFrame:
    frames = [_read_csv(p, ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id"], dtype={"subject_id": str}) for p in paths]
    return pd.concat(frames, ignore_index=True)


def _is_true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0", "yes")


def _reflacx_transcript(folder: Path) -> tuple[str, list[Sentence]]:
    for name in ("timestamps_transcription.csv", "timestamps_transcriptions.csv"):  # both spellings exist
        if (folder / name).is_file():
            words = _read_csv(folder / name, ["word", "timestamp_start_word", "timestamp_end_word"], keep_default_na=False)
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
    frame, malformed = _numeric(_read_csv(path, REFLACX_FIXATION_COLUMNS), REFLACX_FIXATION_COLUMNS)
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


def _read_reflacx(
    metadata: pd.DataFrame,
    main_data: Path,
    find_image: ImageFinder,
    settings: HeatmapSettings,
    skips: SkipLog,
    min_certainty: int,
    chexpert: dict[str, list[str]] | None = None,
    study_of: Callable[[str], str] = lambda dicom_id: "",
    written_reports: Callable[[str], str] = lambda study_id: "",
    splits: dict[str, str] | None = None,
) -> list[dict]:
    label_columns = [c for c in metadata.columns if c not in REFLACX_LABELS_NOT_FINDINGS]
    rows = []
    for _, meta in metadata.iterrows():
        reading = str(meta["id"])
        if _is_true(meta["eye_tracking_data_discarded"]):
            skips.skip("readings marked eye_tracking_data_discarded skipped", reading)
            continue
        folder = main_data / reading
        dicom_id, subject_id = str(meta["dicom_id"]), str(meta["subject_id"])
        study_id = study_of(dicom_id)
        image = find_image(dicom_id, study_id, subject_id, str(meta["image"]))
        if image is None:
            skips.skip("readings without an image file skipped", reading)
            continue
        try:
            report, sentences = _reflacx_transcript(folder)
            image_size = (int(meta["image_size_y"]), int(meta["image_size_x"])) if "image_size_y" in meta and pd.notna(
                meta["image_size_y"]) else image_size_of(image)
            points = _reflacx_fixations(folder / "fixations.csv", image_size, reading, skips)
        except (FileNotFoundError, ValueError) as error:
            logger.warning("skipping REFLACX reading %s: %s", reading, error)
            skips.skip("readings with missing or bad files skipped", reading)
            continue
        if not sentences:
            skips.skip("readings whose transcript has no sentence skipped", reading)
            continue
        if chexpert is not None and study_id in chexpert:
            labels = chexpert[study_id]
        else:
            labels = _positive(meta, label_columns, threshold=min_certainty)
        rows.append(_build_row(
            reading_id=reading, source="reflacx", subject_id=subject_id, study_id=study_id, dicom_id=dicom_id,
            split=(splits or {}).get(dicom_id, str(meta["split"])), image=image, image_size=image_size, report=report,
            written_report=written_reports(study_id), sentences=sentences, fixations=points, labels=labels,
            settings=settings,
        ))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Public loaders


def _mimic_path_finder(image_root: Path) -> ImageFinder:
    """Resolve MIMIC-CXR paths (`files/p10/p10000032/s5.../<dicom_id>.dcm`) under a MIMIC-CXR or -JPG root."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image_root is not a directory: {image_root}")

    def find(dicom_id, study_id, subject_id, mimic_path):
        relative = mimic_path[mimic_path.rfind("files/"):] if "files/" in mimic_path else mimic_path
        for candidate in (image_root / relative, (image_root / relative).with_suffix(".jpg")):
            if candidate.is_file():
                return candidate
        return None

    return find


def _mimic_splits(image_root: Path) -> dict[str, str]:
    for name in ("mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-split.csv.gz"):
        if (Path(image_root) / name).is_file():
            frame = _read_csv(Path(image_root) / name, ["dicom_id", "split"], dtype=str)
            return dict(zip(frame["dicom_id"], frame["split"]))
    return {}


def load_egd_cxr(root, image_root, heatmaps: HeatmapSettings | None = None) -> datasets.Dataset:
    """EGD-CXR ("Eye Gaze Data for Chest X-rays", PhysioNet `egd-cxr/1.0.0`) -> one row per image.

    Args:
        root: the folder holding `master_sheet.csv`, `fixations.csv` and `audio_segmentation_transcripts/`.
        image_root: a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG root; the sheet's `path` (`files/p../<dicom_id>.dcm`) is
            looked up there, then the same path with `.jpg`. Its split file, if present, gives the `split` column
            (else "unknown").
    """
    skips = SkipLog("EGD-CXR")
    rows = _read_egd(Path(root), _mimic_path_finder(image_root), heatmaps or HeatmapSettings(), skips,
                     _mimic_splits(image_root))
    return _to_dataset(rows, skips, str(root))


def load_reflacx(root, image_root, heatmaps: HeatmapSettings | None = None, min_certainty: int = 4) -> datasets.Dataset:
    """REFLACX (PhysioNet `reflacx-xray-localization/1.0.0`) -> one row per reading (several per image).

    Args:
        root: the folder holding `main_data/` (with `metadata_phase_*.csv` and one folder per reading id).
        image_root: a MIMIC-CXR or MIMIC-CXR-JPG root (the metadata `image` path is resolved as for EGD-CXR).
        min_certainty: REFLACX labels are certainties 0-5; a finding is listed in `labels` from this value on
            (4 = "Probably").
    """
    main_data = Path(root) / "main_data"
    metadata_files = sorted(main_data.glob("metadata_phase_*.csv"))
    if not metadata_files:
        raise FileNotFoundError(f"no main_data/metadata_phase_*.csv under {root}")
    skips = SkipLog("REFLACX")
    rows = _read_reflacx(_reflacx_metadata(metadata_files), main_data, _mimic_path_finder(image_root),
                         heatmaps or HeatmapSettings(), skips, min_certainty)
    return _to_dataset(rows, skips, str(root))


def load_mimic_eye(root, heatmaps: HeatmapSettings | None = None, min_certainty: int = 4) -> datasets.Dataset:
    """MIMIC-EYE (PhysioNet `mimic-eye-multimodal-datasets/1.0.0`) -> one row per EGD-CXR or REFLACX reading.

    `root` holds `patient_<subject_id>/` folders; each may have an `EyeGaze/` part (EGD-CXR files for that
    patient) and a `REFLACX/` part (`metadata.csv`, `main_data/<id>/`), with images in `CXR-JPG/s<study>/`,
    CheXpert labels and splits in `CXR-JPG/cxr_chexpert.csv` / `cxr_split.csv`, and the written report in
    `CXR-DICOM/s<study>.txt`. The image-level split of `cxr_split.csv` wins over REFLACX's own, so that all
    readings of one image land in the same split.
    """
    root = Path(root)
    patients = sorted(p for p in root.glob("patient_*") if p.is_dir())
    if not patients:
        raise FileNotFoundError(f"no patient_* folders under {root}")
    settings = heatmaps or HeatmapSettings()
    skips = SkipLog("MIMIC-EYE")
    rows = []
    for patient in patients:
        jpg = patient / "CXR-JPG"
        splits, study_of, chexpert = {}, {}, {}
        if (jpg / "cxr_split.csv").is_file():
            frame = _read_csv(jpg / "cxr_split.csv", ["dicom_id", "study_id", "split"], dtype=str)
            splits = dict(zip(frame["dicom_id"], frame["split"]))
            study_of = dict(zip(frame["dicom_id"], frame["study_id"]))
        if (jpg / "cxr_chexpert.csv").is_file():
            frame = _read_csv(jpg / "cxr_chexpert.csv", ["study_id"], dtype={"study_id": str})
            finding_columns = [c for c in frame.columns if c not in ("subject_id", "study_id")]
            chexpert = {row["study_id"]: _positive(row, finding_columns) for _, row in frame.iterrows()}

        def find_image(dicom_id, study_id, subject_id, mimic_path, jpg=jpg, study_of=study_of):
            study = study_id or study_of.get(dicom_id, "")
            candidate = jpg / f"s{study}" / f"{dicom_id}.jpg"
            return candidate if candidate.is_file() else None

        def written_report(study_id, patient=patient):
            path = patient / "CXR-DICOM" / f"s{study_id}.txt"
            return path.read_text().strip() if path.is_file() else ""

        if (patient / "EyeGaze" / "master_sheet.csv").is_file():
            rows += _read_egd(patient / "EyeGaze", find_image, settings, skips, splits, chexpert, written_report)
        if (patient / "REFLACX" / "metadata.csv").is_file():
            metadata = _reflacx_metadata([patient / "REFLACX" / "metadata.csv"])
            rows += _read_reflacx(metadata, patient / "REFLACX" / "main_data", find_image, settings, skips,
                                  min_certainty, chexpert, lambda d, s=study_of: s.get(d, ""), written_report, splits)
    return _to_dataset(rows, skips, str(root))


def by_split(dataset: datasets.Dataset) -> datasets.DatasetDict:
    """Rows grouped by their `split` column -> DatasetDict (e.g. train / validate / test)."""
    names = sorted(set(dataset["split"]))
    return datasets.DatasetDict({name: dataset.filter(lambda s, n=name: s == n, input_columns="split") for name in names})
