"""Bad input to the data readers, heatmaps and batching: each case gives an error naming the file, row, column or
argument, or a counted skip with its reason; paths listed in data files never lead outside their root."""

import math
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from egma_hf.data import (
    EGMADataCollator,
    Fixations,
    HeatmapSettings,
    group_words_into_sentences,
    load_chexpert,
    load_chexpert_5x200,
    load_egd_cxr,
    load_image,
    load_mimic_eye,
    load_reflacx,
    load_rsna_pneumonia,
    load_siim_acr,
    make_synthetic_evaluation_sets,
    make_synthetic_mimic_eye,
    prepare_for_training,
    render_heatmaps,
    with_gaze_fraction,
)
from egma_hf.data.readers import ListedPathError, resolve_inside
from tests.helpers import standalone_trees

ESCAPE = "readings whose listed path or id leads outside its folder skipped"


@pytest.fixture(scope="module")
def corpus_template(tmp_path_factory):
    return make_synthetic_mimic_eye(tmp_path_factory.mktemp("template") / "mimic-eye", num_samples=8, seed=0)


@pytest.fixture
def corpus(corpus_template, tmp_path):
    """A fresh copy of an 8-image synthetic MIMIC-EYE tree, for a test to damage."""
    return Path(shutil.copytree(corpus_template, tmp_path / "mimic-eye"))


@pytest.fixture
def sets(tmp_path):
    """A fresh tiny tree of every evaluation set, for a test to damage."""
    return make_synthetic_evaluation_sets(tmp_path / "sets", images_per_class=3, seed=1)


def text_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def patient_with(root: Path, part: str) -> Path:
    """The first patient folder with an EGD-CXR ("EyeGaze") or a usable REFLACX ("REFLACX") reading."""
    for patient in sorted(root.glob("patient_*")):
        if part == "EyeGaze" and (patient / "EyeGaze").is_dir():
            return patient
        if part == "REFLACX" and (patient / "REFLACX").is_dir() and (
                text_csv(patient / "REFLACX/metadata.csv")["eye_tracking_data_discarded"] == "False").any():
            return patient
    raise AssertionError(f"no patient with {part}")


def first_usable_reflacx(patient: Path) -> tuple[Path, pd.DataFrame, int]:
    path = patient / "REFLACX/metadata.csv"
    frame = text_csv(path)
    return path, frame, int(np.flatnonzero(frame["eye_tracking_data_discarded"] == "False")[0])


# ---------------------------------------------------------------------------------------------------------------
# Paths listed in data files stay inside their root


def test_resolve_inside_rejects_dotdot_absolute_and_outward_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.txt"
    (root / "sub").mkdir(parents=True)
    outside.write_text("secret")
    (root / "link.txt").symlink_to(outside)
    assert resolve_inside(root, "sub/x.png") == root / "sub/x.png"  # need not exist
    assert resolve_inside(root, "sub/../x.png") == root / "sub/../x.png"  # stays inside
    for listed in ("../outside.txt", str(outside), "link.txt", "sub/../../outside.txt"):
        with pytest.raises(ListedPathError, match="image path .* leads outside"):
            resolve_inside(root, listed, "image path")


def test_reflacx_reading_id_leading_outside_is_a_counted_skip(corpus, tmp_path):
    patient = patient_with(corpus, "REFLACX")
    path, frame, row = first_usable_reflacx(patient)
    reading = frame.at[row, "id"]
    # a complete copy of the reading lies outside the tree: reading it would give a row
    shutil.move(patient / "REFLACX/main_data" / reading, tmp_path / reading)
    frame.at[row, "id"] = f"../../../../{reading}"
    frame.to_csv(path, index=False)
    data = load_mimic_eye(corpus)
    assert not any(reading in rid for rid in data["reading_id"])
    summary = data.info.description
    assert f"1 {ESCAPE} in 1 readings" in summary
    assert f"metadata.csv ../../../../{reading}: id '../../../../{reading}' leads outside" in summary


def test_reflacx_reading_file_linking_outside_is_a_counted_skip(corpus, tmp_path):
    patient = patient_with(corpus, "REFLACX")
    _, frame, row = first_usable_reflacx(patient)
    folder = patient / "REFLACX/main_data" / frame.at[row, "id"]
    shutil.move(folder / "fixations.csv", tmp_path / "fixations.csv")
    (folder / "fixations.csv").symlink_to(tmp_path / "fixations.csv")
    data = load_mimic_eye(corpus)
    assert frame.at[row, "id"] not in data["reading_id"]
    assert f"1 {ESCAPE}" in data.info.description


