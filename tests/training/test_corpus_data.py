"""pretrain.py's --data / --gaze_data on every corpus format: what load_readings reads, and from where."""

import pandas as pd
import pytest

from egma_hf.data import (
    HeatmapSettings,
    load_mimic_eye,
    make_synthetic_chexpert_plus,
    make_synthetic_mimic_cxr,
    make_synthetic_mimic_eye,
    write_prerendered_gaze,
)
from egma_hf.data.synthetic.chexpert_plus import LABELS_FILE
from egma_hf.training import TrainingSettings, load_readings


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    make_synthetic_mimic_eye(root / "eye", 24, seed=2)
    make_synthetic_mimic_cxr(root / "cxr", 80, seed=2, mimic_eye=root / "eye")
    gaze = load_mimic_eye(root / "eye", HeatmapSettings(recipe=12.0))
    for layout in ("egma", "cogaze"):
        write_prerendered_gaze(gaze, root / layout, layout)
    return root, gaze


def readings(**settings):
    rows, source = load_readings(TrainingSettings(heatmap_recipe="12", **settings))
    return rows, source


def test_mimic_cxr_root_frontal_or_all_views(trees):
    root, _ = trees
    frontal, source = readings(data=str(root / "cxr"))
    everything, all_source = readings(data=str(root / "cxr"), all_views=True)
    assert source.endswith("(frontal views)") and all_source.endswith("(all views)")
    assert set(frontal["source"]) == {"mimic-cxr"} and len(everything) > len(frontal)


@pytest.mark.parametrize("layout, described", [("egma", "released EGMA code's layout"), ("cogaze", "CoGaze")])
def test_pre_rendered_gaze_attaches_to_the_corpus(trees, layout, described):
    root, gaze = trees
    combined, source = readings(data=str(root / "cxr"), gaze_data=str(root / layout), image_root=str(root / "cxr"))
    assert f"pre-rendered gaze ({described})" in source and source.startswith("MIMIC-CXR-JPG")
    with_gaze = [d for d, g in zip(combined["dicom_id"], combined["has_gaze"]) if g]
    assert sorted(with_gaze) == sorted({d for d, g in zip(gaze["dicom_id"], gaze["has_gaze"]) if g})


def test_mimic_eye_gaze_on_the_mimic_cxr_corpus(trees):
    root, gaze = trees
    combined, source = readings(data=str(root / "cxr"), gaze_data=str(root / "eye"))
    assert source.startswith("MIMIC-CXR-JPG") and "with gaze from MIMIC-EYE" in source
    assert sum(combined["has_gaze"]) == sum(gaze["has_gaze"])


def test_chexpert_plus_table_or_its_folder(trees, tmp_path):
    image_root = make_synthetic_chexpert_plus(tmp_path / "chexpert-plus", 40, seed=0)
    table = next(image_root.glob("df_chexpert_plus*.csv*"))
    by_file, source = readings(data=str(table), labels=str(image_root / LABELS_FILE))
    by_folder, _ = readings(data=str(image_root))
    assert source == f"CheXpert Plus {table} (frontal views)"
    assert by_file["reading_id"] == by_folder["reading_id"] and set(by_file["source"]) == {"chexpert-plus"}
    assert any(by_file["labels"]) and not any(by_folder["labels"])  # labels only when --labels is given


def test_image_text_file_with_named_columns(trees, tmp_path):
    root, _ = trees
    corpus, _ = readings(data=str(root / "cxr"))
    frame = pd.DataFrame({"image_path": corpus["image"][:12], "caption": corpus["report"][:12],
                          "split": corpus["split"][:12]})
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    with pytest.raises(SystemExit, match="leads outside"):  # the images lie outside the file's folder
        readings(data=str(tmp_path / "pairs.csv"), image_column="image_path", caption_column="caption")
    rows, source = readings(data=str(tmp_path / "pairs.csv"), image_column="image_path", caption_column="caption",
                            image_root=str(root / "cxr"))
    assert source == f"image-text file {tmp_path / 'pairs.csv'}"
    assert rows["report"] == corpus["report"][:12] and rows["split"] == corpus["split"][:12]
    with pytest.raises(SystemExit, match="pairs.csv.*image"):
        readings(data=str(tmp_path / "pairs.csv"), image_root=str(root / "cxr"))  # no column "image" there


def test_gaze_data_needs_data_and_a_known_root(trees, tmp_path):
    root, _ = trees
    with pytest.raises(SystemExit, match="--gaze_data attaches gaze readings to the images of --data"):
        TrainingSettings(gaze_data=str(root / "eye")).check()
    (tmp_path / "unknown").mkdir()
    with pytest.raises(SystemExit, match="--gaze_data .*unknown: not a saved dataset"):
        readings(data=str(root / "cxr"), gaze_data=str(tmp_path / "unknown"))
