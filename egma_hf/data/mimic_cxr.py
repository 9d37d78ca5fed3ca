"""MIMIC-CXR-JPG 2.x (PhysioNet `mimic-cxr-jpg`) with its free-text reports -> one row per image, no gaze.

Rows have the gaze readers' columns (`egma_hf.data.FEATURES`) with `source="mimic-cxr"`, `reading_id` = `dicom_id`,
`has_gaze=False`, no fixations and 1 x 1 zero maps as `sentence_heatmaps` (one per sentence) and `reading_heatmap`;
`report` is the report's
FINDINGS + IMPRESSION text (`mimic_report_text`) split into `sentences` by `split_report_into_sentences`, and
`written_report` the whole report.
"""

import re
import zipfile
from collections import defaultdict
from pathlib import Path

import datasets
import pandas as pd

from ..processing_egma import split_report_into_sentences
from .evaluation_sets import CHEXPERT_LABEL_COLUMNS
from .images import image_size_of
from .readers import (
    PATH_ESCAPES,
    ListedPathError,
    SkipLog,
    chexpert_positives,
    existing_folder,
    read_csv_file,
    read_split_file,
    resolve_inside,
    rows_to_dataset,
)

FRONTAL_VIEWS = ("PA", "AP")
SPLIT_COLUMNS = ["dicom_id", "study_id", "subject_id", "split"]
METADATA_COLUMNS = ["dicom_id", "ViewPosition"]
NO_GAZE = [[0.0]]  # a 1 x 1 zero map covers the whole image: no memory per pixel, and prepare_for_training takes it
# headers taken as section boundaries in any case; any other all-upper-case "NAME:" at a line start is one too
KNOWN_SECTIONS = {"findings", "impression", "impressions", "indication", "history", "comparison", "comparisons",
                  "technique", "examination", "exam", "wet read", "final report", "reason for examination",
                  "clinical information", "notification", "recommendation", "recommendations", "recommendation(s)"}
_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z ()/&-]{0,40}?)[ \t]*:", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def report_sections(report: str) -> dict[str, str]:
    """A MIMIC-CXR report's sections: {header lower-cased with single spaces: text up to the next header}.

    A header starts a line and ends with a colon ("FINDINGS:", "Findings :", " IMPRESSION:"); it counts if its
    name is all upper case or one of `KNOWN_SECTIONS` in any case. The first occurrence of a header wins.
    """
    headers = [match for match in _HEADER.finditer(report)
               if match["name"].isupper() or " ".join(match["name"].lower().split()) in KNOWN_SECTIONS]
    sections = {}
    for match, following in zip(headers, headers[1:] + [None]):
        name = " ".join(match["name"].lower().split())
        end = following.start() if following is not None else len(report)
        sections.setdefault(name, report[match.end():end].strip())
    return sections


def mimic_report_text(report: str) -> str:
    """The text EGMA pre-trains on: FINDINGS, then IMPRESSION (blank line between), from the report's headers.

    A report with only one of the two uses that one. A report with neither falls back to its last paragraph
    (blank-line separated), without a leading header: in MIMIC-CXR reports that is usually the conclusion, and
    keeping the row is what the pre-training corpora built on these reports do. "" for an empty report (or one
    whose FINDINGS / IMPRESSION are empty): the reader counts it as a skip.
    """
    sections = report_sections(report)
    parts = [sections.get("findings", ""), sections.get("impression", sections.get("impressions", ""))]
    if "findings" in sections or "impression" in sections or "impressions" in sections:
        return "\n\n".join(part for part in parts if part)
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(report) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    header = _HEADER.match(last)
    return last[header.end():].strip() if header is not None else last