def test_mimic_eye_study_folders_and_ids_leading_outside_are_counted_skips(corpus, tmp_path):
    patient = patient_with(corpus, "EyeGaze")
    sheet = text_csv(patient / "EyeGaze/master_sheet.csv")
    dicom_id, study = sheet.at[0, "dicom_id"], sheet.at[0, "study_id"]
    # the study folder becomes a link to a copy outside the tree
    shutil.move(patient / f"CXR-JPG/s{study}", tmp_path / "outside-study")
    (patient / f"CXR-JPG/s{study}").symlink_to(tmp_path / "outside-study", target_is_directory=True)
    # a REFLACX patient's split file gives a study_id that climbs out of CXR-JPG/
    reflacx_patient = patient_with(corpus, "REFLACX")
    _, metadata, row = first_usable_reflacx(reflacx_patient)
    splits = text_csv(reflacx_patient / "CXR-JPG/cxr_split.csv")
    splits.loc[splits["dicom_id"] == metadata.at[row, "dicom_id"], "study_id"] = "1/../../../../elsewhere"
    splits.to_csv(reflacx_patient / "CXR-JPG/cxr_split.csv", index=False)
    data = load_mimic_eye(corpus)
    assert dicom_id not in data["reading_id"] and metadata.at[row, "id"] not in data["reading_id"]
    summary = data.info.description
    assert ESCAPE in summary and f"master_sheet.csv {dicom_id}: dicom_id / study_id" in summary
    assert f"metadata.csv {metadata.at[row, 'id']}: dicom_id / study_id 's1/../../../../elsewhere/" in summary


def test_egd_image_paths_leading_outside_are_counted_skips(corpus, tmp_path):
    egd, _, images = standalone_trees(corpus, tmp_path / "standalone")
    sheet = text_csv(egd / "master_sheet.csv")
    assert len(sheet) >= 3
    ids = list(sheet["dicom_id"][:3])
    # three real images outside the image root, reachable by "..", by an absolute path and by a symlink
    sources = [next(images.rglob(f"{dicom_id}.jpg")) for dicom_id in ids]
    outside = tmp_path / "outside"
    outside.mkdir()
    for source in sources:
        shutil.move(source, outside / source.name)
    sheet.at[0, "path"] = f"../outside/{ids[0]}.jpg"
    sheet.at[1, "path"] = str(outside / f"{ids[1]}.jpg")
    sources[2].symlink_to(outside / f"{ids[2]}.jpg")
    sheet.to_csv(egd / "master_sheet.csv", index=False)
    data = load_egd_cxr(egd, images)
    assert not set(ids) & set(data["reading_id"])
    summary = data.info.description
    assert f"3 {ESCAPE} in 3 readings" in summary
    assert f"master_sheet.csv {ids[0]}: image path '../outside/{ids[0]}.jpg' leads outside" in summary


def test_chexpert_paths_leading_outside_are_counted_skips_and_inside_absolute_paths_load(sets, tmp_path):
    five = sets["chexpert_5x200"]
    frame = text_csv(five["csv_path"])
    root = Path(five["images_root"])
    outside = tmp_path / "outside"
    outside.mkdir()
    listed = [frame.at[i, "Path"] for i in range(4)]
    shutil.copy(root.parent / listed[1], outside / "view.jpg")
    frame.at[0, "Path"] = "CheXpert-v1.0-small/train/../../../outside/view.jpg"
    frame.at[1, "Path"] = str(outside / "view.jpg")
    linked = root.parent / listed[2]
    linked.unlink()
    linked.symlink_to(outside / "view.jpg")
    frame.at[3, "Path"] = str((root.parent / listed[3]).resolve())  # absolute, inside the root: fine
    frame.to_csv(five["csv_path"], index=False)
    data = load_chexpert_5x200(**five)
    summary = data.info.description
    assert "3 listed paths leading outside the images root (not read)" in summary
    assert "holds '..'" in summary and "is outside" in summary
    loaded = set(data["image"])
    assert str(outside / "view.jpg") not in loaded and str(linked) not in loaded
    assert any(image.endswith(listed[3].split("/", 1)[1]) for image in loaded)


