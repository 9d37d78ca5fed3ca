"""MIMIC-CXR-JPG reader on hand-built trees in the real formats (gzipped CSVs, reports folder and zip), with quirks."""

import csv
import gzip
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from egma_hf import EGMAImageProcessor, EGMAProcessor
from egma_hf.data import (
    FEATURES,
    EGMADataCollator,
    load_mimic_cxr,
    load_mimic_eye,
    make_synthetic_mimic_cxr,
    make_synthetic_mimic_eye,
    mimic_report_text,
    prepare_for_training,
    report_sections,
)
from tests.helpers import make_tokenizer

LABELS = [  # the real chexpert file's (alphabetical) column order
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]
METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
HEIGHT, WIDTH = 12, 16


def dicom(n: int) -> str:
    return "-".join(f"{n:08x}" for _ in range(5))


# dicom_id: (subject, study, split, ViewPosition, image present)
IMAGES = {
    dicom(1): ("10000032", "50000001", "train", "PA", True),
    dicom(2): ("10000032", "50000001", "train", "LATERAL", True),
    dicom(3): ("10000032", "50000002", "train", "AP", True),
    dicom(4): ("10000032", "50000002", "train", "LL", True),
    dicom(5): ("10000764", "50000003", "validate", "PA", True),  # report with IMPRESSION only; no chexpert row
    dicom(6): ("10000764", "50000004", "validate", "PA", True),  # report with neither section
    dicom(7): ("11000011", "50000005", "test", "PA", False),  # listed, image absent
    dicom(8): ("11000011", "50000006", "test", "PA", True),  # no report file
    dicom(9): ("11000011", "50000007", "test", "PA", True),  # also listed in train below
    dicom(10): ("11000011", "50000008", "test", "AP", True),  # empty report
}
REPORTS = {
    "50000001": "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  "
                "Cough.\n\n FINDINGS: \n \n The heart is enlarged.  Mild edema is possible.\n \n IMPRESSION: \n \n "
                "Cardiomegaly.\n",
    "50000002": "EXAMINATION: CHEST PORT\n\nFindings : Lines and tubes in place. Lungs are clear.\n\nImpression :\n"
                "No acute process.\n",
    "50000003": "WET READ: ___ 3:11 PM\n\nCOMPARISON: None.\n\n IMPRESSION:\n 1. No effusion. 2. No pneumothorax.\n",
    "50000004": "FINAL REPORT\nHISTORY: Dyspnea.\n\nPA and lateral views of the chest.\n\nNo acute "
                "cardiopulmonary process.\n",
    "50000007": "FINDINGS: Clear lungs.\n",
    "50000008": "   \n",
}
# study -> {label: cell}; every other label cell is 0.0 (50000003 has no row)
CHEXPERT = {
    "50000001": {"Cardiomegaly": "1.0", "Edema": "-1.0", "Atelectasis": ""},
    "50000002": {"No Finding": "1.0", "Support Devices": "1.0", "Pneumonia": ""},
    "50000004": {"No Finding": "1.0"},
    "50000006": {}, "50000007": {"Edema": "1.0"}, "50000008": {},
}


def write_csv(path, header, rows):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def chexpert_rows(subject_of, columns):
    return [[subject_of[study], study] + [cells.get(label, "0.0") for label in columns[2:]]
            for study, cells in CHEXPERT.items()]


