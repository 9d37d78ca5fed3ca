"""Readers for the public chest X-ray evaluation sets, from the files users download, and a synthetic twin of each.

Every loader returns a `datasets.Dataset` with one row per image and at least the columns `id`, `image` (absolute
path), `label` (the class name for single-label sets, "" for multi-label ones), `labels` (the positive class names)
and `split` ("train" / "validate" / "test"):

- CheXpert 5x200 (`load_chexpert_5x200`): GLoRIA's zero-shot set, 200 frontal CheXpert train images per competition
  class, each positive for exactly one of the five. Its CSV is `train.csv` rows written with their row index first
  and blanks filled with 0 (GLoRIA/MGCA `preprocess_chexpert_5x200_data`); MedCLIP's `chexpert-5x200-meta.csv`
  (path column `imgpath`) loads too. Split "test".
- CheXpert 8x200 (`load_chexpert_8x200`): ConVIRT's retrieval candidates (`image-retrieval/candidate.csv`), 200
  images for each of 8 classes, `train.csv` columns, exclusively positive for one class. Split "test".
- CheXpert (`load_chexpert`): the official `train.csv` / `valid.csv` (or MGCA's `train_split.csv` /
  `valid_split.csv`), multi-label over the chosen tasks, for linear probing. The official validation set is the
  test set (CheXpert's own test labels are hidden), as in MGCA and the EGMA paper.
- RSNA Pneumonia (`load_rsna_pneumonia`): `stage_2_train_labels.csv` (one row per box), one row per patient, classes
  Normal / Pneumonia, and MGCA's 70/15/15 split reproduced exactly.
- SIIM-ACR Pneumothorax (`load_siim_acr`): `train-rle.csv` (one row per mask), one row per image, classes
  No Finding / Pneumothorax; a given test-id list (e.g. Saab et al.'s subset) is the test split, or a seeded
  stratified 70/15/15 split.

Splits are computed on every id in the label file before images are looked up, so an image's split does not depend
on which other images are on disk. Nothing is dropped silently: rows that cannot be used are counted by reason,
logged as one line (logger `egma_hf.data`) and kept in `dataset.info.description`. Repeated rows are kept once and
counted, an id with contradictory rows (an RSNA patient with Target 0 and 1, a SIIM image with "-1" and a mask) is
a counted skip, and a listed path that would lead outside the images folder (`..`, an absolute path elsewhere, a
symbolic link pointing outside) is a counted skip whose file is never opened. A cell outside the format's encoding
is an error naming the file, line and column.

`EVALUATION_SETS` is the one registry of evaluation sets (these and the MIMIC-EYE corpus): each name's loader,
class names, built-in prompt set (a name that `egma_hf.zero_shot` resolves), readable name, what zero-shot
evaluation measures on it, and where its twin lies in the synthetic evaluation tree. `make_synthetic_evaluation_sets`
(in `egma_hf.data.synthetic`) writes small trees in all these formats, with images drawn by the synthetic MIMIC-EYE
corpus's chest X-ray drawer.
"""

import itertools
import logging
import math
import numbers
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import datasets
import numpy as np
import pandas as pd

from ..prompts import CHEXPERT_8X200_QUERIES
from .readers import (
    ListedPathError,
    SkipLog,
    check_columns,
    load_mimic_eye,
    read_csv_file,
    resolve_inside,
)

logger = logging.getLogger("egma_hf.data")

