"""A synthetic MIMIC-CXR-JPG 2.x tree with its reports, in the real file formats and with their quirks.

`make_synthetic_mimic_cxr(out_dir, num_images, seed, mimic_eye=None)` writes `files/pXX/p<subject>/s<study>/
<dicom_id>.jpg`, `mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz` (the real columns; the chexpert labels in the
real file's alphabetical order), `IMAGE_FILENAMES` and `mimic-cxr-reports/files/pXX/p<subject>/s<study>.txt`, so
`egma_hf.data.load_mimic_cxr` reads it unchanged. Given a synthetic MIMIC-EYE root, its images, reports, labels and
splits are included under their own ids, so gaze readings join the corpus by `dicom_id`.

* Images are small (`image_size` px square, 64 by default) chest X-ray-like drawings with zero to three findings;
  about a third of the studies also have a lateral view (the same drawing, as LATERAL), and a few a blank
  ViewPosition.
* Reports have FINAL REPORT / EXAMINATION / INDICATION headers before FINDINGS and IMPRESSION, whose headers vary
  in case and spacing; some have only IMPRESSION, some neither (one closing paragraph).
* Quirks planted once each (an image id of each in `synthetic_quirks.json`): an empty report, a missing report, an
  image listed but absent, a study without a chexpert row, an image listed in two splits; and the first report
  with IMPRESSION only, with neither section, and the first blank ViewPosition.
* Splits are per patient (train / validate / test 0.7 / 0.1 / 0.2); about 1.7 studies per patient.
"""

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .anatomy import anatomy_boxes, draw, sample_anatomy, sample_findings
from .core import Study, pick
from .formats import CHEXPERT_LABELS, chexpert
from .language import INDICATIONS, written_report
from .mimic_eye import SPLITS

METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
HEADER_SPELLINGS = (("FINDINGS:", "IMPRESSION:"), ("FINDINGS:", "IMPRESSION:"), ("Findings :", "Impression :"),
                    (" FINDINGS :", " IMPRESSION :"), ("findings:", "impression:"))
QUIRKS = ("empty_report", "missing_report", "missing_image", "no_chexpert_row", "two_splits")
MIN_NEW_IMAGES = 12  # enough new studies for every quirk and report variant


def _write_gz_csv(path: Path, header: list, rows) -> None:
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _dicom_id(rng) -> str:
    return "-".join(f"{int(part):08x}" for part in rng.integers(0, 2**32, size=5))


