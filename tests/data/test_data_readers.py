"""EGD-CXR and REFLACX readers on tiny hand-built trees in the real file formats, quirks included."""

import csv
import json
import logging

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from egma_hf.data import (
    EGMADataCollator,
    HeatmapSettings,
    by_split,
    load_egd_cxr,
    load_image,
    load_reflacx,
    with_gaze_fraction,
)
from tests.helpers import make_tokenizer, tiny_config

GAZEPOINT_COLUMNS = (  # noqa: SIM905 (the header line as Gazepoint writes it)
    "SESSION_ID,MEDIA_ID,DICOM_ID,CNT,Time (in secs),TIMETICK(f=10000000),FPOGX,FPOGY,FPOGS,FPOGD,FPOGID,FPOGV,"
    "BPOGX,BPOGY,BPOGV,LPCX,LPCY,LPD,LPS,LPV,RPCX,RPCY,RPD,RPS,RPV,BKID,BKDUR,BKPMIN,LPMM,LPMMV,RPMM,RPMMV,"
    "SACCADE_MAG,SACCADE_DIR,VID_FRAME,X_ORIGINAL,Y_ORIGINAL"
).split(",")
REFLACX_COLUMNS = (  # noqa: SIM905 (the header line as REFLACX ships it)
    "timestamp_start_fixation,timestamp_end_fixation,x_position,y_position,pupil_area_normalized,"
    "angular_resolution_x_pixels_per_degree,angular_resolution_y_pixels_per_degree,window_level,window_width,"
    "xmin_shown_from_image,ymin_shown_from_image,xmax_shown_from_image,ymax_shown_from_image,"
    "xmin_in_screen_coordinates,ymin_in_screen_coordinates,xmax_in_screen_coordinates,ymax_in_screen_coordinates"
).split(",")
DICOM_JPG = "11111111-22222222-33333333-44444444-55555555"
DICOM_DCM = "66666666-77777777-88888888-99999999-aaaaaaaa"
CALIBRATION = "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"
HEIGHT, WIDTH = 48, 64  # shown on 1920x1080 at scale 22.5: pads left/right 240, top/bottom 0


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def gazepoint_row(dicom_id, x, y, start, duration, valid=1):
    """One fixation row; (x, y) in image pixels of a 48x64 image, or None for gaze in the left pad."""
    x_screen = 100.0 if x is None else 240 + x * 22.5
    y_screen = 540.0 if y is None else y * 22.5
    row = dict.fromkeys(GAZEPOINT_COLUMNS, 0)
    row.update({"SESSION_ID": 1, "DICOM_ID": dicom_id, "Time (in secs)": start + duration,
                "FPOGX": x_screen / 1920, "FPOGY": y_screen / 1080, "FPOGS": start, "FPOGD": duration, "FPOGV": valid,
                "X_ORIGINAL": -1 if x is None else int(x), "Y_ORIGINAL": -1 if y is None else int(y)})
    return [row[c] for c in GAZEPOINT_COLUMNS]


