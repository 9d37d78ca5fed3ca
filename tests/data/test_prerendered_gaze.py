"""Pre-rendered gaze heatmaps (released EGMA code, CoGaze) on hand-built folders with every quirk, and round trips
through the synthetic writer on a synthetic MIMIC-EYE corpus."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from egma_hf.data.prerendered_gaze import (
    cogaze_sentence_keys,
    ids_from_image_path,
    load_prerendered_gaze,
    read_heatmap_jpgs,
    split_report_like_released_egma,
)
from egma_hf.data.readers import FEATURES, load_mimic_eye
from egma_hf.data.synthetic.mimic_eye import make_synthetic_mimic_eye
from egma_hf.data.synthetic.prerendered_gaze import EGMA_LABEL_ORDER, write_prerendered_gaze

HEIGHT, WIDTH = 60, 80  # source images; heatmap_size 8 gives (6, 8) maps
LABELS = sorted(EGMA_LABEL_ORDER)  # alphabetical, unlike the released code's order: read by name
JPEG_TOLERANCE = 0.05  # hand-built maps have hard edges


def jpg(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8), mode="L").save(path, quality=95)
    return path


def block(shape, rows, cols, value=200):
    """A (h, w) zero map with `value` in rows x cols (slices)."""
    pixels = np.zeros(shape, np.uint8)
    pixels[rows, cols] = value
    return pixels


TOP_LEFT = block((HEIGHT, WIDTH), slice(0, 30), slice(0, 40))  # written at the image's size
BOTTOM_RIGHT_SMALL = block((15, 20), slice(8, 15), slice(10, 20))  # a quarter of the image's size
EXPECTED_TOP_LEFT = block((6, 8), slice(0, 3), slice(0, 4), 1)
EXPECTED_BOTTOM_RIGHT = block((6, 8), slice(3, 6), slice(4, 8), 1)
UNIFORM_TINY = np.full((3, 4), 128, np.uint8)  # grows to (6, 8): all ones once scaled
ZERO = np.zeros((HEIGHT, WIDTH), np.uint8)


def skip_summary(dataset, source: str, parts) -> str:
    """The dataset's skip summary, checked to be in FEATURES, to name `source` and to hold every one of `parts`."""
    assert dataset.features == FEATURES
    description = dataset.info.description
    assert description.startswith(f"{source}: skipped: ")
    for part in parts:
        assert part in description, part
    return description


def test_released_splitter_numbers_sentences_as_the_released_code():
    report = "1. The heart is normal. Lungs are clear.\n2. No effusion.  Dr. Smith called. 3.5 cm nodule. ..."
    assert split_report_like_released_egma(report) == [
        "The heart is normal.", "Lungs are clear.", "No effusion.", "Dr.", "Smith called.", "3.5 cm nodule.", "..."]
    # the numbered-item regex drops the character after the dots; a piece of non-ASCII characters only is dropped
    assert split_report_like_released_egma("1.No effusion. \u00e9\u00e8. End") == ["o effusion.", "End"]
    assert split_report_like_released_egma("  \n ") == []


