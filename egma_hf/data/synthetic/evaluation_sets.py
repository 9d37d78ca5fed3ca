"""Synthetic twins of the public evaluation sets (CheXpert, RSNA Pneumonia, SIIM-ACR) in their real file formats
and layouts, with images drawn by the synthetic MIMIC-EYE corpus's chest X-ray drawer."""

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from ..evaluation_sets import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_8X200_CLASSES,
    CHEXPERT_COLUMNS,
    CHEXPERT_LABEL_COLUMNS,
    CHEXPERT_TWIN,
    RSNA_TWIN,
    SIIM_CLASSES,
    SIIM_TWIN,
    rle_encode,
    stratified_split,
)
from .anatomy import draw, pneumothorax_mask, sample_anatomy
from .core import Finding, pick
from .formats import csv_line, write_dicom, write_lines

# CheXpert label -> the finding drawn for it. The drawer has no atelectasis, so Atelectasis is drawn as its closest
# look-alike, a small lower-zone opacity; it has nothing like a fracture, a support device or "pleural other", so
# those images show no finding for that label.
DRAWN_AS = {
    "Atelectasis": "opacity", "Consolidation": "opacity", "Pneumonia": "opacity", "Lung Opacity": "opacity",
    "Lung Lesion": "opacity", "Cardiomegaly": "cardiomegaly", "Enlarged Cardiomediastinum": "cardiomegaly",
    "Edema": "edema", "Pleural Effusion": "effusion", "Pneumothorax": "pneumothorax",
}
CONVIRT_8X200_ORDER = ("Fracture", "Edema", "Pneumonia", "Cardiomegaly", "Pneumothorax", "Atelectasis",
                       "Pleural Effusion", "No Finding")  # ConVIRT's ALL_VARS: the candidate file's class order
SIIM_UID_ROOT = "1.2.276.0.7230010.3.1"  # SIIM's UIDs: <root>.2 study, .3 series, .4 instance (= ImageId)


def _findings_for(rng, labels) -> list:
    findings, taken = [], set()
    for label in labels:
        name = DRAWN_AS.get(label)
        if name is None:
            continue
        side = None if name in ("cardiomegaly", "edema") else pick(rng, ("right", "left"))
        zone = ("lower" if label == "Atelectasis" else pick(rng, ("upper", "lower"))) if name == "opacity" else None
        if (name, side, zone) not in taken:
            taken.add((name, side, zone))
            findings.append(Finding(name, side, zone, 0 if label == "Atelectasis" else int(rng.integers(1, 3))))
    return findings


def _draw_image(rng, findings, width: int, height: int):
    anatomy = sample_anatomy(rng, findings)
    return draw(rng, anatomy, findings, width, height), anatomy