def test_rsna_patient_id_leading_outside_is_a_counted_skip(sets, tmp_path):
    rsna = sets["rsna"]["root"]
    labels = text_csv(rsna / "stage_2_train_labels.csv")
    patient = labels.at[0, "patientId"]
    shutil.move(rsna / f"stage_2_train_images/{patient}.dcm", tmp_path / f"{patient}.dcm")
    labels.loc[labels["patientId"] == patient, "patientId"] = f"../../{patient}"
    labels.to_csv(rsna / "stage_2_train_labels.csv", index=False)
    data = load_rsna_pneumonia(rsna)
    assert patient not in " ".join(data["id"])
    assert "1 patientIds leading outside the images folder (not read)" in data.info.description


def test_siim_dicom_linking_outside_is_a_counted_skip(sets, tmp_path):
    siim = sets["siim"]["root"]
    dicom = sorted((siim / "dicom-images-train").rglob("*.dcm"))[0]
    shutil.move(dicom, tmp_path / dicom.name)
    dicom.symlink_to(tmp_path / dicom.name)
    data = load_siim_acr(siim)
    assert dicom.stem not in data["id"]
    assert "1 image files linking outside the images folder (not read)" in data.info.description


# ---------------------------------------------------------------------------------------------------------------
# Label cells outside the format's encoding


@pytest.mark.parametrize("cell", ["yes", "TRUE", "x", "2"])
def test_mimic_eye_chexpert_label_outside_the_encoding_is_an_error(corpus, cell):
    path = patient_with(corpus, "EyeGaze") / "CXR-JPG/cxr_chexpert.csv"
    frame = text_csv(path)
    frame.at[0, "Cardiomegaly"] = cell
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"cxr_chexpert\.csv: data row 1 \(study_id '{frame.at[0, 'study_id']}'\), "
                                         rf"column 'Cardiomegaly' holds '{cell}'; expected 1\.0"):
        load_mimic_eye(corpus)


def test_egd_sheet_label_outside_the_encoding_is_an_error(corpus, tmp_path):
    egd, _, images = standalone_trees(corpus, tmp_path / "standalone")
    sheet = text_csv(egd / "master_sheet.csv")
    sheet.at[1, "cardiomegaly__chx"] = "yes"
    sheet.to_csv(egd / "master_sheet.csv", index=False)
    with pytest.raises(ValueError, match=r"master_sheet\.csv: data row 2 \(dicom_id .*\), column 'cardiomegaly__chx' "
                                         r"holds 'yes'"):
        load_egd_cxr(egd, images)


@pytest.mark.parametrize("column, cell, message", [
    ("Atelectasis", "yes", "expected a certainty 0-5"),
    ("Atelectasis", "7", "expected a certainty 0-5"),
    ("eye_tracking_data_discarded", "maybe", "expected True or False"),
    ("image_size_x", "wide", "expected a whole number of pixels"),
    ("image_size_y", "0", "expected a whole number of pixels"),
])
def test_reflacx_metadata_cell_outside_the_encoding_is_an_error(corpus, column, cell, message):
    path, frame, row = first_usable_reflacx(patient_with(corpus, "REFLACX"))
    frame.at[row, column] = cell
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"metadata\.csv: data row {row + 1} \(id '{frame.at[row, 'id']}'\), column "
                                         rf"'{column}' holds '{cell}'; {message}"):
        load_mimic_eye(corpus)


def test_reflacx_true_flag_label_is_positive(corpus):
    patient = patient_with(corpus, "REFLACX")
    path, frame, row = first_usable_reflacx(patient)
    frame.at[row, "Support devices"] = "True"
    frame.to_csv(path, index=False)
    (patient / "CXR-JPG/cxr_chexpert.csv").unlink()  # REFLACX's own labels are used without it
    data = load_mimic_eye(corpus)
    assert "Support devices" in data[data["reading_id"].index(frame.at[row, "id"])]["labels"]


# ---------------------------------------------------------------------------------------------------------------
# Duplicates and conflicting split assignments