def make_tree(root, reports="folder", suffix=".csv.gz", label_columns=LABELS, cell=None):
    """A MIMIC-CXR-JPG root; reports as `mimic-cxr-reports/` ("folder"), `mimic-cxr-reports.zip` ("zip") or beside
    the images under `files/` ("beside")."""
    root.mkdir(parents=True, exist_ok=True)
    split_rows = [[d, study, subject, split] for d, (subject, study, split, _, _) in IMAGES.items()]
    split_rows.append([dicom(9), "50000007", "11000011", "train"])
    write_csv(root / f"mimic-cxr-2.0.0-split{suffix}", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    metadata_rows = [[d, subject, study, "CHEST (PA AND LAT)", view, HEIGHT, WIDTH, "21800506", "213014.531",
                      "CHEST (PA AND LAT)", "postero-anterior", "Erect"]
                     for d, (subject, study, _, view, _) in IMAGES.items()]
    metadata_rows[2][5:7] = ["", ""]  # no size listed: read from the JPG
    write_csv(root / f"mimic-cxr-2.0.0-metadata{suffix}", METADATA_COLUMNS, metadata_rows)
    subject_of = {study: subject for subject, study, *_ in IMAGES.values()}
    columns = ["subject_id", "study_id", *label_columns]
    rows = chexpert_rows(subject_of, columns)
    if cell is not None:
        rows[1][columns.index("Fracture")] = cell
    write_csv(root / f"mimic-cxr-2.0.0-chexpert{suffix}", columns, rows)
    for d, (subject, study, _, _, present) in IMAGES.items():
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        if present:
            Image.new("L", (WIDTH, HEIGHT), 128).save(folder / f"{d}.jpg")
    texts = {f"files/p{subject_of[s][:2]}/p{subject_of[s]}/s{s}.txt": text for s, text in REPORTS.items()}
    if reports == "zip":
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as archive:
            for name, text in texts.items():
                archive.writestr(f"mimic-cxr-reports/{name}", text)
    else:
        base = root if reports == "beside" else root / "mimic-cxr-reports"
        for name, text in texts.items():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_text(text)
    return root


SUMMARY = ("MIMIC-CXR: skipped: 1 images listed but absent from files/ skipped in 1 readings "
           "(e.g. files/p11/p11000011/s50000005/{d7}.jpg); "
           "1 images listed in two splits skipped in 1 readings "
           "(e.g. mimic-cxr-2.0.0-split{suffix} {d9}: test / train); "
           "1 images whose report text (FINDINGS + IMPRESSION) is empty skipped in 1 readings "
           "(e.g. p11/p11000011/s50000008.txt); "
           "1 images whose study has no CheXpert row (kept, without labels) in 1 readings; "
           "1 images whose study has no report file skipped in 1 readings (e.g. p11/p11000011/s50000006.txt)")


def check_frontal_rows(dataset, suffix=".csv.gz"):
    assert dataset.features == FEATURES
    assert dataset.info.description == SUMMARY.format(d7=dicom(7), d9=dicom(9), suffix=suffix) + (
        "; left out: 2 non-frontal views (ViewPosition not PA / AP)")
    rows = {row["dicom_id"]: row for row in dataset}
    assert sorted(rows) == [dicom(1), dicom(3), dicom(5), dicom(6)]
    assert {d: row["split"] for d, row in rows.items()} == {
        dicom(1): "train", dicom(3): "train", dicom(5): "validate", dicom(6): "validate"}
    assert {d: row["labels"] for d, row in rows.items()} == {
        dicom(1): ["Cardiomegaly"], dicom(3): ["No Finding", "Support Devices"], dicom(5): [], dicom(6): ["No Finding"]}
    assert rows[dicom(1)]["report"] == "The heart is enlarged.  Mild edema is possible.\n\nCardiomegaly."
    assert rows[dicom(1)]["sentences"] == ["The heart is enlarged.", "Mild edema is possible.", "Cardiomegaly."]
    assert rows[dicom(3)]["sentences"] == ["Lines and tubes in place.", "Lungs are clear.", "No acute process."]
    assert rows[dicom(5)]["sentences"] == ["No effusion.", "No pneumothorax."]
    assert rows[dicom(6)]["sentences"] == ["No acute cardiopulmonary process."]  # the last paragraph
    assert rows[dicom(1)]["written_report"] == REPORTS["50000001"].strip()
    for d, row in rows.items():
        assert (row["reading_id"], row["source"], row["has_gaze"], row["num_fixations"]) == (d, "mimic-cxr", False, 0)
        assert (row["sentence_heatmaps"], row["reading_heatmap"]) == ([[[0.0]]] * len(row["sentences"]), [[0.0]])
        assert (row["image_height"], row["image_width"]) == (HEIGHT, WIDTH)
        assert row["image"].endswith(f"s{row['study_id']}/{d}.jpg")
    assert rows[dicom(3)]["subject_id"] == "10000032" and rows[dicom(3)]["study_id"] == "50000002"


@pytest.mark.parametrize("reports", ["folder", "zip", "beside"])
def test_reads_frontal_images_with_their_sections_labels_and_splits(tmp_path, reports):
    check_frontal_rows(load_mimic_cxr(make_tree(tmp_path / "mimic", reports)))


def test_reports_may_be_given_and_csvs_may_be_uncompressed(tmp_path):
    root = make_tree(tmp_path / "mimic", "zip", suffix=".csv")
    moved = (root / "mimic-cxr-reports.zip").rename(tmp_path / "reports.zip")
    check_frontal_rows(load_mimic_cxr(root, reports=moved), suffix=".csv")
    with pytest.raises(ValueError, match="6 images whose study has no report file skipped"):
        load_mimic_cxr(root)  # the default falls back to files/ beside the images, which has no reports
    with pytest.raises(FileNotFoundError, match="reports: no such folder or zip file"):
        load_mimic_cxr(root, reports=tmp_path / "absent.zip")


def test_all_views_when_not_frontal_only(tmp_path):
    dataset = load_mimic_cxr(make_tree(tmp_path / "mimic"), frontal_only=False)
    rows = {row["dicom_id"]: row for row in dataset}
    assert sorted(rows) == [dicom(n) for n in (1, 2, 3, 4, 5, 6)]
    assert rows[dicom(2)]["labels"] == ["Cardiomegaly"] and rows[dicom(2)]["report"] == rows[dicom(1)]["report"]
    assert "left out" not in dataset.info.description


def read_table(path: Path) -> list[list[str]]:
    """A gzipped CSV of the tree as rows of cells, header first."""
    with gzip.open(path, "rt") as handle:
        return list(csv.reader(handle))


def test_labels_are_read_by_name_whatever_the_column_order(tmp_path):
    shuffled = LABELS[::-1]
    dataset = load_mimic_cxr(make_tree(tmp_path / "mimic", label_columns=shuffled))
    assert {row["dicom_id"]: row["labels"] for row in dataset}[dicom(3)] == ["No Finding", "Support Devices"]


def test_unknown_label_value_names_file_row_and_column(tmp_path):
    with pytest.raises(ValueError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv\.gz: data row 2 \(study_id '50000002'\), "
                                         r"column 'Fracture' holds '2\.0'"):
        load_mimic_cxr(make_tree(tmp_path / "mimic", cell="2.0"))


@pytest.mark.parametrize(("name", "column"), [("metadata", "ViewPosition"), ("chexpert", "Fracture"),
                                              ("split", "split")])
def test_csv_missing_a_column_names_file_and_column(tmp_path, name, column):
    root = make_tree(tmp_path / "mimic")
    path = root / f"mimic-cxr-2.0.0-{name}.csv.gz"
    table = read_table(path)
    keep = [i for i, header in enumerate(table[0]) if header != column]
    write_csv(path, [table[0][i] for i in keep], [[row[i] for i in keep] for row in table[1:]])
    with pytest.raises(ValueError, match=rf"mimic-cxr-2\.0\.0-{name}\.csv\.gz: missing column\(s\) \['{column}'\]"):
        load_mimic_cxr(root)


def test_study_listed_twice_with_other_labels_is_an_error(tmp_path):
    root = make_tree(tmp_path / "mimic")
    path = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    table = read_table(path)
    again = list(table[1])
    again[2] = "1.0" if again[2] != "1.0" else "0.0"
    write_csv(path, table[0], table[1:] + [again])
    with pytest.raises(ValueError, match=r"chexpert\.csv\.gz: study_id '50000001' is listed again with other labels "
                                         r"\(data row 7\)"):
        load_mimic_cxr(root)


def test_image_with_two_metadata_rows_is_an_error(tmp_path):
    root = make_tree(tmp_path / "mimic")
    path = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    table = read_table(path)
    write_csv(path, table[0], table[1:] + [table[1]])
    with pytest.raises(ValueError, match=rf"metadata\.csv\.gz: dicom_id {table[1][0]} has 2 rows \(column dicom_id\)"):
        load_mimic_cxr(root)


def test_missing_csv_and_bad_split_name_are_errors(tmp_path):
    root = make_tree(tmp_path / "mimic")
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2\.0\.0-metadata\.csv\(\.gz\)"):
        load_mimic_cxr(root)
    root = make_tree(tmp_path / "other")
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[dicom(1), "50000001", "10000032", "val"]])
    with pytest.raises(ValueError, match=r"split\.csv\.gz: data row 1 has dicom_id .* and split 'val'"):
        load_mimic_cxr(root)


