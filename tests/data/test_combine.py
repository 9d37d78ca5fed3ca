"""attach_gaze: a MIMIC-CXR-format corpus with gaze readings on some of its images, leak-free by subject."""

import datasets
import pytest

from egma_hf.data import (
    FEATURES,
    EGMADataCollator,
    attach_gaze,
    load_mimic_cxr,
    load_mimic_eye,
    make_synthetic_mimic_cxr,
    make_synthetic_mimic_eye,
    with_gaze_fraction,
)
from egma_hf.data.batching import study_id_of


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(corpus, gaze readings): a 120-image synthetic MIMIC-CXR tree that includes a 30-reading MIMIC-EYE tree."""
    root = tmp_path_factory.mktemp("twins")
    make_synthetic_mimic_eye(root / "eye", 30, seed=1)
    make_synthetic_mimic_cxr(root / "cxr", 120, seed=1, mimic_eye=root / "eye")
    return load_mimic_cxr(root / "cxr"), load_mimic_eye(root / "eye")


def edited(dataset: datasets.Dataset, row: int, **values) -> datasets.Dataset:
    """`dataset` with `values` written into one row."""
    return dataset.map(lambda r, i: {**r, **values} if i == row else r, with_indices=True, features=dataset.features)


def test_gaze_readings_replace_their_images_rows(twins):
    corpus, gaze = twins
    combined = attach_gaze(corpus, gaze)
    assert combined.features == FEATURES
    gaze_images = set(gaze["dicom_id"])
    assert gaze_images <= set(corpus["dicom_id"])  # the twin includes every MIMIC-EYE image
    # one row per gaze reading, one per corpus image without gaze
    assert len(combined) == len(gaze) + sum(d not in gaze_images for d in corpus["dicom_id"])
    rows = combined.to_pandas()
    with_gaze = rows[rows["source"] != "mimic-cxr"]
    assert sorted(with_gaze["reading_id"]) == sorted(gaze["reading_id"])
    assert not set(rows[rows["source"] == "mimic-cxr"]["dicom_id"]) & gaze_images
    assert list(with_gaze["has_gaze"]) == [gaze[i]["has_gaze"] for i in range(len(gaze))]
    # each gaze row: its transcript and heatmaps, the corpus row's split and labels
    corpus_rows = {row["dicom_id"]: row for row in corpus.select_columns(["dicom_id", "split", "labels"])}
    by_reading = {row["reading_id"]: row for row in gaze}
    for row in combined.select(range(len(combined) - len(gaze), len(combined))):
        reading = by_reading[row["reading_id"]]
        assert row["sentences"] == reading["sentences"] and row["report"] == reading["report"]
        assert row["sentence_heatmaps"] == reading["sentence_heatmaps"]
        assert row["image"] == reading["image"]
        assert row["split"] == corpus_rows[row["dicom_id"]]["split"]
        assert row["labels"] == corpus_rows[row["dicom_id"]]["labels"]
    assert f"attach_gaze: {len(gaze)} gaze readings on {len(gaze_images)} of {len(corpus)} corpus images" in (
        combined.info.description)
    assert "moved to the split of their image's subject in the corpus: none" in combined.info.description
    assert combined.info.description.startswith("MIMIC-CXR: ")  # the corpus' own summary is kept


def test_readings_of_images_outside_the_corpus_are_dropped_and_counted(twins):
    corpus, gaze = twins
    foreign = edited(gaze, 0, dicom_id="not-in-the-corpus")
    other_subject = edited(foreign, 1, subject_id="99999999")
    combined = attach_gaze(corpus, other_subject)
    kept = gaze.select(range(2, len(gaze)))
    assert len(combined) == len(corpus) - len(set(kept["dicom_id"])) + len(kept)
    ids = {reading for reading, source in zip(combined["reading_id"], combined["source"]) if source != "mimic-cxr"}
    assert gaze[0]["reading_id"] not in ids and gaze[1]["reading_id"] not in ids
    description = combined.info.description
    assert "1 gaze readings whose image (dicom_id) is not in the corpus dropped in 1 readings" in description
    assert "1 gaze readings whose subject_id differs from the corpus row of their image dropped" in description
    assert f"{gaze[0]['reading_id']} (dicom_id 'not-in-the-corpus')" in description


def test_a_reading_in_another_split_moves_to_its_subjects_split(twins):
    corpus, gaze = twins
    reading = next(i for i, split in enumerate(gaze["split"]) if split == "train")
    combined = attach_gaze(corpus, edited(gaze, reading, split="test"))
    row = combined.to_pandas().set_index("reading_id").loc[gaze[reading]["reading_id"]]
    assert row["split"] == "train"
    assert "moved to the split of their image's subject in the corpus: 1 from test to train" in (
        combined.info.description)
    # every subject is in one split
    frame = combined.to_pandas()
    assert frame.groupby("subject_id")["split"].nunique().max() == 1


def test_a_corpus_not_split_by_subject_is_refused(twins):
    corpus, gaze = twins
    subject = corpus[0]["subject_id"]
    other = next(i for i in range(1, len(corpus)) if corpus[i]["split"] != corpus[0]["split"])
    mixed = edited(corpus, other, subject_id=subject)
    with pytest.raises(ValueError, match=rf"subject_id '{subject}' is in 2 splits: .*\(row 0\).*split by subject"):
        attach_gaze(mixed, gaze)


def test_bad_arguments_are_named(twins):
    corpus, gaze = twins
    with pytest.raises(TypeError, match="corpus must be a datasets.Dataset.*by_split"):
        attach_gaze(datasets.DatasetDict(train=corpus), gaze)
    with pytest.raises(ValueError, match=r"gaze_readings lacks the column\(s\) \['sentence_heatmaps'\]"):
        attach_gaze(corpus, gaze.remove_columns("sentence_heatmaps"))


def test_gaze_fraction_keeps_gaze_on_a_share_of_the_attached_readings(twins):
    corpus, gaze = twins
    combined = attach_gaze(corpus, gaze)
    train_gaze = sum(g and s == "train" for g, s in zip(combined["has_gaze"], combined["split"]))
    half = with_gaze_fraction(combined, 0.5, seed=0)
    assert sum(g and s == "train" for g, s in zip(half["has_gaze"], half["split"])) == int(train_gaze * 0.5 + 0.5)
    assert half["sentences"] == combined["sentences"]  # the same rows and texts, gaze on or off


def test_study_ids_are_shared_by_a_studys_images_only():
    rows = [dict(subject_id="1", study_id="50", image="a.jpg"), dict(subject_id="1", study_id="50", image="b.jpg"),
            dict(subject_id="1", study_id="51", image="c.jpg"), dict(subject_id="", study_id="", image="d.jpg"),
            dict(subject_id="", study_id="", image="e.jpg")]
    ids = [study_id_of(row) for row in rows]
    assert ids[0] == ids[1] and len(set(ids[1:])) == 4
    assert all(0 <= i < 2**63 for i in ids)
    assert study_id_of(rows[0]) == study_id_of(dict(rows[0]))  # a hash of the text, not of the object


def test_collator_adds_study_ids_unless_asked_not_to(twins, processor):
    corpus, _ = twins
    rows = [corpus[i] for i in range(4)]
    rows[1] = dict(rows[1], subject_id=rows[0]["subject_id"], study_id=rows[0]["study_id"])  # a second view of 0
    batch = EGMADataCollator(processor)(rows)
    assert batch["study_ids"].tolist() == [study_id_of(row) for row in rows]
    assert batch["study_ids"][0] == batch["study_ids"][1] and len(set(batch["study_ids"].tolist())) == 3
    assert "study_ids" not in EGMADataCollator(processor, same_study_positives=False)(rows)
    with pytest.raises(TypeError, match="same_study_positives must be True or False"):
        EGMADataCollator(processor, same_study_positives="yes")
