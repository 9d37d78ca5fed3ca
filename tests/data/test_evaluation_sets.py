"""Evaluation-set loaders on synthetic trees in the real formats: GLoRIA's 5x200, ConVIRT's 8x200, CheXpert's
train/valid CSVs, RSNA's box rows with DICOMs, SIIM's RLE rows with nested DICOM folders."""

import hashlib
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from egma_hf import prompts
from egma_hf.data import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_8X200_CLASSES,
    CHEXPERT_COMPETITION_TASKS,
    EVALUATION_SETS,
    RSNA_CLASSES,
    SIIM_CLASSES,
    load_chexpert,
    load_chexpert_5x200,
    load_chexpert_8x200,
    load_image,
    load_rsna_pneumonia,
    load_siim_acr,
    make_synthetic_evaluation_sets,
)
from egma_hf.data.evaluation_sets import _mgca_split, _rle_decode, rle_encode

PER_CLASS = 10


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return make_synthetic_evaluation_sets(tmp_path_factory.mktemp("eval") / "sets", images_per_class=PER_CLASS)


@pytest.fixture
def small_sets(tmp_path):
    """A fresh tiny tree for tests that damage files."""
    return make_synthetic_evaluation_sets(tmp_path / "sets", images_per_class=3, seed=1)


def read_text_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def mgca_reference_split(labels_csv) -> dict:
    """MGCA's mgca/preprocess/rsna.py split, run with scikit-learn on the labels file."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    frame = pd.read_csv(labels_csv)
    frame = frame[["patientId", "Target"]].groupby("patientId").agg(list).reset_index()
    train, test_valid = model_selection.train_test_split(frame, test_size=0.15 * 2, random_state=0)
    test, valid = model_selection.train_test_split(test_valid, test_size=0.5, random_state=0)
    return {p: name for name, part in (("train", train), ("validate", valid), ("test", test)) for p in part.patientId}


def kaggle_rle2mask(rle, width, height):
    """The decoder of SIIM's mask_functions.py, used as `rle2mask(rle, width, height).T`."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    position = 0
    for start, length in zip(array[0::2], array[1::2]):
        position += start
        mask[position:position + length] = 255
        position += length
    return mask.reshape(width, height).T > 0


# ---------------------------------------------------------------------------------------------------------------
# CheXpert


def test_chexpert_5x200_is_single_label_and_balanced(sets):
    paths = sets["chexpert_5x200"]
    assert paths["csv_path"].read_text().startswith(",Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,")  # GLoRIA
    data = load_chexpert_5x200(**paths)
    assert len(data) == 5 * PER_CLASS
    assert Counter(data["label"]) == dict.fromkeys(CHEXPERT_5X200_CLASSES, PER_CLASS)
    assert all(labels == [label] for labels, label in zip(data["labels"], data["label"]))
    assert set(data["split"]) == {"test"}
    assert all(Path(image).is_absolute() and Path(image).is_file() for image in data["image"])
    assert len(set(data["id"])) == len(data)
    assert all(re.fullmatch(r"patient\d{5}/study1/view1_frontal", i) for i in data["id"])
    frame = read_text_csv(paths["csv_path"])
    truth = {row.Path.split("/", 2)[2].removesuffix(".jpg"): next(c for c in CHEXPERT_5X200_CLASSES if row[c] == "1.0")
             for _, row in frame.iterrows()}
    assert dict(zip(data["id"], data["label"])) == truth
    assert "nothing skipped" in data.info.description


def test_chexpert_8x200_reads_convirt_candidates(sets):
    paths = sets["chexpert_8x200"]
    assert paths["csv_path"].read_text().startswith("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,")  # ConVIRT
    data = load_chexpert_8x200(**paths)
    assert len(data) == 8 * PER_CLASS
    assert Counter(data["label"]) == dict.fromkeys(CHEXPERT_8X200_CLASSES, PER_CLASS)
    assert data[0]["label"] == "Fracture"  # ConVIRT's class order is kept
    assert set(data["split"]) == {"test"}