def test_ids_that_lead_outside_root_are_counted_and_never_opened(tmp_path):
    root = make_tree(tmp_path / "mimic")
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[dicom(1), "50000001", "10000032", "train"], ["../../../../../etc/passwd", "1", "10000032", "train"]])
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "ViewPosition"],
              [[dicom(1), "PA"], ["../../../../../etc/passwd", "PA"]])
    dataset = load_mimic_cxr(root)
    assert dataset["dicom_id"] == [dicom(1)]
    assert "1 readings whose listed path or id leads outside its folder skipped" in dataset.info.description


@pytest.mark.parametrize(("report", "expected"), [
    ("FINDINGS: A.\n\nIMPRESSION: B.", "A.\n\nB."),
    ("  Findings :\n A. \n  impression:  B.", "A.\n\nB."),
    ("INDICATION: x.\n\nIMPRESSION: B.\n\nNOTIFICATION: called.", "B."),
    ("TECHNIQUE: PA.\n\nFINDINGS:\nA.\nNote: small.", "A.\nNote: small."),  # "Note:" is no section header
    ("FINAL REPORT\nHISTORY: x.\n\nCOMPARISON: None.", "None."),  # neither: the last paragraph, header dropped
    ("FINDINGS:\n\nIMPRESSION:\n", ""),
    ("", ""),
])
def test_report_text_is_findings_and_impression(report, expected):
    assert mimic_report_text(report) == expected


