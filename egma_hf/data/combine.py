"""A large image-report corpus with gaze on the images that have it: `attach_gaze`."""

import logging
from collections import Counter, defaultdict

import datasets

from .readers import FEATURES, SkipLog

logger = logging.getLogger("egma_hf.data")

NOT_IN_CORPUS = "gaze readings whose image (dicom_id) is not in the corpus dropped"
OTHER_SUBJECT = "gaze readings whose subject_id differs from the corpus row of their image dropped"
MOVED = "gaze readings moved to the split of their image's subject in the corpus"


def _check_rows(dataset, argument: str) -> None:
    if not isinstance(dataset, datasets.Dataset):
        whole = isinstance(dataset, datasets.DatasetDict)
        hint = " (a reader's whole result, not by_split's splits)" if whole else ""
        raise TypeError(f"{argument} must be a datasets.Dataset in the readers' schema, got "
                        f"{type(dataset).__name__}{hint}")
    missing = [column for column in FEATURES if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{argument} lacks the column(s) {missing} of the readers' schema (egma_hf.data.FEATURES)")


def subject_splits(corpus: datasets.Dataset) -> dict[str, str]:
    """{subject_id: split} over the rows that name a subject; ValueError naming the subject, its splits and a row of
    each when a subject is in two splits (the corpus is not split by patient, and gaze cannot be attached without a
    leak)."""
    splits_of, row_of = defaultdict(set), {}
    for row, (subject, split) in enumerate(zip(corpus["subject_id"], corpus["split"])):
        if subject:
            splits_of[subject].add(split)
            row_of.setdefault((subject, split), row)
    for subject, splits in splits_of.items():
        if len(splits) > 1:
            rows = ", ".join(f"{split} (row {row_of[subject, split]})" for split in sorted(splits))
            raise ValueError(f"corpus: subject_id {subject!r} is in {len(splits)} splits: {rows}; attaching gaze "
                             "keeps every subject in one split, so the corpus must be split by subject (patient)")
    return {subject: next(iter(splits)) for subject, splits in splits_of.items()}


def attach_gaze(corpus: datasets.Dataset, gaze_readings: datasets.Dataset) -> datasets.Dataset:
    """`corpus` (one row per image, e.g. `load_mimic_cxr`) with gaze on the images that `gaze_readings` cover.

    Gaze readings join the corpus by `dicom_id`. An image with gaze readings is replaced by one row per reading
    (its dictated transcript's sentences and their heatmaps, `has_gaze=True`), in the split of the image's corpus
    row and with the corpus row's `labels`, so that every row of one image and every image of one subject stay in
    one split and all rows are labelled alike; the reading keeps its own image file (its heatmaps' geometry).
    Every other corpus row is kept as it is. Gaze readings whose image is not in the corpus, or whose `subject_id`
    differs from the corpus row's, are dropped; readings whose own split differed are moved. The counts are logged
    and written, with the corpus' own summary, into `dataset.info.description`.

    A corpus that puts one subject in two splits is a ValueError (`subject_splits`): no split assignment of its
    gaze readings would then be leak-free. Both arguments must be Datasets in the readers' schema.
    """
    _check_rows(corpus, "corpus")
    _check_rows(gaze_readings, "gaze_readings")
    subject_splits(corpus)
    row_of = {}
    for row, dicom_id in enumerate(corpus["dicom_id"]):
        if dicom_id:
            row_of.setdefault(dicom_id, row)
    corpus_subjects, corpus_splits, corpus_labels = corpus["subject_id"], corpus["split"], corpus["labels"]

    skips, moved = SkipLog("attach_gaze"), Counter()
    kept, splits, labels, covered = [], [], [], set()
    readings = zip(gaze_readings["reading_id"], gaze_readings["dicom_id"], gaze_readings["subject_id"],
                   gaze_readings["split"])
    for reading, (reading_id, dicom_id, subject, split) in enumerate(readings):
        row = row_of.get(dicom_id)
        if row is None:
            skips.skip(NOT_IN_CORPUS, reading_id, example=f"{reading_id} (dicom_id {dicom_id!r})")
            continue
        if subject and corpus_subjects[row] and subject != corpus_subjects[row]:
            skips.skip(OTHER_SUBJECT, reading_id, example=f"{reading_id}: {subject} vs {corpus_subjects[row]}")
            continue
        if split != corpus_splits[row]:
            moved[split, corpus_splits[row]] += 1
        kept.append(reading)
        splits.append(corpus_splits[row])
        labels.append(corpus_labels[row])
        covered.add(row)

    columns = list(FEATURES)
    gaze_rows = gaze_readings.select(kept).remove_columns(["split", "labels"])
    gaze_rows = gaze_rows.add_column("split", splits).add_column("labels", labels)
    without_gaze = corpus.select([row for row in range(len(corpus)) if row not in covered])
    parts = [part.select_columns(columns) for part in (without_gaze, gaze_rows)]
    combined = datasets.concatenate_datasets([part if part.features == FEATURES else part.cast(FEATURES)
                                              for part in parts])
    moves = "; ".join(f"{count} from {old} to {new}" for (old, new), count in sorted(moved.items()))
    summary = (f"attach_gaze: {len(kept)} gaze readings on {len(covered)} of {len(corpus)} corpus images "
               f"({100 * len(covered) / max(len(corpus), 1):.2f} %); {MOVED}: {moves or 'none'}; "
               f"{skips.summary().removeprefix('attach_gaze: ')}")
    logger.info(summary)
    combined.info.description = "\n".join(part for part in (corpus.info.description, summary) if part)
    return combined