CHEXPERT_LABEL_COLUMNS = (  # CheXpert train.csv / valid.csv order
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_LABEL_COLUMNS
CHEXPERT_COMPETITION_TASKS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT_5X200_CLASSES = CHEXPERT_COMPETITION_TASKS
CHEXPERT_8X200_CLASSES = tuple(CHEXPERT_8X200_QUERIES)
# uncertain="per_task": U-Ones for these, U-Zeros for the rest (the CheXpert paper's best policy; MGCA/GLoRIA's
# CHEXPERT_UNCERTAIN_MAPPINGS).
CHEXPERT_UNCERTAIN_ONES = ("Atelectasis", "Edema", "Pleural Effusion")
RSNA_CLASSES = ("Normal", "Pneumonia")
SIIM_CLASSES = ("No Finding", "Pneumothorax")
SPLITS = ("train", "validate", "test")

# Files whose name tells their split: CheXpert's own and MGCA's split of train.csv.
CHEXPERT_SPLIT_OF_FILE = {"train.csv": "train", "train_split.csv": "train", "valid_split.csv": "validate",
                          "valid.csv": "test"}
UNCERTAIN_POLICIES = ("zeros", "ones", "per_task")


def _features(**extra) -> datasets.Features:
    return datasets.Features({
        "id": datasets.Value("string"),
        "image": datasets.Value("string"),
        "label": datasets.Value("string"),
        "labels": datasets.List(datasets.Value("string")),
        "split": datasets.Value("string"),
        **extra,
    })


SINGLE_LABEL_FEATURES = _features()
CHEXPERT_FEATURES = _features(targets=datasets.List(datasets.Value("float32")))
RSNA_FEATURES = _features(boxes=datasets.List(datasets.List(datasets.Value("float32"))))
SIIM_FEATURES = _features(mask_rles=datasets.List(datasets.Value("string")))


# ---------------------------------------------------------------------------------------------------------------
# Shared plumbing


def _to_dataset(rows: list[dict], skips: SkipLog, name: str, source, features: datasets.Features) -> datasets.Dataset:
    if not rows:
        summary = f"{name} ({source}): {skips.summary()}"
        logger.warning(summary)
        raise ValueError(f"no usable images in {summary}")
    per_class = Counter(label for row in rows for label in row["labels"])
    per_split = Counter(row["split"] for row in rows)
    summary = (
        f"{name} ({source}): {len(rows)} images; labels "
        + ", ".join(f"{label} {count}" for label, count in sorted(per_class.items()))
        + "; splits " + ", ".join(f"{split} {per_split[split]}" for split in SPLITS if per_split[split])
        + f"; {skips.summary()}"
    )
    (logger.warning if skips.counts else logger.info)(summary)
    info = datasets.DatasetInfo(description=summary, features=features)
    return datasets.Dataset.from_list(rows, features=features, info=info)


def _read_table(path, required: Iterable[str], what: str) -> pd.DataFrame:
    """A CSV as text cells; header names stripped (SIIM's header is "ImageId, EncodedPixels"). Errors name the
    file: missing, empty, not parseable as CSV, or without a required column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path} (expected {what})")
    frame = read_csv_file(path, dtype=str, keep_default_na=False)
    frame.columns = [str(column).strip() for column in frame.columns]
    check_columns(frame, list(required), path, what)
    return frame


def _folder(path: Path, what: str) -> Path:
    if path.is_file():
        raise NotADirectoryError(f"{path} is a file, not a folder (expected {what})")
    if not path.is_dir():
        raise FileNotFoundError(f"missing folder: {path} (expected {what})")
    return path.absolute()


def _root(root) -> Path:
    """The `root` argument as a Path; an error naming it if it is not a path or is a file."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path, got {type(root).__name__}")
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(f"root must be a folder, but {root} is a file")
    return root


# ---------------------------------------------------------------------------------------------------------------
# CheXpert


def _path_column(frame: pd.DataFrame, path, what: str) -> str:
    for column in ("Path", "imgpath"):  # CheXpert, GLoRIA, MGCA, ConVIRT; MedCLIP's *-meta.csv
        if column in frame.columns:
            return column
    raise ValueError(f"{path}: no image path column for {what} (expected 'Path' or 'imgpath'); "
                     f"found {list(frame.columns)}")


def _label_values(frame: pd.DataFrame, columns, path) -> np.ndarray:
    """CheXpert label cells -> floats: 1 (positive), 0 (negative), -1 (uncertain) or NaN (blank: not mentioned)."""
    cells = frame[list(columns)].apply(lambda column: column.str.strip())
    values = cells.apply(lambda column: pd.to_numeric(column, errors="coerce"))
    bad = (values.isna() & (cells != "")) | (values.notna() & ~values.isin([1, 0, -1]))
    if bad.to_numpy().any():
        row, column = next((r, c) for r, c in itertools.product(bad.index, bad.columns) if bad.at[r, c])
        raise ValueError(f"{path}: line {row + 2}, column {column!r} holds {frame.at[row, column]!r}; CheXpert labels "
                         "are 1.0, 0.0, -1.0 or blank")
    return values.to_numpy(dtype=float)


