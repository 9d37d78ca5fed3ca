"""Gaze rows rendered as pre-rendered heatmap JPGs in the released EGMA code's or CoGaze's layout, so that
`egma_hf.data.prerendered_gaze.load_prerendered_gaze` is tested on the real layouts and round-trips.

`write_prerendered_gaze(load_mimic_eye(make_synthetic_mimic_eye(...)), out_dir, "egma")` writes each reading's maps
at their own resolution as 8-bit grayscale JPGs (quality 95): read back at the same `heatmap_size` they differ from
the originals by JPEG and 8-bit rounding only (at most 0.0072 measured on a 40-reading synthetic corpus).
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import load_image
from ..prerendered_gaze import (
    COGAZE_LOOKUP,
    COGAZE_READING_MAP,
    EGMA_CSV_NAME,
    EGMA_IMAGE_NAME,
    EGMA_READING_MAP,
    LAYOUTS,
    split_report_like_released_egma,
)

# the released code's label order (`_labels_` in egma/dataset.py), unlike CheXpert's files: read by name
EGMA_LABEL_ORDER = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]


def save_heatmap_jpg(heatmap, path: Path, quality: int = 95) -> None:
    """A (h, w) map in [0, 1] -> an 8-bit grayscale JPG (0 stays exactly 0)."""
    pixels = np.clip(np.rint(np.asarray(heatmap, np.float32) * 255.0), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, quality=quality)


def _copy_image(source: Path, target: Path) -> None:
    """The row's image as `src.jpg`: copied if it is a JPG, else decoded and saved as an 8-bit JPG."""
    if source.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(source, target)
    else:
        Image.fromarray(np.rint(load_image(source) * 255).astype(np.uint8), mode="L").save(target, quality=95)


def _write_egma_folder(row: dict, folder: Path, quality: int) -> None:
    sentences = list(row["sentences"])
    report = " ".join(sentences)
    if split_report_like_released_egma(report) != sentences:
        raise ValueError(f"reading {row['reading_id']}: its sentences {sentences!r} do not come back from the "
                         "released EGMA code's splitter once joined; the egma layout cannot hold them")
    folder.mkdir(parents=True)
    _copy_image(Path(row["image"]), folder / EGMA_IMAGE_NAME)
    save_heatmap_jpg(row["reading_heatmap"], folder / EGMA_READING_MAP, quality)
    for index, heatmap in enumerate(row["sentence_heatmaps"]):
        save_heatmap_jpg(heatmap, folder / "sentence_hm" / f"{index}_sent_hm_array.jpg", quality)


def _write_cogaze_folder(row: dict, folder: Path, quality: int) -> None:
    folder.mkdir(parents=True)
    lookup = {str(index): sentence for index, sentence in enumerate(row["sentences"])}
    lookup["full_text"] = row["report"]
    (folder / COGAZE_LOOKUP).write_text(json.dumps(lookup, indent=1))
    save_heatmap_jpg(row["reading_heatmap"], folder / COGAZE_READING_MAP, quality)
    for index, heatmap in enumerate(row["sentence_heatmaps"]):
        save_heatmap_jpg(heatmap, folder / f"{index}_heatmap.jpg", quality)


def write_prerendered_gaze(gaze_rows, out_dir, layout: str, quality: int = 95) -> list[str]:
    """Gaze rows (`FEATURES`, e.g. from `load_mimic_eye`) -> pre-rendered heatmap folders under `out_dir` (new or
    empty). Returns the reading ids written, in row order.

    Both layouts hold one reading per image: the first row of each `dicom_id` with `has_gaze` is written (its
    folder is named by the dicom_id); later readings of the image and rows without gaze are not.
    - `"egma"`: `<dicom_id>/src.jpg` (the row's image), `hm_array.jpg`, `sentence_hm/{i}_sent_hm_array.jpg`, and
      `mimic_eye_pair_data_v1.csv` with `imgpath` (relative to `out_dir`), `subject_id`, `study_id`, `report` (the
      sentences joined by spaces; ValueError if the released splitter would not give them back) and the 14
      CheXpert labels in the released code's order (1.0 for the row's labels, 0.0 otherwise; other label names
      are not written).
    - `"cogaze"`: `<dicom_id>/report_heatmap.jpg`, `sentence-heatmap-lookup.json` with keys "0", "1", ... and
      "full_text" (the row's report), and `<key>_heatmap.jpg`; no image (read it from the corpus: `image_root`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    written, seen, csv_rows = [], set(), []
    for row in gaze_rows:
        if not row["has_gaze"] or row["dicom_id"] in seen:
            continue
        seen.add(row["dicom_id"])
        folder = root / row["dicom_id"]
        if layout == "egma":
            _write_egma_folder(row, folder, quality)
            labels = set(row["labels"])
            csv_rows.append([f"{row['dicom_id']}/{EGMA_IMAGE_NAME}", row["subject_id"], row["study_id"],
                             " ".join(row["sentences"]), *("1.0" if name in labels else "0.0"
                                                           for name in EGMA_LABEL_ORDER)])
        else:
            _write_cogaze_folder(row, folder, quality)
        written.append(row["reading_id"])
    if layout == "egma":
        with open(root / EGMA_CSV_NAME, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["imgpath", "subject_id", "study_id", "report", *EGMA_LABEL_ORDER])
            writer.writerows(csv_rows)
    return written
