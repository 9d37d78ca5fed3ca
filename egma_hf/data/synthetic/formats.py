"""Files in the released formats: MIMIC-EYE's EGD-CXR and REFLACX parts (column lists in the released files'
order), CheXpert labeller values, plain CSV lines and 8-bit DICOMs."""

import csv
import json
from pathlib import Path

import numpy as np

from .core import Reading, Study, pick
from .gaze import EGD_SCREEN, calibration_fixations, egd_screen_pads, reflacx_screen_box
from .language import DIAGNOSES, FINDING_LABELS, NEGATED_CHEXPERT

CHEXPERT_LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]
EGD_LABELS = [
    "normal_reports", "Normal", "CHF", "pneumonia", "consolidation", "enlarged_cardiac_silhouette",
    "linear__patchy_atelectasis", "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__", "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity", "normal_anatomically", "elevated_hemidiaphragm", "hyperaeration",
    "vascular_redistribution",
]
MASTER_SHEET_COLUMNS = (
    ["dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age", "image_top_pad",
     "image_bottom_pad", "image_left_pad", "image_right_pad"]
    + [name for i in range(1, 10) for name in (f"dx{i}", f"dx{i}_icd")]
    + EGD_LABELS
    + [label.lower().replace(" ", "_") + "__chx" for label in CHEXPERT_LABELS]
    + ["cxr_exam_indication"]
)
EGD_FIXATION_COLUMNS = [
    "SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)", "TIMETICK(f=10000000)", "FPOGX", "FPOGY", "FPOGS",
    "FPOGD", "FPOGID", "FPOGV", "BPOGX", "BPOGY", "BPOGV", "LPCX", "LPCY", "LPD", "LPS", "LPV", "RPCX", "RPCY", "RPD",
    "RPS", "RPV", "BKID", "BKDUR", "BKPMIN", "LPMM", "LPMMV", "RPMM", "RPMMV", "SACCADE_MAG", "SACCADE_DIR",
    "VID_FRAME", "X_ORIGINAL", "Y_ORIGINAL",
]
BOUNDING_BOX_COLUMNS = ["dicom_id", "bbox_name", "x1", "x2", "y1", "y2"]
REFLACX_LABELS = [
    "Abnormal mediastinal contour", "Acute fracture", "Atelectasis", "Consolidation", "Enlarged cardiac silhouette",
    "Enlarged hilum", "Groundglass opacity", "Hiatal hernia", "High lung volume / emphysema",
    "Interstitial lung disease", "Lung nodule or mass", "Pleural abnormality", "Pneumothorax", "Pulmonary edema",
]
REFLACX_METADATA_COLUMNS = (
    ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id", "image_size_x", "image_size_y"]
    + REFLACX_LABELS + ["Support devices", "Other"]
)
REFLACX_FIXATION_COLUMNS = [
    "timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position", "pupil_area_normalized",
    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree", "window_level", "window_width",
    "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image", "ymax_shown_from_image",
    "xmin_in_screen_coordinates", "ymin_in_screen_coordinates", "xmax_in_screen_coordinates",
    "ymax_in_screen_coordinates",
]
REFLACX_WORD_COLUMNS = ["word", "timestamp_start_word", "timestamp_end_word"]

CALIBRATION_EVERY = 20  # EGD showed a white-dot calibration image every ~20 images
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def chexpert(rng, study: Study, topics: set) -> dict:
    """CheXpert labeller-style values: 1.0 mentioned, -1.0 uncertain, 0.0 negated, "" not mentioned."""
    values = {label: "" for label in CHEXPERT_LABELS}
    for topic, label in NEGATED_CHEXPERT.items():
        if topic in topics:
            values[label] = 0.0
    for finding in study.findings:
        values[FINDING_LABELS[finding.name][0]] = 1.0
        if finding.name == "opacity":
            values[pick(rng, ("Consolidation", "Pneumonia"))] = pick(rng, (1.0, -1.0))
        if finding.name == "cardiomegaly" and rng.random() < 0.3:
            values["Enlarged Cardiomediastinum"] = 1.0
    if not study.findings:
        values["No Finding"] = 1.0
    return values



