"""load_image_text on real files built in tmp_path: CSV, JSON lines, parquet, save_to_disk folders, Dataset objects and
embedded image bytes, with splits, counted skips, errors, and two processes writing the embedded images at once."""

import json
import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from egma_hf import EGMAImageProcessor, EGMAProcessor
from egma_hf.data import FEATURES, EGMADataCollator, load_image
from egma_hf.data.image_text import load_image_text
from egma_hf.data.images import image_size_of
from tests.helpers import REPO_ROOT, make_tokenizer

SIZES = {"a": (12, 16), "b": (20, 10), "c": (8, 8)}  # image name -> (height, width)
# (image, caption, split, labels, subject_id): kept rows a, b, c, then one row per skip reason
TABLE = [
    ("images/a.png", " The heart is normal.  Lungs are clear. ", "train", ["Cardiomegaly", "Edema"], "00123"),
    ("images/b.png", "No effusion.", "valid", [], "00456"),
    ("images/c.png", "Small left opacity.", " Test ", ["Pneumonia"], ""),
    ("images/d.png", "   ", "train", [], "1"),  # empty text
    ("images/missing.png", "Gone.", "train", [], "2"),  # not on disk
    ("../outside.png", "Escapes.", "validation", [], "3"),  # leads outside the file's folder
    ("images/broken.png", "Broken.", "val", [], "4"),  # not an image
    ("images/a.png", "Again.", "test", [], "5"),  # the same id (image path) twice
    ("images/e.png", "...", "train", [], "6"),  # no sentence
]
SUMMARY = ("image-text: skipped: 1 readings whose listed path or id leads outside its folder skipped in 1 readings "
           "(e.g. {where} data row 6: image path '../outside.png' leads outside {root}); "
           "1 rows whose id was seen before skipped (the first kept) in 1 readings (e.g. {where} data row 8: "
           "images/a.png); 1 rows whose image cannot be read skipped in 1 readings (e.g. {broken}); "
           "1 rows whose image file is missing skipped in 1 readings (e.g. images/missing.png); "
           "1 rows whose text has no sentence (no letter or digit) skipped in 1 readings (e.g. {where} data row 9: "
           "'...'); 1 rows with empty or missing text skipped in 1 readings (e.g. {where} data row 4)")