def test_report_sections_names_are_normalised():
    assert report_sections(" WET  READ: a\nFINDINGS : b\n") == {"wet read": "a", "findings": "b"}


def test_rows_batch_as_no_gaze_rows_raw_and_prepared(tmp_path):
    dataset = load_mimic_cxr(make_tree(tmp_path / "mimic"))
    image_processor = EGMAImageProcessor(size=32)
    collate = EGMADataCollator(EGMAProcessor(image_processor, make_tokenizer()))
    for rows in (dataset, prepare_for_training(dataset, image_processor)):
        batch = collate([rows[i] for i in range(len(rows))])
        assert batch["pixel_values"].shape[:2] == (4, 3) and not batch["has_gaze"].any()
        assert batch["gaze_heatmaps"].abs().sum() == 0


def test_synthetic_twin_shares_mimic_eye_images_and_plants_each_quirk_once(tmp_path):
    eye = make_synthetic_mimic_eye(tmp_path / "eye", num_samples=12, seed=0)
    root = make_synthetic_mimic_cxr(tmp_path / "cxr", num_images=60, seed=0, mimic_eye=eye)
    quirks = json.loads((root / "synthetic_quirks.json").read_text())
    dataset = load_mimic_cxr(root, frontal_only=False)
    assert len(dataset) == 60 - 4  # an absent image, a missing and an empty report, one image in two splits
    for skip in ("1 images listed but absent from files/", "1 images listed in two splits",
                 "1 images whose report text (FINDINGS + IMPRESSION) is empty", "1 images whose study has no CheXpert",
                 "1 images whose study has no report file"):
        assert skip in dataset.info.description
    rows = {row["dicom_id"]: row for row in dataset}
    assert quirks["no_chexpert_row"] in rows and rows[quirks["no_chexpert_row"]]["labels"] == []
    assert not {quirks[name] for name in ("empty_report", "missing_report", "missing_image", "two_splits")} & set(rows)
    impression_only, neither = rows[quirks["impression_only"]], rows[quirks["neither"]]
    assert impression_only["report"] in impression_only["written_report"] and "FINDINGS" not in \
        impression_only["written_report"].upper()
    assert neither["report"] == neither["written_report"].split("\n\n")[-1].strip()
    readings = load_mimic_eye(eye)
    for reading in readings:  # every gaze reading's image is in the corpus, in the same split
        assert rows[reading["dicom_id"]]["split"] == reading["split"]
    frontal = load_mimic_cxr(root)
    assert len(frontal) < len(dataset) and "non-frontal views" in frontal.info.description
    assert quirks["blank_view"] in rows and quirks["blank_view"] not in set(frontal["dicom_id"])
    with pytest.raises(FileExistsError):
        make_synthetic_mimic_cxr(root, num_images=60)