def test_medclip_imgpath_and_deeper_prefixes_resolve(sets, tmp_path):
    frame = read_text_csv(sets["chexpert_5x200"]["csv_path"])
    frame = frame.rename(columns={"Path": "imgpath"})
    frame["imgpath"] = "./data/CheXpert/data/" + frame["imgpath"]  # MedCLIP's chexpert-5x200-meta.csv style
    frame.to_csv(tmp_path / "chexpert-5x200-meta.csv", index=False)
    above = sets["chexpert_5x200"]["images_root"].parent  # the folder above CheXpert-v1.0-small works too
    data = load_chexpert_5x200(tmp_path / "chexpert-5x200-meta.csv", above)
    assert len(data) == 5 * PER_CLASS
    assert data["image"] == load_chexpert_5x200(**sets["chexpert_5x200"])["image"]


def test_rows_that_are_not_one_hot_are_counted_skips(sets, tmp_path):
    frame = read_text_csv(sets["chexpert_5x200"]["csv_path"])
    two, uncertain, none, duplicate = (frame.iloc[[i]].copy() for i in range(4))
    two["Edema"] = "1.0"
    uncertain["Edema"] = "-1.0"
    none["Atelectasis"] = "0.0"
    frame = pd.concat([frame, two, uncertain, none, duplicate])
    frame.to_csv(tmp_path / "chexpert_5x200.csv", index=False)
    data = load_chexpert_5x200(tmp_path / "chexpert_5x200.csv", sets["chexpert_5x200"]["images_root"])
    assert len(data) == 5 * PER_CLASS
    description = data.info.description
    assert "3 rows not positive for exactly one of the 5 classes (others 0 or blank)" in description
    assert f"e.g. line {5 * PER_CLASS + 2}" in description and "1 duplicate rows" in description

    # train.csv itself: only the rows exclusively positive among the five classes are kept
    train = read_text_csv(sets["chexpert"]["csv_path"])
    cells = train[list(CHEXPERT_5X200_CLASSES)]
    expected = ((cells == "1.0").sum(axis=1) == 1) & cells.isin(["1.0", "0.0", ""]).all(axis=1)
    data = load_chexpert_5x200(**sets["chexpert"])
    assert len(data) == expected.sum() >= 5 * PER_CLASS
    assert f"{len(train) - expected.sum()} rows not positive for exactly one" in data.info.description


def expected_chexpert_labels(frame: pd.DataFrame, tasks, ones) -> dict:
    labels = {}
    for _, row in frame.iterrows():
        key = row.Path.split("/", 2)[2].removesuffix(".jpg")
        labels[key] = [t for t in tasks if row[t] == "1.0" or (row[t] == "-1.0" and t in ones)]
    return labels


@pytest.mark.parametrize("uncertain, ones", [("zeros", ()), ("ones", CHEXPERT_COMPETITION_TASKS),
                                              ("per_task", ("Atelectasis", "Edema", "Pleural Effusion"))])
def test_chexpert_train_csv_uncertainty_policies(sets, uncertain, ones):
    frame = read_text_csv(sets["chexpert"]["csv_path"])
    frontal = frame[frame["Frontal/Lateral"] == "Frontal"]
    data = load_chexpert(**sets["chexpert"], uncertain=uncertain)
    assert len(data) == len(frontal) and set(data["split"]) == {"train"} and set(data["label"]) == {""}
    assert dict(zip(data["id"], data["labels"])) == expected_chexpert_labels(frontal, CHEXPERT_COMPETITION_TASKS, ones)
    for labels, targets in zip(data["labels"], data["targets"]):
        assert targets == [float(t in labels) for t in CHEXPERT_COMPETITION_TASKS]
    assert f"left out: {len(frame) - len(frontal)} non-frontal views" in data.info.description


def test_chexpert_splits_views_and_tasks(sets, tmp_path):
    valid = load_chexpert(**sets["chexpert_valid"])
    assert set(valid["split"]) == {"test"} and len(valid) == PER_CLASS  # CheXpert's valid.csv is the test set
    with_laterals = load_chexpert(**sets["chexpert_valid"], frontal_only=False)
    assert len(with_laterals) == PER_CLASS + 2 and any(i.endswith("view2_lateral") for i in with_laterals["id"])
    tasks = ("No Finding", "Pneumothorax")
    data = load_chexpert(**sets["chexpert_valid"], tasks=tasks)
    frame = read_text_csv(sets["chexpert_valid"]["csv_path"])
    assert dict(zip(data["id"], data["labels"])) == expected_chexpert_labels(
        frame[frame["Frontal/Lateral"] == "Frontal"], tasks, ())
    renamed = tmp_path / "my_labels.csv"
    renamed.write_text(sets["chexpert_valid"]["csv_path"].read_text())
    with pytest.raises(ValueError, match="cannot tell the split of .*my_labels.csv"):
        load_chexpert(renamed, sets["chexpert_valid"]["images_root"])
    assert set(load_chexpert(renamed, sets["chexpert_valid"]["images_root"], split="validate")["split"]) == {"validate"}
    with pytest.raises(ValueError, match="uncertain must be one of"):
        load_chexpert(**sets["chexpert_valid"], uncertain="ignore")