def write_egma_csv(path, rows, columns=("imgpath", "subject_id", "report")):
    """rows: (cells for `columns`..., {label: cell}); other label cells are 0.0."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*columns, *LABELS])
        for *cells, labels in rows:
            writer.writerow([*cells, *(labels.get(name, "0.0") for name in LABELS)])


def make_egma_tree(tmp_path):
    root = tmp_path / "egma"
    a = root / "dicomA"  # 3 sentences: the second map is blank and falls back to hm_array.jpg
    jpg(a / "src.jpg", np.full((HEIGHT, WIDTH), 90))
    jpg(a / "hm_array.jpg", UNIFORM_TINY)
    jpg(a / "sentence_hm" / "0_sent_hm_array.jpg", TOP_LEFT)
    jpg(a / "sentence_hm" / "1_sent_hm_array.jpg", ZERO)
    jpg(a / "sentence_hm" / "2_sent_hm_array.jpg", BOTTOM_RIGHT_SMALL)
    jpg(a / "sentence_hm" / "3_sent_hm_array.jpg", TOP_LEFT)  # more maps than sentences: not read
    b = root / "dicomB" / "MIMIC-EYE-reflacx"  # the released code's dicom_id rule: the parent's name
    jpg(b / "src.jpg", np.full((HEIGHT, WIDTH), 90))
    jpg(b / "hm_array.jpg", ZERO)  # an all-zero reading map stays zero
    jpg(b / "sentence_hm" / "0_sent_hm_array.jpg", BOTTOM_RIGHT_SMALL)
    c = root / "dicomC"  # the second sentence's map is missing
    jpg(c / "src.jpg", ZERO)
    jpg(c / "hm_array.jpg", TOP_LEFT)
    jpg(c / "sentence_hm" / "0_sent_hm_array.jpg", TOP_LEFT)
    d = root / "dicomD"  # no hm_array.jpg
    jpg(d / "src.jpg", ZERO)
    jpg(d / "sentence_hm" / "0_sent_hm_array.jpg", TOP_LEFT)
    e = root / "dicomE"  # an unreadable sentence map
    jpg(e / "src.jpg", ZERO)
    jpg(e / "hm_array.jpg", TOP_LEFT)
    (e / "sentence_hm").mkdir()
    (e / "sentence_hm" / "0_sent_hm_array.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    outside = tmp_path / "outside"
    jpg(outside / "src.jpg", ZERO)
    jpg(outside / "hm_array.jpg", TOP_LEFT)
    f = root / "dicomF"  # hm_array.jpg is a link leading outside root
    jpg(f / "src.jpg", ZERO)
    (f / "hm_array.jpg").symlink_to(outside / "hm_array.jpg")
    write_egma_csv(root / "mimic_eye_pair_data_v1.csv", [
        ("dicomA/src.jpg", "10000032", "1. The heart is normal. Lungs are clear.\n2. No effusion.",
         {"Cardiomegaly": "1.0", "Edema": "-1.0", "Atelectasis": "", "Pneumonia": "0"}),
        (str(b / "src.jpg"), "", "No pneumothorax.", {"No Finding": "1", "Fracture": ""}),  # absolute, inside
        ("dicomA/./src.jpg", "", "Listed again.", {}),
        ("dicomC/src.jpg", "", "First sentence. Second sentence.", {}),
        ("dicomD/src.jpg", "", "A sentence.", {}),
        ("dicomE/src.jpg", "", "A sentence.", {}),
        ("dicomF/src.jpg", "", "A sentence.", {}),
        ("../outside/src.jpg", "", "A sentence.", {}),
        ("dicomA/hm_array.jpg", "", "A sentence.", {}),
        ("dicomB/src.jpg", "", " \n", {}),  # empty report (this folder holds no src.jpg either: never looked at)
        ("", "", "No image.", {}),
    ])
    return root


def test_egma_layout_reads_every_quirk(tmp_path):
    root = make_egma_tree(tmp_path)
    dataset = load_prerendered_gaze(root, "egma", heatmap_size=8)
    description = skip_summary(dataset, "EGMA pre-rendered", ("1 all-zero heatmaps (kept as zero maps) in 1 readings",
                 "1 blank sentence maps replaced by hm_array.jpg (the released EGMA code's fallback) in 1 readings",
                 "1 CSV rows whose imgpath is not a src.jpg skipped in 1 readings (e.g. mimic_eye_pair_data_v1.csv "
                 "data row 9: dicomA/hm_array.jpg)",
                 "1 CSV rows without an imgpath skipped in 1 readings (e.g. mimic_eye_pair_data_v1.csv data row 11)",
                 "1 image folders without src.jpg or hm_array.jpg skipped in 1 readings (e.g. dicomD/hm_array.jpg)",
                 "1 readings listed twice skipped (the first kept) in 1 readings (e.g. mimic_eye_pair_data_v1.csv "
                 "data row 3)",
                 "1 readings missing a sentence map skipped in 1 readings (e.g. dicomC/sentence_hm/"
                 "1_sent_hm_array.jpg (of 2 sentences))",
                 "1 readings whose report is empty (no sentence) skipped in 1 readings (e.g. "
                 "mimic_eye_pair_data_v1.csv data row 10)",
                 "1 readings with an unreadable heatmap or image file skipped in 1 readings (e.g. dicomE: ",
                 "2 readings whose listed path or id leads outside its folder skipped in 2 readings (e.g. "
                 "mimic_eye_pair_data_v1.csv data row 7: file 'dicomF/hm_array.jpg' leads outside "))
    assert "imgpath '../outside/src.jpg' leads outside" in description
    rows = {row["reading_id"]: row for row in dataset}
    assert sorted(rows) == ["dicomA", "dicomB/MIMIC-EYE-reflacx"]
    a, b = rows["dicomA"], rows["dicomB/MIMIC-EYE-reflacx"]
    assert (a["dicom_id"], b["dicom_id"]) == ("dicomA", "dicomB")
    assert a["sentences"] == ["The heart is normal.", "Lungs are clear.", "No effusion."]
    assert a["report"] == "1. The heart is normal. Lungs are clear.\n2. No effusion."
    assert (a["labels"], b["labels"]) == (["Cardiomegaly"], ["No Finding"])
    assert (a["subject_id"], a["study_id"], b["subject_id"]) == ("10000032", "", "")
    for row, folder in ((a, root / "dicomA"), (b, root / "dicomB" / "MIMIC-EYE-reflacx")):
        assert (row["source"], row["split"], row["has_gaze"], row["num_fixations"], row["written_report"]) == (
            "egma-prerendered", "train", True, 0, "")
        assert (row["image"], row["image_height"], row["image_width"]) == (str(folder / "src.jpg"), HEIGHT, WIDTH)
    maps = np.asarray(a["sentence_heatmaps"])
    assert maps.shape == (3, 6, 8)
    assert np.abs(maps[0] - EXPECTED_TOP_LEFT).max() < JPEG_TOLERANCE
    assert np.array_equal(maps[1], np.ones((6, 8)))  # the blank map's fallback: hm_array.jpg, uniform
    assert np.array_equal(np.asarray(a["reading_heatmap"]), np.ones((6, 8)))
    assert np.abs(maps[2] - EXPECTED_BOTTOM_RIGHT).max() < JPEG_TOLERANCE  # stretched over the whole image
    assert maps.max() == 1.0
    assert np.array_equal(np.asarray(b["reading_heatmap"]), np.zeros((6, 8)))
    assert np.abs(np.asarray(b["sentence_heatmaps"])[0] - EXPECTED_BOTTOM_RIGHT).max() < JPEG_TOLERANCE


def test_egma_csv_errors_name_file_row_and_column(tmp_path):
    root = make_egma_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing file: .*elsewhere\.csv"):
        load_prerendered_gaze(root, "egma", csv_path=tmp_path / "elsewhere.csv")
    path = tmp_path / "bad-cell.csv"
    write_egma_csv(path, [("dicomA/src.jpg", "", "A sentence.", {}), ("dicomB/src.jpg", "", "A b.", {"Edema": "2"})])
    with pytest.raises(ValueError, match=r"bad-cell\.csv: data row 2 \(imgpath 'dicomB/src\.jpg'\), column 'Edema' "
                                         r"holds '2'; expected 1\.0 \(positive\), 0\.0"):
        load_prerendered_gaze(root, "egma", csv_path=path)
    path = tmp_path / "no-labels.csv"
    path.write_text("imgpath,report,Edema\ndicomA/src.jpg,A sentence.,1.0\n")
    with pytest.raises(ValueError, match=r"no-labels\.csv: missing column\(s\) \['No Finding', 'Enlarged "
                                         r"Cardiomediastinum', 'Cardiomegaly'"):
        load_prerendered_gaze(root, "egma", csv_path=path)
    path = tmp_path / "nothing-usable.csv"
    write_egma_csv(path, [("dicomD/src.jpg", "", "A sentence.", {})])
    with pytest.raises(ValueError, match=r"no readable readings in .*egma \(listed by .*nothing-usable\.csv\) "
                                         r"\(EGMA pre-rendered: skipped: 1 image folders without"):
        load_prerendered_gaze(root, "egma", csv_path=path)


def write_lookup(folder, lookup, maps):
    """A CoGaze image folder: the lookup (a dict, or raw text), `<key>_heatmap.jpg` per entry of `maps`, and a
    uniform report_heatmap.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentence-heatmap-lookup.json").write_text(lookup if isinstance(lookup, str) else json.dumps(lookup))
    jpg(folder / "report_heatmap.jpg", np.full((HEIGHT, WIDTH), 70))
    for key, pixels in maps.items():
        jpg(folder / f"{key}_heatmap.jpg", pixels)


