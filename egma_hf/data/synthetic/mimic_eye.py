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
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .anatomy import IMAGE_SIZES, anatomy_boxes, draw, sample_anatomy, sample_findings
from .core import Reading, Study, pick
from .formats import (
    CHEXPERT_LABELS,
    REFLACX_METADATA_COLUMNS,
    chexpert,
    egd_sessions,
    reflacx_metadata_row,
    write_csv,
    write_egd,
    write_reflacx_reading,
)
from .gaze import dictate, look_off_image
from .language import FINDING_LABELS, INDICATIONS, SEVERITIES, written_report

SPLITS = (("train", 0.7), ("validate", 0.1), ("test", 0.2))  # per patient


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
        study.findings = sample_findings(rng)
        study.width, study.height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        anatomy = sample_anatomy(rng, study.findings)
        study.anatomy = anatomy_boxes(anatomy, study.width, study.height)
        pixels = draw(rng, anatomy, study.findings, study.width, study.height)
        path = root / f"patient_{study.subject_id}" / "CXR-JPG" / f"s{study.study_id}" / f"{study.dicom_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        study.report, study.report_sentences, topics = written_report(rng, study)
        study.chexpert = chexpert(rng, study, topics)
        for reading in study.readings:
            if not reading.discarded:
                dictate(rng, reading, decimals=2 if study.source == "EyeGaze" else 3)
            for finding in study.findings:
                label = FINDING_LABELS[finding.name][1]
                reading.certainty[label] = max(reading.certainty.get(label, 0), int(rng.integers(3, 6)))

    egd = [r for r in readings if r.study.source == "EyeGaze"]
    reflacx = [r for r in readings if r.study.source == "REFLACX" and not r.discarded]
    egd[0].fixations["valid"][0] = False  # every quirk at least once
    for reading in egd:
        look_off_image(rng, reading, count=int(rng.random() < 0.3) + (reading is egd[0]), egd=True)
    for reading in reflacx:
        look_off_image(rng, reading, count=int(rng.integers(0, 3)), egd=False)
    other_spelling = reflacx[int(rng.integers(len(reflacx)))].id if len(reflacx) > 1 else None
    egd_rows = egd_sessions(rng, studies, calibration_id)
    indications = {r.study.dicom_id: pick(rng, INDICATIONS) for r in egd}
    indications[egd[0].id] = INDICATIONS[1]  # commas, quotes and a newline

    by_subject = {}
    for study in studies:
        by_subject.setdefault(study.subject_id, []).append(study)
    for subject, own in by_subject.items():
        patient = root / f"patient_{subject}"
        write_csv(patient / "CXR-JPG" / "cxr_chexpert.csv", ["subject_id", "study_id"] + CHEXPERT_LABELS,
                   [[s.subject_id, s.study_id, *(s.chexpert[label] for label in CHEXPERT_LABELS)] for s in own])
        write_csv(patient / "CXR-JPG" / "cxr_split.csv", ["dicom_id", "study_id", "subject_id", "split"],
                   [[s.dicom_id, s.study_id, s.subject_id, s.split] for s in own])
        (patient / "CXR-DICOM").mkdir()
        for study in own:
            (patient / "CXR-DICOM" / f"s{study.study_id}.txt").write_text(study.report)
        own_egd = [s for s in own if s.source == "EyeGaze"]
        if own_egd:
            write_egd(rng, patient / "EyeGaze", own_egd, egd_rows[subject],
                       [indications[s.dicom_id] for s in own_egd])
        own_reflacx = [r for s in own if s.source == "REFLACX" for r in s.readings]
        if own_reflacx:
            (patient / "REFLACX").mkdir()
            write_csv(patient / "REFLACX" / "metadata.csv", REFLACX_METADATA_COLUMNS,
                       [reflacx_metadata_row(r) for r in own_reflacx])
            for reading in own_reflacx:
                if not reading.discarded:
                    words_file = "timestamps_transcriptions.csv" if reading.id == other_spelling else \
                        "timestamps_transcription.csv"
                    folder = patient / "REFLACX" / "main_data" / reading.id
                    folder.mkdir(parents=True)
                    write_reflacx_reading(rng, folder, reading, words_file)

    (root / "synthetic_ground_truth.json").write_text(json.dumps(_ground_truth(readings, seed), indent=1))
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic MIMIC-EYE corpus (EGD-CXR + REFLACX formats).")
    parser.add_argument("--out", required=True, help="output folder (must be new or empty)")
    parser.add_argument("--num-samples", type=int, default=200, help="number of readings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mimic-cxr", help="also write a MIMIC-CXR-JPG tree here that includes this corpus' images")
    parser.add_argument("--mimic-cxr-images", type=int, default=5000, help="images in that tree (default 5000)")
    parser.add_argument("--mimic-cxr-image-size", type=int, default=64, help="side of its new images in px")
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
    if args.mimic_cxr:
        from .mimic_cxr import make_synthetic_mimic_cxr  # it imports this module

        started = time.perf_counter()
        tree = make_synthetic_mimic_cxr(args.mimic_cxr, args.mimic_cxr_images, args.seed, mimic_eye=root,
                                        image_size=args.mimic_cxr_image_size)
        print(f"wrote a MIMIC-CXR-JPG tree of {args.mimic_cxr_images} images including them to {tree} in "
              f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