def _write_chexpert(out: Path, rng, per_class: int) -> dict:
    """CheXpert-v1.0-small/: train/ and valid/ JPGs, train.csv, valid.csv, chexpert_5x200.csv, chexpert_8x200.csv."""
    folder = out / CHEXPERT_TWIN
    patients = itertools.count(1)

    def study(split, values, patient=None, lateral=False):
        patient = next(patients) if patient is None else patient
        number = patient if split == "train" else 64540 + patient  # valid patients come after train's 64540
        view = "view2_lateral" if lateral else "view1_frontal"
        path = f"CheXpert-v1.0-small/{split}/patient{number:05d}/study1/{view}.jpg"
        positives = [c for c in CHEXPERT_LABEL_COLUMNS if values.get(c) == "1.0"]
        width, height = pick(rng, (160, 176, 192)), pick(rng, (176, 192, 208))
        pixels, _ = _draw_image(rng, _findings_for(rng, positives), width, height)
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out / path, quality=90)
        return patient, {"Path": path, "Sex": pick(rng, ("Male", "Female")), "Age": int(rng.integers(20, 91)),
                         "Frontal/Lateral": "Lateral" if lateral else "Frontal",
                         "AP/PA": "" if lateral else pick(rng, ("AP", "PA")),
                         **{c: values.get(c, "") for c in CHEXPERT_LABEL_COLUMNS}}

    train, exclusive = [], {}
    for label in dict.fromkeys(CHEXPERT_5X200_CLASSES + CHEXPERT_8X200_CLASSES):
        for _ in range(per_class):
            values = {label: "1.0"}
            values.update((str(c), "0.0") for c in rng.choice(CHEXPERT_LABEL_COLUMNS, 2) if c != label)
            train.append(study("train", values)[1])
            exclusive.setdefault(label, []).append(len(train) - 1)
    for index in range(max(4, per_class // 2)):  # multi-label rows with uncertain cells, each with a lateral view
        chosen = [str(c) for c in rng.choice(["Cardiomegaly", "Edema", "Pleural Effusion", "Lung Opacity",
                                              "Atelectasis", "Consolidation", "Support Devices"], 3, replace=False)]
        values = {chosen[0]: "1.0", chosen[1]: "1.0", chosen[2]: "-1.0"}
        values["Edema" if index == 0 else "Fracture"] = "-1.0"  # one row surely uncertain in a competition task
        patient, row = study("train", values)
        train += [row, study("train", values, patient, lateral=True)[1]]
    valid = []
    for index in range(per_class):  # expert labels: every cell 1.0 or 0.0
        chosen = {str(c) for c in rng.choice(CHEXPERT_LABEL_COLUMNS[1:], int(rng.integers(0, 4)), replace=False)}
        values = {c: "1.0" if c in chosen or (c == "No Finding" and not chosen) else "0.0"
                  for c in CHEXPERT_LABEL_COLUMNS}
        patient, row = study("valid", values)
        valid.append(row)
        if index < 2:
            valid.append(study("valid", values, patient, lateral=True)[1])

    def filled(row):  # GLoRIA and ConVIRT fill blanks with 0 before writing their subsets
        return [row[c] if row[c] != "" else ("0.0" if c in CHEXPERT_LABEL_COLUMNS else "0") for c in CHEXPERT_COLUMNS]

    write_lines(folder / "train.csv", [csv_line(CHEXPERT_COLUMNS)]
                 + [csv_line(row[c] for c in CHEXPERT_COLUMNS) for row in train])
    write_lines(folder / "valid.csv", [csv_line(CHEXPERT_COLUMNS)]
                 + [csv_line(row[c] for c in CHEXPERT_COLUMNS) for row in valid])
    write_lines(folder / "chexpert_5x200.csv", [csv_line(("",) + CHEXPERT_COLUMNS)]  # pandas index first
                 + [csv_line([i] + filled(train[i])) for c in CHEXPERT_5X200_CLASSES for i in exclusive[c]])
    write_lines(folder / "chexpert_8x200.csv", [csv_line(CHEXPERT_COLUMNS)]
                 + [csv_line(filled(train[i])) for c in CONVIRT_8X200_ORDER for i in exclusive[c]])
    return {
        "chexpert_5x200": {"csv_path": folder / "chexpert_5x200.csv", "images_root": folder},
        "chexpert_8x200": {"csv_path": folder / "chexpert_8x200.csv", "images_root": folder},
        "chexpert": {"csv_path": folder / "train.csv", "images_root": folder},
        "chexpert_valid": {"csv_path": folder / "valid.csv", "images_root": folder},
    }


def _uuid(rng) -> str:
    digits = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16))
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _siim_uid(rng, kind: int, serial: int) -> str:
    return f"{SIIM_UID_ROOT}.{kind}.8323329.{serial}.{1517875000 + int(rng.integers(1000))}.{int(rng.integers(10**6))}"


def _write_rsna(out: Path, rng, per_class: int) -> dict:
    """rsna-pneumonia/: stage_2_train_labels.csv, stage_2_detailed_class_info.csv, stage_2_train_images/*.dcm."""
    folder = out / RSNA_TWIN
    patients = [(_uuid(rng), target) for target in (0, 1) for _ in range(per_class)]
    inverted = {patients[0][0], patients[per_class][0]}  # one MONOCHROME1 file per class
    label_lines, class_lines = {}, {}
    for index, (patient, target) in enumerate(patients):
        if target:
            labels = ["Pneumonia", "Pneumonia"] if index % 3 == 0 else ["Pneumonia"]  # some patients have 2 boxes
            kind = "Lung Opacity"
        else:
            labels = [] if index % 2 else [pick(rng, ("Cardiomegaly", "Pleural Effusion"))]
            kind = "No Lung Opacity / Not Normal" if labels else "Normal"
        findings = _findings_for(rng, labels)
        if len(labels) == 2 and len(findings) == 1:  # the two opacities must be in different places
            findings.append(Finding("opacity", "left" if findings[0].side == "right" else "right", "lower", 1))
        pixels, _ = _draw_image(rng, findings, 192, 192)
        write_dicom(folder / "stage_2_train_images" / f"{patient}.dcm", pixels,
                     "MONOCHROME1" if patient in inverted else "MONOCHROME2",
                     f"1.2.276.0.7230010.3.1.2.8323329.{index}.1", f"1.2.276.0.7230010.3.1.3.8323329.{index}.1",
                     f"1.2.276.0.7230010.3.1.4.8323329.{index}.1", patient)
        boxes = [f.boxes[0] for f in findings if f.name == "opacity"] if target else [None]
        label_lines[patient] = [
            csv_line([patient, "", "", "", "", 0]) if box is None else
            csv_line([patient, *(f"{value:.1f}" for value in (box[0], box[1], box[2] - box[0], box[3] - box[1])), 1])
            for box in boxes]
        class_lines[patient] = [csv_line([patient, kind])] * len(boxes)
    order = [patients[i][0] for i in rng.permutation(len(patients))]  # the Kaggle file is not sorted
    write_lines(folder / "stage_2_train_labels.csv",
                 ["patientId,x,y,width,height,Target"] + [line for p in order for line in label_lines[p]])
    write_lines(folder / "stage_2_detailed_class_info.csv",
                 ["patientId,class"] + [line for p in order for line in class_lines[p]])
    return {"rsna": {"root": folder}}