class _ImageFinder:
    """Finds a listed image under `root`, dropping leading folders of the listed path until the file exists.

    So `CheXpert-v1.0-small/train/p../study1/view1_frontal.jpg` (CheXpert, ConVIRT), `CheXpert-v1.0/train/...`
    (GLoRIA) and `./data/CheXpert/data/CheXpert-v1.0-small/train/...` (MedCLIP) all resolve under the folder that
    holds `train/` and `valid/` or any folder above it. At least `keep` trailing parts are kept, so two patients'
    `study1/view1_frontal.jpg` are never confused.

    Only files under `root` are ever returned: a listed path holding `..`, an absolute path outside `root` whose
    trailing parts are not under it either, and a file that is a link leading outside `root` raise
    `ListedPathError`.
    """

    def __init__(self, root, keep: int = 4):
        self.root = _folder(Path(root), "the images root")
        self.keep = keep
        self.dropped = 0  # leading parts dropped for the last hit; tried first

    def __call__(self, listed: str) -> Path | None:
        listed = listed.strip().replace("\\", "/")
        posix = PurePosixPath(listed)
        if ".." in posix.parts:
            raise ListedPathError(f"listed path {listed!r} holds '..'")
        outside = False
        if posix.is_absolute():
            try:
                inside = resolve_inside(self.root, listed)
            except ListedPathError:
                outside = True  # written on another machine, perhaps: try its trailing parts under root
            else:
                if inside.is_file():
                    return inside
        parts = [part for part in posix.parts if part not in ("/", ".")]
        if not parts:
            return None
        drops = range(max(len(parts) - self.keep, 0) + 1)
        for drop in sorted(drops, key=lambda d: d != self.dropped):
            candidate = self.root.joinpath(*parts[drop:])
            if candidate.is_file():
                self.dropped = drop
                return resolve_inside(self.root, PurePosixPath(*parts[drop:]), "listed image")
        if outside:
            raise ListedPathError(f"absolute path {listed!r} is outside {self.root}, and its last parts are not "
                                  "under it")
        return None


def _chexpert_id(listed: str) -> str:
    """`CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg` -> `patient00001/study1/view1_frontal`."""
    parts = PurePosixPath(listed.strip().replace("\\", "/")).with_suffix("").parts
    return "/".join(parts[-3:])


def _listed_images(paths: pd.Series, positions, images_root, skips: SkipLog):
    """Yield (position, image id, image path) for the CSV rows at `positions`, skipping (and counting) blank paths,
    repeated images, paths leading outside `images_root` and images missing on disk."""
    find, seen = _ImageFinder(images_root), set()
    for position in positions:
        listed = paths.iat[position]
        line = int(paths.index[position]) + 2
        if not listed.strip():
            skips.skip("rows with a blank image path", example=f"line {line}")
            continue
        image_id = _chexpert_id(listed)
        if image_id in seen:
            skips.skip("duplicate rows", example=listed)
            continue
        try:
            image = find(listed)
        except ListedPathError as error:
            skips.skip("listed paths leading outside the images root (not read)", example=f"line {line}: {error}")
            continue
        if image is None:
            skips.skip("listed images missing on disk", example=listed)
            continue
        seen.add(image_id)
        yield position, image_id, image


def _load_single_label(csv_path, images_root, classes, name: str, what: str) -> datasets.Dataset:
    frame = _read_table(csv_path, classes, what)
    path_column = _path_column(frame, csv_path, what)
    values = _label_values(frame, classes, csv_path)
    positive = values == 1
    one_hot = (positive.sum(axis=1) == 1) & (positive | (values == 0) | np.isnan(values)).all(axis=1)
    skips = SkipLog()
    bad_lines = np.flatnonzero(~one_hot) + 2
    skips.skip(f"rows not positive for exactly one of the {len(classes)} classes (others 0 or blank)",
               count=len(bad_lines), example=f"line {bad_lines[0]}" if len(bad_lines) else None)
    rows = []
    for index, image_id, image in _listed_images(frame[path_column], np.flatnonzero(one_hot), images_root, skips):
        label = classes[int(np.argmax(positive[index]))]
        rows.append(dict(id=image_id, image=str(image), label=label, labels=[label], split="test"))
    return _to_dataset(rows, skips, name, csv_path, SINGLE_LABEL_FEATURES)


