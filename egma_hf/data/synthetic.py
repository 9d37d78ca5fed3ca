"""A synthetic MIMIC-EYE corpus: chest X-ray-like images, reports, dictations and eye gaze in the real file formats.

`make_synthetic_mimic_eye(out_dir, num_samples, seed)` writes one `patient_<subject_id>/` folder per patient with
`CXR-JPG/`, `CXR-DICOM/`, `EyeGaze/` (EGD-CXR files) and `REFLACX/` parts whose CSV, JSON and TXT files follow the
column lists, coordinate systems and quirks of the released data sets, so the real readers load it unchanged.

* Images are small (longer side 352-384 px); every coordinate is consistent with each image's own size.
* Each image shows zero to three findings (focal opacity, enlarged heart, pleural effusion, perihilar edema,
  apical pneumothorax) at their own places; the patient's left is on the image's right.
* A reading is one radiologist dictating one image. While a sentence is spoken, the fixations concentrate on the
  region it describes (gaze leads speech by 0.2-0.45 s); before the dictation there is a silent viewing period.
* Test-split reports use their own phrasings (template pools disjoint from train / validate).
* Clocks: every time (EGD `FPOGS` / `Time (in secs)`, transcript words, REFLACX fixations and words) is in seconds
  since the image was shown.
* `synthetic_ground_truth.json` lists, per reading, the findings with their boxes and the timed sentences.
"""

import argparse
import csv
import json
import re
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# ---------------------------------------------------------------------------------------------------------------
# File formats (column lists in the released files' order)

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

EGD_SCREEN = (1920, 1080)  # width, height of the EGD monitor
REFLACX_SCREEN = (3840, 2160)  # 4K; the image area starts at x=661, buttons sit left of it
REFLACX_IMAGE_X0 = 661
IMAGE_SIZES = ((320, 384), (352, 384), (352, 352), (384, 352), (336, 384), (384, 384), (320, 352))  # (width, height)
SPLITS = (("train", 0.7), ("validate", 0.1), ("test", 0.2))  # per patient
CALIBRATION_EVERY = 20  # EGD showed a white-dot calibration image every ~20 images

# ---------------------------------------------------------------------------------------------------------------
# Report language. "train" phrasings are used for train and validate, "test" ones only for the test split.

SEVERITIES = ("mild", "moderate", "severe")
SEVERITY_WORDS = {  # class -> (adjectives per severity, adverbs per severity)
    "opacity": ((("small", "subtle"), ("patchy", "moderate"), ("dense", "extensive")), None),
    "cardiomegaly": ((("mild",), ("moderate",), ("marked", "severe")),
                     (("mildly",), ("moderately",), ("markedly", "severely"))),
    "effusion": ((("small", "trace"), ("moderate",), ("large",)), None),
    "edema": ((("mild",), ("moderate",), ("severe",)), None),
    "pneumothorax": ((("small", "tiny"), ("moderate",), ("large",)), None),
}
ZONE_WORDS = {
    "train": {"upper": ("upper lobe", "upper lung zone"), "lower": ("lower lobe", "lung base", "lower lung zone")},
    "test": {"upper": ("upper lobe", "upper lung field"), "lower": ("lower lobe", "lung base", "lower lung field")},
}
FINDING_TEMPLATES = {
    "train": {
        "opacity": (
            "There is a {sev} opacity in the {side} {zone}.",
            "{sev} consolidation in the {side} {zone}, concerning for pneumonia.",
            "Focal airspace opacity is seen in the {side} {zone}.",
            "{side} {zone} consolidation.",
            "Airspace disease is noted in the {side} {zone}.",
            "{sev} {side} {zone} opacity, likely pneumonia.",
        ),
        "cardiomegaly": (
            "The heart is {sevly} enlarged.",
            "{sev} cardiomegaly.",
            "The cardiac silhouette is enlarged.",
            "There is {sev} enlargement of the cardiac silhouette.",
        ),
        "effusion": (
            "There is a {sev} {side} pleural effusion.",
            "{sev} {side} pleural effusion.",
            "Blunting of the {side} costophrenic angle consistent with a {sev} effusion.",
            "A {sev} {side} effusion is present.",
        ),
        "edema": (
            "There is {sev} pulmonary edema.",
            "{sev} interstitial edema with perihilar haziness.",
            "Bilateral perihilar opacities consistent with {sev} pulmonary edema.",
            "Pulmonary vascular congestion with {sev} edema.",
        ),
        "pneumothorax": (
            "There is a {sev} {side} apical pneumothorax.",
            "{sev} {side} pneumothorax.",
            "A {sev} pneumothorax is seen at the {side} apex.",
            "{side} apical pneumothorax, {sev} in size.",
        ),
    },
    "test": {
        "opacity": (
            "Opacification of the {side} {zone} may reflect pneumonia.",
            "The {side} {zone} shows a {sev} area of consolidation.",
            "{sev} infiltrate projecting over the {side} {zone}.",
        ),
        "cardiomegaly": (
            "Cardiac size is {sevly} increased.",
            "The cardiac silhouette appears {sevly} prominent, consistent with cardiomegaly.",
            "{sev} enlargement of the heart is noted.",
        ),
        "effusion": (
            "{sev} fluid in the {side} pleural space.",
            "The {side} costophrenic angle is blunted, suggesting a {sev} pleural effusion.",
            "Layering {side} pleural fluid, {sev} in amount.",
        ),
        "edema": (
            "{sev} perihilar haze in both lungs suggests fluid overload.",
            "Findings are compatible with {sev} interstitial pulmonary edema.",
            "Hazy bilateral perihilar opacity, likely {sev} edema.",
        ),
        "pneumothorax": (
            "A {sev} {side}-sided pneumothorax is present at the apex.",
            "There is a thin pleural line at the {side} apex consistent with a {sev} pneumothorax.",
            "{sev} apical air collection on the {side}, compatible with pneumothorax.",
        ),
    },
}


@dataclass(frozen=True)
class NormalTopic:
    """A normal or negated statement: when it may be said, what the reader looks at, and its phrasings."""

    name: str
    allowed: object  # callable(set of finding classes, sides with an effusion) -> bool
    regions: tuple  # anatomy box names; "{other}" is the side without an effusion
    train: tuple
    test: tuple