def make_images(root: Path) -> Path:
    """The images of TABLE under root/images (d and e exist, so only their text is at fault), one file outside."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, (height, width) in {**SIZES, "d": (4, 4), "e": (4, 4)}.items():
        pixels = (np.arange(height * width).reshape(height, width) * 7 % 256).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{name}.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    Image.new("L", (4, 4)).save(root.parent / "outside.png")
    return root


def table_records(labels=lambda names: "|".join(names), columns=("image", "caption", "split", "labels", "subject_id")):
    return [dict(zip(columns, (image, text, split, labels(names), subject)))
            for image, text, split, names, subject in TABLE]


def check_rows(dataset, root: Path, where: str):
    assert dataset.features == FEATURES
    with pytest.raises(ValueError, match="not a readable image file") as broken:
        image_size_of(root / "images" / "broken.png")
    assert dataset.info.description == SUMMARY.format(where=where, root=root, broken=broken.value)
    rows = {row["reading_id"]: row for row in dataset}
    assert list(rows) == ["images/a.png", "images/b.png", "images/c.png"]
    assert {r: row["split"] for r, row in rows.items()} == {
        "images/a.png": "train", "images/b.png": "validate", "images/c.png": "test"}
    assert {r: row["labels"] for r, row in rows.items()} == {
        "images/a.png": ["Cardiomegaly", "Edema"], "images/b.png": [], "images/c.png": ["Pneumonia"]}
    assert {r: row["subject_id"] for r, row in rows.items()} == {
        "images/a.png": "00123", "images/b.png": "00456", "images/c.png": ""}
    a = rows["images/a.png"]
    assert a["report"] == a["written_report"] == "The heart is normal.  Lungs are clear."
    assert a["sentences"] == ["The heart is normal.", "Lungs are clear."]
    assert (a["sentence_heatmaps"], a["reading_heatmap"]) == ([[[0.0]], [[0.0]]], [[0.0]])
    for name, (height, width) in SIZES.items():
        row = rows[f"images/{name}.png"]
        assert (row["source"], row["has_gaze"], row["num_fixations"], row["dicom_id"], row["study_id"]) == (
            "image-text", False, 0, "", "")
        assert (row["image_height"], row["image_width"]) == (height, width)
        assert Path(row["image"]) == root / "images" / f"{name}.png"
    return rows


def write_table(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".csv":
        pd.DataFrame(records).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(records).to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.mark.parametrize(("name", "labels"), [
    ("pairs.csv", lambda names: "|".join(names)),
    ("pairs.jsonl", lambda names: names[::-1]),  # a list of names, in any order
    ("pairs.json", lambda names: " , ".join(names)),
    ("pairs.parquet", lambda names: ",".join(names)),
])
def test_files_by_suffix_with_paths_relative_to_the_file(tmp_path, name, labels):
    root = make_images(tmp_path / "corpus")
    path = write_table(root / name, table_records(labels))
    check_rows(load_image_text(path, text_column="caption"), root, f"{path}:")


def test_dataset_objects_need_image_dir_for_relative_paths(tmp_path):
    root = make_images(tmp_path / "corpus")
    dataset = datasets.Dataset.from_list(table_records())
    check_rows(load_image_text(dataset, text_column="caption", image_dir=root), root, "data (a Dataset):")
    with pytest.raises(ValueError, match=r"data \(a Dataset\): data row 1, column 'image': relative image path "
                                         r"'images/a.png' and no folder to resolve it against; pass image_dir"):
        load_image_text(dataset, text_column="caption")
    absolute = datasets.Dataset.from_list([{"image": str(root / "images" / "c.png"), "text": "Clear."}])
    assert load_image_text(absolute)["image"] == [str(root / "images" / "c.png")]  # no root: used as it is
    with pytest.raises(ValueError, match="no readable readings .* leads outside"):
        load_image_text(absolute, image_dir=root / "images" / "elsewhere")  # a root: absolute paths must be inside


def test_dataset_dict_split_names_are_mapped(tmp_path):
    root = make_images(tmp_path / "corpus")
    parts = {"train": ["a"], "validation": ["b"], "test": ["c"]}
    splits = datasets.DatasetDict({split: datasets.Dataset.from_list(
        [{"image": f"images/{n}.png", "text": f"Image {n}."} for n in names]) for split, names in parts.items()})
    dataset = load_image_text(splits, image_dir=root)
    assert dict(zip(dataset["reading_id"], dataset["split"])) == {
        "images/a.png": "train", "images/b.png": "validate", "images/c.png": "test"}
    assert dataset.info.description == "image-text: nothing skipped"
    with pytest.raises(ValueError, match=r"data \(a DatasetDict\): the DatasetDict's split name 'extra' is not a split "
                                         r"name; expected one of train, validation / valid / val / validate, test"):
        load_image_text(datasets.DatasetDict({**splits, "extra": splits["test"]}), image_dir=root)
    disagreeing = datasets.DatasetDict({"train": splits["train"].add_column("split", ["test"])})
    with pytest.raises(ValueError, match=r"split 'train', data row 1, column 'split': split 'test' disagrees with the "
                                         r"DatasetDict's split 'train'"):
        load_image_text(disagreeing, image_dir=root)


@pytest.mark.parametrize("as_dict", [False, True])
def test_save_to_disk_folders(tmp_path, as_dict):
    root = make_images(tmp_path / "corpus")
    dataset = datasets.Dataset.from_list(table_records())
    saved = tmp_path / "saved"
    if as_dict:  # the DatasetDict's split name decides (a split column would have to agree: dropped)
        datasets.DatasetDict({"train": dataset.remove_columns("split")}).save_to_disk(str(saved))
        loaded = load_image_text(saved, text_column="caption", image_dir=root)
        assert set(loaded["split"]) == {"train"} and len(loaded) == 3
        assert "split 'train', data row 8: images/a.png" in loaded.info.description
    else:
        dataset.save_to_disk(str(saved))
        check_rows(load_image_text(saved, text_column="caption", image_dir=root), root, f"{saved}:")
        # without image_dir the paths are relative to the saved folder itself, where there are no images
        with pytest.raises(ValueError, match="no readable readings in .*saved"):
            load_image_text(saved, text_column="caption")


def test_folder_not_written_by_save_to_disk(tmp_path):
    with pytest.raises(ValueError, match=r"data: .*plain is a folder but not one written by save_to_disk"):
        load_image_text((tmp_path / "plain").mkdir() or tmp_path / "plain")


def embedded_dataset() -> datasets.Dataset:
    images = [Image.fromarray(np.full((h, w), 40 * i, np.uint8)) for i, (h, w) in enumerate(SIZES.values())]
    records = [{"image": image, "text": f"Finding {i}. Second sentence."} for i, image in enumerate(images)]
    records.append({"image": {"bytes": b"junk, no image", "path": None}, "text": "Unreadable."})
    records.append({"image": None, "text": "No image at all."})
    return datasets.Dataset.from_list(records, features=datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string")}))


def test_embedded_images_are_written_once_under_image_dir(tmp_path):
    dataset = load_image_text(embedded_dataset(), image_dir=tmp_path / "written")
    assert dataset["reading_id"] == ["0", "1", "2"] and set(dataset["split"]) == {"train"}
    (folder,) = [p for p in (tmp_path / "written").iterdir() if p.is_dir()]  # one, named by a hash of the bytes
    assert sorted(p.name for p in (folder / "0").iterdir()) == ["00000000.png", "00000001.png", "00000002.png",
                                                                "00000003.bin"]
    assert dataset["image"] == [str(folder / "0" / f"0000000{i}.png") for i in range(3)]
    assert [(row["image_height"], row["image_width"]) for row in dataset] == list(SIZES.values())
    assert load_image(dataset[2]["image"]).shape == SIZES["c"]
    assert np.allclose(load_image(dataset[1]["image"]), 40 / 255)
    assert dataset.info.description.startswith(
        "image-text: skipped: 1 rows whose image cannot be read skipped in 1 readings (e.g. ")
    assert dataset.info.description.endswith("; 1 rows without an image skipped in 1 readings (e.g. data (a Dataset): "
                                             "data row 5)")
    written = (folder / "0" / "00000000.png").stat().st_mtime_ns
    again = load_image_text(embedded_dataset(), image_dir=tmp_path / "written")
    assert again["image"] == dataset["image"] and (folder / "0" / "00000000.png").stat().st_mtime_ns == written


def test_embedded_images_default_to_the_cache_and_parquet_keeps_them(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMA_HF_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "embedded.parquet"
    embedded_dataset().to_parquet(str(path))
    dataset = load_image_text(path)
    assert all(Path(image).is_relative_to(tmp_path / "cache" / "image-text") for image in dataset["image"])
    assert [(row["image_height"], row["image_width"]) for row in dataset] == list(SIZES.values())
    assert not list((tmp_path / "cache" / "image-text").glob("*.tmp"))


def test_split_column_values_are_mapped_and_others_are_errors(tmp_path, caplog):
    root = make_images(tmp_path / "corpus")
    records = [{"image": f"images/{n}.png", "text": "Clear.", "split": s} for n, s in zip("abc", ("TRAIN", "val", ""))]
    with pytest.raises(ValueError, match=r"data \(a Dataset\): data row 3, column 'split': split '' is not a split "
                                         r"name; expected one of train, validation / valid / val / validate, test"):
        load_image_text(datasets.Dataset.from_list(records), image_dir=root)
    records[2]["split"] = "holdout"
    path = write_table(root / "pairs.csv", records)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: data row 3, column 'split': split 'holdout'"):
        load_image_text(path)
    records[2]["split"] = "validate"
    renamed = [{"img": r["image"], "text": r["text"], "fold": r["split"]} for r in records]
    dataset = load_image_text(write_table(root / "pairs.jsonl", renamed), image_column="img", split_column="fold")
    assert dataset["split"] == ["train", "validate", "validate"]
    with caplog.at_level(logging.INFO, logger="egma_hf.data"):
        no_splits = load_image_text(write_table(root / "pairs.parquet", renamed), image_column="img",
                                    split_column="absent")
    assert no_splits["split"] == ["train"] * 3
    assert "names no splits (no DatasetDict and no 'absent' column): every row is 'train'" in caplog.text


def test_id_column_keeps_several_captions_of_one_image(tmp_path):
    root = make_images(tmp_path / "corpus")
    records = [{"image": "images/a.png", "text": text, "caption_id": cid} for text, cid in
               (("One.", "c1"), ("Two.", "c2"), ("Three.", "c1"), ("Four.", " "))]
    dataset = load_image_text(datasets.Dataset.from_list(records), image_dir=root, id_column="caption_id")
    assert dataset["reading_id"] == ["c1", "c2"] and dataset["report"] == ["One.", "Two."]
    assert dataset.info.description == (
        "image-text: skipped: 1 rows whose id was seen before skipped (the first kept) in 1 readings (e.g. data (a "
        "Dataset): data row 3: c1); 1 rows with a blank id skipped in 1 readings (e.g. data (a Dataset): data row 4)")
    by_image = load_image_text(datasets.Dataset.from_list(records), image_dir=root)
    assert by_image["report"] == ["One."] and "3 rows whose id was seen before" in by_image.info.description


def test_class_label_ids_become_names(tmp_path):
    root = make_images(tmp_path / "corpus")
    features = datasets.Features({"image": datasets.Value("string"), "text": datasets.Value("string"),
                                  "labels": datasets.List(datasets.ClassLabel(names=["Edema", "Pneumonia"]))})
    dataset = datasets.Dataset.from_dict({"image": ["images/a.png"], "text": ["Edema."], "labels": [[1, 0]]},
                                         features=features)
    assert load_image_text(dataset, image_dir=root)["labels"] == [["Edema", "Pneumonia"]]


def test_columns_and_cells_of_the_wrong_kind_are_errors(tmp_path):
    run_clip = datasets.Dataset.from_list([{"image_path": "a.png", "caption": "Clear."}])
    with pytest.raises(ValueError, match=r"data \(a Dataset\): image_column 'image' is not a column; found "
                                         r"\['image_path', 'caption'\] \(pass image_column='image_path'\?\)"):
        load_image_text(run_clip)
    with pytest.raises(ValueError, match=r"text_column 'text' is not a column; found \['image_path', 'caption'\] "
                                         r"\(pass text_column='caption'\?\)"):
        load_image_text(run_clip, image_column="image_path")
    with pytest.raises(ValueError, match=r"id_column 'uid' is not a column; found \['image_path', 'caption'\]$"):
        load_image_text(run_clip, image_column="image_path", text_column="caption", id_column="uid")
    numbers = datasets.Dataset.from_list([{"image": 3, "text": "Clear."}])
    with pytest.raises(ValueError, match=r"image_column 'image' holds Value\('int64'\); expected image paths"):
        load_image_text(numbers)
    root = make_images(tmp_path / "corpus")
    with pytest.raises(ValueError, match=r"data row 1, column 'labels' holds 7; expected a list of label names"):
        load_image_text(datasets.Dataset.from_list([{"image": "images/a.png", "text": "A.", "labels": 7}]),
                        image_dir=root)
    with pytest.raises(ValueError, match=r"data row 1, column 'text' holds a list \(\['A.'\]\); expected text"):
        load_image_text(datasets.Dataset.from_list([{"image": "images/a.png", "text": ["A."]}]), image_dir=root)


def test_data_of_unsupported_kinds_are_errors(tmp_path):
    (tmp_path / "pairs.txt").write_text("image,text\n")
    with pytest.raises(ValueError, match=r"data: .*pairs.txt has the suffix '.txt'; supported: .csv, .json, .jsonl, "
                                         r".parquet"):
        load_image_text(tmp_path / "pairs.txt")
    with pytest.raises(ValueError, match="data must be a datasets.Dataset or DatasetDict, .* got int"):
        load_image_text(3)
    with pytest.raises(FileNotFoundError, match=r"data: no such file or folder: .*absent.csv"):
        load_image_text(str(tmp_path / "absent.csv"))  # a local-looking name never goes to the Hub
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "text": \n')
    with pytest.raises(ValueError, match=r"data: .*bad.jsonl is not a readable json file"):
        load_image_text(tmp_path / "bad.jsonl")


def test_a_hub_id_goes_to_load_dataset(tmp_path, monkeypatch):
    """Only the hand-over: the Hub itself is not served in the tests (tests/hub_stand_in.py has model repos only)."""
    root = make_images(tmp_path / "corpus")
    asked = []

    def load_dataset(name, *args, **kwargs):
        asked.append((name, args, kwargs))
        return datasets.DatasetDict({"validation": datasets.Dataset.from_list(
            [{"image": str(root / "images" / "b.png"), "text": "Clear."}])})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dataset = load_image_text("someone/image-captions")
    assert asked == [("someone/image-captions", (), {})] and dataset["split"] == ["validate"]


def test_rows_batch_as_no_gaze_rows(tmp_path):
    dataset = load_image_text(embedded_dataset(), image_dir=tmp_path / "written")
    collate = EGMADataCollator(EGMAProcessor(EGMAImageProcessor(size=32), make_tokenizer()))
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["pixel_values"].shape[:2] == (3, 3) and not batch["has_gaze"].any()


COUNT = 250  # images, one grey level each
WRITE_IN_A_PROCESS = """
import json, sys, time
from pathlib import Path
from egma_hf.data.image_text import load_image_text
from egma_hf.data.images import image_size_of
start = Path(sys.argv[2])
while not start.exists():
    time.sleep(0.01)