def column_block(column):
    """A map bright in one eighth-wide column band (column 0-7 of the (6, 8) grid)."""
    return block((HEIGHT, WIDTH), slice(0, HEIGHT), slice(10 * column, 10 * column + 10))


def make_cogaze_tree(tmp_path):
    root = tmp_path / "cogaze"
    numbered = {"10": "Sentence ten.", "2": "Sentence two.", "full_text": "The whole dictation.", "1": "Sentence one."}
    write_lookup(root / "dicomA", numbered, {"1": column_block(1), "2": column_block(2), "10": column_block(7)})
    write_lookup(root / "dicomB", {"b": "Named b.", "a": " Named\n a. ", "c": "  "},  # file order; blank dropped
                 {"b": ZERO, "a": column_block(0)})
    write_lookup(root / "dicomC", '{"0": "Unclosed.", ', {"0": ZERO})
    write_lookup(root / "dicomD", {"0": "Has a map.", "1": "Has none."}, {"0": ZERO})
    write_lookup(root / "dicomE", {"../dicomA/1": "Escapes."}, {})
    write_lookup(root / "dicomF", {"0": "No report map."}, {"0": ZERO})
    (root / "dicomF" / "report_heatmap.jpg").unlink()
    write_lookup(root / "dicomG", ["a list"], {})
    write_lookup(root / "dicomH", {"full_text": "Only text."}, {})
    write_lookup(root / "dicomI", {"0": "Unreadable map."}, {})
    (root / "dicomI" / "0_heatmap.jpg").write_bytes(b"garbage")
    write_lookup(tmp_path / "elsewhere", {"0": "Outside."}, {"0": ZERO})
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    (root / "README.txt").write_text("not an image folder")
    return root