def load_chexpert_5x200(csv_path, images_root) -> datasets.Dataset:
    """CheXpert 5x200 (GLoRIA's `chexpert_5x200.csv`, or MedCLIP's `chexpert-5x200-meta.csv`) -> 1000 rows.

    Args:
        csv_path: the CSV; needs an image path column (`Path` or `imgpath`) and the five class columns.
        images_root: the folder holding CheXpert's `train/` (e.g. `CheXpert-v1.0-small`) or a folder above it.

    Single-label: a row must be positive (1) for exactly one of Atelectasis, Cardiomegaly, Consolidation, Edema and
    Pleural Effusion, with the other four 0 or blank; other rows (several positives, none, or an uncertain -1) are
    skipped and counted, never guessed. Every row's split is "test".
    """
    return _load_single_label(csv_path, images_root, CHEXPERT_5X200_CLASSES, "CheXpert 5x200",
                              "CheXpert 5x200 (image path + the 5 competition-class columns)")


def load_chexpert_8x200(csv_path, images_root) -> datasets.Dataset:
    """CheXpert 8x200 (ConVIRT's `image-retrieval/candidate.csv`) -> 1600 rows, one class each.

    Same contract as `load_chexpert_5x200`, over No Finding, Cardiomegaly, Edema, Pneumonia, Atelectasis,
    Pneumothorax, Pleural Effusion and Fracture. The retrieval text queries are
    `egma_hf.prompts.CHEXPERT_8X200_QUERIES`.
    """
    return _load_single_label(csv_path, images_root, CHEXPERT_8X200_CLASSES, "CheXpert 8x200",
                              "CheXpert 8x200 (image path + the 8 class columns)")