def _csv_path(root: Path, name: str) -> Path:
    """`root/name.csv`, else `root/name.csv.gz`; FileNotFoundError naming both."""
    for candidate in (root / f"{name}.csv", root / f"{name}.csv.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"missing file: {root / name}.csv(.gz)")


class _ReportSource:
    """Report text by `pXX/p<subject>/s<study>.txt`, from a folder (`files/...` inside it, or the `files` folder
    itself) or the `mimic-cxr-reports.zip` as downloaded; None for a report that is not there."""

    def __init__(self, location: Path):
        self.location, self.archive, self.names = location, None, {}
        if location.is_dir():
            self.folder = location / "files" if (location / "files").is_dir() else location
        elif zipfile.is_zipfile(location):
            self.archive = zipfile.ZipFile(location)
            for name in self.archive.namelist():
                if name.endswith(".txt") and "files/" in name:
                    self.names[name[name.rfind("files/") + len("files/"):]] = name
        else:
            raise ValueError(f"reports: {location} is neither a folder nor a zip file")

    def read(self, relative: str) -> str | None:
        if self.archive is not None:
            name = self.names.get(relative)
            return None if name is None else self.archive.read(name).decode("utf-8", errors="replace")
        path = resolve_inside(self.folder, relative, "subject_id / study_id")
        return path.read_text(errors="replace") if path.is_file() else None


def _report_location(root: Path, reports) -> Path:
    if reports is not None:
        location = Path(reports)
        if not location.exists():
            raise FileNotFoundError(f"reports: no such folder or zip file: {location}")
        return location
    candidates = [root / "mimic-cxr-reports", root / "mimic-cxr-reports.zip", root / "files"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"reports: none given and none of {[str(c) for c in candidates]} exists")


def _image_size(metadata_row, image: Path) -> tuple[int, int]:
    """(height, width) from the metadata's Rows / Columns (the JPGs keep the DICOM's size), else the JPG header."""
    try:
        height, width = int(metadata_row["Rows"]), int(metadata_row["Columns"])
    except (KeyError, TypeError, ValueError):
        return image_size_of(image)
    return (height, width) if height >= 1 and width >= 1 else image_size_of(image)


def _splits_of(frame: pd.DataFrame, path: Path, skips: SkipLog) -> pd.DataFrame:
    """The split file with each image once: an image listed in two splits is skipped (never put in either), one
    listed twice in the same split is kept once."""
    splits_of = defaultdict(set)
    for dicom_id, split in zip(frame["dicom_id"], frame["split"]):
        splits_of[dicom_id].add(split)
    conflicting = {dicom_id for dicom_id, splits in splits_of.items() if len(splits) > 1}
    for dicom_id in sorted(conflicting):
        skips.skip("images listed in two splits skipped", dicom_id,
                   example=f"{path.name} {dicom_id}: {' / '.join(sorted(splits_of[dicom_id]))}")
    frame = frame[~frame["dicom_id"].isin(conflicting)]
    repeated = frame["dicom_id"].duplicated()
    for dicom_id in frame["dicom_id"][repeated]:
        skips.skip("images listed twice skipped (the first kept)", dicom_id, example=f"{path.name} {dicom_id}")
    return frame[~repeated]


def _chexpert_labels(root: Path) -> dict[str, list[str]]:
    """{study_id: positive label names} from `mimic-cxr-2.0.0-chexpert.csv(.gz)`, its 14 labels read by name; a
    study listed twice with different labels is a ValueError naming the file, the study and the row."""
    path = _csv_path(root, "mimic-cxr-2.0.0-chexpert")
    frame = read_csv_file(path, ["subject_id", "study_id", *CHEXPERT_LABEL_COLUMNS], dtype=str)
    labels_of, listed = {}, chexpert_positives(frame, CHEXPERT_LABEL_COLUMNS, path, "study_id")
    for row, (study_id, positives) in enumerate(zip(frame["study_id"].str.strip(), listed)):
        if labels_of.setdefault(study_id, positives) != positives:
            raise ValueError(f"{path}: study_id {study_id!r} is listed again with other labels (data row {row + 1})")
    return labels_of


def load_mimic_cxr(root, reports=None, frontal_only: bool = True) -> datasets.Dataset:
    """MIMIC-CXR-JPG 2.x -> one row per image (no gaze), in the gaze readers' schema.

    Args:
        root: the MIMIC-CXR-JPG folder: `files/pXX/p<subject>/s<study>/<dicom_id>.jpg` and
            `mimic-cxr-2.0.0-{split,metadata,chexpert}.csv` (or `.csv.gz`).
        reports: the MIMIC-CXR reports, a folder (`files/pXX/p<subject>/s<study>.txt`) or `mimic-cxr-reports.zip`;
            default `<root>/mimic-cxr-reports` (folder or `.zip`), else `<root>/files` (reports beside the images).
        frontal_only: keep only ViewPosition PA / AP (the others are counted as left out); False keeps all views.

    Rows come from the split file; `labels` are the study's CheXpert positives (1.0; -1.0 uncertain and blank are
    not), read by column name. Counted, with their reason in the summary: images listed in two splits (skipped,
    never put in either), listed twice, absent from `files/`, without a metadata row (when `frontal_only`), whose
    study has no report or an empty FINDINGS + IMPRESSION text (`mimic_report_text`), whose ids lead outside
    `root`; studies without a CheXpert row keep their images, with no labels. A missing CSV or column, a split name
    other than train / validate / test, a label cell other than 1.0 / 0.0 / -1.0 / blank and a study listed twice
    with different labels are errors naming the file (and the row and column).
    """
    root = existing_folder(root, "root")
    if not isinstance(frontal_only, bool):
        raise TypeError(f"frontal_only must be True or False, got {frontal_only!r}")
    split_path = _csv_path(root, "mimic-cxr-2.0.0-split")
    metadata_path = _csv_path(root, "mimic-cxr-2.0.0-metadata")
    skips = SkipLog("MIMIC-CXR")
    images = _splits_of(read_split_file(split_path, SPLIT_COLUMNS), split_path, skips)
    metadata = read_csv_file(metadata_path, METADATA_COLUMNS, dtype=str, keep_default_na=False)
    kept = [column for column in ("ViewPosition", "Rows", "Columns") if column in metadata.columns]
    repeated = metadata["dicom_id"].str.strip().value_counts()
    repeated = repeated[repeated > 1]
    if len(repeated):
        raise ValueError(f"{metadata_path}: dicom_id {repeated.index[0]} has {repeated.iloc[0]} rows "
                         "(column dicom_id); expected one metadata row per image")
    metadata = dict(zip(metadata["dicom_id"].str.strip(), metadata[kept].to_dict("records")))
    labels_of = _chexpert_labels(root)
    source = _ReportSource(_report_location(root, reports))

    texts_of: dict[str, tuple[str, str, list[str]] | None] = {}  # study -> (written report, text, sentences), once
    rows = []
    for dicom_id, study_id, subject_id, split in images[SPLIT_COLUMNS].itertuples(index=False):
        meta = metadata.get(dicom_id)
        if meta is None and frontal_only:
            skips.skip("images without a metadata row (view unknown) skipped", dicom_id)
            continue
        if frontal_only and meta["ViewPosition"].strip().upper() not in FRONTAL_VIEWS:
            skips.leave_out("non-frontal views (ViewPosition not PA / AP)", 1)
            continue
        study = f"p{subject_id[:2]}/p{subject_id}/s{study_id}"
        try:
            image = resolve_inside(root, f"files/{study}/{dicom_id}.jpg", "dicom_id / study_id / subject_id")
            if study not in texts_of:
                written_report = source.read(f"{study}.txt")
                if written_report is not None:
                    report = mimic_report_text(written_report)
                    written_report = (written_report, report, split_report_into_sentences(report))
                texts_of[study] = written_report
        except ListedPathError as error:
            skips.skip(PATH_ESCAPES, dicom_id, example=f"{split_path.name} {dicom_id}: {error}")
            continue
        if not image.is_file():
            skips.skip("images listed but absent from files/ skipped", dicom_id, example=str(image.relative_to(root)))
            continue
        if texts_of[study] is None:
            skips.skip("images whose study has no report file skipped", dicom_id, example=f"{study}.txt")
            continue
        written_report, report, sentences = texts_of[study]
        if not sentences:
            skips.skip("images whose report text (FINDINGS + IMPRESSION) is empty skipped", dicom_id,
                       example=f"{study}.txt")
            continue
        labels = labels_of.get(study_id)
        if labels is None:
            skips.skip("images whose study has no CheXpert row (kept, without labels)", dicom_id)
            labels = []
        try:
            image_height, image_width = _image_size(meta or {}, image)
        except (OSError, ValueError) as error:
            skips.skip("images whose file cannot be read skipped", dicom_id, example=f"{dicom_id}: {error}")
            continue
        rows.append(dict(
            reading_id=dicom_id, source="mimic-cxr", subject_id=subject_id, study_id=study_id, dicom_id=dicom_id,
            split=split, image=str(image), image_height=image_height, image_width=image_width, report=report,
            written_report=written_report.strip(), sentences=sentences, sentence_heatmaps=[NO_GAZE] * len(sentences),
            reading_heatmap=NO_GAZE, has_gaze=False, num_fixations=0, labels=sorted(labels),
        ))
    return rows_to_dataset(rows, skips, str(root))
