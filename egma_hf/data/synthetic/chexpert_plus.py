"""A synthetic CheXpert Plus release: JPG tree, main table and CheXbert labels, in the real formats, with quirks.

`make_synthetic_chexpert_plus(out_dir, num_images, seed, image_size)` writes `train|valid/patient<N>/study<M>/
view<K>_frontal.jpg|view<K>_lateral.jpg`, `df_chexpert_plus_240401.csv` (all 27 columns; the `report` column the
whole report under NARRATIVE / CLINICAL HISTORY / ... / FINDINGS / IMPRESSION / SUMMARY headers, the `section_*`
columns its parts) and `chexbert_labels.jsonl` (one JSON object per image: `path_to_image` and the 14 labels as
1.0 / 0.0 / -1.0 / null), so `egma_hf.data.chexpert_plus.load_chexpert_plus` reads it unchanged.

* Images are small chest X-ray-like drawings with zero to three findings: frontals `image_size` px square, laterals
  three quarters as wide; about 40% of the studies also have a lateral, about 10% a second frontal.
* About 8% of the studies have no FINDINGS section (blank `section_findings`, impression only).
* Quirks planted once each (the `path_to_image` of each in `synthetic_quirks.json`): an image listed but absent, a
  study with no report text, a row listed twice (identical), a row listed again with the other split, a patient
  with studies in both splits (its first image), a path leading outside the tree, an image without a labels line, a
  labels line for an image not in the table, a study whose section columns are blank but whose report has
  "Findings :" / "Impression :" headers, a blank `deid_patient_id`, and the first study without FINDINGS.
  `expected_rows` there gives the rows the reader keeps (`frontal_only` True and False).
* Splits are per patient (train / valid 0.8 / 0.2); one to three studies per patient.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..chexpert_plus import CHEXPERT_PLUS_COLUMNS, CHEXPERT_PLUS_TABLE
from .anatomy import anatomy_boxes, draw, sample_anatomy, sample_findings
from .core import Study, pick
from .formats import CHEXPERT_LABELS, chexpert, write_csv
from .language import INDICATIONS, written_report

LABELS_FILE = "chexbert_labels.jsonl"
SPLITS = (("train", 0.8), ("valid", 0.2))  # per patient; the release has no test split
# quirks carried by the first patients, one single-frontal study each (patient_two_splits: two studies)
QUIRKS = ("missing_image", "empty_text", "listed_twice", "two_splits", "patient_two_splits", "path_escape",
          "no_labels_line", "sections_blank", "blank_patient_id")
MIN_IMAGES = len(QUIRKS) + 4  # the quirk patients' images and a few ordinary ones
NARRATIVES = ("XR CHEST 2V PA AND LATERAL", "XR CHEST 1V PORTABLE", "XR CHEST 2 VIEWS")
COMPARISONS = ("None.", "Prior chest radiograph.", "Chest radiograph from the prior day.")
SUMMARIES = ("1-NORMAL", "2-ABNORMAL, PREVIOUSLY REPORTED", "4-POSSIBLE CONSEQUENTIAL FINDING")
END_OF_IMPRESSION = "I have personally reviewed the images for this examination and agree with the report."
OUTSIDE = "train/../../outside"  # a listed path prefix that leads out of the tree


def _sections(rng, study: Study, has_findings: bool) -> dict[str, str]:
    """The report's section texts by `section_*` column name (blank where the report has no such section)."""
    findings, impression = (part.split(":", 1)[1].strip() for part in study.report.split("\n\n"))
    indication = " ".join(pick(rng, INDICATIONS).split())
    return {
        "section_narrative": pick(rng, NARRATIVES), "section_clinical_history": indication,
        "section_history": indication if rng.random() < 0.3 else "", "section_comparison": pick(rng, COMPARISONS),
        "section_technique": "Frontal and lateral views of the chest.", "section_procedure_comments": "",
        "section_findings": findings if has_findings else "", "section_impression": impression,
        "section_end_of_impression": END_OF_IMPRESSION, "section_summary": pick(rng, SUMMARIES),
        "section_accession_number": str(int(rng.integers(10_000_000, 99_999_999))),
    }


def _report_column(sections: dict[str, str], spelling=str.upper) -> str:
    """The whole report: each non-blank section under its header ("section_end_of_impression" -> "END OF
    IMPRESSION:"), `spelling` turning a header's words into the written header."""
    return "\n\n".join(f"{spelling(name.removeprefix('section_').replace('_', ' '))}:\n{text}"
                       for name, text in sections.items() if text)


def _demographics(rng) -> dict[str, str]:
    return {
        "age": str(int(rng.integers(18, 91))), "sex": pick(rng, ("Male", "Female")),
        "race": pick(rng, ("White", "Asian", "Black or African American", "Other", "Unknown")),
        "ethnicity": pick(rng, ("Non-Hispanic/Non-Latino", "Hispanic/Latino", "Unknown")),
        "interpreter_needed": pick(rng, ("No", "No", "Yes")),
        "insurance_type": pick(rng, ("Medicare", "Medicaid", "Private Insurance")),
        "recent_bmi": f"{rng.uniform(17, 40):.1f}" if rng.random() < 0.7 else "", "deceased": pick(rng, ("No", "Yes")),
    }