NORMAL_TOPICS = (
    NormalTopic("heart", lambda c, e: "cardiomegaly" not in c, ("cardiac silhouette",),
                ("The heart size is normal.", "Heart size is within normal limits.",
                 "The cardiac silhouette is normal in size."),
                ("Normal cardiac dimensions.", "The heart is not enlarged.")),
    NormalTopic("mediastinum", lambda c, e: True,
                ("upper mediastinum", "right hilar structures", "left hilar structures"),
                ("The mediastinal and hilar contours are normal.", "Mediastinal and hilar contours are unremarkable."),
                ("Normal mediastinal and hilar silhouettes.", "The hila and mediastinum appear unremarkable.")),
    NormalTopic("lungs", lambda c, e: not c & {"opacity", "edema", "pneumothorax"}, ("right lung", "left lung"),
                ("The lungs are clear.", "Lungs are clear bilaterally."),
                ("Both lungs are well aerated and clear.", "No parenchymal abnormality is seen in either lung.")),
    NormalTopic("lungs otherwise", lambda c, e: "opacity" in c and "edema" not in c, ("right lung", "left lung"),
                ("Lungs are otherwise clear.", "The remainder of the lungs is clear."),
                ("Elsewhere the lungs appear clear.",)),
    NormalTopic("consolidation", lambda c, e: "opacity" not in c, ("right lung", "left lung"),
                ("No focal consolidation.", "There is no focal airspace consolidation."),
                ("No evidence of pneumonia.", "Without focal airspace disease.")),
    NormalTopic("effusion", lambda c, e: "effusion" not in c,
                ("right costophrenic angle", "left costophrenic angle"),
                ("No pleural effusion.", "There is no pleural effusion."),
                ("The costophrenic angles are sharp.", "No pleural fluid is identified.")),
    NormalTopic("effusion other side", lambda c, e: len(e) == 1, ("{other} costophrenic angle",),
                ("No {other} pleural effusion.", "There is no {other} effusion."),
                ("The {other} costophrenic angle is clear.",)),
    NormalTopic("pneumothorax", lambda c, e: "pneumothorax" not in c, ("right apical zone", "left apical zone"),
                ("No pneumothorax.", "There is no pneumothorax."),
                ("No evidence of pneumothorax.", "No apical pneumothorax is seen.")),
    NormalTopic("edema", lambda c, e: "edema" not in c, ("right hilar structures", "left hilar structures"),
                ("No pulmonary edema.", "There is no pulmonary vascular congestion."),
                ("No signs of fluid overload.",)),
    NormalTopic("bones", lambda c, e: True, ("right clavicle", "left clavicle", "right lung", "left lung"),
                ("No acute osseous abnormality.",),
                ("The visualized bones are intact.",)),
)
TOPIC_ORDER = {"cardiomegaly": 0, "heart": 0, "mediastinum": 1, "opacity": 2, "edema": 2, "lungs": 2,
               "lungs otherwise": 2.5, "consolidation": 2, "effusion": 3, "effusion other side": 3,
               "pneumothorax": 4, "bones": 5}
IMPRESSIONS = {
    "train": {
        "opacity": ("{side} {zone} pneumonia.", "Findings concerning for {side} {zone} pneumonia."),
        "cardiomegaly": ("Cardiomegaly.", "Enlarged heart."),
        "effusion": ("{side} pleural effusion.",),
        "edema": ("Pulmonary edema.", "Findings consistent with pulmonary edema."),
        "pneumothorax": ("{side} pneumothorax.",),
        None: ("No acute cardiopulmonary process.", "No acute intrathoracic abnormality."),
    },
    "test": {
        "opacity": ("Probable pneumonia in the {side} {zone}.",),
        "cardiomegaly": ("Cardiac enlargement.",),
        "effusion": ("Pleural fluid on the {side}.",),
        "edema": ("Interstitial edema, likely cardiogenic.",),
        "pneumothorax": ("Apical pneumothorax on the {side}.",),
        None: ("Normal chest radiograph.", "No acute abnormality identified."),
    },
}
INDICATIONS = (
    "___ year old woman with shortness of breath, evaluate for pneumonia",
    '___M with cough and fever.\nEval for "infiltrate", effusion',
    "Chest pain, rule out acute process",
    '___F with CHF exacerbation, assess for "fluid overload"',
    "Dyspnea",
    'History: fall, "rib pain".\nEvaluate for pneumothorax, fracture',
    "Hypoxia",
)
DIAGNOSES = {  # ED diagnoses (title, ICD-10) suggested by a finding class; None = unspecific complaints
    "opacity": ("PNEUMONIA, UNSPECIFIED ORGANISM", "J189"),
    "cardiomegaly": ("CONGESTIVE HEART FAILURE, UNSPECIFIED", "I509"),
    "effusion": ("PLEURAL EFFUSION, NOT ELSEWHERE CLASSIFIED", "J90"),
    "edema": ("ACUTE PULMONARY EDEMA", "J810"),
    "pneumothorax": ("OTHER PNEUMOTHORAX", "J9383"),
    None: (("CHEST PAIN, UNSPECIFIED", "R079"), ("SHORTNESS OF BREATH", "R0602"), ("COUGH", "R05")),
}
# Finding class -> (CheXpert label set to 1.0, REFLACX label).
FINDING_LABELS = {
    "opacity": ("Lung Opacity", "Consolidation"),
    "cardiomegaly": ("Cardiomegaly", "Enlarged cardiac silhouette"),
    "effusion": ("Pleural Effusion", "Pleural abnormality"),
    "edema": ("Edema", "Pulmonary edema"),
    "pneumothorax": ("Pneumothorax", "Pneumothorax"),
}
NEGATED_CHEXPERT = {"heart": "Cardiomegaly", "consolidation": "Consolidation", "effusion": "Pleural Effusion",
                    "pneumothorax": "Pneumothorax", "edema": "Edema"}

# Candidate findings (class, patient side, zone) and how often each is drawn.
CANDIDATES = (
    [("opacity", side, zone) for side in ("right", "left") for zone in ("upper", "lower")]
    + [("cardiomegaly", None, None), ("edema", None, None)]
    + [(name, side, None) for name in ("effusion", "pneumothorax") for side in ("right", "left")]
)
CANDIDATE_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 1.5, 1.2, 1.0, 1.0, 0.6, 0.6])
FINDING_COUNT_P = (0.12, 0.2, 0.4, 0.28)  # 0, 1, 2 or 3 findings per image


# ---------------------------------------------------------------------------------------------------------------
# Data model