def test_cogaze_layout_reads_every_quirk(tmp_path):
    dataset = load_prerendered_gaze(make_cogaze_tree(tmp_path), "cogaze", heatmap_size=8)
    description = skip_summary(dataset, "CoGaze", ("1 all-zero heatmaps (kept as zero maps) in 1 readings",
                 "1 blank sentences in lookups dropped (with their maps) in 1 readings (e.g. dicomB: key 'c')",
                 "1 image folders without report_heatmap.jpg or sentence-heatmap-lookup.json skipped in 1 readings "
                 "(e.g. dicomF)",
                 "1 readings missing a sentence map skipped in 1 readings (e.g. dicomD/1_heatmap.jpg)",
                 "1 readings whose lookup has no sentence skipped in 1 readings (e.g. dicomH)",
                 "2 readings whose sentence-heatmap-lookup.json does not parse skipped in 2 readings (e.g. dicomC: ",
                 "2 readings whose listed path or id leads outside its folder skipped in 2 readings (e.g. dicomE: "
                 "lookup key '../dicomA/1_heatmap.jpg' leads outside",
                 "1 readings with an unreadable heatmap or image file skipped in 1 readings (e.g. dicomI: "))
    assert "not a JSON file" in description and "linked: image folder 'linked' leads outside" in description
    rows = {row["dicom_id"]: row for row in dataset}
    assert sorted(rows) == ["dicomA", "dicomB"]
    a, b = rows["dicomA"], rows["dicomB"]
    assert a["sentences"] == ["Sentence one.", "Sentence two.", "Sentence ten."]  # keys 1, 2, 10
    assert b["sentences"] == ["Named b.", "Named a."]
    assert (a["report"], b["report"]) == ("The whole dictation.", "Named b. Named a.")
    maps = np.asarray(a["sentence_heatmaps"])
    for index, column in enumerate((1, 2, 7)):  # each sentence has its key's map
        assert np.abs(maps[index] - block((6, 8), slice(0, 6), slice(column, column + 1), 1)).max() < JPEG_TOLERANCE
    assert np.array_equal(np.asarray(a["reading_heatmap"]), np.ones((6, 8)))
    assert np.array_equal(np.asarray(b["sentence_heatmaps"])[0], np.zeros((6, 8)))  # no fallback in CoGaze
    for row in (a, b):
        assert (row["reading_id"], row["source"], row["split"], row["labels"], row["has_gaze"]) == (
            row["dicom_id"], "cogaze", "train", [], True)
        assert (row["image"], row["subject_id"], row["study_id"]) == ("", "", "")
        assert (row["image_height"], row["image_width"]) == (HEIGHT, WIDTH)  # from report_heatmap.jpg