def load_chexpert(
    csv_path,
    images_root,
    tasks: Iterable[str] = CHEXPERT_COMPETITION_TASKS,
    uncertain: str = "zeros",
    split: str | None = None,
    frontal_only: bool = True,
) -> datasets.Dataset:
    """CheXpert's official `train.csv` / `valid.csv` -> one multi-label row per image.

    Args:
        csv_path: `train.csv`, `valid.csv` (or MGCA's `train_split.csv` / `valid_split.csv`); columns `Path`,
            `Frontal/Lateral` and the tasks, cells 1.0 / 0.0 / -1.0 (uncertain) / blank (not mentioned, read as 0).
        images_root: the folder holding `train/` and `valid/` (e.g. `CheXpert-v1.0-small`) or a folder above it.
        tasks: label columns to predict; `targets` holds them in this order.
        uncertain: how -1 is read: "zeros" (U-Zeros), "ones" (U-Ones) or "per_task" (U-Ones for Atelectasis, Edema
            and Pleural Effusion, U-Zeros otherwise, as MGCA's linear probe).
        split: "train", "validate" or "test"; by default from the file name: train.csv -> train, valid.csv -> test
            (CheXpert's test labels are hidden, so its validation set is everyone's test set), MGCA's
            train_split.csv / valid_split.csv -> train / validate.
        frontal_only: keep frontal views only (as MGCA; the EGMA paper's "202" validation images are the frontal
            ones); lateral rows are counted as left out.

    Columns beyond the common ones: `targets` (float 0/1 per task). `label` is "" (multi-label).
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError("tasks is empty")
    if not all(isinstance(task, str) for task in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct label column names, got {tasks!r}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    split = split or CHEXPERT_SPLIT_OF_FILE.get(Path(csv_path).name)
    if split is None:
        raise ValueError(f"cannot tell the split of {csv_path} from its name (known: {sorted(CHEXPERT_SPLIT_OF_FILE)});"
                         f" pass split= one of {SPLITS}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    what = f"CheXpert labels (Path, Frontal/Lateral, {', '.join(tasks)})"
    frame = _read_table(csv_path, tasks + (["Frontal/Lateral"] if frontal_only else []), what)
    path_column = _path_column(frame, csv_path, what)
    skips = SkipLog()
    if frontal_only:
        views = frame["Frontal/Lateral"].str.strip()
        unknown = ~views.isin(["Frontal", "Lateral"])
        if unknown.any():
            line = int(np.flatnonzero(unknown.to_numpy())[0])
            raise ValueError(f"{csv_path}: line {line + 2}, column 'Frontal/Lateral' holds {views.iat[line]!r}; "
                             "expected Frontal or Lateral")
        lateral = views != "Frontal"
        skips.leave_out("non-frontal views (frontal_only=True)", int(lateral.sum()))
        frame = frame[~lateral]
    values = _label_values(frame, tasks, csv_path)
    ones = {"zeros": set(), "ones": set(tasks), "per_task": set(CHEXPERT_UNCERTAIN_ONES)}[uncertain]
    targets = np.nan_to_num(values, nan=0.0)
    for column, task in enumerate(tasks):
        targets[targets[:, column] == -1, column] = 1.0 if task in ones else 0.0
    rows = []
    for position, image_id, image in _listed_images(frame[path_column], range(len(frame)), images_root, skips):
        row_targets = targets[position]
        rows.append(dict(id=image_id, image=str(image), label="",
                         labels=[task for task, value in zip(tasks, row_targets) if value == 1], split=split,
                         targets=row_targets.astype(np.float32).tolist()))
    return _to_dataset(rows, skips, f"CheXpert (uncertain={uncertain})", csv_path, CHEXPERT_FEATURES)


# ---------------------------------------------------------------------------------------------------------------
# RSNA Pneumonia


def _mgca_split(patient_ids: list[str]) -> dict[str, str]:
    """MGCA's RSNA split (mgca/preprocess/rsna.py), reproduced without scikit-learn.

    MGCA groups the label rows by patientId (so the frame is sorted by patientId), then
    `train_test_split(df, test_size=0.15 * 2, random_state=0)` -> (train, rest) and
    `train_test_split(rest, test_size=0.5, random_state=0)` -> (test, valid): the *first* half is the test set.
    scikit-learn's shuffle split takes ceil(test_size * n) for the second output from the front of
    `RandomState(seed).permutation(n)` and the remainder, in permutation order, for the first output.
    """
    ids = sorted(patient_ids)
    count = len(ids)
    n_rest = math.ceil(0.3 * count)
    order = np.random.RandomState(0).permutation(count)
    rest, train = order[:n_rest], order[n_rest:]
    n_valid = math.ceil(0.5 * n_rest)
    order = np.random.RandomState(0).permutation(n_rest)
    valid, test = rest[order[:n_valid]], rest[order[n_valid:]]
    split_of = {}
    for name, members in (("train", train), ("validate", valid), ("test", test)):
        split_of.update((ids[i], name) for i in members)
    return split_of


def load_rsna_pneumonia(
    root, labels_csv="stage_2_train_labels.csv", images_dir="stage_2_train_images"
) -> datasets.Dataset:
    """RSNA Pneumonia Detection (Kaggle stage 2 train) -> one row per patient, classes Normal / Pneumonia.

    Args:
        root: the download folder.
        labels_csv: `patientId,x,y,width,height,Target`, one row per box for Target=1 (blank box for Target=0);
            relative to `root` unless absolute.
        images_dir: folder of `<patientId>.dcm` (a `.png` / `.jpg` of the same name is used if there is no DICOM);
            relative to `root` unless absolute.

    A patient is Pneumonia if its rows have Target=1 (one row per box), "Normal" if its row has Target=0,
    including the detailed class "No Lung Opacity / Not Normal"; a patient with both is a counted skip, and repeated
    rows are kept once. Splits are MGCA's (70/15/15 by patient, see `_mgca_split`, over every patient listed).
    Extra column `boxes`: [x, y, width, height] per box, in image pixels (finite, width and height > 0).
    """
    root = _root(root)
    csv_path = root / labels_csv
    frame = _read_table(csv_path, ["patientId", "x", "y", "width", "height", "Target"],
                        "RSNA labels (patientId, x, y, width, height, Target)")
    target = pd.to_numeric(frame["Target"].str.strip(), errors="coerce")
    ids = frame["patientId"].str.strip()
    bad = ~target.isin([0, 1]) | (ids == "")
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{csv_path}: line {line + 2} has patientId {ids.iat[line]!r} and Target "
                         f"{frame['Target'].iat[line]!r}; expected a patientId and Target 0 or 1")
    skips = SkipLog()
    repeated = frame[["patientId", "x", "y", "width", "height", "Target"]].apply(lambda c: c.str.strip()).duplicated()
    skips.skip("repeated label rows dropped", count=int(repeated.sum()),
               example=f"line {int(np.flatnonzero(repeated.to_numpy())[0]) + 2}" if repeated.any() else None)
    boxes: dict[str, list] = {patient: [] for patient in ids}
    targets_of: dict[str, set] = {patient: set() for patient in ids}
    for line in np.flatnonzero(~repeated.to_numpy()):
        patient = ids.iat[line]
        targets_of[patient].add(int(target.iat[line]))
        if target.iat[line] != 1:
            continue
        try:
            box = [float(frame[c].iat[line]) for c in ("x", "y", "width", "height")]
        except ValueError:
            raise ValueError(f"{csv_path}: line {line + 2} has Target=1 but no numeric x, y, width, height") from None
        if not (all(math.isfinite(value) for value in box) and box[2] > 0 and box[3] > 0):
            raise ValueError(f"{csv_path}: line {line + 2} has the box x, y, width, height = {box}; expected finite "
                             "numbers with width and height > 0")
        boxes[patient].append(box)
    conflicting = sorted(patient for patient, targets in targets_of.items() if len(targets) > 1)
    skips.skip("patients with both Target 0 and Target 1 rows skipped", count=len(conflicting),
               example=conflicting[0] if conflicting else None)
    split_of = _mgca_split(list(boxes))
    images = _folder(root / images_dir, "RSNA images <patientId>.dcm")
    rows = []
    for patient in sorted(set(boxes) - set(conflicting)):
        try:
            candidates = [resolve_inside(images, f"{patient}{suffix}", "patientId")
                          for suffix in (".dcm", ".png", ".jpg")]
        except ListedPathError as error:
            skips.skip("patientIds leading outside the images folder (not read)", example=str(error))
            continue
        image = next((candidate for candidate in candidates if candidate.is_file()), None)
        if image is None:
            skips.skip("listed images missing on disk", example=f"{patient}.dcm")
            continue
        label = RSNA_CLASSES[1 in targets_of[patient]]
        rows.append(dict(id=patient, image=str(image), label=label, labels=[label], split=split_of[patient],
                         boxes=boxes[patient]))
    return _to_dataset(rows, skips, "RSNA Pneumonia", csv_path, RSNA_FEATURES)


# ---------------------------------------------------------------------------------------------------------------
# SIIM-ACR Pneumothorax


def stratified_split(ids: list[str], labels: list[str], shares: dict[str, float], seed: int) -> dict[str, str]:
    """Seeded split of `ids` into the named shares, per label (largest-remainder counts, so 20 -> 14/3/3)."""
    rng = np.random.default_rng(seed)
    names = list(shares)
    weights = np.array([shares[name] for name in names], dtype=float)
    weights /= weights.sum()
    split_of = {}
    for label in sorted(set(labels)):
        members = sorted(i for i, other in zip(ids, labels) if other == label)
        exact = weights * len(members)
        counts = np.floor(exact).astype(int)
        for index in np.argsort(-(exact - counts), kind="stable")[: len(members) - counts.sum()]:
            counts[index] += 1
        bounds = np.cumsum(counts)
        for rank, member in enumerate(rng.permutation(len(members))):
            split_of[members[member]] = names[int(np.searchsorted(bounds, rank, side="right"))]
    return split_of


def _read_ids(test_ids) -> list[str]:
    """A list of ImageIds, or a file of them: a CSV with an `ImageId` column, otherwise one id per line."""
    if not isinstance(test_ids, (str, os.PathLike)):
        return [str(i).strip() for i in test_ids if str(i).strip()]
    path = Path(test_ids)
    if path.suffix.lower() == ".csv":
        return [i.strip() for i in _read_table(path, ["ImageId"], "test ImageIds (column ImageId)")["ImageId"]
                if i.strip()]
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path} (expected test ImageIds, one per line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_siim_acr(
    root,
    labels_csv="train-rle.csv",
    images_dir="dicom-images-train",
    test_ids=None,
    seed: int = 0,
) -> datasets.Dataset:
    """SIIM-ACR Pneumothorax (Kaggle) -> one row per image, classes No Finding / Pneumothorax.

    Args:
        root: the download folder.
        labels_csv: `train-rle.csv` (header "ImageId, EncodedPixels", values " -1" for no pneumothorax, else a
            relative run-length mask, one row per mask) or the stage-2 `stage_2_train.csv` (no spaces); relative to
            `root` unless absolute.
        images_dir: `dicom-images-train`, holding `<study>/<series>/<ImageId>.dcm`; found with one directory walk.
        test_ids: ImageIds of the test split (a list, a text file with one id per line, or a CSV with an
            `ImageId` column), e.g. Saab et al.'s subset; the other images are split train/validate 70:15,
            stratified and seeded. Without it: a seeded stratified 70/15/15 split.
        seed: the split's seed.

    Extra column `mask_rles`: the image's RLE masks as in the file. Unlike MGCA (whose split runs over the CSV's rows,
    so one image's masks can land in different splits), images with several masks are one row. Repeated rows are
    kept once; an image listed both with "-1" and with a mask, or found as two DICOM files, is a counted skip.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    root = _root(root)
    csv_path = root / labels_csv
    frame = _read_table(csv_path, ["ImageId", "EncodedPixels"], "SIIM labels (ImageId, EncodedPixels)")
    ids, encoded = frame["ImageId"].str.strip(), frame["EncodedPixels"].str.strip()
    masks: dict[str, list[str]] = {image_id: [] for image_id in ids}
    listed_empty, rows_seen, repeated = set(), set(), []
    for line, (image_id, rle) in enumerate(zip(ids, encoded)):
        runs = rle.split()
        valid_rle = len(runs) >= 2 and len(runs) % 2 == 0 and all(n.isdigit() for n in runs)
        if not image_id or (rle != "-1" and not valid_rle):
            raise ValueError(f"{csv_path}: line {line + 2} has ImageId {image_id!r} and EncodedPixels {rle[:40]!r}; "
                             "expected an ImageId and -1 or run-length pairs")
        if (image_id, rle) in rows_seen:
            repeated.append(line + 2)
            continue
        rows_seen.add((image_id, rle))
        if rle == "-1":
            listed_empty.add(image_id)
        else:
            masks[image_id].append(rle)
    skips = SkipLog()
    skips.skip("repeated label rows dropped", count=len(repeated), example=f"line {repeated[0]}" if repeated else None)
    conflicting = sorted(image_id for image_id in listed_empty if masks[image_id])
    skips.skip("images listed with both -1 and a mask skipped", count=len(conflicting),
               example=conflicting[0] if conflicting else None)
    for image_id in conflicting:
        del masks[image_id]
    image_ids = sorted(masks)
    labels = [SIIM_CLASSES[bool(masks[i])] for i in image_ids]
    if test_ids is None:
        split_of = stratified_split(image_ids, labels, {"train": 0.70, "validate": 0.15, "test": 0.15}, seed)
    else:
        wanted = set(_read_ids(test_ids))
        unknown = sorted(wanted - set(ids))
        skips.skip(f"test ids not in {csv_path.name} ignored", count=len(unknown),
                   example=unknown[0] if unknown else None)
        if not wanted & set(masks):
            raise ValueError(f"none of the {len(wanted)} test ids is in {csv_path}")
        rest = [(i, label) for i, label in zip(image_ids, labels) if i not in wanted]
        split_of = stratified_split([i for i, _ in rest], [label for _, label in rest],
                                    {"train": 0.70, "validate": 0.15}, seed)
        split_of.update((i, "test") for i in wanted & set(masks))
    images_root = _folder(root / images_dir, "SIIM DICOMs <study>/<series>/<ImageId>.dcm")
    found: dict[str, list[Path]] = {}
    for folder, subfolders, files in os.walk(images_root):
        subfolders.sort()
        for name in sorted(files):
            if name.lower().endswith(".dcm"):
                found.setdefault(name[:-4], []).append(Path(folder) / name)
    rows = []
    for image_id, label in zip(image_ids, labels):
        if image_id not in found:
            skips.skip("listed images missing on disk", example=f"{image_id}.dcm")
            continue
        if len(found[image_id]) > 1:
            skips.skip("images found as two or more DICOM files skipped", example=f"{image_id}.dcm")
            continue
        try:
            image = resolve_inside(images_root, found[image_id][0].relative_to(images_root), "DICOM file")
        except ListedPathError as error:
            skips.skip("image files linking outside the images folder (not read)", example=str(error))
            continue
        rows.append(dict(id=image_id, image=str(image), label=label, labels=[label],
                         split=split_of[image_id], mask_rles=masks[image_id]))
    return _to_dataset(rows, skips, "SIIM-ACR Pneumothorax", csv_path, SIIM_FEATURES)