def write_csv(path: Path, header: list, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _mimic_path(study: Study) -> str:
    subject = str(study.subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study.study_id}/{study.dicom_id}.dcm"


def _egd_fixation_rows(rng, session: int, media: int, dicom_id: str, fix: dict, size: tuple, pads: tuple,
                       onset: float, tick0: int) -> list:
    """Gazepoint fixation rows (one per fixation, its last sample) of one shown image."""
    width, height = size
    top, bottom, left, right = pads
    x_screen = left + fix["x"] / width * (EGD_SCREEN[0] - left - right)
    y_screen = top + fix["y"] / height * (EGD_SCREEN[1] - top - bottom)
    fpogx, fpogy = np.round(x_screen / EGD_SCREEN[0], 5), np.round(y_screen / EGD_SCREEN[1], 5)
    xs, ys = fpogx * EGD_SCREEN[0], fpogy * EGD_SCREEN[1]
    inside = (xs > left) & (xs < EGD_SCREEN[0] - right) & (ys > top) & (ys < EGD_SCREEN[1] - bottom)
    x_original = np.where(inside, ((xs - left) * width / (EGD_SCREEN[0] - left - right)).astype(int), -1)
    y_original = np.where(inside, ((ys - top) * height / (EGD_SCREEN[1] - top - bottom)).astype(int), -1)
    start = np.round(fix["start"], 5)
    duration = np.round(fix["end"] - fix["start"], 5)
    stamp = np.round(start + duration, 5)
    jump = np.diff(np.stack([xs, ys]), axis=1, prepend=np.stack([xs[:1], ys[:1]]))
    count = len(xs)
    pupils = rng.normal([0.38, 0.59, 18.3, 1.05, 0.64, 0.6, 18.2, 1.06, 3.5, 3.57], 0.01, (count, 10)).round(5)
    rows = []
    for i in range(count):
        lpcx, lpcy, lpd, lps, rpcx, rpcy, rpd, rps, lpmm, rpmm = pupils[i].tolist()
        rows.append([
            session, media, dicom_id, int(stamp[i] * 60), float(stamp[i]),
            float(tick0 + int((onset + stamp[i]) * 1e7)), float(fpogx[i]), float(fpogy[i]), float(start[i]),
            float(duration[i]), i + 1, int(fix["valid"][i]),
            round(float(fpogx[i]) + float(rng.normal(0, 0.003)), 5),
            round(float(fpogy[i]) + float(rng.normal(0, 0.003)), 5), 1,
            lpcx, lpcy, lpd, lps, 1, rpcx, rpcy, rpd, rps, 1, 0, 0.0, int(rng.integers(10, 25)), lpmm, 1, rpmm, 1,
            round(float(np.hypot(*jump[:, i])), 5),
            round(float(np.degrees(np.arctan2(jump[1, i], jump[0, i])) % 360), 5),
            0.0, int(x_original[i]), int(y_original[i]),
        ])
    return rows



def egd_sessions(rng, studies: list, calibration_id: str) -> dict:
    """Show the EGD images in sessions, with a calibration image first and every ~20 images; rows per subject."""
    rows = {}
    egd = [s for s in studies if s.source == "EyeGaze"]
    session, media, shown, onset, tick0 = 0, 0, 0, 0.0, 0
    for index in rng.permutation(len(egd)):
        study = egd[index]
        if session == 0 or media >= int(rng.integers(30, 50)):
            session, media, shown, onset = session + 1, 0, 0, 0.0
            tick0 = int(rng.integers(10**11, 10**12))
        if shown % CALIBRATION_EVERY == 0:
            fix = calibration_fixations(rng)
            rows.setdefault(study.subject_id, []).extend(_egd_fixation_rows(
                rng, session, media, calibration_id, fix, EGD_SCREEN, (0, 0, 0, 0), onset, tick0))
            media, onset = media + 1, onset + float(fix["end"][-1]) + rng.uniform(0.5, 1.5)
        fix = study.readings[0].fixations
        rows.setdefault(study.subject_id, []).extend(_egd_fixation_rows(
            rng, session, media, study.dicom_id, fix, (study.width, study.height),
            egd_screen_pads(study.width, study.height), onset, tick0))
        media, shown, onset = media + 1, shown + 1, onset + float(fix["end"][-1]) + rng.uniform(1.0, 3.0)
    return rows


def _master_sheet_row(rng, study: Study, indication: str) -> list:
    classes = [f.name for f in study.findings]
    diagnoses = [DIAGNOSES[c] for c in dict.fromkeys(classes)] or [pick(rng, DIAGNOSES[None])]
    dx = [value for pair in diagnoses for value in pair]
    dx += [""] * (18 - len(dx))
    normal = int(not classes)
    labels = [normal, normal, int("cardiomegaly" in classes or "edema" in classes), int("opacity" in classes),
              int("opacity" in classes), int("cardiomegaly" in classes), 0, 0, 0, int("effusion" in classes),
              int("edema" in classes), normal, 0, 0, 0]
    decade = int(rng.integers(2, 9)) * 10
    return [study.dicom_id, _mimic_path(study), study.study_id, study.subject_id,
            int(30_000_000 + rng.integers(10_000_000)), pick(rng, ("F", "M")), f"{decade} - {decade + 10}",
            *egd_screen_pads(study.width, study.height), *dx, *labels,
            *(study.chexpert[label] for label in CHEXPERT_LABELS), indication]


def write_egd(rng, folder: Path, studies: list, fixation_rows: list, indications: list) -> None:
    """One patient's EyeGaze/ part: master sheet, fixations, anatomical boxes and one transcript per image."""
    for study in studies:
        sentences = study.readings[0].sentences
        words = [{"phrase": token, "begin_time": begin, "end_time": end}
                 for s in sentences for token, begin, end in s.words]
        transcript = {"full_text": " ".join(s.text for s in sentences), "time_stamped_text": words}
        path = folder / "audio_segmentation_transcripts" / study.dicom_id / "transcript.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(transcript))
    write_csv(folder / "master_sheet.csv", MASTER_SHEET_COLUMNS,
               [_master_sheet_row(rng, s, i) for s, i in zip(studies, indications)])
    write_csv(folder / "fixations.csv", EGD_FIXATION_COLUMNS, fixation_rows)
    write_csv(folder / "bounding_boxes.csv", BOUNDING_BOX_COLUMNS,
               [[s.dicom_id, name, x1, x2, y1, y2] for s in studies for name, (x1, y1, x2, y2) in s.anatomy.items()])


def _reflacx_word_rows(sentences: list) -> list:
    """One row per word; "." and "," are rows of their own (at the end time of the word they follow)."""
    rows = []
    for sentence in sentences:
        for token, begin, end in sentence.words:
            word = token.rstrip(".,")
            rows.append([word, begin, end])
            rows += [[mark, end, end] for mark in token[len(word):]]
    return rows


def write_reflacx_reading(rng, folder: Path, reading: Reading, words_file: str) -> None:
    study, fix = reading.study, reading.fixations
    shown = [0, 0, study.width, study.height]
    screen = list(reflacx_screen_box(study.width, study.height))
    resolution = round(0.03 * max(study.width, study.height))
    level, window = round(0.5 + rng.normal(0, 0.002), 5), round(1.0 - abs(rng.normal(0, 0.002)), 5)
    pupil = (1.0 + 0.1 * rng.standard_normal(len(fix["x"]))).round(4)
    write_csv(folder / "fixations.csv", REFLACX_FIXATION_COLUMNS, [
        [round(float(s), 3), round(float(e), 3), int(round(x)), int(round(y)), float(p), resolution, resolution,
         level, window, *shown, *screen]
        for s, e, x, y, p in zip(fix["start"], fix["end"], fix["x"], fix["y"], pupil)])
    write_csv(folder / words_file, REFLACX_WORD_COLUMNS, _reflacx_word_rows(reading.sentences))
    (folder / "transcription.txt").write_text(" ".join(s.text for s in reading.sentences))
    ellipses = []
    for finding in study.findings:
        label = FINDING_LABELS[finding.name][1]
        for x1, y1, x2, y2 in finding.boxes:
            jitter = rng.normal(0, 0.04, 4) * (x2 - x1, y2 - y1, x2 - x1, y2 - y1)
            flags = [name == label for name in REFLACX_LABELS]
            ellipses.append([*(int(round(c + j)) for c, j in zip((x1, y1, x2, y2), jitter)),
                             reading.certainty[label], *flags])
    write_csv(folder / "anomaly_location_ellipses.csv", ["xmin", "ymin", "xmax", "ymax", "certainty"] + REFLACX_LABELS,
               ellipses)
    chest = np.array([study.anatomy[n] for n in ("right lung", "left lung", "cardiac silhouette")])
    write_csv(folder / "chest_bounding_box.csv", ["xmin", "ymin", "xmax", "ymax"],
               [[int(chest[:, 0].min()), int(chest[:, 1].min()), int(chest[:, 2].max()), int(chest[:, 3].max())]])


def reflacx_metadata_row(reading: Reading) -> list:
    study = reading.study
    image = f"physionet.org/files/mimic-cxr/2.0.0/{_mimic_path(study)}"
    return [reading.id, study.split, reading.discarded, image, study.dicom_id, study.subject_id, study.width,
            study.height, *(reading.certainty.get(label, 0) for label in REFLACX_LABELS), False, ""]


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def csv_line(cells) -> str:
    return ",".join(f'"{c}"' if ("," in str(c) or '"' in str(c)) else str(c) for c in cells)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError("writing synthetic DICOMs needs pydicom: install the 'dicom' extra "
                          "(pip install 'egma_hf[dicom]')") from None
    return pydicom


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, study: str, series: str, instance: str,
                 patient: str) -> None:
    """8-bit CR DICOM; MONOCHROME1 stores inverted values, so it looks the same once read (dense = bright)."""
    pydicom = _pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, instance
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = patient, "CR", "CHEST", "PA"
    stored = 255 - pixels if photometric == "MONOCHROME1" else pixels
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