def test_cogaze_images_and_ids_come_from_image_root(tmp_path):
    root = tmp_path / "cogaze"
    for name in ("dicomA", "dicomB", "dicomX", "dicomY"):
        write_lookup(root / name, {"0": "A sentence."}, {"0": column_block(3)})
    images = tmp_path / "mimic-cxr-jpg"
    a = jpg(images / "files" / "p10" / "p10000032" / "s50414267" / "dicomA.jpg", np.zeros((30, 20)))
    b = jpg(images / "flat" / "dicomB.jpg", np.zeros((40, 40)))
    jpg(images / "one" / "dicomY.jpg", ZERO)
    jpg(images / "two" / "dicomY.jpg", ZERO)
    dataset = load_prerendered_gaze(root, "cogaze", image_root=images, heatmap_size=8)
    assert dataset.info.description == (
        "CoGaze: skipped: 1 readings whose dicom_id names several images under image_root skipped in 1 readings "
        "(e.g. dicomY: 2 files); 1 readings whose image is not under image_root skipped in 1 readings "
        "(e.g. dicomX: 0 files)")
    rows = {row["dicom_id"]: row for row in dataset}
    assert (rows["dicomA"]["image"], rows["dicomA"]["subject_id"], rows["dicomA"]["study_id"]) == (
        str(a), "10000032", "50414267")
    assert (rows["dicomB"]["image"], rows["dicomB"]["subject_id"], rows["dicomB"]["study_id"]) == (str(b), "", "")
    assert (rows["dicomA"]["image_height"], rows["dicomA"]["image_width"]) == (30, 20)
    assert np.asarray(rows["dicomA"]["sentence_heatmaps"]).shape == (1, 8, 5)  # the image's aspect ratio
    assert ids_from_image_path(images / "patient_10000032" / "CXR-JPG" / "s5" / "x.jpg", images) == ("10000032", "5")


def test_sentence_keys_sort_naturally_only_when_all_are_numbered():
    assert cogaze_sentence_keys({"s10": "", "s2": "", "full_text": "", "s1": ""}) == ["s1", "s2", "s10"]
    assert cogaze_sentence_keys({"b": "", "a1": "", "full_text": ""}) == ["b", "a1"]  # not all numbered


def test_heatmap_jpgs_are_scaled_to_one_and_blank_files_flagged(tmp_path):
    paths = [jpg(tmp_path / "half.jpg", np.full((12, 16), 100)), jpg(tmp_path / "zero.jpg", np.zeros((12, 16))),
             jpg(tmp_path / "rgb.jpg", np.zeros((12, 16)))]
    Image.new("RGB", (16, 12), (50, 50, 50)).save(paths[2])
    maps, blank = read_heatmap_jpgs(paths, (3, 4))
    assert maps.dtype == np.float32 and maps.shape == (3, 3, 4)
    assert np.array_equal(maps[0], np.ones((3, 4))) and np.array_equal(maps[2], np.ones((3, 4)))
    assert np.array_equal(maps[1], np.zeros((3, 4))) and blank.tolist() == [False, True, False]
    with pytest.raises(ValueError, match=r"absent\.jpg: not a readable heatmap image"):
        read_heatmap_jpgs([tmp_path / "absent.jpg"], (3, 4))