def test_reading_listed_twice_is_kept_once_and_counted(corpus):
    reference = load_mimic_eye(corpus)
    sheet_file = patient_with(corpus, "EyeGaze") / "EyeGaze/master_sheet.csv"
    sheet = text_csv(sheet_file)
    pd.concat([sheet, sheet.iloc[[0]]]).to_csv(sheet_file, index=False)
    path, frame, row = first_usable_reflacx(patient_with(corpus, "REFLACX"))
    pd.concat([frame, frame.iloc[[row]]]).to_csv(path, index=False)
    data = load_mimic_eye(corpus)
    assert sorted(data["reading_id"]) == sorted(reference["reading_id"])
    assert "2 readings listed twice skipped (the first kept) in 2 readings" in data.info.description
    assert f"master_sheet.csv dicom_id {sheet.at[0, 'dicom_id']}" in data.info.description


def test_image_in_two_splits_is_an_error_naming_both(corpus):
    path = patient_with(corpus, "EyeGaze") / "CXR-JPG/cxr_split.csv"
    frame = text_csv(path)
    other = "test" if frame.at[0, "split"] != "test" else "train"
    twice = frame.iloc[[0]].assign(split=other)
    pd.concat([frame, frame.iloc[[0]]]).to_csv(path, index=False)  # the same split twice is harmless
    assert len(load_mimic_eye(corpus)) > 0
    pd.concat([frame, twice]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"cxr_split\.csv: dicom_id '{frame.at[0, 'dicom_id']}' is listed with split "
                                         rf"'{frame.at[0, 'split']}' and '{other}'"):
        load_mimic_eye(corpus)


def test_unknown_split_name_and_mimic_split_file_conflicts_are_errors(corpus, tmp_path):
    path = patient_with(corpus, "EyeGaze") / "CXR-JPG/cxr_split.csv"
    frame = text_csv(path)
    frame.assign(split="training").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"cxr_split\.csv: data row 1 has dicom_id .* and split 'training'; expected"):
        load_mimic_eye(corpus)
    frame.to_csv(path, index=False)
    egd, _, images = standalone_trees(corpus, tmp_path / "standalone")
    dicom_id = text_csv(egd / "master_sheet.csv").at[0, "dicom_id"]
    (images / "mimic-cxr-2.0.0-split.csv").write_text(f"dicom_id,split\n{dicom_id},train\n{dicom_id},validate\n")
    with pytest.raises(ValueError, match=rf"mimic-cxr-2\.0\.0-split\.csv: dicom_id '{dicom_id}' is listed with split "
                                         r"'train' and 'validate'"):
        load_egd_cxr(egd, images)


def test_reflacx_readings_of_one_image_in_two_splits_are_reported(corpus, tmp_path):
    _, reflacx, images = standalone_trees(corpus, tmp_path / "standalone")
    path = reflacx / "main_data/metadata_phase_3.csv"
    frame = text_csv(path)
    usable = frame[frame["eye_tracking_data_discarded"] == "False"]
    twice = usable.iloc[[0]].assign(id="P999R000001", split="test" if usable.iloc[0]["split"] != "test" else "train")
    shutil.copytree(reflacx / "main_data" / usable.iloc[0]["id"], reflacx / "main_data/P999R000001")
    pd.concat([frame, twice]).to_csv(path, index=False)
    data = load_reflacx(reflacx, images)
    assert "images whose REFLACX readings disagree on the split (each reading keeps its own)" in data.info.description
    assert usable.iloc[0]["dicom_id"] in data.info.description


# ---------------------------------------------------------------------------------------------------------------
# Files that do not parse, and numbers that are not


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ('dicom_id,study_id,split\n"abc,1,train\n', "not a readable CSV file"),
    ("dicom_id;study_id;split\nabc;1;train\n",
     r"missing column\(s\).*\(is the file delimited by ';' instead of ','\?\)"),
])
def test_unparseable_csv_names_the_file(corpus, content, message):
    path = patient_with(corpus, "EyeGaze") / "CXR-JPG/cxr_split.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"cxr_split\.csv: .*{message}"):
        load_mimic_eye(corpus)


def test_unparseable_evaluation_csv_names_the_file(sets):
    labels = sets["rsna"]["root"] / "stage_2_train_labels.csv"
    labels.write_text("")
    with pytest.raises(ValueError, match=r"stage_2_train_labels\.csv: empty file"):
        load_rsna_pneumonia(**sets["rsna"])
    labels.write_text('patientId,x,y,width,height,Target\n"a,1,2\n')
    with pytest.raises(ValueError, match=r"stage_2_train_labels\.csv: not a readable CSV file"):
        load_rsna_pneumonia(**sets["rsna"])