def write_dicom(path, pixels, bits=12, photometric="MONOCHROME1"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def transcript(words):
    """[(word, begin, end)] -> EGD transcript.json content."""
    return {"full_text": " ".join(w for w, _, _ in words),
            "time_stamped_text": [{"phrase": w, "begin_time": b, "end_time": e} for w, b, e in words]}


@pytest.fixture
def egd_tree(tmp_path, request):
    pad_spelling = getattr(request, "param", "image_{}_pad")
    root, images = tmp_path / "egd", tmp_path / "mimic-cxr"
    study_dir = images / "files/p10/p10000001/s50000001"
    study_dir.mkdir(parents=True)
    Image.fromarray(np.full((HEIGHT, WIDTH), 128, np.uint8)).save(study_dir / f"{DICOM_JPG}.jpg")
    write_dicom(images / "files/p10/p10000002/s50000002" / f"{DICOM_DCM}.dcm", np.full((HEIGHT, WIDTH), 1000))
    write_csv(images / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
              [[DICOM_JPG, "50000001", "10000001", "train"], [DICOM_DCM, "50000002", "10000002", "test"]])
    pads = [pad_spelling.format(side) for side in ("top", "bottom", "left", "right")]
    write_csv(root / "master_sheet.csv",
              ["dicom_id", "path", "study_id", "patient_id", *pads, "cardiomegaly__chx", "pleural_effusion__chx",
               "no_finding__chx", "cxr_exam_indication"],
              [[DICOM_JPG, f"files/p10/p10000001/s50000001/{DICOM_JPG}.dcm", "50000001", "10000001", 0, 0, 240, 240,
                "1.0", "", "", 'Dyspnea, "r/o CHF",\nfollow-up'],
               [DICOM_DCM, f"files/p10/p10000002/s50000002/{DICOM_DCM}.dcm", "50000002", "10000002", 0, 0, 240, 240,
                "", "", "1.0", "routine"]])
    write_csv(root / "fixations.csv", GAZEPOINT_COLUMNS, [
        gazepoint_row(CALIBRATION, 32, 24, 0.0, 0.5),  # calibration image, not in the sheet
        gazepoint_row(DICOM_JPG, 10, 36, 0.2, 1.0),  # during sentence 1
        gazepoint_row(DICOM_JPG, 48, 12, 2.1, 0.6),  # during sentence 2
        gazepoint_row(DICOM_JPG, 30, 30, 2.2, 0.2, valid=0),  # FPOGV = 0
        gazepoint_row(DICOM_JPG, None, None, 2.5, 0.3),  # in the pad: X_ORIGINAL = -1
        gazepoint_row(DICOM_DCM, 20, 20, 0.1, 0.5),
    ])
    for dicom_id, words in [
        (DICOM_JPG, [("Heart", 0.0, 0.4), ("is", 0.4, 0.6), ("normal.", 0.6, 1.5), ("Left", 2.0, 2.4),
                     ("effusion.", 2.4, 3.0)]),
        (DICOM_DCM, [("No", 0.0, 0.2), ("acute", 0.2, 0.5), ("process.", 0.5, 0.9)]),
    ]:
        folder = root / "audio_segmentation_transcripts" / dicom_id
        folder.mkdir(parents=True)
        (folder / "transcript.json").write_text(json.dumps(transcript(words)))
    return root, images


def reflacx_metadata_row(reading, dicom_id, split="train", discarded=False, **labels):
    row = {"id": reading, "split": split, "eye_tracking_data_discarded": discarded,
           "image": f"physionet.org/files/mimic-cxr/2.0.0/files/p10/p10000003/s50000003/{dicom_id}.dcm",
           "dicom_id": dicom_id, "subject_id": "10000003", "image_size_x": WIDTH, "image_size_y": HEIGHT,
           "Atelectasis": 0, "Consolidation": 0, "Pleural abnormality": 0, "Support devices": False, "Other": ""}
    row.update(labels)
    return row


def reflacx_fixation(x, y, start, end):
    return [start, end, x, y, 1.0, 10, 10, 0.5, 1.0, 0, 0, WIDTH, HEIGHT, 661, 0, 3180, 2160]


@pytest.fixture
def reflacx_tree(tmp_path):
    root, images = tmp_path / "reflacx", tmp_path / "mimic-cxr-jpg"
    (images / "files/p10/p10000003/s50000003").mkdir(parents=True)
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(images / f"files/p10/p10000003/s50000003/{DICOM_JPG}.jpg")
    rows = [reflacx_metadata_row("P102R000001", DICOM_JPG, **{"Pleural abnormality": 5, "Consolidation": 2}),
            reflacx_metadata_row("P102R000002", DICOM_JPG, discarded=True),
            reflacx_metadata_row("P103R000003", DICOM_JPG, split="test", Atelectasis=4)]
    write_csv(root / "main_data" / "metadata_phase_3.csv", list(rows[0]), [list(r.values()) for r in rows])
    first = root / "main_data" / "P102R000001"
    write_csv(first / "fixations.csv", REFLACX_COLUMNS, [
        reflacx_fixation(50, 40, 0.1, 0.8), reflacx_fixation(12, 10, 1.1, 1.8),
        reflacx_fixation(-5, 10, 1.0, 1.2),  # outside the image
        reflacx_fixation(20, 20, 1.5, 1.4),  # ends before it starts
    ])
    write_csv(first / "timestamps_transcription.csv", ["word", "timestamp_start_word", "timestamp_end_word"],
              [["Opacity", 0.0, 0.5], ["left", 0.5, 0.9], [".", 0.9, 0.9], ["No", 1.0, 1.2], ["effusion", 1.2, 1.9],
               [".", 1.9, 1.9]])
    (first / "transcription.txt").write_text("Opacity left. No effusion.")
    third = root / "main_data" / "P103R000003"
    write_csv(third / "fixations.csv", REFLACX_COLUMNS, [reflacx_fixation(30, 30, 0.0, 0.5)])
    write_csv(third / "timestamps_transcriptions.csv", ["word", "timestamp_start_word", "timestamp_end_word"],
              [["Atelectasis", 0.0, 0.6], [".", 0.6, 0.6]])
    return root, images


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("egd_tree", ["image_{}_pad", "image_{}"], indirect=True, ids=["pad-columns", "script-columns"])
def test_egd_reader_columns_quirks_and_heatmaps(egd_tree, caplog):
    root, images = egd_tree
    with caplog.at_level(logging.INFO, logger="egma_hf.data"):
        data = load_egd_cxr(root, images, HeatmapSettings(recipe="egd", heatmap_size=64))
    assert data.num_rows == 2  # the calibration image is not a reading
    row = data.with_format("numpy")[0]
    assert row["reading_id"] == DICOM_JPG and row["source"] == "egd-cxr" and row["split"] == "train"
    assert row["image"].endswith(f"{DICOM_JPG}.jpg")  # the sheet's .dcm path found as MIMIC-CXR-JPG
    assert (row["image_height"], row["image_width"]) == (HEIGHT, WIDTH)
    assert list(row["sentences"]) == ["Heart is normal.", "Left effusion."]
    assert row["report"] == "Heart is normal. Left effusion."
    assert list(row["labels"]) == ["Cardiomegaly"] and row["has_gaze"] and row["num_fixations"] == 2
    maps = row["sentence_heatmaps"]
    assert maps.shape == (2, HEIGHT, WIDTH) and maps.dtype == np.float32
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (36, 10)  # screen -> image through the pads
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) == (12, 48)
    assert row["reading_heatmap"].shape == (HEIGHT, WIDTH) and row["reading_heatmap"].max() == pytest.approx(1.0)

    dicom_row = data[1]
    assert dicom_row["image"].endswith(".dcm") and dicom_row["split"] == "test"
    assert dicom_row["labels"] == ["No Finding"]
    summary = data.info.description
    assert "1 calibration-image fixations skipped" in summary
    assert "1 invalid fixations (FPOGV=0) dropped in 1 readings" in summary
    assert "1 fixations outside the image dropped in 1 readings" in summary
    assert summary in caplog.text