# ---------------------------------------------------------------------------------------------------------------
# RSNA


def test_rsna_one_row_per_patient_with_mgcas_split(sets):
    labels_csv = sets["rsna"]["root"] / "stage_2_train_labels.csv"
    frame = pd.read_csv(labels_csv)
    data = load_rsna_pneumonia(**sets["rsna"])
    assert len(frame) > len(data) == frame.patientId.nunique() == 2 * PER_CLASS
    assert data["id"] == sorted(frame.patientId.unique())
    assert Counter(data["label"]) == dict.fromkeys(RSNA_CLASSES, PER_CLASS)
    box_rows = frame[frame.Target == 1].groupby("patientId").size()
    assert {i: len(b) for i, b in zip(data["id"], data["boxes"]) if b} == box_rows.to_dict()
    assert max(box_rows) == 2  # patients with several boxes collapse into one row
    first = frame[frame.Target == 1].iloc[0]
    row = data[data["id"].index(first.patientId)]
    assert row["label"] == "Pneumonia" and [first.x, first.y, first.width, first.height] in row["boxes"]
    assert dict(zip(data["id"], data["split"])) == mgca_reference_split(labels_csv)
    assert all(Path(image).name == f"{i}.dcm" and Path(image).is_file() for i, image in zip(data["id"], data["image"]))


@pytest.mark.parametrize("count", [4, 5, 7, 10, 11, 33, 101, 26684])
def test_mgca_split_equals_scikit_learn(count):
    model_selection = pytest.importorskip("sklearn.model_selection")
    ids = [f"{i:08x}" for i in range(count)][::-1]
    frame = pd.DataFrame({"patientId": sorted(ids)})
    train, rest = model_selection.train_test_split(frame, test_size=0.3, random_state=0)
    test, valid = model_selection.train_test_split(rest, test_size=0.5, random_state=0)
    split = _mgca_split(ids)
    for name, part in (("train", train), ("validate", valid), ("test", test)):
        assert sorted(p for p, s in split.items() if s == name) == sorted(part.patientId)
    if count == 26684:  # the real stage-2 train set
        assert Counter(split.values()) == {"train": 18678, "validate": 4003, "test": 4003}


# ---------------------------------------------------------------------------------------------------------------
# SIIM-ACR


