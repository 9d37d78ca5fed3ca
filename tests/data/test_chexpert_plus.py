"""CheXpert Plus reader on hand-built releases in the real formats (27-column table, JSON-lines labels), with quirks,
and on its synthetic twin."""

import csv
import gzip
import json

import pandas as pd
import pytest
from PIL import Image

from egma_hf.data.chexpert_plus import (
    CHEXPERT_PLUS_COLUMNS,
    CHEXPERT_PLUS_TABLE,
    load_chexpert_plus,
    read_chexpert_plus_labels,
)
from egma_hf.data.mimic_cxr import NO_GAZE, mimic_report_text
from egma_hf.data.readers import FEATURES
from egma_hf.data.synthetic.chexpert_plus import LABELS_FILE, make_synthetic_chexpert_plus

LABELS = [  # the CheXbert labels as the JSON lines name them
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]
HEIGHT, WIDTH = 12, 16
FULL_REPORT = ("NARRATIVE:\nXR CHEST 2V\n\nFINDINGS:\nThe heart is enlarged. Mild edema.\n\nIMPRESSION:\n"
               "1. Cardiomegaly. 2. Edema.\n\nSUMMARY:\n2-ABNORMAL")
FALLBACK_REPORT = "NARRATIVE:\nXR CHEST\n\nFindings :\nLungs are clear.\n\nImpression :\nNormal chest.\n\nSUMMARY:\n1"
# (path_to_image, frontal_lateral, deid_patient_id, split, section_findings, section_impression, report, image)
# image: (height, width), "png" (only the .png is there) or None (absent)
ROWS = [
    ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "patient00001", "train",
     "The heart is enlarged. Mild edema.", "1. Cardiomegaly. 2. Edema.", FULL_REPORT, (20, 24)),
    ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "patient00001", "train",
     "The heart is enlarged. Mild edema.", "1. Cardiomegaly. 2. Edema.", FULL_REPORT, (20, 15)),
    ("train/patient00001/study2/view1_frontal.jpg", "Frontal", "", "train", "", "No acute process.",
     "IMPRESSION:\nNo acute process.", (HEIGHT, WIDTH)),  # blank patient id; no labels line
    ("valid/patient00002/study1/view1_frontal.jpg", "Frontal", "patient00002", "valid", "", "", FALLBACK_REPORT,
     (HEIGHT, WIDTH)),  # section columns blank: the report column's headers
    ("valid/patient00002/study2/view1_frontal.jpg", "Frontal", "patient00002", "valid", "", "", " ",
     (HEIGHT, WIDTH)),  # no text at all
    ("valid/patient00002/study3/view1_frontal.jpg", "Frontal", "patient00002", "valid", "Clear.", "Normal.",
     "FINDINGS: Clear.", None),  # listed, image absent
    ("train/patient00003/study1/view1_frontal.jpg", "Frontal", "patient00003", "train", "Clear lungs.", "",
     "FINDINGS: Clear lungs.", (HEIGHT, WIDTH)),  # listed twice, identical (below)
    ("train/patient00004/study1/view1_frontal.jpg", "Frontal", "patient00004", "train", "Clear.", "Normal.",
     "FINDINGS: Clear.", (HEIGHT, WIDTH)),  # listed again in valid (below)
    ("train/patient00005/study1/view1_frontal.jpg", "Frontal", "patient00005", "train", "Clear.", "Normal.",
     "FINDINGS: Clear.", (HEIGHT, WIDTH)),  # the patient's other study is in valid
    ("valid/patient00005/study2/view1_frontal.jpg", "Frontal", "patient00005", "valid", "Clear.", "Normal.",
     "FINDINGS: Clear.", (HEIGHT, WIDTH)),
    ("train/../../outside/patient00006/study1/view1_frontal.jpg", "Frontal", "patient00006", "train", "Clear.",
     "Normal.", "FINDINGS: Clear.", None),
    ("test/patient00007/study1/view1_frontal.jpg", "Frontal", "patient00007", "test", "", "Pneumothorax.",
     "IMPRESSION: Pneumothorax.", (HEIGHT, WIDTH)),
    ("train/patient00008/study1/view1_frontal.jpg", "Frontal", "patient00008", "train", "First text.", "",
     "FINDINGS: First text.", (HEIGHT, WIDTH)),  # listed again with another report (below)
    ("train/patient00009/study1/view1_frontal.jpg", "", "patient00009", "train", "Clear.", "Normal.",
     "FINDINGS: Clear.", (HEIGHT, WIDTH)),  # view unknown
    ("train/patient00010/study1/view1_frontal.jpg", "Frontal", "patient00010", "train", "Clear.", "Normal.",
     "FINDINGS: Clear.", "png"),
    ("train/view1_frontal.jpg", "Frontal", "patient00011", "train", "Clear.", "Normal.", "FINDINGS: Clear.",
     (HEIGHT, WIDTH)),  # no patient / study folders
    ("", "Frontal", "patient00012", "train", "Clear.", "Normal.", "FINDINGS: Clear.", None),  # no path
]
REPEATS = [ROWS[6], ROWS[7][:3] + ("valid",) + ROWS[7][4:], ROWS[12][:4] + ("Second text.",) + ROWS[12][5:]]
# path -> {label: value}; every other label null
LABEL_LINES = {
    ROWS[0][0]: {"Cardiomegaly": 1.0, "Edema": 1, "Atelectasis": -1.0, "Pleural Effusion": 0.0},
    ROWS[1][0]: {"Cardiomegaly": 1.0, "Edema": 1.0, "Atelectasis": -1.0},
    ROWS[3][0]: {"No Finding": 1.0},
    ROWS[6][0]: {"No Finding": 1.0, "Support Devices": 1.0},
    ROWS[11][0]: {"Pneumothorax": 1.0, "Fracture": -1},
    ROWS[12][0]: {"Lung Opacity": 1.0},
    ROWS[13][0]: {"No Finding": 0.0},
    ROWS[14][0]: {"Pleural Other": 1.0},
    "train/patient99999/study1/view1_frontal.jpg": {"Edema": 1.0},  # not in the table
}
FRONTAL_KEPT = {ROWS[i][0] for i in (0, 2, 3, 6, 11, 12, 14)}