def _plan(rng, num_images: int) -> list[tuple[int, str, list[list[str]]]]:
    """Patients as (number, split, per study its views): the quirk patients first, then ordinary ones until
    `num_images` images are listed."""
    names, fractions = [name for name, _ in SPLITS], [fraction for _, fraction in SPLITS]
    patients, count = [], 0
    for number, quirk in enumerate(QUIRKS, start=1):
        studies = [["frontal"], ["frontal"]] if quirk == "patient_two_splits" else [["frontal"]]
        patients.append((number, "train", studies))
        count += len(studies)
    while count < num_images:
        studies = []
        for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))):
            views = ["frontal"] + (["frontal"] if rng.random() < 0.1 else []) + (
                ["lateral"] if rng.random() < 0.4 else [])
            studies.append(views[: num_images - count])
            count += len(studies[-1])
            if count == num_images:
                break
        patients.append((len(patients) + 1, str(rng.choice(names, p=fractions)), studies))
    return patients


def make_synthetic_chexpert_plus(out_dir, num_images: int = 60, seed: int = 0, image_size: int = 64) -> Path:
    """Write a synthetic CheXpert Plus release of `num_images` listed images under `out_dir` (new or empty); returns
    it, the folder `path_to_image` is relative to. Deterministic for a seed."""
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    if num_images < MIN_IMAGES:
        raise ValueError(f"num_images must be at least {MIN_IMAGES} (the quirks' images and a few more), got "
                         f"{num_images}")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    table, label_lines, quirks = [], [], {}
    expected = {"frontal_only": 0, "all_views": 0}
    for number, split, studies in _plan(rng, num_images):
        patient = f"patient{number:05d}"
        quirk = QUIRKS[number - 1] if number <= len(QUIRKS) else None
        for study_number, views in enumerate(studies, start=1):
            study_split = "valid" if quirk == "patient_two_splits" and study_number == 2 else split
            study = Study(number, study_number, "", "CheXpert Plus", split=study_split, width=image_size,
                          height=image_size)
            study.findings = sample_findings(rng)
            anatomy = sample_anatomy(rng, study.findings)
            study.anatomy = anatomy_boxes(anatomy, image_size, image_size)
            study.report, _, topics = written_report(rng, study)
            has_findings = quirk is not None or rng.random() >= 0.08
            sections = _sections(rng, study, has_findings)
            report = _report_column(sections)
            if quirk == "empty_text":
                sections.update(section_findings="", section_impression="")
                report = ""
            elif quirk == "sections_blank":
                report = _report_column(sections, spelling=lambda header: f"{header.title()} " if header in (
                    "findings", "impression") else header.upper())
                sections.update(section_findings="", section_impression="")
            labels = {label: None if value == "" else float(value)
                      for label, value in chexpert(rng, study, topics).items()}
            people = _demographics(rng)
            counts = {"frontal": 0, "lateral": 0}
            for view_number, view in enumerate(views, start=1):
                listed = f"{study_split}/{patient}/study{study_number}/view{view_number}_{view}.jpg"
                if quirk == "path_escape":
                    listed = f"{OUTSIDE}/{patient}/study{study_number}/view{view_number}_{view}.jpg"
                counts[view] += 1
                if quirk is not None and study_number == 1:
                    quirks[quirk] = listed
                if not has_findings:
                    quirks.setdefault("findings_blank", listed)
                width = image_size if view == "frontal" else max(1, image_size * 3 // 4)
                if quirk not in ("missing_image", "path_escape"):
                    path = root / listed
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(draw(rng, anatomy, study.findings, width, image_size)).save(path, quality=90)
                row = dict(
                    path_to_image=listed, path_to_dcm=str(Path(listed).with_suffix(".dcm")),
                    frontal_lateral=view.capitalize(), ap_pa=pick(rng, ("PA", "AP")) if view == "frontal" else "",
                    deid_patient_id="" if quirk == "blank_patient_id" else patient,
                    patient_report_date_order=str(study_number), report=report, **sections, **people,
                    split=study_split,
                )
                table.append([row[column] for column in CHEXPERT_PLUS_COLUMNS])
                if quirk == "listed_twice":
                    table.append(list(table[-1]))
                if quirk == "two_splits":
                    table.append([*table[-1][:-1], "valid"])
                if quirk != "no_labels_line":
                    label_lines.append(json.dumps({"path_to_image": listed, **labels}))
                dropped = quirk in ("missing_image", "empty_text", "two_splits", "patient_two_splits", "path_escape")
                if not dropped:
                    expected["all_views"] += 1
                    expected["frontal_only"] += view == "frontal"
    absent = f"train/patient{len(table) + 90_000:05d}/study1/view1_frontal.jpg"
    label_lines.append(json.dumps({"path_to_image": absent, **dict.fromkeys(CHEXPERT_LABELS)}))
    quirks["labels_not_in_table"] = absent
    write_csv(root / CHEXPERT_PLUS_TABLE, list(CHEXPERT_PLUS_COLUMNS), table)
    (root / LABELS_FILE).write_text("".join(f"{line}\n" for line in label_lines))
    (root / "synthetic_quirks.json").write_text(json.dumps({**quirks, "expected_rows": expected}, indent=1))
    return root
