"""CheXpert Plus (Stanford AIMI) with its report sections -> one row per image, no gaze.

Rows have the gaze readers' columns (`egma_hf.data.FEATURES`) with `source="chexpert-plus"`, `reading_id` =
`path_to_image`, `has_gaze=False`, no fixations and 1 x 1 zero maps (`NO_GAZE`) as `sentence_heatmaps` (one per
sentence) and `reading_heatmap`. `report` is `section_findings` + `section_impression` (or, where both are blank,
the FINDINGS + IMPRESSION of the `report` column by `mimic_report_text`), split into `sentences` by
`split_report_into_sentences`; `written_report` is the `report` column. The 14 CheXbert labels come from a separate
JSON-lines file keyed by `path_to_image` (`read_chexpert_plus_labels`).
"""

import json
import re
from pathlib import Path

import datasets
import pandas as pd

from ..processing_egma import split_report_into_sentences
from .evaluation_sets import CHEXPERT_LABEL_COLUMNS
from .images import image_size_of
from .mimic_cxr import NO_GAZE, mimic_report_text
from .readers import (
    PATH_ESCAPES,
    ListedPathError,
    SkipLog,
    chexpert_positives,
    existing_folder,
    read_csv_file,
    resolve_inside,
    rows_to_dataset,
)

CHEXPERT_PLUS_TABLE = "df_chexpert_plus_240401.csv"
CHEXPERT_PLUS_COLUMNS = (
    "path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id", "patient_report_date_order",
    "report", "section_narrative", "section_clinical_history", "section_history", "section_comparison",
    "section_technique", "section_procedure_comments", "section_findings", "section_impression",
    "section_end_of_impression", "section_summary", "section_accession_number", "age", "sex", "race", "ethnicity",
    "interpreter_needed", "insurance_type", "recent_bmi", "deceased", "split",
)
REQUIRED_COLUMNS = ("path_to_image", "frontal_lateral", "deid_patient_id", "report", "section_findings",
                    "section_impression", "split")
SPLIT_NAMES = {"train": "train", "valid": "validate", "test": "test"}  # CheXpert Plus's name -> ours
# `train/patient00001/study1/view1_frontal.jpg`: the patient and study folders above the image file
_STUDY_PATH = re.compile(r"(?:^|/)(?P<patient>patient[^/]+)/(?P<study>study[^/]+)/[^/]+$")

TWO_SPLITS = "images listed twice with different splits skipped (put in neither)"
PATIENT_TWO_SPLITS = "images of patients listed in two splits skipped (put in neither)"
LISTED_TWICE = "images listed twice skipped (identical rows; the first kept)"
LISTED_TWICE_DIFFERENT = "images listed twice with other contents skipped (the first kept)"
NOT_IN_LAYOUT = "images whose path_to_image is not .../patient<N>/study<M>/<file> skipped"
NO_PATH = "rows without a path_to_image skipped"
ABSENT = "images listed but absent from image_root skipped"
EMPTY_TEXT = "images whose report text (FINDINGS + IMPRESSION) is empty skipped"
UNREADABLE = "images whose file cannot be read skipped"
UNKNOWN_VIEW = "images whose frontal_lateral is neither Frontal nor Lateral skipped (view unknown)"
NO_LABELS_LINE = "images without a labels line (kept, without labels)"
LABELS_NOT_IN_TABLE = "labels lines whose path_to_image is not in the table (ignored)"


