"""The synthetic MIMIC-EYE corpus: layout, exact column lists, quirks, coordinate consistency and gaze content.

Checked with plain pandas / json / PIL against the column lists of the reference notes (copied here on purpose,
not imported from the module under test). One 200-reading corpus is generated per module and timed.
"""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from egma_hf.data.synthetic import main, make_synthetic_mimic_eye

NUM_SAMPLES = 200

CHEXPERT = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]
MASTER_SHEET = (  # noqa: SIM905 (the header line as EGD-CXR ships it)
    "dicom_id,path,study_id,patient_id,stay_id,gender,anchor_age,image_top_pad,image_bottom_pad,image_left_pad,"
    "image_right_pad,dx1,dx1_icd,dx2,dx2_icd,dx3,dx3_icd,dx4,dx4_icd,dx5,dx5_icd,dx6,dx6_icd,dx7,dx7_icd,dx8,dx8_icd,"
    "dx9,dx9_icd,normal_reports,Normal,CHF,pneumonia,consolidation,enlarged_cardiac_silhouette,"
    "linear__patchy_atelectasis,lobar__segmental_collapse,"
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__,"
    "pleural_effusion_or_thickening,pulmonary_edema__hazy_opacity,normal_anatomically,elevated_hemidiaphragm,"
    "hyperaeration,vascular_redistribution,atelectasis__chx,cardiomegaly__chx,consolidation__chx,edema__chx,"
    "enlarged_cardiomediastinum__chx,fracture__chx,lung_lesion__chx,lung_opacity__chx,no_finding__chx,"
    "pleural_effusion__chx,pleural_other__chx,pneumonia__chx,pneumothorax__chx,support_devices__chx,cxr_exam_indication"
).split(",")
EGD_FIXATIONS = (  # noqa: SIM905 (the header line as Gazepoint writes it)
    "SESSION_ID,MEDIA_ID,DICOM_ID,CNT,Time (in secs),TIMETICK(f=10000000),FPOGX,FPOGY,FPOGS,FPOGD,FPOGID,FPOGV,"
    "BPOGX,BPOGY,BPOGV,LPCX,LPCY,LPD,LPS,LPV,RPCX,RPCY,RPD,RPS,RPV,BKID,BKDUR,BKPMIN,LPMM,LPMMV,RPMM,RPMMV,"
    "SACCADE_MAG,SACCADE_DIR,VID_FRAME,X_ORIGINAL,Y_ORIGINAL"
).split(",")
REFLACX_LABELS = [
    "Abnormal mediastinal contour", "Acute fracture", "Atelectasis", "Consolidation", "Enlarged cardiac silhouette",
    "Enlarged hilum", "Groundglass opacity", "Hiatal hernia", "High lung volume / emphysema",
    "Interstitial lung disease", "Lung nodule or mass", "Pleural abnormality", "Pneumothorax", "Pulmonary edema",
]
REFLACX_METADATA = (["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id", "image_size_x",
                     "image_size_y"] + REFLACX_LABELS + ["Support devices", "Other"])
REFLACX_FIXATIONS = (  # noqa: SIM905 (the header line as REFLACX ships it)
    "timestamp_start_fixation,timestamp_end_fixation,x_position,y_position,pupil_area_normalized,"
    "angular_resolution_x_pixels_per_degree,angular_resolution_y_pixels_per_degree,window_level,window_width,"
    "xmin_shown_from_image,ymin_shown_from_image,xmax_shown_from_image,ymax_shown_from_image,"
    "xmin_in_screen_coordinates,ymin_in_screen_coordinates,xmax_in_screen_coordinates,ymax_in_screen_coordinates"
).split(",")


def header(path: Path) -> list:
    return pd.read_csv(path, nrows=0).columns.tolist()


def gather(root: Path, pattern: str, **kwargs) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p, **kwargs) for p in sorted(root.glob(pattern))], ignore_index=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    started = time.perf_counter()
    root = make_synthetic_mimic_eye(tmp_path_factory.mktemp("mimic_eye"), num_samples=NUM_SAMPLES, seed=0)
    return root, time.perf_counter() - started


@pytest.fixture(scope="module")
def root(corpus):
    return corpus[0]