def rle_encode(mask: np.ndarray) -> str:
    """(H, W) bool mask -> SIIM's relative RLE: pairs (gap since the previous run's end, run length), column-major."""
    flat = np.concatenate([[False], np.asarray(mask, bool).flatten(order="F"), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{gap} {length}" for gap, length in zip(gaps, ends - starts))


def _rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """SIIM's relative RLE -> (H, W) bool mask (the inverse of `rle_encode`)."""
    flat = np.zeros(height * width, bool)
    numbers = [int(token) for token in rle.split()]
    position = 0
    for gap, length in zip(numbers[0::2], numbers[1::2]):
        position += gap
        flat[position:position + length] = True
        position += length
    return flat.reshape((height, width), order="F")


# ---------------------------------------------------------------------------------------------------------------
# Registry


class EvaluationSet(NamedTuple):
    """One evaluation set: how it is read, what is measured on it, and where its synthetic twin lies."""

    loader: Callable[..., datasets.Dataset]
    classes: tuple[str, ...]  # class names (single-label), tasks (multi-label) or the retrieval queries' classes
    prompt_set: str | None  # the built-in prompt set over exactly `classes` (egma_hf.zero_shot.BUILTIN_PROMPT_SETS)
    title: str  # the readable name in reports
    task: str  # what zero-shot evaluation measures: "single_label", "multi_label" (AUROC per finding) or "retrieval"
    zero_shot_prompts: str | None  # the default prompts of that zero-shot evaluation (None: retrieval)
    synthetic: dict[str, str] | None  # the loader's path arguments in the synthetic evaluation tree, relative to it
    linear_probe: bool  # whether the linear-probe protocol runs on it (it has train, validate and test images)

    def synthetic_arguments(self, tree) -> dict[str, Path]:
        """The loader's keyword arguments for this set's twin in `tree` (written by `make_synthetic_evaluation_sets`,
        e.g. `cached_synthetic_evaluation_sets()`)."""
        if self.synthetic is None:
            raise ValueError(f"{self.title} has no twin in the synthetic evaluation tree")
        return {name: Path(tree) / relative for name, relative in self.synthetic.items()}


CHEXPERT_TWIN, RSNA_TWIN, SIIM_TWIN = "CheXpert-v1.0-small", "rsna-pneumonia", "siim-acr-pneumothorax"
EVALUATION_SETS = {
    "chexpert_5x200": EvaluationSet(
        load_chexpert_5x200, CHEXPERT_5X200_CLASSES, "chexpert_5x200", "CheXpert 5x200", "single_label",
        "chexpert_5x200", {"csv_path": f"{CHEXPERT_TWIN}/chexpert_5x200.csv", "images_root": CHEXPERT_TWIN}, False),
    "chexpert_8x200": EvaluationSet(
        load_chexpert_8x200, CHEXPERT_8X200_CLASSES, "chexpert_8x200", "CheXpert 8x200", "retrieval", None,
        {"csv_path": f"{CHEXPERT_TWIN}/chexpert_8x200.csv", "images_root": CHEXPERT_TWIN}, False),
    "rsna": EvaluationSet(
        load_rsna_pneumonia, RSNA_CLASSES, "rsna", "RSNA Pneumonia", "single_label", "rsna", {"root": RSNA_TWIN},
        True),
    "siim": EvaluationSet(  # the twin's test_ids.txt stands in for Saab et al.'s test subset
        load_siim_acr, SIIM_CLASSES, "siim_acr", "SIIM-ACR Pneumothorax", "single_label", "siim_acr",
        {"root": SIIM_TWIN, "test_ids": f"{SIIM_TWIN}/test_ids.txt"}, True),
    "chexpert": EvaluationSet(  # zero-shot on valid.csv (CheXpert's test set); the linear probe reads the folder
        load_chexpert, CHEXPERT_COMPETITION_TASKS, None, "CheXpert (official split)", "multi_label",
        "chexpert_findings", {"csv_path": f"{CHEXPERT_TWIN}/valid.csv", "images_root": CHEXPERT_TWIN}, True),
    "mimic_eye": EvaluationSet(  # the pre-training corpus; its twin is the synthetic MIMIC-EYE corpus
        load_mimic_eye, (), None, "MIMIC-EYE", "multi_label", "chexpert_findings", None, False),
}