def _write_siim(out: Path, rng, per_class: int) -> dict:
    """siim-acr-pneumothorax/: train-rle.csv, dicom-images-train/<study>/<series>/<ImageId>.dcm, test_ids.txt."""
    folder = out / SIIM_TWIN
    lines, labels, image_ids = {}, {}, []
    for index, target in enumerate([0] * per_class + [1] * per_class):
        image_id = _siim_uid(rng, 4, 1000 + index)
        study, series = _siim_uid(rng, 2, 1000 + index), _siim_uid(rng, 3, 1000 + index)
        if target:
            findings = [Finding("pneumothorax", pick(rng, ("right", "left")), None, int(rng.integers(1, 3)))]
        else:
            findings = _findings_for(rng, [pick(rng, ("No Finding", "Cardiomegaly", "Pleural Effusion"))])
        pixels, anatomy = _draw_image(rng, findings, 192, 192)
        write_dicom(folder / "dicom-images-train" / study / series / f"{image_id}.dcm", pixels,
                     "MONOCHROME1" if index in (0, per_class) else "MONOCHROME2", study, series, image_id,
                     _uuid(rng))
        if target:
            mask = pneumothorax_mask(anatomy, findings[0], 192, 192)
            parts = [mask]
            rows = np.flatnonzero(mask.any(axis=1))
            if index % 3 == 0 and len(rows) > 1:  # several masks for one image: split the air at its middle row
                middle = rows[len(rows) // 2]
                parts = [mask & (np.arange(192) < middle)[:, None], mask & (np.arange(192) >= middle)[:, None]]
            lines[image_id] = [f"{image_id}, {rle_encode(part)}" for part in parts]
        else:
            lines[image_id] = [f"{image_id}, -1"]  # the Kaggle file has a space after every comma
        labels[image_id] = SIIM_CLASSES[target]
        image_ids.append(image_id)
    order = [image_ids[i] for i in rng.permutation(len(image_ids))]
    write_lines(folder / "train-rle.csv", ["ImageId, EncodedPixels"] + [line for i in order for line in lines[i]])
    split_of = stratified_split(image_ids, [labels[i] for i in image_ids], {"rest": 0.7, "test": 0.3}, seed=1)
    write_lines(folder / "test_ids.txt", sorted(i for i in image_ids if split_of[i] == "test"))
    return {"siim": {"root": folder},
            "siim_with_test_ids": {"root": folder, "test_ids": folder / "test_ids.txt"}}


def make_synthetic_evaluation_sets(out_dir, images_per_class: int = 20, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Write small evaluation sets in the real file formats and layouts under `out_dir` (new or empty).

    Returns {name: keyword arguments of its loader}: "chexpert_5x200", "chexpert_8x200", "chexpert" (train.csv) and
    "chexpert_valid" (valid.csv, also `load_chexpert`), "rsna", "siim", and "siim_with_test_ids" (`load_siim_acr`
    with the tree's `test_ids.txt`, a stratified 30% of the images).

    - CheXpert (`CheXpert-v1.0-small/`, JPGs of 160-192 x 176-208 px): `images_per_class` train images exclusively
      positive for each 5x200 / 8x200 class, plus multi-label rows with uncertain (-1.0) and blank cells, each with a
      lateral view; `images_per_class` valid studies labelled 1.0 / 0.0 only, two with a lateral view;
      `chexpert_5x200.csv` (GLoRIA/MGCA: pandas index column, blanks as 0) and `chexpert_8x200.csv` (ConVIRT's
      candidate.csv: no index, ConVIRT's class order) are subsets of train.csv.
    - RSNA (`rsna-pneumonia/`): `images_per_class` Normal and Pneumonia patients, 192 px 8-bit DICOMs (one per class
      MONOCHROME1), every third Pneumonia patient with two boxes (two label rows); unsorted label rows.
    - SIIM (`siim-acr-pneumothorax/`): `images_per_class` images per class in nested study/series folders (one per
      class MONOCHROME1); Pneumothorax rows carry the RLE of the drawn pleural air, every third image as two masks.

    Findings are drawn by the synthetic MIMIC-EYE drawer (pneumonia and consolidation as focal opacities,
    cardiomegaly as an enlarged heart, ...; see `DRAWN_AS` for the stand-ins). Lateral views are drawn as frontal
    ones (the drawer has no lateral anatomy). Deterministic for a seed.
    """
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be at least 1, got {images_per_class}")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    return {
        **_write_chexpert(root, rngs[0], images_per_class),
        **_write_rsna(root, rngs[1], images_per_class),
        **_write_siim(root, rngs[2], images_per_class),
    }