def test_malformed_egd_pads_skip_only_their_reading(corpus, tmp_path):
    egd, _, images = standalone_trees(corpus, tmp_path / "standalone")
    sheet = text_csv(egd / "master_sheet.csv")
    sheet.at[0, "image_left_pad"] = "wide"
    sheet.at[1, "image_top_pad"] = "2000"  # leaves no room on a 1080-px screen
    sheet.to_csv(egd / "master_sheet.csv", index=False)
    data = load_egd_cxr(egd, images)
    assert not {sheet.at[0, "dicom_id"], sheet.at[1, "dicom_id"]} & set(data["reading_id"]) and len(data) > 0
    summary = data.info.description
    assert "2 readings with malformed letter-box pads skipped in 2 readings" in summary
    assert "column 'image_left_pad' holds 'wide'" in summary


def test_non_finite_fixation_values_are_dropped_and_counted_never_nan_maps(corpus):
    path, frame, row = first_usable_reflacx(patient_with(corpus, "REFLACX"))
    fixations_file = path.parent / "main_data" / frame.at[row, "id"] / "fixations.csv"
    fixations = text_csv(fixations_file)
    fixations.loc[:1, "timestamp_end_fixation"] = "inf"
    fixations.to_csv(fixations_file, index=False)
    data = load_mimic_eye(corpus, HeatmapSettings(recipe=12.0, heatmap_size=16))
    assert "2 fixations with a non-finite value (or non-positive pixels per degree) dropped in 1 readings" \
        in data.info.description
    for row in data.with_format("numpy"):
        assert np.isfinite(row["reading_heatmap"]).all() and all(np.isfinite(m).all() for m in row["sentence_heatmaps"])


# ---------------------------------------------------------------------------------------------------------------
# Heatmap settings and rendering


@pytest.mark.parametrize("field, value, message", [
    ("recipe", math.nan, "HeatmapSettings.recipe: a numeric recipe .* must be > 0 and finite, got nan"),
    ("recipe", math.inf, "HeatmapSettings.recipe: .*got inf"),
    ("recipe", -3.0, "HeatmapSettings.recipe: .*got -3.0"),
    ("recipe", 0, "HeatmapSettings.recipe: .*got 0"),
    ("recipe", "gauss", r"HeatmapSettings.recipe must be one of \['egd', 'egma', 'reflacx'\]"),
    ("recipe", True, "HeatmapSettings.recipe must be one of"),
    ("heatmap_size", 0, r"HeatmapSettings.heatmap_size .* must be an integer in \[1, 4096\], got 0"),
    ("heatmap_size", -5, "HeatmapSettings.heatmap_size"),
    ("heatmap_size", 32.5, "HeatmapSettings.heatmap_size"),
    ("heatmap_size", 10**6, "HeatmapSettings.heatmap_size"),
    ("gaze_lead", math.nan, "HeatmapSettings.gaze_lead must be a finite number of seconds, got nan"),
    ("gaze_lead", -math.inf, "HeatmapSettings.gaze_lead"),
])
def test_heatmap_settings_are_checked_at_construction(field, value, message):
    with pytest.raises(ValueError, match=message):
        HeatmapSettings(**{field: value})


def test_reflacx_recipe_on_gaze_without_pixels_per_degree_names_the_reading(corpus):
    with pytest.raises(ValueError, match=r"HeatmapSettings\(recipe='reflacx'\) needs REFLACX's pixels per degree, "
                                         r"which egd-cxr reading \S+ does not have"):
        load_mimic_eye(corpus, HeatmapSettings(recipe="reflacx"))


def test_heatmap_settings_accept_valid_values():
    settings = HeatmapSettings(recipe=12, heatmap_size=1, gaze_lead=-0.5)
    assert (settings.recipe, settings.heatmap_size, settings.gaze_lead) == (12, 1, -0.5)


def fixation(x=5.0, y=5.0, start=0.0, end=1.0, sigma=None):
    column = lambda value: np.array([value], np.float64)  # noqa: E731
    return Fixations(column(x), column(y), column(start), column(end),
                     None if sigma is None else column(sigma), None if sigma is None else column(sigma))