def read_chexpert_plus_labels(path) -> dict[str, list[str]]:
    """{path_to_image: sorted positive CheXbert label names} from a CheXpert Plus JSON-lines labels file.

    Each non-blank line is a JSON object with `path_to_image` and the 14 CheXbert labels by name, valued 1 / 0 / -1
    or null (blank); only 1 is positive. Errors name the file and the line ("data row N" is line N): a line that is
    not a JSON object, lacks `path_to_image` or a label, holds another label value, or repeats a path with other
    labels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels: missing file: {path}")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                records.append({"path_to_image": ""})  # keeps data row N on line N; all its labels blank
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not JSON ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {number} holds a {type(record).__name__}; expected a JSON object")
            missing = [key for key in ("path_to_image", *CHEXPERT_LABEL_COLUMNS) if key not in record]
            if missing or not isinstance(record["path_to_image"], str) or not record["path_to_image"].strip():
                raise ValueError(f"{path}: line {number} lacks {missing or ['a path_to_image text']}; expected "
                                 f"path_to_image and the 14 CheXbert labels {list(CHEXPERT_LABEL_COLUMNS)}")
            records.append(record)
    # object cells keep the values as written (2, not 2.0) for the error message
    frame = pd.DataFrame(records, columns=["path_to_image", *CHEXPERT_LABEL_COLUMNS], dtype=object)
    frame["path_to_image"] = frame["path_to_image"].str.strip()
    labels_of: dict[str, list[str]] = {}
    for number, (listed, positives) in enumerate(zip(
            frame["path_to_image"], chexpert_positives(frame, CHEXPERT_LABEL_COLUMNS, path, "path_to_image")), 1):
        if listed and labels_of.setdefault(listed, sorted(positives)) != sorted(positives):
            raise ValueError(f"{path}: path_to_image {listed!r} is listed again with other labels (line {number})")
    return labels_of


def _checked_splits(table: pd.DataFrame, path: Path) -> pd.Series:
    """The `split` column in our names (valid -> validate); any other value is a ValueError naming the row."""
    splits = table["split"].str.strip().map(SPLIT_NAMES)
    bad = splits.isna().to_numpy().nonzero()[0]
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"{path}: data row {row + 1} (path_to_image {table['path_to_image'].iat[row]!r}), column "
                         f"'split' holds {table['split'].iat[row]!r}; expected 'train', 'valid' or 'test'")
    return splits


def _without_repeats(table: pd.DataFrame, path: Path, skips: SkipLog) -> pd.DataFrame:
    """Each path_to_image once: listed twice with different splits -> skipped (in neither split); identical rows
    or rows differing in other columns -> the first kept, counted under their own reasons."""
    repeated = table[table["path_to_image"].duplicated(keep=False)]
    drop = []
    for listed, group in repeated.groupby("path_to_image", sort=True):
        splits = sorted(set(group["split"]))
        if len(splits) > 1:
            skips.skip(TWO_SPLITS, listed, count=len(group), example=f"{listed}: {' / '.join(splits)}")
            drop += list(group.index)
            continue
        different = [column for column in table.columns if group[column].nunique() > 1]
        reason = LISTED_TWICE_DIFFERENT if different else LISTED_TWICE
        skips.skip(reason, listed, count=len(group) - 1,
                   example=f"{listed}" + (f" (differing in {', '.join(different)})" if different else ""))
        drop += list(group.index[1:])
    return table.drop(index=drop)


def _without_patients_in_two_splits(table: pd.DataFrame, skips: SkipLog) -> pd.DataFrame:
    """The rows of patients whose images all share one split; the others' images are skipped, in neither split."""
    split_counts = table.groupby("subject_id")["split"].nunique()
    conflicting = set(split_counts.index[split_counts > 1])
    for subject in sorted(conflicting):
        rows = table[table["subject_id"] == subject]
        skips.skip(PATIENT_TWO_SPLITS, subject, count=len(rows),
                   example=f"{subject}: {' / '.join(sorted(set(rows['split'])))}")
    return table[~table["subject_id"].isin(conflicting)]


def _report_texts(table: pd.DataFrame) -> pd.Series:
    """FINDINGS + IMPRESSION from the section columns (blank line between); where both are blank, from the
    `report` column's own headers (`mimic_report_text`)."""
    findings, impression = table["section_findings"].str.strip(), table["section_impression"].str.strip()
    texts = (findings + "\n\n" + impression).where((findings != "") & (impression != ""), findings + impression)
    blank = texts == ""
    texts[blank] = [mimic_report_text(report) for report in table.loc[blank, "report"]]
    return texts


def _find_image(image_root: Path, listed: str) -> Path | None:
    """The listed image under image_root, else the same path as `.png` (the PNG download); None if neither is
    there. A path leading outside image_root raises ListedPathError."""
    image = resolve_inside(image_root, listed, "path_to_image")
    if image.is_file():
        return image
    png = resolve_inside(image_root, Path(listed).with_suffix(".png"), "path_to_image")
    return png if png.is_file() else None