def table_row(path, view, patient, split, findings, impression, report, _image=None):
    cells = dict.fromkeys(CHEXPERT_PLUS_COLUMNS, "")
    cells.update(path_to_image=path, path_to_dcm=path.replace(".jpg", ".dcm"), frontal_lateral=view,
                 ap_pa="PA" if view == "Frontal" else "", deid_patient_id=patient, patient_report_date_order="1",
                 report=report, section_narrative="XR CHEST", section_findings=findings,
                 section_impression=impression, age="61", sex="Female", split=split)
    return [cells[column] for column in CHEXPERT_PLUS_COLUMNS]


def label_line(path, values):
    return json.dumps({"path_to_image": path, **{label: values.get(label) for label in LABELS}})


def make_release(tmp_path, name=CHEXPERT_PLUS_TABLE, rows=None, columns=CHEXPERT_PLUS_COLUMNS, label_lines=None):
    """A CheXpert Plus release under tmp_path: images in `images/`, the table and `labels.jsonl`."""
    image_root = tmp_path / "images"
    for path, *_, image in ROWS:
        if image is None or not path:
            continue
        target = image_root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        height, width = (HEIGHT, WIDTH) if image == "png" else image
        Image.new("L", (width, height), 100).save(target.with_suffix(".png") if image == "png" else target)
    outside = tmp_path / "outside" / "patient00006" / "study1"  # there, but outside image_root: never opened
    outside.mkdir(parents=True)
    Image.new("L", (WIDTH, HEIGHT)).save(outside / "view1_frontal.jpg")
    rows = [table_row(*row) for row in ROWS + REPEATS] if rows is None else rows
    opener = gzip.open if name.endswith(".gz") else open
    with opener(tmp_path / name, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([cell for column, cell in zip(CHEXPERT_PLUS_COLUMNS, row) if column in columns]
                         for row in rows)
    lines = [label_line(path, values) for path, values in LABEL_LINES.items()] if label_lines is None else label_lines
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / name, image_root, tmp_path / "labels.jsonl"


def by_path(dataset):
    return {row["reading_id"]: row for row in dataset}


def test_rows_ids_text_and_labels(tmp_path):
    table, image_root, labels = make_release(tmp_path)
    dataset = load_chexpert_plus(table, image_root, labels=labels)
    assert dataset.features == FEATURES
    rows = by_path(dataset)
    assert set(rows) == FRONTAL_KEPT
    first = rows["train/patient00001/study1/view1_frontal.jpg"]
    assert first == dict(
        reading_id="train/patient00001/study1/view1_frontal.jpg", source="chexpert-plus", subject_id="patient00001",
        study_id="patient00001/study1", dicom_id="view1_frontal", split="train",
        image=str(image_root / "train/patient00001/study1/view1_frontal.jpg"), image_height=20, image_width=24,
        report="The heart is enlarged. Mild edema.\n\n1. Cardiomegaly. 2. Edema.", written_report=FULL_REPORT,
        sentences=["The heart is enlarged.", "Mild edema.", "Cardiomegaly.", "Edema."],
        sentence_heatmaps=[NO_GAZE] * 4, reading_heatmap=NO_GAZE, has_gaze=False, num_fixations=0,
        labels=["Cardiomegaly", "Edema"],
    )
    impression_only = rows["train/patient00001/study2/view1_frontal.jpg"]
    assert (impression_only["subject_id"], impression_only["study_id"]) == ("patient00001", "patient00001/study2")
    assert (impression_only["report"], impression_only["labels"]) == ("No acute process.", [])
    fallback = rows["valid/patient00002/study1/view1_frontal.jpg"]
    assert (fallback["report"], fallback["split"]) == ("Lungs are clear.\n\nNormal chest.", "validate")
    assert fallback["sentences"] == ["Lungs are clear.", "Normal chest."] and fallback["labels"] == ["No Finding"]
    assert rows["test/patient00007/study1/view1_frontal.jpg"]["split"] == "test"
    assert rows["test/patient00007/study1/view1_frontal.jpg"]["labels"] == ["Pneumothorax"]
    assert rows["train/patient00003/study1/view1_frontal.jpg"]["labels"] == ["No Finding", "Support Devices"]
    assert rows["train/patient00008/study1/view1_frontal.jpg"]["report"] == "First text."  # the first row kept
    png = rows["train/patient00010/study1/view1_frontal.jpg"]
    assert png["image"].endswith("view1_frontal.png") and (png["image_height"], png["image_width"]) == (12, 16)


def test_skips_are_counted_with_reasons(tmp_path):
    table, image_root, labels = make_release(tmp_path)
    description = load_chexpert_plus(table, image_root, labels=labels).info.description
    for expected in (
        "1 images listed but absent from image_root skipped in 1 readings (e.g. valid/patient00002/study3/",
        "1 images listed twice skipped (identical rows; the first kept) in 1 readings",
        "2 images listed twice with different splits skipped (put in neither) in 1 readings (e.g. train/patient00004"
        "/study1/view1_frontal.jpg: train / validate)",
        "1 images listed twice with other contents skipped (the first kept) in 1 readings (e.g. train/patient00008/"
        "study1/view1_frontal.jpg (differing in section_findings))",
        "2 images of patients listed in two splits skipped (put in neither) in 1 readings (e.g. patient00005: train / "
        "validate)",
        "1 images whose report text (FINDINGS + IMPRESSION) is empty skipped in 1 readings (e.g. valid/patient00002/"
        "study2/",
        "1 images without a labels line (kept, without labels) in 1 readings (e.g. train/patient00001/study2/",
        "1 labels lines whose path_to_image is not in the table (ignored) (e.g. train/patient99999/",
        "1 readings whose listed path or id leads outside its folder skipped",
        "1 images whose frontal_lateral is neither Frontal nor Lateral skipped (view unknown)",
        "1 images whose path_to_image is not .../patient<N>/study<M>/<file> skipped in 1 readings (e.g. "
        "train/view1_frontal.jpg)",
        f"1 rows without a path_to_image skipped (e.g. {CHEXPERT_PLUS_TABLE} data row 17)",
        "left out: 1 lateral views (frontal_lateral Lateral)",
    ):
        assert expected in description


def test_all_views_and_no_labels(tmp_path):
    table, image_root, labels = make_release(tmp_path)
    rows = by_path(load_chexpert_plus(table, image_root, labels=labels, frontal_only=False))
    lateral, unknown = "train/patient00001/study1/view2_lateral.jpg", "train/patient00009/study1/view1_frontal.jpg"
    assert set(rows) == FRONTAL_KEPT | {lateral, unknown}
    assert (rows[lateral]["image_height"], rows[lateral]["image_width"]) == (20, 15)
    assert rows[lateral]["study_id"] == "patient00001/study1" and rows[lateral]["labels"] == ["Cardiomegaly", "Edema"]
    dataset = load_chexpert_plus(table, image_root)
    assert set(dataset["reading_id"]) == FRONTAL_KEPT and all(found == [] for found in dataset["labels"])
    assert "labels line" not in dataset.info.description


def test_gzipped_table(tmp_path):
    table, image_root, labels = make_release(tmp_path, name=CHEXPERT_PLUS_TABLE + ".gz")
    assert set(load_chexpert_plus(table, image_root, labels=labels)["reading_id"]) == FRONTAL_KEPT


def test_table_errors(tmp_path):
    rows = [table_row(*ROWS[0]), table_row(*ROWS[2]), table_row(*ROWS[3][:3], "validation", *ROWS[3][4:])]
    table, image_root, _ = make_release(tmp_path, rows=rows)
    with pytest.raises(ValueError, match=r"data row 3 \(path_to_image 'valid/patient00002/study1/view1_frontal.jpg'"
                                         r"\), column 'split' holds 'validation'; expected 'train', 'valid' or 'test'"):
        load_chexpert_plus(table, image_root)
    columns = [column for column in CHEXPERT_PLUS_COLUMNS if column != "section_findings"]
    table, image_root, _ = make_release(tmp_path / "no_findings", columns=columns)
    with pytest.raises(ValueError, match=rf"{CHEXPERT_PLUS_TABLE}: missing column\(s\) \['section_findings'\]"):
        load_chexpert_plus(table, image_root)
    with pytest.raises(TypeError, match="frontal_only must be True or False"):
        load_chexpert_plus(table, image_root, frontal_only="yes")
    with pytest.raises(FileNotFoundError, match="image_root: no such folder"):
        load_chexpert_plus(table, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing file"):
        load_chexpert_plus(tmp_path / "none.csv", image_root)


@pytest.mark.parametrize("lines, message", [
    ([label_line("a.jpg", {}), label_line("b.jpg", {"Edema": 2})],
     r"labels.jsonl: data row 2 \(path_to_image 'b.jpg'\), column 'Edema' holds '2'; expected 1.0"),
    ([label_line("a.jpg", {"Fracture": True})],
     r"data row 1 \(path_to_image 'a.jpg'\), column 'Fracture' holds 'True'"),
    ([label_line("a.jpg", {}), "", label_line("c.jpg", {"Edema": "yes"})], r"data row 3 .*'Edema' holds 'yes'"),
    ([label_line("a.jpg", {}), "{not json"], r"labels.jsonl: line 2 is not JSON"),
    (["[1, 2]"], r"line 1 holds a list; expected a JSON object"),
    ([json.dumps({"path_to_image": "a.jpg", **{label: None for label in LABELS if label != "Fracture"}})],
     r"line 1 lacks \['Fracture'\]"),
    ([json.dumps(dict.fromkeys(LABELS))], r"line 1 lacks \['path_to_image'\]"),
    ([label_line("a.jpg", {"Edema": 1}), label_line("a.jpg", {"Edema": 0})],
     r"path_to_image 'a.jpg' is listed again with other labels \(line 2\)"),
])
def test_label_file_errors(tmp_path, lines, message):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        read_chexpert_plus_labels(path)


def test_label_file_reads_by_name(tmp_path):
    path = tmp_path / "labels.jsonl"
    line = {"Support Devices": 1.0, "No Finding": None, "path_to_image": " a.jpg ", **dict.fromkeys(LABELS[1:-1], -1)}
    path.write_text(json.dumps(line) + "\n\n" + label_line("b.jpg", {"Edema": "1.0", "Atelectasis": 0}) + "\n")
    assert read_chexpert_plus_labels(path) == {"a.jpg": ["Support Devices"], "b.jpg": ["Edema"]}
    with pytest.raises(FileNotFoundError, match="labels: missing file"):
        read_chexpert_plus_labels(tmp_path / "none.jsonl")


def test_synthetic_twin_reads_back(tmp_path):
    root = make_synthetic_chexpert_plus(tmp_path / "chexpert-plus", num_images=40, seed=3)
    quirks = json.loads((root / "synthetic_quirks.json").read_text())
    expected = quirks.pop("expected_rows")
    table = pd.read_csv(root / CHEXPERT_PLUS_TABLE, dtype=str, keep_default_na=False)
    assert list(table.columns) == list(CHEXPERT_PLUS_COLUMNS) and len(table) == 42  # 40 images, two listed twice
    assert (table["frontal_lateral"] == "Lateral").any() and set(table["split"]) == {"train", "valid"}
    written = {}
    for line in (root / LABELS_FILE).read_text().splitlines():
        record = json.loads(line)
        written[record.pop("path_to_image")] = sorted(label for label, value in record.items() if value == 1.0)
    for frontal_only in (True, False):
        dataset = load_chexpert_plus(root / CHEXPERT_PLUS_TABLE, root, labels=root / LABELS_FILE,
                                     frontal_only=frontal_only)
        assert len(dataset) == expected["frontal_only" if frontal_only else "all_views"]
        rows = by_path(dataset)
        assert all(row["labels"] == written.get(path, []) for path, row in rows.items())
        assert sum(bool(row["labels"]) for row in rows.values()) > len(rows) // 2
    for dropped in ("missing_image", "empty_text", "two_splits", "patient_two_splits", "path_escape"):
        assert quirks[dropped] not in rows
    assert rows[quirks["no_labels_line"]]["labels"] == [] and quirks["no_labels_line"] not in written
    assert rows[quirks["blank_patient_id"]]["subject_id"] == "patient00009"
    blank = rows[quirks["sections_blank"]]
    assert "Findings :" in blank["written_report"] and blank["report"] == mimic_report_text(blank["written_report"])
    assert len(blank["sentences"]) >= 2
    findings_blank = table[table["path_to_image"] == quirks["findings_blank"]].iloc[0]
    assert findings_blank["section_findings"] == ""
    assert rows[quirks["findings_blank"]]["report"] == findings_blank["section_impression"].strip()
    description = dataset.info.description
    assert "2 images of patients listed in two splits skipped" in description
    assert "1 labels lines whose path_to_image is not in the table (ignored)" in description