@pytest.mark.parametrize("points, keywords, message", [
    (fixation(x=math.nan), {}, "fixations.x must hold 1 finite numbers"),
    (fixation(end=math.inf), {}, "fixations.end must hold 1 finite numbers"),
    (fixation(start=1.0, end=0.5), {}, "fixation 0 ends before it starts"),
    (fixation(sigma=0.0), {"recipe": "reflacx"}, r"fixation 0: sigma_x \(pixels per degree\) must be finite and > 0"),
    (fixation(), {"gaze_lead": math.nan}, "gaze_lead must be a finite number"),
    (fixation(), {"windows": [(math.nan, 1.0)]}, r"windows\[0\] = \(nan, 1.0\) is not a \(start, end\) pair"),
    (fixation(), {"windows": [(2.0, 1.0)]}, r"windows\[0\]"),
    (fixation(), {"image_size": (0, 10)}, "image_size must be two integers >= 1"),
    (fixation(), {"out_shape": (5,)}, r"out_shape must be a \(height, width\) pair"),
])
def test_render_heatmaps_refuses_input_that_would_give_nan_maps(points, keywords, message):
    arguments = dict(windows=[(0.0, 1.0)], image_size=(10, 10), out_shape=(5, 5)) | keywords
    with pytest.raises(ValueError, match=message):
        render_heatmaps(points, **arguments)


def test_group_words_refuses_mismatched_and_non_finite_timestamps():
    with pytest.raises(ValueError, match=r"words, starts and ends differ in length \(2, 1, 1\)"):
        group_words_into_sentences(["No", "effusion."], [0.0], [1.0])
    with pytest.raises(ValueError, match=r"word 0 \('No.'\) has a non-finite timestamp"):
        group_words_into_sentences(["No."], [math.nan], [1.0])
    with pytest.raises(ValueError, match=r"word 0 \('No.'\) has non-numeric timestamps"):
        group_words_into_sentences(["No."], ["soon"], [1.0])
    assert group_words_into_sentences([], [], []) == []


# ---------------------------------------------------------------------------------------------------------------
# Roots and arguments


def test_missing_or_file_roots_name_the_argument(corpus, sets, tmp_path):
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    with pytest.raises(FileNotFoundError, match="root: no such folder: .*nowhere"):
        load_mimic_eye(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="root must be a folder, but .*a-file.txt is a file"):
        load_mimic_eye(a_file)
    with pytest.raises(TypeError, match="root must be a folder path, got NoneType"):
        load_mimic_eye(None)
    with pytest.raises(FileNotFoundError, match="root: no such folder"):
        load_egd_cxr(tmp_path / "nowhere", corpus)
    with pytest.raises(NotADirectoryError, match="image_root must be a folder, but .*a-file.txt is a file"):
        load_egd_cxr(corpus, a_file)
    with pytest.raises(TypeError, match="heatmaps must be a HeatmapSettings or None, got dict"):
        load_mimic_eye(corpus, {"recipe": "egd"})
    with pytest.raises(ValueError, match=r"min_certainty must be an integer in \[1, 5\]"):
        load_mimic_eye(corpus, min_certainty=0)
    with pytest.raises(NotADirectoryError, match="root must be a folder, but .*a-file.txt is a file"):
        load_rsna_pneumonia(a_file)
    with pytest.raises(NotADirectoryError, match="a-file.txt is a file, not a folder .*images root"):
        load_chexpert(sets["chexpert"]["csv_path"], a_file)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation sets: contradictory rows, repeated rows, malformed cells


def test_rsna_conflicting_and_repeated_rows(sets):
    root = sets["rsna"]["root"]
    intact = load_rsna_pneumonia(root)
    path = root / "stage_2_train_labels.csv"
    frame = text_csv(path)
    normal = frame[frame["Target"] == "0"].iloc[0]
    positive = frame[frame["Target"] == "1"].iloc[[0]].assign(patientId=normal["patientId"])
    pd.concat([frame, positive, frame.iloc[[0]]]).to_csv(path, index=False)
    data = load_rsna_pneumonia(root)
    assert normal["patientId"] not in data["id"] and len(data) == len(intact) - 1
    assert "1 patients with both Target 0 and Target 1 rows skipped" in data.info.description
    assert "1 repeated label rows dropped" in data.info.description
    # the split is still computed over every listed patient
    assert dict(zip(data["id"], data["split"])).items() <= dict(zip(intact["id"], intact["split"])).items()
    boxes = {row["id"]: row["boxes"] for row in intact}
    assert all(row["boxes"] == boxes[row["id"]] for row in data)  # the repeated row added no box