@pytest.fixture(scope="module")
def truth(root):
    return json.loads((root / "synthetic_ground_truth.json").read_text())["readings"]


@pytest.fixture(scope="module")
def egd(root):
    sheet = gather(root, "patient_*/EyeGaze/master_sheet.csv", dtype={"dicom_id": str})
    fixations = gather(root, "patient_*/EyeGaze/fixations.csv")
    return sheet, fixations


def all_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_thousand_samples_within_a_minute(corpus):
    _, seconds = corpus
    assert seconds * 1000 / NUM_SAMPLES < 60, f"{NUM_SAMPLES} samples took {seconds:.1f} s"


def test_deterministic_for_a_seed(tmp_path):
    first = all_files(make_synthetic_mimic_eye(tmp_path / "a", num_samples=12, seed=7))
    second = all_files(make_synthetic_mimic_eye(tmp_path / "b", num_samples=12, seed=7))
    other = all_files(make_synthetic_mimic_eye(tmp_path / "c", num_samples=12, seed=8))
    assert first == second
    assert first.keys() != other.keys()


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(FileExistsError):
        make_synthetic_mimic_eye(tmp_path, num_samples=4)


def test_cli_prints_one_line(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num-samples", "6", "--seed", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "6 readings" in lines[0]
    assert (tmp_path / "cli" / "synthetic_ground_truth.json").is_file()


def test_per_patient_layout_and_columns(root, truth):
    patients = sorted(root.glob("patient_*"))
    assert patients and {r["subject_id"] for r in truth.values()} == {int(p.name[8:]) for p in patients}
    for patient in patients:
        subject = int(patient.name.removeprefix("patient_"))
        jpg = patient / "CXR-JPG"
        assert header(jpg / "cxr_chexpert.csv") == ["subject_id", "study_id"] + CHEXPERT
        assert header(jpg / "cxr_split.csv") == ["dicom_id", "study_id", "subject_id", "split"]
        split = pd.read_csv(jpg / "cxr_split.csv", dtype={"dicom_id": str})
        chexpert = pd.read_csv(jpg / "cxr_chexpert.csv")
        assert set(split["subject_id"]) == {subject} and set(chexpert["subject_id"]) == {subject}
        assert set(chexpert["study_id"]) == set(split["study_id"])
        values = chexpert[CHEXPERT]
        assert (values.isin([1.0, 0.0, -1.0]) | values.isna()).all().all()
        for row in split.itertuples():
            assert (jpg / f"s{row.study_id}" / f"{row.dicom_id}.jpg").is_file()
            report = (patient / "CXR-DICOM" / f"s{row.study_id}.txt").read_text()
            assert report.startswith("FINDINGS: ") and "\n\nIMPRESSION: " in report
            assert max(len(line) for line in report.splitlines()) <= 72
        if (patient / "EyeGaze").exists():
            assert header(patient / "EyeGaze" / "master_sheet.csv") == MASTER_SHEET
            assert header(patient / "EyeGaze" / "fixations.csv") == EGD_FIXATIONS
            boxes = ["dicom_id", "bbox_name", "x1", "x2", "y1", "y2"]
            assert header(patient / "EyeGaze" / "bounding_boxes.csv") == boxes
            sheet = pd.read_csv(patient / "EyeGaze" / "master_sheet.csv", dtype={"dicom_id": str})
            assert set(sheet["patient_id"]) == {subject}
            for dicom_id in sheet["dicom_id"]:
                assert (patient / "EyeGaze" / "audio_segmentation_transcripts" / dicom_id / "transcript.json").is_file()
        if (patient / "REFLACX").exists():
            metadata = pd.read_csv(patient / "REFLACX" / "metadata.csv", dtype={"dicom_id": str})
            assert header(patient / "REFLACX" / "metadata.csv") == REFLACX_METADATA
            assert set(metadata["subject_id"]) == {subject}
            assert set(metadata["dicom_id"]) <= set(split["dicom_id"])


def test_ids_splits_and_paths(root, truth, egd):
    sheet, _ = egd
    dicom = r"[0-9a-f]{8}(-[0-9a-f]{8}){4}"
    assert sheet["dicom_id"].str.fullmatch(dicom).all()
    assert sheet["patient_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert sheet["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    for row in sheet.itertuples():
        assert row.path == f"files/p{str(row.patient_id)[:2]}/p{row.patient_id}/s{row.study_id}/{row.dicom_id}.dcm"
    metadata = gather(root, "patient_*/REFLACX/metadata.csv", dtype={"dicom_id": str})
    assert metadata["id"].str.fullmatch(r"P\d{3}R\d{6}").all() and metadata["id"].is_unique
    assert metadata["image"].str.startswith("physionet.org/files/mimic-cxr/2.0.0/files/p").all()
    assert all(image.endswith(f"/{dicom_id}.dcm") for image, dicom_id in zip(metadata["image"], metadata["dicom_id"]))
    assert len(sheet) + len(metadata) == len(truth) == NUM_SAMPLES
    assert 0.35 < len(sheet) / NUM_SAMPLES < 0.65
    assert metadata.groupby("dicom_id").size().max() >= 2  # some images are read by several radiologists
    splits = gather(root, "patient_*/CXR-JPG/cxr_split.csv", dtype={"dicom_id": str}).set_index("dicom_id")["split"]
    assert set(splits) == {"train", "validate", "test"}
    assert (metadata["split"] == splits[metadata["dicom_id"]].to_numpy()).all()
    assert all(splits[r["dicom_id"]] == r["split"] for r in truth.values())


def test_master_sheet_quoted_newline_and_pads(root, egd):
    sheet, _ = egd
    files = sorted(root.glob("patient_*/EyeGaze/master_sheet.csv"))
    physical_lines = sum(len(path.read_text().splitlines()) for path in files)
    assert physical_lines > len(sheet) + len(files)  # quoted newlines inside rows
    assert sheet["cxr_exam_indication"].str.contains("\n").any()
    assert sheet["cxr_exam_indication"].str.contains('"').any() and sheet["cxr_exam_indication"].str.contains(",").any()
    for row in sheet.itertuples():
        width, height = Image.open(root / f"patient_{row.patient_id}/CXR-JPG/s{row.study_id}/{row.dicom_id}.jpg").size
        scale = min(1920 / width, 1080 / height)
        assert abs(row.image_left_pad + row.image_right_pad - (1920 - width * scale)) <= 1
        assert abs(row.image_top_pad + row.image_bottom_pad - (1080 - height * scale)) <= 1
        assert abs(row.image_left_pad - row.image_right_pad) <= 1 and abs(row.image_top_pad - row.image_bottom_pad) <= 1


def test_egd_fixation_quirks_and_x_original(egd):
    sheet, fixations = egd
    calibration = ~fixations["DICOM_ID"].isin(sheet["dicom_id"])
    assert calibration.any()
    assert (fixations["FPOGV"] == 0).any() and (fixations["FPOGV"] == 1).mean() > 0.95
    assert np.allclose(fixations["Time (in secs)"], fixations["FPOGS"] + fixations["FPOGD"], atol=2e-5)
    gaze = fixations[~calibration].merge(sheet, left_on="DICOM_ID", right_on="dicom_id")
    x_screen, y_screen = gaze["FPOGX"] * 1920, gaze["FPOGY"] * 1080
    left, right, top, bottom = (gaze[f"image_{s}_pad"] for s in ("left", "right", "top", "bottom"))
    inside = (x_screen > left) & (x_screen < 1920 - right) & (y_screen > top) & (y_screen < 1080 - bottom)
    off = gaze["X_ORIGINAL"] == -1
    assert off.any() and (off == ~inside).all() and (gaze["Y_ORIGINAL"][off] == -1).all()
    assert ((x_screen[off] < left[off]) | (x_screen[off] > 1920 - right[off])).all()  # in the side pads


def test_x_original_matches_the_screen_mapping(root, egd):
    sheet, fixations = egd
    gaze = fixations.merge(sheet, left_on="DICOM_ID", right_on="dicom_id")
    gaze = gaze[gaze["X_ORIGINAL"] >= 0]
    sizes = {r.dicom_id: Image.open(root / f"patient_{r.patient_id}/CXR-JPG/s{r.study_id}/{r.dicom_id}.jpg").size
             for r in sheet.itertuples()}
    width = gaze["dicom_id"].map(lambda d: sizes[d][0])
    height = gaze["dicom_id"].map(lambda d: sizes[d][1])
    left, right, top, bottom = (gaze[f"image_{s}_pad"] for s in ("left", "right", "top", "bottom"))
    x = ((gaze["FPOGX"] * 1920 - left) * width / (1920 - left - right)).astype(int)
    y = ((gaze["FPOGY"] * 1080 - top) * height / (1080 - top - bottom)).astype(int)
    assert (x - gaze["X_ORIGINAL"]).abs().max() <= 1 and (y - gaze["Y_ORIGINAL"]).abs().max() <= 1
    assert ((gaze["X_ORIGINAL"] < width) & (gaze["Y_ORIGINAL"] < height)).all()


def test_transcripts(root, truth):
    for path in sorted(root.glob("patient_*/EyeGaze/audio_segmentation_transcripts/*/transcript.json")):
        data = json.loads(path.read_text())
        phrases = data["time_stamped_text"]
        assert set(data) == {"full_text", "time_stamped_text"} and all(" " not in p["phrase"] for p in phrases)
        assert data["full_text"] == " ".join(p["phrase"] for p in phrases)
        assert phrases[-1]["phrase"].endswith(".")
        begins, ends = np.array([p["begin_time"] for p in phrases]), np.array([p["end_time"] for p in phrases])
        assert (ends >= begins).all() and (begins[1:] >= ends[:-1]).all() and begins[0] >= 2.0  # silent viewing first
        sentences = truth[path.parent.name]["sentences"]
        assert sum(p["phrase"].endswith(".") for p in phrases) == len(sentences)


def test_reflacx_reading_files(root, truth):
    metadata = gather(root, "patient_*/REFLACX/metadata.csv", dtype={"dicom_id": str})
    assert set(metadata["eye_tracking_data_discarded"]) == {True, False}
    assert metadata[REFLACX_LABELS].isin(range(6)).all().all() and not metadata["Support devices"].any()
    spellings, punctuation, off_image = set(), set(), 0
    for _, row in metadata.iterrows():
        folder = root / f"patient_{row['subject_id']}" / "REFLACX" / "main_data" / row["id"]
        assert folder.is_dir() != row["eye_tracking_data_discarded"]
        if row["eye_tracking_data_discarded"]:
            continue
        reading = truth[row["id"]]
        assert header(folder / "fixations.csv") == REFLACX_FIXATIONS
        fixations = pd.read_csv(folder / "fixations.csv")
        assert (fixations["timestamp_end_fixation"] > fixations["timestamp_start_fixation"]).all()
        assert fixations["angular_resolution_x_pixels_per_degree"].between(8, 12).all()
        shown = fixations[["xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
                           "ymax_shown_from_image"]]
        assert (shown.to_numpy() == [0, 0, row["image_size_x"], row["image_size_y"]]).all()
        off_image += int((fixations["x_position"] < 0).sum())

        (words_file,) = [p for p in folder.iterdir() if p.name.startswith("timestamps_transcription")]
        spellings.add(words_file.name)
        assert header(words_file) == ["word", "timestamp_start_word", "timestamp_end_word"]
        words = pd.read_csv(words_file, keep_default_na=False)
        punctuation |= set(words["word"]) & {".", ","}
        assert words["word"].iloc[-1] == "." and (words["word"] == ".").sum() == len(reading["sentences"])
        assert (folder / "transcription.txt").read_text() == " ".join(s["text"] for s in reading["sentences"])

        ellipse_columns = ["xmin", "ymin", "xmax", "ymax", "certainty"] + REFLACX_LABELS
        assert header(folder / "anomaly_location_ellipses.csv") == ellipse_columns
        ellipses = pd.read_csv(folder / "anomaly_location_ellipses.csv")
        assert len(ellipses) >= len(reading["findings"])
        for label in REFLACX_LABELS:  # a label's certainty is the highest certainty of its ellipses
            assert row[label] == ellipses["certainty"][ellipses[label]].to_numpy().max(initial=0)
        assert header(folder / "chest_bounding_box.csv") == ["xmin", "ymin", "xmax", "ymax"]
    assert spellings == {"timestamps_transcription.csv", "timestamps_transcriptions.csv"}
    assert punctuation == {".", ","} and off_image > 0


def test_images_and_ground_truth_boxes(root, truth):
    brighter = []
    for reading in truth.values():
        image = Image.open(root / reading["image"])
        assert image.mode == "L" and image.size == (reading["width"], reading["height"])
        assert 256 <= max(image.size) <= 384
        pixels = np.asarray(image, dtype=np.float32)
        for finding in reading["findings"]:
            x1, y1, x2, y2 = finding["bbox"]
            assert 0 <= x1 < x2 <= reading["width"] and 0 <= y1 < y2 <= reading["height"]
            centre = (x1 + x2) / 2 / reading["width"]
            if finding["side"] == "right":  # the patient's right is on the image's left
                assert centre < 0.5
            elif finding["side"] == "left":
                assert centre > 0.5
            if finding["class"] == "opacity":
                mirror = pixels[int(y1):int(y2), reading["width"] - int(x2):reading["width"] - int(x1)]
                brighter.append(pixels[int(y1):int(y2), int(x1):int(x2)].mean() > mirror.mean())
    assert np.mean(brighter) > 0.75


def test_gaze_follows_the_dictated_finding(root, truth):
    """Fixations while a finding sentence is spoken fall mostly inside that finding's ground-truth box."""
    inside, total = 0, 0
    for reading_id, reading in truth.items():
        if reading["eye_tracking_data_discarded"]:
            continue
        patient = root / f"patient_{reading['subject_id']}"
        if reading["source"] == "EyeGaze":
            frame = pd.read_csv(patient / "EyeGaze" / "fixations.csv")
            frame = frame[(frame["DICOM_ID"] == reading_id) & (frame["FPOGV"] == 1) & (frame["X_ORIGINAL"] >= 0)]
            t = (frame["FPOGS"] + frame["FPOGD"] / 2).to_numpy()
            x, y = frame["X_ORIGINAL"].to_numpy() + 0.5, frame["Y_ORIGINAL"].to_numpy() + 0.5
        else:
            frame = pd.read_csv(patient / "REFLACX" / "main_data" / reading_id / "fixations.csv")
            t = ((frame["timestamp_start_fixation"] + frame["timestamp_end_fixation"]) / 2).to_numpy()
            x, y = frame["x_position"].to_numpy(), frame["y_position"].to_numpy()
        assert (t < reading["sentences"][0]["begin"]).sum() >= 3  # a silent viewing period
        for sentence in reading["sentences"]:
            if sentence["finding"] is None:
                continue
            x1, y1, x2, y2 = reading["findings"][sentence["finding"]]["bbox"]
            during = (t >= sentence["begin"]) & (t <= sentence["end"])
            xs, ys = x[during], y[during]
            inside += int(((xs >= x1 - 1) & (xs <= x2 + 1) & (ys >= y1 - 1) & (ys <= y2 + 1)).sum())
            total += int(during.sum())
    assert total > 500 and inside / total > 0.7


def test_test_split_uses_unseen_phrasings(truth):
    def sentences(split):
        found = set()
        for reading in truth.values():
            if reading["split"] in split:
                found |= {s["text"] for s in reading["sentences"]} | set(reading["written_report_sentences"])
        return found

    test, seen = sentences({"test"}), sentences({"train", "validate"})
    assert len(test) > 20 and len(seen) > 50
    assert not test & seen


def test_cached_corpus_is_named_by_size_and_seed_and_written_once(tmp_path):
    from egma_hf.data import cached_synthetic_corpus

    folder = cached_synthetic_corpus(num_samples=6, seed=3, cache_dir=tmp_path)
    assert folder == tmp_path / "synthetic-6-seed3"
    written = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    assert written and not (tmp_path / "synthetic-6-seed3.tmp").exists()
    assert all_files(folder) == all_files(make_synthetic_mimic_eye(tmp_path / "direct", 6, seed=3))  # same tree
    assert cached_synthetic_corpus(num_samples=6, seed=3, cache_dir=tmp_path) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == written  # not written again