def test_argument_errors(tmp_path):
    root = make_egma_tree(tmp_path)
    with pytest.raises(ValueError, match=r"layout must be one of \('egma', 'cogaze'\).*got 'reflacx'"):
        load_prerendered_gaze(root, "reflacx")
    with pytest.raises(ValueError, match="image_root is for layout='cogaze'"):
        load_prerendered_gaze(root, "egma", image_root=tmp_path)
    with pytest.raises(ValueError, match="csv_path is for layout='egma'"):
        load_prerendered_gaze(root, "cogaze", csv_path=root / "mimic_eye_pair_data_v1.csv")
    with pytest.raises(ValueError, match=r"heatmap_size .* must be an integer in \[1, 4096\], got 0"):
        load_prerendered_gaze(root, "egma", heatmap_size=0)
    with pytest.raises(FileNotFoundError, match="root: no such folder"):
        load_prerendered_gaze(tmp_path / "absent", "cogaze")
    with pytest.raises(FileNotFoundError, match="image_root: no such folder"):
        load_prerendered_gaze(root, "cogaze", image_root=tmp_path / "absent")
    with pytest.raises(ValueError, match="layout must be one of"):
        write_prerendered_gaze([], tmp_path / "out", "flat")
    with pytest.raises(FileExistsError, match="is not empty"):
        write_prerendered_gaze([], root, "egma")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A synthetic MIMIC-EYE corpus's gaze rows, with one sentence map made blank."""
    root = make_synthetic_mimic_eye(tmp_path_factory.mktemp("mimic-eye") / "corpus", 12, seed=1)
    rows = list(load_mimic_eye(root))
    rows[0]["sentence_heatmaps"][1] = np.zeros_like(np.asarray(rows[0]["sentence_heatmaps"][1])).tolist()
    return root, rows


ROUND_TRIP_TOLERANCE = 0.02  # JPEG quality 95 and 8-bit rounding; 0.0072 measured


@pytest.mark.parametrize("layout", ["egma", "cogaze"])
def test_round_trip_through_the_synthetic_writer(tmp_path, corpus, layout):
    root, rows = corpus
    written = write_prerendered_gaze(rows, tmp_path / layout, layout)
    first_of_image = {}
    for row in rows:
        first_of_image.setdefault(row["dicom_id"], row)
    assert written == [row["reading_id"] for row in first_of_image.values()]
    assert len(written) < len(rows)  # an image read twice (REFLACX) is written once
    dataset = load_prerendered_gaze(tmp_path / layout, layout, image_root=root if layout == "cogaze" else None)
    blank = "1 blank sentence maps replaced by hm_array.jpg (the released EGMA code's fallback) in 1 readings"
    assert dataset.info.description == (f"EGMA pre-rendered: skipped: {blank}" if layout == "egma" else
                                        "CoGaze: skipped: 1 all-zero heatmaps (kept as zero maps) in 1 readings")
    back = {row["dicom_id"]: row for row in dataset}
    assert sorted(back) == sorted(first_of_image)
    for dicom_id, original in first_of_image.items():
        row = back[dicom_id]
        for column in ("sentences", "subject_id", "study_id", "image_height", "image_width"):
            assert row[column] == original[column], column
        assert row["labels"] == (original["labels"] if layout == "egma" else [])
        assert row["report"] == (" ".join(original["sentences"]) if layout == "egma" else original["report"])
        expected = np.asarray(original["sentence_heatmaps"], np.float32)
        if layout == "egma" and original is rows[0]:
            expected[1] = original["reading_heatmap"]  # the released code's fallback for the blank map
        assert np.abs(np.asarray(row["sentence_heatmaps"]) - expected).max() < ROUND_TRIP_TOLERANCE
        assert np.abs(np.asarray(row["reading_heatmap"]) - np.asarray(original["reading_heatmap"])).max() < \
            ROUND_TRIP_TOLERANCE
    made_blank = np.asarray(back[rows[0]["dicom_id"]]["sentence_heatmaps"][1])
    assert (made_blank.max() == 0) == (layout == "cogaze")  # zero stays zero in CoGaze's layout
    if layout == "cogaze":
        images = {row["dicom_id"]: row["image"] for row in first_of_image.values()}
        assert {d: row["image"] for d, row in back.items()} == images