def test_reflacx_reader_columns_quirks_and_labels(reflacx_tree):
    root, images = reflacx_tree
    data = load_reflacx(root, images, HeatmapSettings(recipe="reflacx", heatmap_size=32))
    assert data["reading_id"] == ["P102R000001", "P103R000003"]  # the discarded reading is skipped, not lost
    first = data.with_format("numpy")[0]
    assert list(first["sentences"]) == ["Opacity left.", "No effusion."]  # "." rows attach to their word
    assert first["report"] == "Opacity left. No effusion."
    assert list(first["labels"]) == ["Pleural abnormality"]  # certainty 5 >= 4; consolidation 2 is not
    assert first["sentence_heatmaps"].shape == (2, 24, 32) and first["num_fixations"] == 2
    assert np.unravel_index(first["sentence_heatmaps"][0].argmax(), (24, 32)) == (20, 25)  # (x=50, y=40) at scale 0.5
    assert np.unravel_index(first["sentence_heatmaps"][1].argmax(), (24, 32)) == (5, 6)
    third = data[1]
    assert third["sentences"] == ["Atelectasis."] and third["split"] == "test" and third["labels"] == ["Atelectasis"]
    summary = data.info.description
    assert "1 readings marked eye_tracking_data_discarded skipped" in summary
    assert "1 fixations outside the image dropped in 1 readings" in summary
    assert "1 fixations ending before they start dropped in 1 readings" in summary
    splits = by_split(data)
    assert sorted(splits) == ["test", "train"] and splits["test"]["reading_id"] == ["P103R000003"]


def test_a_bad_transcript_skips_only_its_reading(reflacx_tree, caplog):
    root, images = reflacx_tree
    write_csv(root / "main_data/P103R000003/timestamps_transcriptions.csv",
              ["word", "timestamp_start_word", "timestamp_end_word"], [["Atelectasis", 0.6, 0.1]])
    with caplog.at_level(logging.WARNING, logger="egma_hf.data"):
        data = load_reflacx(root, images)
    assert data["reading_id"] == ["P102R000001"]
    assert "1 readings with missing or bad files skipped in 1 readings" in data.info.description
    assert "P103R000003" in caplog.text and "timestamps_transcriptions.csv" in caplog.text
    assert "ends at 0.1 s" in caplog.text


def test_missing_files_and_columns_are_named(egd_tree, tmp_path):
    root, images = egd_tree
    (root / "fixations.csv").unlink()
    with pytest.raises(FileNotFoundError, match="fixations.csv"):
        load_egd_cxr(root, images)
    write_csv(root / "fixations.csv", ["DICOM_ID", "FPOGX"], [[DICOM_JPG, 0.5]])
    with pytest.raises(ValueError, match=r"fixations.csv: missing column\(s\) \['FPOGS', 'FPOGD', 'FPOGY', 'FPOGV'\]"):
        load_egd_cxr(root, images)
    with pytest.raises(FileNotFoundError, match="image_root"):
        load_egd_cxr(root, tmp_path / "nowhere")