@pytest.mark.parametrize("column, cell", [("width", "nan"), ("height", "-4"), ("x", "inf")])
def test_rsna_non_finite_or_empty_box_is_an_error(sets, column, cell):
    path = sets["rsna"]["root"] / "stage_2_train_labels.csv"
    frame = text_csv(path)
    line = int(np.flatnonzero(frame["Target"] == "1")[0])
    frame.at[line, column] = cell
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"stage_2_train_labels\.csv: line {line + 2} has the box .* expected finite"):
        load_rsna_pneumonia(**sets["rsna"])


def test_siim_conflicting_repeated_and_twice_found_images(sets):
    root = sets["siim"]["root"]
    path = root / "train-rle.csv"
    lines = path.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    masked = next(line for line in rows if not line.endswith(" -1"))
    empty = next(line for line in rows if line.endswith(" -1"))
    conflicting = masked.split(",")[0]
    path.write_text("\n".join([header, *rows, f"{conflicting}, -1", empty]) + "\n")
    twice = next(i for i in (line.split(",")[0] for line in rows) if i != conflicting and i != empty.split(",")[0])
    original = next((root / "dicom-images-train").rglob(f"{twice}.dcm"))
    (root / "dicom-images-train/copy").mkdir()
    shutil.copy(original, root / "dicom-images-train/copy" / original.name)
    data = load_siim_acr(root, test_ids=[conflicting, twice, "1.2.3.not-there"])
    assert conflicting not in data["id"] and twice not in data["id"]
    summary = data.info.description
    assert f"1 images listed with both -1 and a mask skipped (e.g. {conflicting})" in summary
    assert "1 repeated label rows dropped" in summary
    assert f"1 images found as two or more DICOM files skipped (e.g. {twice}.dcm)" in summary
    assert "1 test ids not in train-rle.csv ignored (e.g. 1.2.3.not-there)" in summary