def test_siim_one_row_per_image_from_kaggle_rle_file(sets):
    root = sets["siim"]["root"]
    lines = (root / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels" and any(line.endswith(", -1") for line in lines)
    frame = read_text_csv(root / "train-rle.csv")
    ids = frame["ImageId"].str.strip()
    data = load_siim_acr(**sets["siim"])
    assert len(lines) - 1 > len(data) == ids.nunique() == 2 * PER_CLASS
    assert Counter(data["label"]) == dict.fromkeys(SIIM_CLASSES, PER_CLASS)
    rows_per_image = ids.value_counts()
    assert max(rows_per_image) == 2
    for row in data:
        image = Path(row["image"])
        assert image.stem == row["id"] and image.parents[2] == root / "dicom-images-train"
        assert len(row["mask_rles"]) == (rows_per_image[row["id"]] if row["label"] == "Pneumothorax" else 0)
        if row["mask_rles"]:
            mask = np.zeros((192, 192), bool)
            for rle in row["mask_rles"]:
                decoded = _rle_decode(rle, 192, 192)
                assert (decoded == kaggle_rle2mask(rle, 192, 192)).all()
                mask |= decoded
            rows = np.flatnonzero(mask.any(axis=1))
            assert mask.sum() > 20 and rows.max() < 192 // 2  # the drawn air at an apex
    for label in SIIM_CLASSES:  # stratified 70/15/15
        counts = Counter(split for split, row_label in zip(data["split"], data["label"]) if row_label == label)
        assert all(abs(counts[name] - share * PER_CLASS) < 1 for name, share in
                   (("train", 0.7), ("validate", 0.15), ("test", 0.15)))
    assert load_siim_acr(**sets["siim"])["split"] == data["split"]
    assert load_siim_acr(**sets["siim"], seed=5)["split"] != data["split"]


def test_siim_test_ids_from_file_list_or_csv(sets, tmp_path):
    ids_file = sets["siim_with_test_ids"]["test_ids"]
    wanted = ids_file.read_text().split()
    data = load_siim_acr(**sets["siim_with_test_ids"])
    assert sorted(i for i, s in zip(data["id"], data["split"]) if s == "test") == sorted(wanted)
    assert set(data["split"]) == {"train", "validate", "test"}
    root = sets["siim"]["root"]
    assert load_siim_acr(root, test_ids=wanted)["split"] == data["split"]
    pd.DataFrame({"ImageId": wanted}).to_csv(tmp_path / "saab.csv", index=False)
    assert load_siim_acr(root, test_ids=tmp_path / "saab.csv")["split"] == data["split"]
    with_unknown = load_siim_acr(root, test_ids=wanted + ["1.2.3.not.in.the.file"])
    assert "1 test ids not in train-rle.csv ignored (e.g. 1.2.3.not.in.the.file)" in with_unknown.info.description
    with pytest.raises(ValueError, match="none of the 1 test ids"):
        load_siim_acr(root, test_ids=["1.2.3"])
    with pytest.raises(FileNotFoundError, match="missing file: .*nothing.txt"):
        load_siim_acr(root, test_ids=tmp_path / "nothing.txt")


def test_rle_round_trip_and_kaggle_decoder():
    rng = np.random.default_rng(0)
    for height, width in ((5, 7), (16, 16), (30, 20)):
        mask = rng.random((height, width)) < 0.3
        mask[0, 0] = mask[-1, -1] = True  # runs touching both ends
        rle = rle_encode(mask)
        assert (_rle_decode(rle, height, width) == mask).all()
        assert (kaggle_rle2mask(rle, width, height) == mask).all()


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_images_are_counted_and_logged(small_sets, caplog):
    intact = load_rsna_pneumonia(**small_sets["rsna"])
    Path(intact[0]["image"]).unlink()
    with caplog.at_level(logging.WARNING, logger="egma_hf.data"):
        data = load_rsna_pneumonia(**small_sets["rsna"])
    assert len(data) == len(intact) - 1
    assert f"1 listed images missing on disk (e.g. {intact[0]['id']}.dcm)" in data.info.description
    assert data.info.description in caplog.text
    assert dict(zip(data["id"], data["split"])).items() <= dict(zip(intact["id"], intact["split"])).items()

    five = load_chexpert_5x200(**small_sets["chexpert_5x200"])
    Path(five[2]["image"]).unlink()
    assert len(load_chexpert_5x200(**small_sets["chexpert_5x200"])) == len(five) - 1
    siim = load_siim_acr(**small_sets["siim"])
    Path(siim[-1]["image"]).unlink()
    data = load_siim_acr(**small_sets["siim"])
    assert len(data) == len(siim) - 1 and "1 listed images missing on disk" in data.info.description

    for image in intact["image"][1:]:
        Path(image).unlink()
    with pytest.raises(ValueError, match=r"no usable images in RSNA Pneumonia .*6 listed images missing on disk"):
        load_rsna_pneumonia(**small_sets["rsna"])


def test_missing_files_and_columns_name_the_file(small_sets, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing file: .*stage_2_train_labels\.csv"):
        load_rsna_pneumonia(tmp_path / "nowhere")
    rsna = small_sets["rsna"]["root"]
    with pytest.raises(FileNotFoundError, match=r"missing folder: .*images-gone \(expected RSNA images"):
        load_rsna_pneumonia(rsna, images_dir="images-gone")
    with pytest.raises(FileNotFoundError, match=r"missing folder: .*images-gone \(expected SIIM DICOMs"):
        load_siim_acr(small_sets["siim"]["root"], images_dir="images-gone")
    labels = rsna / "stage_2_train_labels.csv"
    read_text_csv(labels).drop(columns="Target").to_csv(labels, index=False)
    with pytest.raises(ValueError, match=r"stage_2_train_labels\.csv: missing column\(s\) \['Target'\]"):
        load_rsna_pneumonia(rsna)

    five = small_sets["chexpert_5x200"]
    read_text_csv(five["csv_path"]).drop(columns="Edema").to_csv(five["csv_path"], index=False)
    with pytest.raises(ValueError, match=r"chexpert_5x200\.csv: missing column\(s\) \['Edema'\]"):
        load_chexpert_5x200(**five)
    with pytest.raises(FileNotFoundError, match="images root"):
        load_chexpert_8x200(small_sets["chexpert_8x200"]["csv_path"], tmp_path / "no-images")

    train = small_sets["chexpert"]["csv_path"]
    frame = read_text_csv(train)
    frame.loc[3, "Cardiomegaly"] = "yes"
    frame.to_csv(train, index=False)
    with pytest.raises(ValueError, match=r"train\.csv: line 5, column 'Cardiomegaly' holds 'yes'"):
        load_chexpert(**small_sets["chexpert"])

    siim = small_sets["siim"]["root"] / "train-rle.csv"
    siim.write_text(siim.read_text().replace("EncodedPixels", "Pixels", 1))
    with pytest.raises(ValueError, match=r"train-rle\.csv: missing column\(s\) \['EncodedPixels'\]"):
        load_siim_acr(small_sets["siim"]["root"])


# ---------------------------------------------------------------------------------------------------------------
# Images, registry, determinism


def test_images_decode_and_monochrome1_is_inverted(sets):
    for image in load_chexpert_5x200(**sets["chexpert_5x200"])["image"][:5]:
        pixels = load_image(image)
        assert 128 <= min(pixels.shape) <= max(pixels.shape) <= 256 and 0 <= pixels.min() <= pixels.max() <= 1
    photometric = Counter()
    for data in (load_rsna_pneumonia(**sets["rsna"]), load_siim_acr(**sets["siim"])):
        for image in data["image"]:
            raw = pydicom.dcmread(image)
            stored = raw.pixel_array / 255.0
            pixels = load_image(image)
            inverted = raw.PhotometricInterpretation == "MONOCHROME1"
            photometric[raw.PhotometricInterpretation] += 1
            assert np.allclose(pixels, 1 - stored if inverted else stored)
            assert pixels[:8, :8].mean() < 0.25  # air outside the body is dark either way
    assert photometric["MONOCHROME1"] == 4 and photometric["MONOCHROME2"] == 4 * PER_CLASS - 4


def test_registry_names_loaders_classes_and_prompt_sets(sets):
    from egma_hf.zero_shot import resolve_class_prompts

    # the public sets, and the pre-training corpus (MIMIC-EYE, its reader tested in test_data_readers.py)
    assert set(EVALUATION_SETS) == {"chexpert_5x200", "chexpert_8x200", "rsna", "siim", "chexpert", "mimic_eye"}
    assert EVALUATION_SETS["mimic_eye"].synthetic is None
    tree = sets["rsna"]["root"].parent
    for name, entry in EVALUATION_SETS.items():
        if entry.synthetic is None:
            continue
        data = entry.loader(**sets[name])
        assert set(data["label"]) <= set(entry.classes) | {""}
        assert {label for labels in data["labels"] for label in labels} <= set(entry.classes)
        if entry.prompt_set is not None:
            assert set(resolve_class_prompts(entry.prompt_set)[0]) == set(entry.classes)
        # where the registry looks for the twin is where the writer put it
        written = sets[{"chexpert": "chexpert_valid", "siim": "siim_with_test_ids"}.get(name, name)]
        assert entry.synthetic_arguments(tree) == {key: Path(value) for key, value in written.items()}
    assert tuple(prompts.CHEXPERT_8X200_QUERIES) == EVALUATION_SETS["chexpert_8x200"].classes


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_synthetic_sets_are_deterministic(tmp_path):
    make_synthetic_evaluation_sets(tmp_path / "a", images_per_class=2, seed=3)
    make_synthetic_evaluation_sets(tmp_path / "b", images_per_class=2, seed=3)
    make_synthetic_evaluation_sets(tmp_path / "c", images_per_class=2, seed=4)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    with pytest.raises(FileExistsError):
        make_synthetic_evaluation_sets(tmp_path / "a")