def test_no_readable_reading_is_an_error(reflacx_tree, tmp_path):
    root, _ = reflacx_tree
    empty_images = tmp_path / "empty"
    empty_images.mkdir()
    with pytest.raises(ValueError, match="no readable readings.*without an image file"):
        load_reflacx(root, empty_images)


def test_dicom_monochrome1_and_bit_depth(tmp_path):
    pixels = np.array([[0, 4095], [1000, 2048]])
    write_dicom(tmp_path / "x.dcm", pixels, bits=12, photometric="MONOCHROME1")
    np.testing.assert_allclose(load_image(tmp_path / "x.dcm"), 1.0 - pixels / 4095, atol=1e-6)
    write_dicom(tmp_path / "y.dcm", pixels, bits=12, photometric="MONOCHROME2")
    np.testing.assert_allclose(load_image(tmp_path / "y.dcm"), pixels / 4095, atol=1e-6)


def test_gaze_fraction_subsets_are_reproducible_and_nested():
    import datasets

    rows = 200
    data = datasets.Dataset.from_dict(
        {"split": ["train"] * 150 + ["test"] * 50, "has_gaze": [True] * 140 + [False] * 10 + [True] * 50})
    kept = {}
    for fraction in (0.01, 0.05, 0.1, 0.5, 1.0):
        subset = with_gaze_fraction(data, fraction, seed=3)
        flags = np.array(subset["has_gaze"])
        kept[fraction] = set(np.flatnonzero(flags[:150]))
        assert len(kept[fraction]) == int(np.floor(fraction * 140 + 0.5))  # of the 140 train rows with gaze
        assert flags[150:].all() and not flags[140:150].any()  # other splits untouched; no gaze invented
        assert subset["has_gaze"] == with_gaze_fraction(data, fraction, seed=3)["has_gaze"]
    assert kept[0.01] <= kept[0.05] <= kept[0.1] <= kept[0.5] <= kept[1.0]
    assert set(np.flatnonzero(with_gaze_fraction(data, 0.5, seed=4)["has_gaze"][:150])) != kept[0.5]
    assert rows == data.num_rows
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        with_gaze_fraction(data, 1.5)


def test_save_to_disk_round_trip_and_collated_batch_trains(egd_tree, tmp_path):
    import datasets
    import torch

    from egma_hf import EGMAImageProcessor, EGMAModel, EGMAProcessor

    root, images = egd_tree
    data = load_egd_cxr(root, images)
    data.save_to_disk(tmp_path / "saved")
    reloaded = datasets.load_from_disk(tmp_path / "saved")
    np.testing.assert_array_equal(reloaded.with_format("numpy")[0]["sentence_heatmaps"],
                                  data.with_format("numpy")[0]["sentence_heatmaps"])
    processor = EGMAProcessor(EGMAImageProcessor(size=32, gaze_grid_size=4), make_tokenizer())
    batch = EGMADataCollator(processor)([reloaded[0], reloaded[1]])
    assert batch["input_ids"].shape[:2] == (2, 2) and batch["gaze_heatmaps"].shape == (2, 2, 4, 4)
    assert batch["has_gaze"].tolist() == [True, True]
    # the collated heatmap follows the image geometry: sentence 2's gaze (x=48, y=12) is in the upper right
    assert np.unravel_index(batch["gaze_heatmaps"][0, 1].argmax().item(), (4, 4))[0] <= 1
    out = EGMAModel(tiny_config()).train()(**batch, return_loss=True)
    assert torch.isfinite(out.loss) and out.mlce_loss > 0


def test_malformed_fixation_rows_are_counted_not_fatal(egd_tree):
    root, images = egd_tree
    lines = (root / "fixations.csv").read_text().splitlines()
    broken = lines[2].split(",")
    broken[GAZEPOINT_COLUMNS.index("FPOGX")] = "n/a"
    (root / "fixations.csv").write_text("\n".join(lines[:2] + [",".join(broken)] + lines[3:]) + "\n")
    data = load_egd_cxr(root, images)
    assert data.num_rows == 2 and data[0]["num_fixations"] == 1
    assert "1 malformed fixation rows dropped in 1 readings" in data.info.description