def load_chexpert_plus(csv_path, image_root, labels=None, frontal_only: bool = True) -> datasets.Dataset:
    """CheXpert Plus -> one row per image (no gaze), in the gaze readers' schema.

    Args:
        csv_path: the main table, `df_chexpert_plus_240401.csv` (or `.csv.gz`).
        image_root: the folder that `path_to_image` (`train/patient00001/study1/view1_frontal.jpg`) is relative to;
            a listed `.jpg` that is absent is also looked for as `.png`.
        labels: the CheXbert labels as JSON lines keyed by `path_to_image` (`read_chexpert_plus_labels`); None:
            every row has `labels` [].
        frontal_only: keep only `frontal_lateral` "Frontal" (laterals are counted as left out); False keeps all.

    Ids: `subject_id` = `deid_patient_id` (else the path's patient folder), `study_id` = "patient<N>/study<M>" from
    the path, `dicom_id` = the path's file stem, `reading_id` = `path_to_image`. Splits: train, valid -> validate,
    test. Counted, with their reason in the summary: rows without a path, paths not in the patient/study layout,
    paths listed twice (the first kept; with different splits both skipped), images of a patient listed in two
    splits (all skipped: a patient is in one split only), paths leading outside `image_root`, images absent or
    unreadable, empty FINDINGS + IMPRESSION text, images without a labels line (kept, no labels) and labels lines
    for paths not in the table. A missing column or a split name other than train / valid / test is an error
    naming the file (and the data row).
    """
    image_root = existing_folder(image_root, "image_root")
    if not isinstance(frontal_only, bool):
        raise TypeError(f"frontal_only must be True or False, got {frontal_only!r}")
    csv_path = Path(csv_path)
    labels_of = read_chexpert_plus_labels(labels) if labels is not None else None
    skips = SkipLog("CheXpert Plus")
    table = read_csv_file(csv_path, REQUIRED_COLUMNS, dtype=str, keep_default_na=False)
    table["path_to_image"] = table["path_to_image"].str.strip()
    table["split"] = _checked_splits(table, csv_path)
    blank_path = table["path_to_image"] == ""
    for row in table.index[blank_path]:
        skips.skip(NO_PATH, example=f"{csv_path.name} data row {row + 1}")
    if labels_of is not None:
        unknown = sorted(set(labels_of) - set(table["path_to_image"]))
        skips.skip(LABELS_NOT_IN_TABLE, count=len(unknown), example=unknown[0] if unknown else None)
    table = _without_repeats(table[~blank_path], csv_path, skips)

    parts = table["path_to_image"].str.extract(_STUDY_PATH)
    in_layout = parts["patient"].notna()
    for listed in table.loc[~in_layout, "path_to_image"]:
        skips.skip(NOT_IN_LAYOUT, listed, example=listed)
    table, parts = table[in_layout].copy(), parts[in_layout]
    subjects = table["deid_patient_id"].str.strip()
    table["subject_id"] = subjects.where(subjects != "", parts["patient"])
    table["study_id"] = parts["patient"] + "/" + parts["study"]
    table = _without_patients_in_two_splits(table, skips)

    if frontal_only:
        views = table["frontal_lateral"].str.strip().str.lower()
        skips.leave_out("lateral views (frontal_lateral Lateral)", int((views == "lateral").sum()))
        for listed in table.loc[~views.isin(("frontal", "lateral")), "path_to_image"]:
            skips.skip(UNKNOWN_VIEW, listed, example=listed)
        table = table[views == "frontal"]
    table = table.assign(text=_report_texts(table))

    sentences_of: dict[str, list[str]] = {}  # text -> sentences, once per text (all images of a study share it)
    rows = []
    columns = ["path_to_image", "subject_id", "study_id", "split", "text", "report"]
    for listed, subject_id, study_id, split, text, written_report in table[columns].itertuples(index=False):
        try:
            image = _find_image(image_root, listed)
        except ListedPathError as error:
            skips.skip(PATH_ESCAPES, listed, example=f"{csv_path.name}: {error}")
            continue
        if image is None:
            skips.skip(ABSENT, listed, example=listed)
            continue
        if text not in sentences_of:
            sentences_of[text] = split_report_into_sentences(text)
        sentences = sentences_of[text]
        if not sentences:
            skips.skip(EMPTY_TEXT, listed, example=listed)
            continue
        labels = [] if labels_of is None else labels_of.get(listed)
        if labels is None:
            skips.skip(NO_LABELS_LINE, listed, example=listed)
            labels = []
        try:
            image_height, image_width = image_size_of(image)
        except (OSError, ValueError) as error:
            skips.skip(UNREADABLE, listed, example=f"{listed}: {error}")
            continue
        rows.append(dict(
            reading_id=listed, source="chexpert-plus", subject_id=subject_id, study_id=study_id,
            dicom_id=Path(listed).stem, split=split, image=str(image), image_height=image_height,
            image_width=image_width, report=text, written_report=written_report.strip(), sentences=sentences,
            sentence_heatmaps=[NO_GAZE] * len(sentences), reading_heatmap=NO_GAZE, has_gaze=False, num_fixations=0,
            labels=list(labels),
        ))
    return rows_to_dataset(rows, skips, str(csv_path))