@dataclass
class Finding:
    name: str
    side: str | None  # patient side: "right" is on the image's left
    zone: str | None  # "upper" / "lower" for opacities
    severity: int  # index into SEVERITIES
    boxes: list = field(default_factory=list)  # [x1, y1, x2, y2] in image pixels (two for bilateral edema)

    @property
    def bbox(self) -> list:
        x1, y1, x2, y2 = np.array(self.boxes).T
        return [float(x1.min()), float(y1.min()), float(x2.max()), float(y2.max())]


@dataclass
class Sentence:
    text: str
    topic: str  # a finding class or a NormalTopic name
    finding: int | None  # index into the image's findings
    boxes: list  # where the reader looks while saying it
    words: list = field(default_factory=list)  # (token, begin, end)


@dataclass
class Study:
    """One patient's study: one frontal image, its findings and its written report."""

    subject_id: int
    study_id: int
    dicom_id: str
    source: str  # "EyeGaze" or "REFLACX"
    split: str = ""
    width: int = 0
    height: int = 0
    findings: list = field(default_factory=list)
    anatomy: dict = field(default_factory=dict)  # name -> box in image pixels
    report: str = ""
    report_sentences: list = field(default_factory=list)
    chexpert: dict = field(default_factory=dict)
    readings: list = field(default_factory=list)

    @property
    def pool(self) -> str:
        return "test" if self.split == "test" else "train"


@dataclass
class Reading:
    """One radiologist dictating one image while the eye tracker records."""

    id: str
    study: Study
    radiologist: int
    discarded: bool = False
    sentences: list = field(default_factory=list)
    fixations: dict = field(default_factory=dict)  # start, end, x, y (image pixels), valid: numpy arrays
    certainty: dict = field(default_factory=dict)  # REFLACX label -> 0..5


# ---------------------------------------------------------------------------------------------------------------
# Ids and the corpus plan


def _unique_ids(count: int, make) -> list:
    ids, seen = [], set()
    while len(ids) < count:
        new = make()
        if new not in seen:
            seen.add(new)
            ids.append(new)
    return ids


def _dicom_id(rng) -> str:
    return "-".join(f"{int(part):08x}" for part in rng.integers(0, 2**32, size=5))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _plan(rng, num_samples: int) -> tuple[list, list, str]:
    """Studies, readings and the calibration image id: about half the readings EGD-CXR (one per image), half
    REFLACX (1-3 per image, one radiologist each); 1.7 studies per patient; the split is drawn per patient."""
    n_egd = max(1, num_samples // 2)
    n_reflacx = num_samples - n_egd
    reflacx_counts = []
    while sum(reflacx_counts) < n_reflacx:
        reflacx_counts.append(min(int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15])), n_reflacx - sum(reflacx_counts)))
    sources = ["EyeGaze"] * n_egd + ["REFLACX"] * len(reflacx_counts)
    counts = [1] * n_egd + reflacx_counts
    order = rng.permutation(len(sources))

    dicom_ids = _unique_ids(len(sources) + 1, lambda: _dicom_id(rng))
    study_ids = _unique_ids(len(sources), lambda: int(50_000_000 + rng.integers(10_000_000)))
    subject_ids = iter(_unique_ids(len(sources), lambda: int(10_000_000 + rng.integers(10_000_000))))
    reading_serials = iter(_unique_ids(n_reflacx, lambda: int(rng.integers(1_000_000))))
    studies, subjects, reading_counts = [], [], []
    for position, index in enumerate(order):
        if not subjects or rng.random() < 0.6:  # a new patient (1.7 studies per patient on average)
            subjects.append(next(subject_ids))
        studies.append(Study(subjects[-1], study_ids[position], dicom_ids[position], sources[index]))
        reading_counts.append(counts[index])

    fractions = dict(SPLITS)
    ranks = rng.permutation(len(subjects))
    n_test = max(1, round(fractions["test"] * len(subjects))) if len(subjects) > 1 else 0
    n_validate = max(1, round(fractions["validate"] * len(subjects))) if len(subjects) > 2 else 0
    split_of = {s: "test" if r < n_test else "validate" if r < n_test + n_validate else "train"
                for s, r in zip(subjects, ranks)}

    readings = []
    for study, count in zip(studies, reading_counts):
        study.split = split_of[study.subject_id]
        if study.source == "EyeGaze":
            study.readings = [Reading(study.dicom_id, study, radiologist=0)]
        else:
            radiologists = rng.choice(5, size=count, replace=False) + 1
            study.readings = [Reading(f"P10{r}R{next(reading_serials):06d}", study, int(r)) for r in radiologists]
        readings += study.readings
    reflacx = [r for r in readings if r.study.source == "REFLACX"]
    if len(reflacx) > 1:
        for index in rng.choice(len(reflacx), size=max(1, round(0.01 * len(reflacx))), replace=False):
            reflacx[index].discarded = True
    return studies, readings, dicom_ids[-1]


# ---------------------------------------------------------------------------------------------------------------
# Anatomy and drawing (u = x / width, v = y / height; the patient's right lung is on the image's left)


def _sign(side: str) -> float:
    return -1.0 if side == "right" else 1.0


@dataclass
class Anatomy:
    cx: float
    top: float  # lung apices
    dome: float  # costophrenic angles, the lowest lung points
    lung_half_width: float
    lung_offset: float  # lung centre distance from the midline
    heart_half_width: float
    heart_half_height: float

    def lung_centre(self, side: str) -> float:
        return self.cx + _sign(side) * self.lung_offset

    @property
    def lung_height(self) -> float:
        return self.dome - self.top

    @property
    def heart_centre(self) -> tuple:
        return self.cx + 0.04, self.dome - 0.075

    def hilum(self, side: str) -> tuple:
        return self.cx + _sign(side) * 0.1, self.top + 0.42 * self.lung_height


def _sample_anatomy(rng, findings) -> Anatomy:
    heart_scale = 1.0
    for finding in findings:
        if finding.name == "cardiomegaly":
            heart_scale = (1.3, 1.45, 1.6)[finding.severity]
    return Anatomy(
        cx=0.5 + rng.uniform(-0.025, 0.025), top=0.14 + rng.uniform(-0.025, 0.025),
        dome=0.76 + rng.uniform(-0.04, 0.03),
        lung_half_width=0.16 + rng.uniform(-0.015, 0.015), lung_offset=0.175 + rng.uniform(-0.012, 0.012),
        heart_half_width=(0.13 + rng.uniform(-0.01, 0.01)) * heart_scale,
        heart_half_height=0.11 * (1 + 0.3 * (heart_scale - 1)),
    )