def _image_path(dicom_id, study_id, subject_id) -> str:
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def _mimic_eye_studies(mimic_eye: Path) -> list[dict]:
    """The studies of a synthetic MIMIC-EYE tree: ids, split, image file, report text and chexpert cells."""
    studies = []
    for patient in sorted(Path(mimic_eye).glob("patient_*")):
        jpg = patient / "CXR-JPG"
        with open(jpg / "cxr_chexpert.csv", newline="") as handle:
            labels = {row["study_id"]: row for row in csv.DictReader(handle)}
        with open(jpg / "cxr_split.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                report = patient / "CXR-DICOM" / f"s{row['study_id']}.txt"
                studies.append(dict(row, image=jpg / f"s{row['study_id']}" / f"{row['dicom_id']}.jpg",
                                    report=report.read_text(), chexpert=labels[row["study_id"]]))
    return studies


def _report(rng, study: Study, variant: str) -> str:
    """The study's FINDINGS / IMPRESSION report under MIMIC-CXR's leading headers, in one of the variants."""
    findings, impression = (part.split(":", 1)[1].strip() for part in study.report.split("\n\n"))
    head = (f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
            f" INDICATION:  {' '.join(pick(rng, INDICATIONS).split())}\n\n")
    findings_header, impression_header = pick(rng, HEADER_SPELLINGS)
    if variant == "impression_only":
        return f"{head} {impression_header}\n {impression}\n"
    if variant == "neither":
        return f"{head} {findings} {impression}\n"
    return f"{head} {findings_header}\n {findings}\n\n {impression_header}\n {impression}\n"


def make_synthetic_mimic_cxr(out_dir, num_images: int = 200, seed: int = 0, mimic_eye=None,
                             image_size: int = 64) -> Path:
    """Write a synthetic MIMIC-CXR-JPG tree of `num_images` listed images (MIMIC-EYE's included) under `out_dir`
    (new or empty); returns it. Deterministic for a seed. `mimic_eye`: a synthetic MIMIC-EYE root to include."""
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    eye = _mimic_eye_studies(mimic_eye) if mimic_eye is not None else []
    if num_images < len(eye) + MIN_NEW_IMAGES:
        raise ValueError(f"num_images must be at least {len(eye) + MIN_NEW_IMAGES} (MIMIC-EYE's {len(eye)} images "
                         f"and {MIN_NEW_IMAGES} new ones for the quirks), got {num_images}")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    split_rows, metadata_rows, chexpert_rows, reports = [], [], [], {}
    taken_subjects = {int(s["subject_id"]) for s in eye}
    taken_studies = {int(s["study_id"]) for s in eye}

    def add_image(subject, study_id, dicom_id, split, view, pixels_or_file):
        path = root / _image_path(dicom_id, study_id, subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(pixels_or_file, Path):
            shutil.copyfile(pixels_or_file, path)
            with Image.open(pixels_or_file) as image:
                width, height = image.size
        else:
            Image.fromarray(pixels_or_file).save(path, quality=90)
            height, width = pixels_or_file.shape
        split_rows.append([dicom_id, study_id, subject, split])
        metadata_rows.append([dicom_id, subject, study_id, "CHEST (PA AND LAT)", view, height, width, "21800506",
                              "213014.531", "CHEST (PA AND LAT)", "lateral" if view == "LATERAL" else
                              "postero-anterior", "Erect"])

    for study in eye:
        add_image(study["subject_id"], study["study_id"], study["dicom_id"], study["split"], "PA", study["image"])
        chexpert_rows.append([study["subject_id"], study["study_id"], *(study["chexpert"][c] for c in CHEXPERT_LABELS)])
        reports[(study["subject_id"], study["study_id"])] = study["report"]

    fractions = dict(SPLITS)
    new_studies, subject, split, count = [], None, None, len(eye)
    while count < num_images:
        if subject is None or rng.random() < 0.6:  # a new patient
            subject = int(10_000_000 + rng.integers(10_000_000))
            while subject in taken_subjects:
                subject = int(10_000_000 + rng.integers(10_000_000))
            taken_subjects.add(subject)
            split = str(rng.choice([name for name, _ in SPLITS], p=list(fractions.values())))
        study_id = int(50_000_000 + rng.integers(10_000_000))
        while study_id in taken_studies:
            study_id = int(50_000_000 + rng.integers(10_000_000))
        taken_studies.add(study_id)
        views = ["PA" if rng.random() < 0.6 else "AP"] + (["LATERAL"] if rng.random() < 0.33 else [])
        views = views[: 1 if len(new_studies) < len(QUIRKS) else num_images - count]  # one image per quirk
        new_studies.append((subject, study_id, split, views))
        count += len(views)

    quirk_study = {name: new_studies[i][1] for i, name in enumerate(QUIRKS)}  # the first studies carry the quirks
    variants = {len(QUIRKS): "impression_only", len(QUIRKS) + 1: "neither"}
    quirk_ids, dicom_ids = {}, set()
    for index, (subject, study_id, split, views) in enumerate(new_studies):
        study = Study(subject, study_id, "", "MIMIC-CXR", split=split, width=image_size, height=image_size)
        study.findings = sample_findings(rng)
        anatomy = sample_anatomy(rng, study.findings)
        study.anatomy = anatomy_boxes(anatomy, image_size, image_size)
        pixels = draw(rng, anatomy, study.findings, image_size, image_size)
        study.report, _, topics = written_report(rng, study)
        variant = variants.get(index, "impression_only" if rng.random() < 0.05 else
                               "neither" if rng.random() < 0.03 else "both")
        for view in views:
            dicom_id = _dicom_id(rng)
            while dicom_id in dicom_ids:
                dicom_id = _dicom_id(rng)
            dicom_ids.add(dicom_id)
            quirk_ids.update({name: dicom_id for name, quirk in quirk_study.items()
                              if quirk == study_id and name not in quirk_ids})
            blank_view = index == len(QUIRKS) + 2
            add_image(subject, study_id, dicom_id, split, "" if blank_view else view, pixels)
            if variant != "both" and index in variants:
                quirk_ids.setdefault(variant, dicom_id)
            if blank_view:
                quirk_ids.setdefault("blank_view", dicom_id)
        if study_id != quirk_study["no_chexpert_row"]:
            chexpert_rows.append([subject, study_id, *(chexpert(rng, study, topics)[c] for c in CHEXPERT_LABELS)])
        if study_id != quirk_study["missing_report"]:
            empty = study_id == quirk_study["empty_report"]
            reports[(subject, study_id)] = "" if empty else _report(rng, study, variant)
    missing = next(row for row in split_rows if row[0] == quirk_ids["missing_image"])
    (root / _image_path(*missing[:3])).unlink()
    twice = next(row for row in split_rows if row[0] == quirk_ids["two_splits"])
    split_rows.append([*twice[:3], "test" if twice[3] != "test" else "train"])

    _write_gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _write_gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, metadata_rows)
    _write_gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *sorted(CHEXPERT_LABELS)],
                  [row[:2] + [dict(zip(CHEXPERT_LABELS, row[2:]))[c] for c in sorted(CHEXPERT_LABELS)]
                   for row in chexpert_rows])
    (root / "IMAGE_FILENAMES").write_text("".join(
        f"{_image_path(*row[:3])}\n" for row in split_rows[:-1]))
    for (subject, study_id), text in reports.items():
        path = root / "mimic-cxr-reports" / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study_id}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "synthetic_quirks.json").write_text(json.dumps(quirk_ids, indent=1))
    return root