@pytest.mark.parametrize("rle", ["1 2 3", "a b", "-2"])
def test_siim_malformed_rle_is_an_error_naming_the_line(sets, rle):
    path = sets["siim"]["root"] / "train-rle.csv"
    lines = path.read_text().splitlines()
    image_id = lines[1].split(",")[0]
    path.write_text("\n".join([lines[0], f"{image_id}, {rle}", *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=rf"train-rle\.csv: line 2 has ImageId '{image_id}' and EncodedPixels "
                                         rf"'{rle}'; expected an ImageId and -1 or run-length pairs"):
        load_siim_acr(sets["siim"]["root"])
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        load_siim_acr(sets["siim"]["root"], seed=-1)


def test_chexpert_bad_view_duplicate_tasks_and_blank_paths(sets):
    train = sets["chexpert"]
    frame = text_csv(train["csv_path"])
    with pytest.raises(ValueError, match=r"tasks must be distinct label column names, got \['Edema', 'Edema'\]"):
        load_chexpert(**train, tasks=["Edema", "Edema"])
    frame.at[2, "Frontal/Lateral"] = "frontal"
    frame.to_csv(train["csv_path"], index=False)
    with pytest.raises(ValueError, match=r"train\.csv: line 4, column 'Frontal/Lateral' holds 'frontal'"):
        load_chexpert(**train)
    frame.at[2, "Frontal/Lateral"] = "Frontal"
    frame.at[0, "Path"] = " "
    frame.to_csv(train["csv_path"], index=False)
    data = load_chexpert(**train)
    assert "1 rows with a blank image path (e.g. line 2)" in data.info.description


# ---------------------------------------------------------------------------------------------------------------
# Image files


def test_unreadable_image_files_name_the_file(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    (tmp_path / "not.dcm").write_bytes(b"this is no DICOM")
    with pytest.raises(ValueError, match=r"not\.dcm: not a readable DICOM file"):
        load_image(tmp_path / "not.dcm")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image file"):
        load_image(tmp_path / "broken.png")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 2, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 0, 7, 0
    ds.PixelData = bytes(4)
    ds.save_as(tmp_path / "zero-bits.dcm", enforce_file_format=True)
    expected = r"zero-bits\.dcm: DICOM field BitsStored is 0; expected an integer in \[1, 32\]"
    with pytest.raises(ValueError, match=expected):
        load_image(tmp_path / "zero-bits.dcm")


# ---------------------------------------------------------------------------------------------------------------
# Batching


@pytest.fixture
def rows():
    return datasets.Dataset.from_dict({"split": ["train", "train", "test"], "has_gaze": [True, True, True]})


@pytest.mark.parametrize("keywords, error, message", [
    ({"fraction": math.nan}, ValueError, r"fraction \(the gaze fraction\) must be a number in \[0, 1\], got nan"),
    ({"fraction": -0.1}, ValueError, r"must be a number in \[0, 1\], got -0.1"),
    ({"fraction": True}, ValueError, r"must be a number in \[0, 1\], got True"),
    ({"fraction": "0.5"}, ValueError, r"must be a number in \[0, 1\], got '0.5'"),
    ({"fraction": 0.5, "seed": -1}, ValueError, "seed must be an integer >= 0, got -1"),
    ({"fraction": 0.5, "split": "training"}, ValueError, r"split 'training' has no rows .*\['test', 'train'\]"),
])
def test_with_gaze_fraction_names_the_bad_argument(rows, keywords, error, message):
    with pytest.raises(error, match=message):
        with_gaze_fraction(rows, **keywords)


def test_with_gaze_fraction_needs_a_dataset_with_its_columns(rows):
    with pytest.raises(ValueError, match=r"dataset lacks the column\(s\) \['has_gaze'\]"):
        with_gaze_fraction(rows.remove_columns("has_gaze"), 0.5)
    with pytest.raises(TypeError, match=r"dataset must be a datasets.Dataset, got DatasetDict \(pick one split"):
        with_gaze_fraction(datasets.DatasetDict(train=rows), 0.5)
    with pytest.raises(ValueError, match=r"dataset is empty \(0 rows\)"):
        with_gaze_fraction(rows.select([]), 0.5)


def test_prepare_for_training_and_collator_name_the_bad_input(rows, processor):
    with pytest.raises(ValueError, match=r"dataset lacks the column\(s\) \['image', 'sentence_heatmaps'"):
        prepare_for_training(rows, processor.image_processor)
    with pytest.raises(TypeError, match=r"image_processor must be an EGMAImageProcessor, got EGMAProcessor \(pass "
                                        r"processor.image_processor\)"):
        prepare_for_training(rows, processor)
    collate = EGMADataCollator(processor)
    with pytest.raises(ValueError, match="EGMADataCollator needs a non-empty list of rows"):
        collate([])
    image = Path(os.devnull)
    with pytest.raises(ValueError, match=r"rows\[1\] lacks the column\(s\) \['sentences'\]"):
        collate([{"image": image, "sentences": ["No effusion."], "has_gaze": False},
                 {"image": image, "has_gaze": False}])
    with pytest.raises(ValueError, match=r"rows\[0\] lacks the column\(s\) \['sentence_heatmaps'\]"):
        collate([{"image": image, "sentences": ["No effusion."], "has_gaze": True}])
    with pytest.raises(ValueError, match=r"rows\[1\] .*mixes prepared and unprepared rows"):
        collate([{"pixel_values": 0, "gaze_grid": 0, "sentences": ["a."], "has_gaze": False},
                 {"image": image, "sentences": ["a."], "has_gaze": False, "gaze_grid": 0}])
    with pytest.raises(ValueError, match="max_length must be an integer >= 1"):
        EGMADataCollator(processor, max_length=0)


def test_collator_still_batches_rows_without_gaze_or_heatmaps(processor, tmp_path):
    Image.fromarray(np.full((20, 24), 90, np.uint8)).save(tmp_path / "x.png")
    batch = EGMADataCollator(processor)([{"image": str(tmp_path / "x.png"), "sentences": ["No effusion."],
                                          "has_gaze": False}])
    assert batch["pixel_values"].shape[0] == 1 and batch["has_gaze"].tolist() == [False]