dataset = load_image_text(sys.argv[1])
print(json.dumps(list(dataset["image"])))
"""


def test_two_threads_writing_the_embedded_images_at_once_make_one_complete_copy(tmp_path):
    data = datasets.Dataset.from_dict({"image": [Image.fromarray(np.full((8, 8), i, np.uint8)) for i in range(COUNT)],
                                       "text": [f"Image {i}." for i in range(COUNT)]})
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: load_image_text(data, image_dir=tmp_path / "written"), range(2)))
    assert results[0]["image"] == results[1]["image"] and len(results[0]) == COUNT
    (folder,) = [p for p in (tmp_path / "written").iterdir() if p.is_dir()]
    assert len(list((folder / "0").iterdir())) == COUNT
    assert [int(load_image(image)[0, 0] * 255 + 0.5) for image in results[0]["image"]] == list(range(COUNT))


@pytest.mark.slow
def test_two_processes_writing_the_embedded_images_at_once_make_one_complete_copy(tmp_path):
    images = [Image.fromarray(np.full((24, 24), i, np.uint8)) for i in range(COUNT)]
    path = tmp_path / "many.parquet"
    datasets.Dataset.from_dict({"image": images, "text": [f"Image {i}." for i in range(COUNT)]}).to_parquet(str(path))
    env = dict(os.environ, EGMA_HF_CACHE=str(tmp_path / "cache"), HF_DATASETS_CACHE=str(tmp_path / "hf"))
    start = tmp_path / "start"
    processes = [subprocess.Popen([sys.executable, "-c", WRITE_IN_A_PROCESS, str(path), str(start)], cwd=REPO_ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    start.touch()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert first == second and len(first) == COUNT
    (folder,) = [p for p in (tmp_path / "cache" / "image-text").iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.iterdir()) == ["0", "manifest.json"]
    assert len(list((folder / "0").iterdir())) == COUNT
    assert [int(load_image(image)[0, 0] * 255 + 0.5) for image in first] == list(range(COUNT))