def _lung(u, v, centre, half_width, top, dome):
    """Lung field mask: rounded apex, widening downwards, domed diaphragm with sharp costophrenic angles."""
    depth = np.clip((v - top) / (dome - top), 0.0, 1.0)
    width = half_width * np.sqrt(np.clip((v - top) / 0.16, 0.0, 1.0)) * (0.8 + 0.2 * depth)
    du = u - centre
    floor = dome - 0.06 * np.clip(1.0 - (du / half_width) ** 2, 0.0, 1.0)
    return (np.abs(du) < width) & (v < floor)


def _smooth_noise(rng, shape, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a cells x cells random grid resized bilinearly to `shape`."""
    grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32))
    return np.asarray(grid.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _mask_box(mask) -> list:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _anatomy_boxes(an: Anatomy, width: int, height: int) -> dict:
    """Named anatomical boxes (EGD-CXR bounding_boxes.csv names) in image pixels, from the drawing geometry."""
    boxes = {}

    def put(name, u1, v1, u2, v2):
        boxes[name] = [round(min(max(t, 0.0), 1.0) * size, 1) for t, size in
                       ((u1, width), (v1, height), (u2, width), (v2, height))]

    a, h = an.lung_half_width, an.lung_height
    for side in ("right", "left"):
        uc, lateral = an.lung_centre(side), an.lung_centre(side) + _sign(side) * a
        put(f"{side} lung", uc - a, an.top, uc + a, an.dome)
        put(f"{side} apical zone", uc - a, an.top, uc + a, an.top + 0.3 * h)
        for index, zone in enumerate(("upper", "mid", "lower")):
            put(f"{side} {zone} lung zone", uc - a, an.top + index * h / 3, uc + a, an.top + (index + 1) * h / 3)
        hu, hv = an.hilum(side)
        put(f"{side} hilar structures", hu - 0.06, hv - 0.08, hu + 0.06, hv + 0.08)
        put(f"{side} costophrenic angle", lateral - 0.07, an.dome - 0.09, lateral + 0.04, an.dome + 0.02)
        put(f"{side} hemidiaphragm", uc - a, an.dome - 0.065, uc + a, an.dome + 0.015)
        clavicle = sorted((an.cx + _sign(side) * 0.05, an.cx + _sign(side) * 0.33))
        put(f"{side} clavicle", clavicle[0], an.top - 0.06, clavicle[1], an.top + 0.045)
    hu, hv = an.heart_centre
    put("cardiac silhouette", hu - an.heart_half_width, hv - an.heart_half_height, hu + an.heart_half_width,
        min(hv + an.heart_half_height, an.dome))
    put("upper mediastinum", an.cx - 0.06, an.top - 0.05, an.cx + 0.06, hv - an.heart_half_height)
    put("trachea", an.cx - 0.025, an.top - 0.08, an.cx + 0.025, an.top + 0.12)
    return boxes


def _gaussian(t, centre: float, sigma: float):
    return np.exp(-0.5 * ((t - centre) / sigma) ** 2)


def _draw(rng, an: Anatomy, findings: list, width: int, height: int) -> np.ndarray:
    """Render a chest X-ray-like uint8 image and fill in each finding's boxes (image pixels).

    Brightness is X-ray density: air dark, soft tissue grey, bone and heart bright. Every 2-D term is built from
    (1, W) and (H, 1) factors (separable Gaussians, a rib pattern from the cosine addition formula).
    """
    u = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    v = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    coarse, fine = _smooth_noise(rng, (height, width), 7), _smooth_noise(rng, (height, width), 30)
    w = u - an.cx

    body = (np.abs(w) / 0.47) ** 4 + ((v - 0.6) / 0.66) ** 4 < 1
    img = np.where(body, 0.5 + 0.1 * np.clip((v - an.dome + 0.05) / 0.05, 0, 1) + 0.05 * coarse, 0.04)
    lungs = {side: _lung(u, v, an.lung_centre(side), an.lung_half_width, an.top, an.dome) for side in ("right", "left")}
    any_lung = lungs["right"] | lungs["left"]
    phase, bend = 2 * np.pi * 9 * v, 2 * np.pi * 9 * 0.9 * w**2
    ribs = 0.5 + 0.5 * (np.cos(phase) * np.cos(bend) + np.sin(phase) * np.sin(bend))  # cos(phase - bend)
    medial = np.clip(1 - np.abs(w) / 0.35, 0, 1)
    img = np.where(any_lung, 0.17 + 0.08 * medial + 0.07 * fine + 0.06 * ribs * ribs * ribs, img)
    if rng.random() < 0.4:  # breast shadows: a normal bilateral lower-zone density that no report mentions
        lateral = _gaussian(u, an.cx - 0.22, 0.09) + _gaussian(u, an.cx + 0.22, 0.09)
        img = img + rng.uniform(0.04, 0.09) * _gaussian(v, an.dome - 0.08, 0.07) * lateral * body

    for finding in findings:
        lung, sign, grade = lungs.get(finding.side, any_lung), _sign(finding.side or "left"), finding.severity
        if finding.name == "opacity":
            uc = an.lung_centre(finding.side) + sign * rng.uniform(0.0, 0.35) * an.lung_half_width
            vc = an.top + an.lung_height * (0.3 if finding.zone == "upper" else 0.68) + rng.uniform(-0.03, 0.03)
            radius = (0.05, 0.065, 0.085)[grade] * height * rng.uniform(0.9, 1.1)
            blob = _gaussian(v * height, vc * height, radius) * _gaussian(u * width, uc * width, radius)
            img = img + (0.2, 0.28, 0.38)[grade] * blob * (0.75 + 0.5 * coarse) * lung
            finding.boxes = [_mask_box((blob > 0.25) & lung)]
        elif finding.name == "edema":
            for side in ("right", "left"):
                hu, hv = an.hilum(side)
                haze = _gaussian(v, hv, 0.1) * _gaussian(u, hu, 0.06)
                img = img + (0.12, 0.18, 0.26)[grade] * haze * (0.6 + 0.8 * fine) * lungs[side]
                finding.boxes.append(_mask_box((haze > 0.3) & lungs[side]))
        elif finding.name == "effusion":
            uc, a = an.lung_centre(finding.side), an.lung_half_width
            lateral = np.clip(sign * (u - uc) / a, -1, 1) * 0.5 + 0.5
            fluid = lung & (v > an.dome - (0.05, 0.08, 0.13)[grade] * (0.55 + 0.45 * lateral))
            img = np.where(fluid, 0.55 + 0.05 * coarse, img)
            finding.boxes = [_mask_box(fluid)]
        elif finding.name == "pneumothorax":
            depth = (0.035, 0.05, 0.07)[grade]
            uc, a = an.lung_centre(finding.side), an.lung_half_width
            apex = v < an.top + 2.5 * depth
            collapsed = _lung(u, v, uc - sign * 0.35 * depth, a - 0.35 * depth, an.top + depth, an.dome)
            inner = _lung(u, v, uc - sign * 0.35 * depth, a - 0.35 * depth - 0.008, an.top + depth + 0.01, an.dome)
            air = lung & ~collapsed & apex
            img = np.where(air, 0.09 + 0.05 * ribs, img)
            img = np.where(collapsed & ~inner & apex, img + 0.22, img)
            finding.boxes = [_mask_box(air)]

    hu, hv = an.heart_centre
    heart = ((u - hu) / an.heart_half_width) ** 2 + ((v - hv) / an.heart_half_height) ** 2 < 1
    mediastinum = (np.abs(w) < 0.05 + 0.02 * np.clip((v - an.top) / 0.3, 0, 1)) & (v < hv) & body
    aortic_knob = ((u - an.cx - 0.055) / 0.03) ** 2 + ((v - an.top - 0.13) / 0.035) ** 2 < 1
    img = np.where(mediastinum | heart | aortic_knob, 0.66 + 0.04 * coarse, img)
    img = img + 0.04 * ((np.abs(w) < 0.022) & body)  # spine
    trachea = (np.abs(w) < 0.014) & (v > an.top - 0.1) & (v < an.top + 0.12)
    img = np.where(trachea, img - 0.2, img)  # air
    off_midline = np.abs(w)
    clavicles = ((np.abs(v - (an.top + 0.03 - 0.28 * (off_midline - 0.05))) < 0.012)
                 & (off_midline > 0.05) & (off_midline < 0.33))
    img = img + 0.16 * clavicles
    for finding in findings:
        if finding.name == "cardiomegaly":
            finding.boxes = [_mask_box(heart & (v < an.dome))]

    gamma = rng.uniform(0.8, 1.25)
    curve = (255 * (np.arange(256) / 255) ** gamma).astype(np.uint8)  # exposure as a lookup table
    exposure = np.clip(img * (255 * rng.uniform(0.88, 1.12)) + 255 * rng.uniform(-0.04, 0.04), 0, 255)
    blurred = Image.fromarray(curve[exposure.astype(np.uint8)]).filter(ImageFilter.BoxBlur(1))
    noise = (rng.random((height, width), dtype=np.float32) - 0.5) * rng.uniform(10, 24)
    return np.clip(np.asarray(blurred, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def _sample_findings(rng) -> list:
    """Zero to three findings at distinct places, at most two of them opacities."""
    count = int(rng.choice(len(FINDING_COUNT_P), p=FINDING_COUNT_P))
    while True:
        chosen = rng.choice(len(CANDIDATES), size=count, replace=False, p=CANDIDATE_WEIGHTS / CANDIDATE_WEIGHTS.sum())
        if sum(CANDIDATES[i][0] == "opacity" for i in chosen) <= 2:
            return [Finding(*CANDIDATES[i], severity=int(rng.integers(3))) for i in sorted(chosen)]


# ---------------------------------------------------------------------------------------------------------------
# Report sentences


def _finish(text: str) -> str:
    """Fix "a" before a vowel and capitalise the first letter."""
    text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)
    return text[0].upper() + text[1:]


def _finding_sentence(rng, finding: Finding, pool: str) -> str:
    adjectives, adverbs = SEVERITY_WORDS[finding.name]
    return _finish(_pick(rng, FINDING_TEMPLATES[pool][finding.name]).format(
        sev=_pick(rng, adjectives[finding.severity]),
        sevly=_pick(rng, adverbs[finding.severity]) if adverbs else "",
        side=finding.side or "",
        zone=_pick(rng, ZONE_WORDS[pool][finding.zone]) if finding.zone else "",
    ))


def _compose(rng, study: Study) -> list:
    """Finding sentences plus two to five normal / negated ones, in a loosely anatomical order."""
    findings, pool = study.findings, study.pool
    classes = {f.name for f in findings}
    effusion_sides = {f.side for f in findings if f.name == "effusion"}
    other = ({"right", "left"} - effusion_sides).pop() if len(effusion_sides) == 1 else None
    sentences = [Sentence(_finding_sentence(rng, f, pool), f.name, i, f.boxes) for i, f in enumerate(findings)]
    topics = [t for t in NORMAL_TOPICS if t.allowed(classes, effusion_sides)]
    count = min(len(topics), int(rng.integers(2, 5)) + (not findings))
    for index in sorted(rng.choice(len(topics), size=count, replace=False)):
        topic = topics[index]
        text = _pick(rng, getattr(topic, pool)).format(other=other)
        boxes = [study.anatomy[name.format(other=other)] for name in topic.regions]
        sentences.append(Sentence(text, topic.name, None, boxes))
    keys = [TOPIC_ORDER[s.topic] + rng.uniform(0, 1.6) for s in sentences]
    return [sentences[i] for i in np.argsort(keys, kind="stable")]


def _written_report(rng, study: Study) -> tuple[str, list, set]:
    """The MIMIC-CXR report (FINDINGS in its own wording, IMPRESSION; hard-wrapped), its sentences and topics."""
    composed = _compose(rng, study)
    findings_text = [s.text for s in composed]
    pool = IMPRESSIONS[study.pool]
    impression = [_finish(_pick(rng, pool[f.name]).format(
        side=f.side, zone=_pick(rng, ZONE_WORDS[study.pool][f.zone]) if f.zone else "")) for f in study.findings]
    impression = impression or [_pick(rng, pool[None])]
    sections = [textwrap.fill(" ".join(text), width=72, initial_indent=f"{header}: ")
                for header, text in (("FINDINGS", findings_text), ("IMPRESSION", impression))]
    return "\n\n".join(sections) + "\n", findings_text + impression, {s.topic for s in composed}


def _chexpert(rng, study: Study, topics: set) -> dict:
    """CheXpert labeller-style values: 1.0 mentioned, -1.0 uncertain, 0.0 negated, "" not mentioned."""
    values = {label: "" for label in CHEXPERT_LABELS}
    for topic, label in NEGATED_CHEXPERT.items():
        if topic in topics:
            values[label] = 0.0
    for finding in study.findings:
        values[FINDING_LABELS[finding.name][0]] = 1.0
        if finding.name == "opacity":
            values[_pick(rng, ("Consolidation", "Pneumonia"))] = _pick(rng, (1.0, -1.0))
        if finding.name == "cardiomegaly" and rng.random() < 0.3:
            values["Enlarged Cardiomediastinum"] = 1.0
    if not study.findings:
        values["No Finding"] = 1.0
    return values


# ---------------------------------------------------------------------------------------------------------------
# Dictation timing and gaze


def _speak(rng, sentences: list, start: float, pace: float, decimals: int) -> float:
    """Give every word a (begin, end); returns the end of the last word."""
    t = start
    for sentence in sentences:
        for token in sentence.text.split():
            duration = (0.08 + 0.045 * len(token.strip(".,"))) * pace * rng.uniform(0.8, 1.2)
            sentence.words.append((token, round(t, decimals), round(t + duration, decimals)))
            t += duration + rng.uniform(0.02, 0.1) + (rng.uniform(0.2, 0.4) if token.endswith(",") else 0)
        t = sentence.words[-1][2] + rng.uniform(0.55, 1.4)
    return sentences[-1].words[-1][2]


def _scan(rng, stream: dict, until: float, boxes: list, size: tuple, p_noise: float):
    """Append fixations up to time `until`: a random walk inside the boxes, some noise anywhere on the image."""
    width, height = size
    while stream["t"] < until:
        duration = 0.08 + rng.gamma(4.0, 0.055)
        box = stream["box"]
        if rng.random() < p_noise:
            point, box = (rng.uniform(0, width), rng.uniform(0, height)), None
        elif box is not None and box in boxes and rng.random() < 0.7:
            x1, y1, x2, y2 = box
            step = rng.normal(0, 0.3, 2) * (x2 - x1, y2 - y1)
            point = (min(max(stream["xy"][0] + float(step[0]), x1 + 1), x2 - 1),
                     min(max(stream["xy"][1] + float(step[1]), y1 + 1), y2 - 1))
        else:
            box = _pick(rng, boxes)
            x1, y1, x2, y2 = box
            point = (rng.uniform(0.9 * x1 + 0.1 * x2, 0.1 * x1 + 0.9 * x2),
                     rng.uniform(0.9 * y1 + 0.1 * y2, 0.1 * y1 + 0.9 * y2))
        stream["rows"].append((stream["t"], stream["t"] + duration, *point))
        stream["t"] += duration + 0.02 + rng.exponential(0.03)
        stream["box"], stream["xy"] = box, point


def _dictate(rng, reading: Reading, decimals: int) -> None:
    """Sentences with word times, and fixations that follow them (gaze leads speech by 0.2-0.45 s)."""
    study = reading.study
    sentences = _compose(rng, study)
    size = (study.width, study.height)
    survey = [study.anatomy[n] for n in ("right lung", "left lung", "cardiac silhouette", "upper mediastinum",
                                         "right costophrenic angle", "left costophrenic angle")]
    survey += [f.bbox for f in study.findings]
    pace = 0.9 + 0.05 * reading.radiologist + rng.uniform(-0.1, 0.1)  # each radiologist has a tempo
    end = _speak(rng, sentences, start=rng.uniform(2.0, 6.0), pace=pace, decimals=decimals)

    stream = {"t": round(rng.uniform(0.05, 0.25), 3), "box": None, "xy": (size[0] / 2, size[1] / 2), "rows": []}
    leads = [s.words[0][1] - rng.uniform(0.2, 0.45) for s in sentences]
    _scan(rng, stream, leads[0], survey, size, p_noise=0.25)
    for sentence, until in zip(sentences, leads[1:] + [end]):
        _scan(rng, stream, until, sentence.boxes, size, p_noise=0.12)
    _scan(rng, stream, end + rng.uniform(0.5, 2.0), survey, size, p_noise=0.3)
    start, stop, x, y = (np.array(column) for column in zip(*stream["rows"]))
    reading.sentences = sentences
    reading.fixations = {"start": start, "end": stop, "x": x, "y": y, "valid": rng.random(len(x)) > 0.02}


def _egd_screen_pads(width: int, height: int) -> tuple:
    """(top, bottom, left, right) pads of the image fitted, aspect kept and centred, on the 1920 x 1080 screen."""
    scale = min(EGD_SCREEN[0] / width, EGD_SCREEN[1] / height)
    shown_w, shown_h = round(width * scale), round(height * scale)
    left, top = (EGD_SCREEN[0] - shown_w) // 2, (EGD_SCREEN[1] - shown_h) // 2
    return top, EGD_SCREEN[1] - shown_h - top, left, EGD_SCREEN[0] - shown_w - left


def _reflacx_screen_box(width: int, height: int) -> tuple:
    """(xmin, ymin, xmax, ymax) of the whole image fitted into the 4K screen's image area, right of the buttons."""
    area_w, area_h = REFLACX_SCREEN[0] - REFLACX_IMAGE_X0, REFLACX_SCREEN[1]
    scale = min(area_w / width, area_h / height)
    xmin = REFLACX_IMAGE_X0 + round((area_w - width * scale) / 2)
    ymin = round((area_h - height * scale) / 2)
    return xmin, ymin, xmin + round(width * scale), ymin + round(height * scale)


def _look_off_image(rng, reading: Reading, count: int, egd: bool) -> None:
    """Move `count` fixations off the image: into the EGD side pads (all IMAGE_SIZES are narrower than 16:9), or
    onto the REFLACX buttons (the last fixations)."""
    study, fix = reading.study, reading.fixations
    if egd:
        top, bottom, left, right = _egd_screen_pads(study.width, study.height)
        scale = (EGD_SCREEN[0] - left - right) / study.width
        indices = rng.choice(np.arange(1, len(fix["x"])), size=count, replace=False)
        pad_x = rng.uniform(0.1, 0.9, count) * left / scale
        fix["x"][indices] = np.where(rng.random(count) < 0.5, -pad_x, study.width + pad_x)
    else:
        xmin, ymin, xmax, ymax = _reflacx_screen_box(study.width, study.height)
        scale = (xmax - xmin) / study.width
        indices = np.arange(len(fix["x"]) - count, len(fix["x"]))
        fix["x"][indices] = (rng.uniform(80, 600, count) - xmin) / scale
        fix["y"][indices] = (rng.uniform(300, 1900, count) - ymin) / scale


# ---------------------------------------------------------------------------------------------------------------
# Writers


def _write_csv(path: Path, header: list, rows) -> None:
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


def _calibration_fixations(rng) -> dict:
    """Fixations on the white dot at the screen centre, in the calibration image's own (screen-sized) pixels."""
    count = int(rng.integers(3, 7))
    start = np.cumsum(rng.uniform(0.25, 0.6, count)) - 0.2
    return {"start": start, "end": start + rng.uniform(0.15, 0.35, count),
            "x": rng.normal(EGD_SCREEN[0] / 2, 15, count), "y": rng.normal(EGD_SCREEN[1] / 2, 12, count),
            "valid": np.ones(count, bool)}


def _egd_sessions(rng, studies: list, calibration_id: str) -> dict:
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
            fix = _calibration_fixations(rng)
            rows.setdefault(study.subject_id, []).extend(_egd_fixation_rows(
                rng, session, media, calibration_id, fix, EGD_SCREEN, (0, 0, 0, 0), onset, tick0))
            media, onset = media + 1, onset + float(fix["end"][-1]) + rng.uniform(0.5, 1.5)
        fix = study.readings[0].fixations
        rows.setdefault(study.subject_id, []).extend(_egd_fixation_rows(
            rng, session, media, study.dicom_id, fix, (study.width, study.height),
            _egd_screen_pads(study.width, study.height), onset, tick0))
        media, shown, onset = media + 1, shown + 1, onset + float(fix["end"][-1]) + rng.uniform(1.0, 3.0)
    return rows


def _master_sheet_row(rng, study: Study, indication: str) -> list:
    classes = [f.name for f in study.findings]
    diagnoses = [DIAGNOSES[c] for c in dict.fromkeys(classes)] or [_pick(rng, DIAGNOSES[None])]
    dx = [value for pair in diagnoses for value in pair]
    dx += [""] * (18 - len(dx))
    normal = int(not classes)
    labels = [normal, normal, int("cardiomegaly" in classes or "edema" in classes), int("opacity" in classes),
              int("opacity" in classes), int("cardiomegaly" in classes), 0, 0, 0, int("effusion" in classes),
              int("edema" in classes), normal, 0, 0, 0]
    decade = int(rng.integers(2, 9)) * 10
    return [study.dicom_id, _mimic_path(study), study.study_id, study.subject_id,
            int(30_000_000 + rng.integers(10_000_000)), _pick(rng, ("F", "M")), f"{decade} - {decade + 10}",
            *_egd_screen_pads(study.width, study.height), *dx, *labels,
            *(study.chexpert[label] for label in CHEXPERT_LABELS), indication]


def _write_egd(rng, folder: Path, studies: list, fixation_rows: list, indications: list) -> None:
    """One patient's EyeGaze/ part: master sheet, fixations, anatomical boxes and one transcript per image."""
    for study in studies:
        sentences = study.readings[0].sentences
        words = [{"phrase": token, "begin_time": begin, "end_time": end}
                 for s in sentences for token, begin, end in s.words]
        transcript = {"full_text": " ".join(s.text for s in sentences), "time_stamped_text": words}
        path = folder / "audio_segmentation_transcripts" / study.dicom_id / "transcript.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(transcript))
    _write_csv(folder / "master_sheet.csv", MASTER_SHEET_COLUMNS,
               [_master_sheet_row(rng, s, i) for s, i in zip(studies, indications)])
    _write_csv(folder / "fixations.csv", EGD_FIXATION_COLUMNS, fixation_rows)
    _write_csv(folder / "bounding_boxes.csv", BOUNDING_BOX_COLUMNS,
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


def _write_reflacx_reading(rng, folder: Path, reading: Reading, words_file: str) -> None:
    study, fix = reading.study, reading.fixations
    shown = [0, 0, study.width, study.height]
    screen = list(_reflacx_screen_box(study.width, study.height))
    resolution = round(0.03 * max(study.width, study.height))
    level, window = round(0.5 + rng.normal(0, 0.002), 5), round(1.0 - abs(rng.normal(0, 0.002)), 5)
    pupil = (1.0 + 0.1 * rng.standard_normal(len(fix["x"]))).round(4)
    _write_csv(folder / "fixations.csv", REFLACX_FIXATION_COLUMNS, [
        [round(float(s), 3), round(float(e), 3), int(round(x)), int(round(y)), float(p), resolution, resolution,
         level, window, *shown, *screen]
        for s, e, x, y, p in zip(fix["start"], fix["end"], fix["x"], fix["y"], pupil)])
    _write_csv(folder / words_file, REFLACX_WORD_COLUMNS, _reflacx_word_rows(reading.sentences))
    (folder / "transcription.txt").write_text(" ".join(s.text for s in reading.sentences))
    ellipses = []
    for finding in study.findings:
        label = FINDING_LABELS[finding.name][1]
        for x1, y1, x2, y2 in finding.boxes:
            jitter = rng.normal(0, 0.04, 4) * (x2 - x1, y2 - y1, x2 - x1, y2 - y1)
            flags = [name == label for name in REFLACX_LABELS]
            ellipses.append([*(int(round(c + j)) for c, j in zip((x1, y1, x2, y2), jitter)),
                             reading.certainty[label], *flags])
    _write_csv(folder / "anomaly_location_ellipses.csv", ["xmin", "ymin", "xmax", "ymax", "certainty"] + REFLACX_LABELS,
               ellipses)
    chest = np.array([study.anatomy[n] for n in ("right lung", "left lung", "cardiac silhouette")])
    _write_csv(folder / "chest_bounding_box.csv", ["xmin", "ymin", "xmax", "ymax"],
               [[int(chest[:, 0].min()), int(chest[:, 1].min()), int(chest[:, 2].max()), int(chest[:, 3].max())]])


def _reflacx_metadata_row(reading: Reading) -> list:
    study = reading.study
    image = f"physionet.org/files/mimic-cxr/2.0.0/{_mimic_path(study)}"
    return [reading.id, study.split, reading.discarded, image, study.dicom_id, study.subject_id, study.width,
            study.height, *(reading.certainty.get(label, 0) for label in REFLACX_LABELS), False, ""]


def _ground_truth(readings: list, seed: int) -> dict:
    """synthetic_ground_truth.json: per reading, the image, its findings with boxes and the timed sentences."""
    def entry(reading):
        study = reading.study
        return {
            "source": study.source, "split": study.split, "subject_id": study.subject_id,
            "study_id": study.study_id, "dicom_id": study.dicom_id, "radiologist": reading.radiologist,
            "eye_tracking_data_discarded": reading.discarded,
            "image": f"patient_{study.subject_id}/CXR-JPG/s{study.study_id}/{study.dicom_id}.jpg",
            "width": study.width, "height": study.height,
            "findings": [{"class": f.name, "side": f.side, "zone": f.zone, "severity": SEVERITIES[f.severity],
                          "bbox": f.bbox, "boxes": f.boxes} for f in study.findings],
            "sentences": [{"text": s.text, "topic": s.topic, "finding": s.finding, "begin": s.words[0][1],
                           "end": s.words[-1][2], "boxes": s.boxes} for s in reading.sentences],
            "written_report_sentences": study.report_sentences,
        }

    return {
        "seed": seed,
        "conventions": "boxes are [x1, y1, x2, y2] in image pixels; times are seconds since the image was shown; "
                       "finding sides are the patient's (patient right = image left)",
        "readings": {reading.id: entry(reading) for reading in readings},
    }


# ---------------------------------------------------------------------------------------------------------------
# Public API


def make_synthetic_mimic_eye(out_dir, num_samples: int = 200, seed: int = 0) -> Path:
    """Write a synthetic MIMIC-EYE tree with `num_samples` readings under `out_dir` (new or empty); returns it.

    Deterministic for a seed. All quirks (calibration rows, FPOGV=0 and off-image fixations, a quoted multi-line
    exam indication, a discarded REFLACX reading, both transcript file spellings) appear from 6 samples on.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (one EGD-CXR and one REFLACX reading), got {num_samples}")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    rng = np.random.default_rng(seed)
    studies, readings, calibration_id = _plan(rng, num_samples)

    for study in studies:
        study.findings = _sample_findings(rng)
        study.width, study.height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        anatomy = _sample_anatomy(rng, study.findings)
        study.anatomy = _anatomy_boxes(anatomy, study.width, study.height)
        pixels = _draw(rng, anatomy, study.findings, study.width, study.height)
        path = root / f"patient_{study.subject_id}" / "CXR-JPG" / f"s{study.study_id}" / f"{study.dicom_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        study.report, study.report_sentences, topics = _written_report(rng, study)
        study.chexpert = _chexpert(rng, study, topics)
        for reading in study.readings:
            if not reading.discarded:
                _dictate(rng, reading, decimals=2 if study.source == "EyeGaze" else 3)
            for finding in study.findings:
                label = FINDING_LABELS[finding.name][1]
                reading.certainty[label] = max(reading.certainty.get(label, 0), int(rng.integers(3, 6)))

    egd = [r for r in readings if r.study.source == "EyeGaze"]
    reflacx = [r for r in readings if r.study.source == "REFLACX" and not r.discarded]
    egd[0].fixations["valid"][0] = False  # every quirk at least once
    for reading in egd:
        _look_off_image(rng, reading, count=int(rng.random() < 0.3) + (reading is egd[0]), egd=True)
    for reading in reflacx:
        _look_off_image(rng, reading, count=int(rng.integers(0, 3)), egd=False)
    other_spelling = reflacx[int(rng.integers(len(reflacx)))].id if len(reflacx) > 1 else None
    egd_rows = _egd_sessions(rng, studies, calibration_id)
    indications = {r.study.dicom_id: _pick(rng, INDICATIONS) for r in egd}
    indications[egd[0].id] = INDICATIONS[1]  # commas, quotes and a newline

    by_subject = {}
    for study in studies:
        by_subject.setdefault(study.subject_id, []).append(study)
    for subject, own in by_subject.items():
        patient = root / f"patient_{subject}"
        _write_csv(patient / "CXR-JPG" / "cxr_chexpert.csv", ["subject_id", "study_id"] + CHEXPERT_LABELS,
                   [[s.subject_id, s.study_id, *(s.chexpert[label] for label in CHEXPERT_LABELS)] for s in own])
        _write_csv(patient / "CXR-JPG" / "cxr_split.csv", ["dicom_id", "study_id", "subject_id", "split"],
                   [[s.dicom_id, s.study_id, s.subject_id, s.split] for s in own])
        (patient / "CXR-DICOM").mkdir()
        for study in own:
            (patient / "CXR-DICOM" / f"s{study.study_id}.txt").write_text(study.report)
        own_egd = [s for s in own if s.source == "EyeGaze"]
        if own_egd:
            _write_egd(rng, patient / "EyeGaze", own_egd, egd_rows[subject],
                       [indications[s.dicom_id] for s in own_egd])
        own_reflacx = [r for s in own if s.source == "REFLACX" for r in s.readings]
        if own_reflacx:
            (patient / "REFLACX").mkdir()
            _write_csv(patient / "REFLACX" / "metadata.csv", REFLACX_METADATA_COLUMNS,
                       [_reflacx_metadata_row(r) for r in own_reflacx])
            for reading in own_reflacx:
                if not reading.discarded:
                    words_file = "timestamps_transcriptions.csv" if reading.id == other_spelling else \
                        "timestamps_transcription.csv"
                    folder = patient / "REFLACX" / "main_data" / reading.id
                    folder.mkdir(parents=True)
                    _write_reflacx_reading(rng, folder, reading, words_file)

    (root / "synthetic_ground_truth.json").write_text(json.dumps(_ground_truth(readings, seed), indent=1))
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic MIMIC-EYE corpus (EGD-CXR + REFLACX formats).")
    parser.add_argument("--out", required=True, help="output folder (must be new or empty)")
    parser.add_argument("--num-samples", type=int, default=200, help="number of readings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    root = make_synthetic_mimic_eye(args.out, args.num_samples, args.seed)
    truth = json.loads((root / "synthetic_ground_truth.json").read_text())["readings"].values()
    counts = {name: sum(r["split"] == name for r in truth) for name, _ in SPLITS}
    print(f"wrote {len(truth)} readings ({sum(r['source'] == 'EyeGaze' for r in truth)} EGD-CXR, "
          f"{sum(r['source'] == 'REFLACX' for r in truth)} REFLACX) for "
          f"{len({r['subject_id'] for r in truth})} patients to {root} "
          f"(train/validate/test {counts['train']}/{counts['validate']}/{counts['test']}) "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