def test_mimic_eye_reader_on_a_hand_built_patient_tree(egd_tree, reflacx_tree, tmp_path):
    import shutil

    from egma_hf.data import load_mimic_eye

    egd_root, egd_images = egd_tree
    reflacx_root, reflacx_images = reflacx_tree
    root = tmp_path / "mimic-eye"
    # patient 10000001: the EGD-CXR reading of DICOM_JPG, its JPG, split, CheXpert labels and written report
    patient = root / "patient_10000001"
    (patient / "EyeGaze").mkdir(parents=True)
    for name in ("master_sheet.csv", "fixations.csv"):
        shutil.copy(egd_root / name, patient / "EyeGaze" / name)
    shutil.copytree(egd_root / "audio_segmentation_transcripts", patient / "EyeGaze" / "audio_segmentation_transcripts")
    (patient / "CXR-JPG" / "s50000001").mkdir(parents=True)
    shutil.copy(egd_images / f"files/p10/p10000001/s50000001/{DICOM_JPG}.jpg", patient / "CXR-JPG/s50000001")
    write_csv(patient / "CXR-JPG/cxr_split.csv", ["dicom_id", "study_id", "subject_id", "split"],
              [[DICOM_JPG, "50000001", "10000001", "validate"]])
    write_csv(patient / "CXR-JPG/cxr_chexpert.csv", ["subject_id", "study_id", "Cardiomegaly", "Edema", "No Finding"],
              [["10000001", "50000001", "1.0", "-1.0", ""]])
    (patient / "CXR-DICOM").mkdir()
    (patient / "CXR-DICOM/s50000001.txt").write_text("FINDINGS: Enlarged heart.\n\nIMPRESSION: Cardiomegaly.")
    # patient 10000003: its REFLACX readings
    patient = root / "patient_10000003"
    (patient / "REFLACX").mkdir(parents=True)
    shutil.copy(reflacx_root / "main_data/metadata_phase_3.csv", patient / "REFLACX/metadata.csv")
    shutil.copytree(reflacx_root / "main_data", patient / "REFLACX/main_data",
                    ignore=shutil.ignore_patterns("metadata_*"))
    (patient / "CXR-JPG/s50000003").mkdir(parents=True)
    shutil.copy(reflacx_images / f"files/p10/p10000003/s50000003/{DICOM_JPG}.jpg", patient / "CXR-JPG/s50000003")
    write_csv(patient / "CXR-JPG/cxr_split.csv", ["dicom_id", "study_id", "subject_id", "split"],
              [[DICOM_JPG, "50000003", "10000003", "train"]])

    data = load_mimic_eye(root, HeatmapSettings(recipe="egd"))
    assert data["reading_id"] == [DICOM_JPG, "P102R000001", "P103R000003"]
    assert data["source"] == ["egd-cxr", "reflacx", "reflacx"]
    assert data["split"] == ["validate", "train", "train"]  # cxr_split.csv wins over REFLACX's "test"
    egd = data.with_format("numpy")[0]
    assert egd["split"] == "validate" and list(egd["labels"]) == ["Cardiomegaly"]  # from cxr_chexpert.csv
    assert egd["written_report"] == "FINDINGS: Enlarged heart.\n\nIMPRESSION: Cardiomegaly."
    assert egd["image"].endswith(f"patient_10000001/CXR-JPG/s50000001/{DICOM_JPG}.jpg")
    assert np.unravel_index(egd["sentence_heatmaps"][1].argmax(), (HEIGHT, WIDTH)) == (12, 48)
    reflacx = data[1]
    assert reflacx["study_id"] == "50000003" and reflacx["written_report"] == ""
    assert reflacx["labels"] == ["Pleural abnormality"]  # no CheXpert file for this study: REFLACX's own labels
    assert "1 readings marked eye_tracking_data_discarded skipped" in data.info.description


def test_prepared_rows_collate_to_the_same_batch(egd_tree):
    import torch

    from egma_hf import EGMAImageProcessor, EGMAProcessor
    from egma_hf.data import prepare_for_training

    root, images = egd_tree
    data = load_egd_cxr(root, images)
    processor = EGMAProcessor(EGMAImageProcessor(size=32, gaze_grid_size=4), make_tokenizer())
    collate = EGMADataCollator(processor)
    direct = collate([data[0], data[1]])
    prepared = prepare_for_training(data, processor.image_processor)
    fast = collate([prepared[0], prepared[1]])
    assert direct.keys() == fast.keys()
    for key in direct:
        atol = 2e-2 if key == "pixel_values" else 1e-6  # pixels are cached as float16
        torch.testing.assert_close(fast[key].to(direct[key].dtype), direct[key], atol=atol, rtol=0)
