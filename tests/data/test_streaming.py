"""Streaming shards into batches (egma_hf/data/streaming.py): ranks and loader workers split an epoch's rows without
overlap, a resumed epoch continues with exactly the batches it would have given, the order is a function of seed and
epoch, and gaze is kept only for the readings asked for. Real shards of synthetic MIMIC-EYE rows, real DataLoader
workers, the real collator."""

import pytest
import torch

from egma_hf import EGMAImageProcessor, EGMAProcessor
from egma_hf.data import (
    AugmentSettings,
    EGMADataCollator,
    ShardRows,
    ShardSet,
    ShardSettings,
    ShardStream,
    load_shard_split,
    write_shards,
)
from tests.data.test_shards import synthetic_reader_rows
from tests.helpers import GRID, IMAGE_SIZE, make_tokenizer

STORED = ShardSettings(image_size=40, heatmap_size=16, shard_size=5)  # stored above the 32 px training size
WORKERS = [0, pytest.param(2, marks=pytest.mark.slow)]  # loader workers are processes


class Collate:
    """EGMADataCollator's batch, with the rows' reading ids alongside."""

    def __init__(self):
        self.collator = EGMADataCollator(EGMAProcessor(image_processor=processor(), tokenizer=make_tokenizer()))

    def __call__(self, rows):
        return {**self.collator(rows), "reading_id": [row["reading_id"] for row in rows]}


def processor() -> EGMAImageProcessor:
    return EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID)


@pytest.fixture(scope="module")
def reader_rows(tmp_path_factory):
    rows = synthetic_reader_rows(tmp_path_factory.mktemp("readers"))
    return rows.filter(lambda row: row["has_gaze"])  # 39 MIMIC-EYE readings


def shards_of(reader_rows, folder, count: int) -> ShardSet:
    """The first `count` readings as one train split (5 rows a shard), plus the rest as a validate split."""
    splits = ["train" if index < count else "validate" for index in range(len(reader_rows))]
    rows = reader_rows.remove_columns("split").add_column("split", splits)
    return ShardSet(write_shards(rows, folder, STORED, progress=False))


@pytest.fixture(scope="module")
def even(reader_rows, tmp_path_factory):
    return shards_of(reader_rows, tmp_path_factory.mktemp("even") / "shards", 24)


@pytest.fixture(scope="module")
def uneven(reader_rows, tmp_path_factory):
    return shards_of(reader_rows, tmp_path_factory.mktemp("uneven") / "shards", 23)


def stream(shards, augment=None, **kwargs) -> ShardStream:
    settings = dict(batch_size=3, seed=0, rank=0, world_size=1, num_workers=0, shuffle_buffer=4) | kwargs
    return ShardStream(shards, "train", rows=ShardRows(processor(), STORED.heatmap_size, augment, seed=5),
                       collate=Collate(), **settings)


def reading_ids(batches) -> list[str]:
    return [reading for batch in batches for reading in batch["reading_id"]]


def assert_same_batches(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for one, other in zip(left, right):
        assert one.keys() == other.keys()
        for key, value in one.items():
            assert torch.equal(value, other[key]) if isinstance(value, torch.Tensor) else value == other[key], key


@pytest.mark.parametrize("workers", WORKERS)
def test_two_ranks_share_an_epoch_without_overlap(even, workers):
    every = [row["reading_id"] for row in even.read_split("train")]
    assert len(every) == len(set(every)) == 24
    per_rank, lengths = [], []
    for rank in (0, 1):
        part = stream(even, rank=rank, world_size=2, num_workers=workers)
        batches = list(part.loader(epoch=2))
        assert len(batches) == part.batches_per_epoch
        assert all(len(batch["reading_id"]) == 3 for batch in batches)
        lengths.append(part.batches_per_epoch)
        per_rank.append(reading_ids(batches))
    assert lengths[0] == lengths[1] == 24 // 2 // 3
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(every)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_uneven_split_leaves_fewer_rows_than_readers_out_of_the_ranges(uneven, workers):
    readers = 2 * max(1, workers)
    every = {row["reading_id"] for row in uneven.read_split("train")}
    for epoch in (0, 1):
        covered = []
        for rank in (0, 1):
            part = stream(uneven, rank=rank, world_size=2, num_workers=workers)
            for worker in range(max(1, workers)):
                ranges = part.worker_ranges(epoch, rank * max(1, workers) + worker)
                rows = [row["reading_id"] for row in uneven.read("train", ranges, columns=["reading_id"])]
                assert len(rows) == part.rows_per_worker == 23 // readers
                covered += rows
        assert len(covered) == len(set(covered)) and set(covered) <= every
        assert 0 < len(every) - len(covered) < readers
    assert stream(uneven, rank=0, world_size=2).batches_per_epoch == \
        stream(uneven, rank=1, world_size=2).batches_per_epoch


@pytest.mark.parametrize("workers", WORKERS)
def test_a_resumed_epoch_gives_the_batches_it_would_have_given(even, workers):
    part = stream(even, AugmentSettings(), num_workers=workers)
    full = list(part.loader(epoch=3))
    assert len(full) == part.batches_per_epoch == 8
    for skip in (1, 3, 5, 8):
        assert_same_batches(list(part.loader(epoch=3, skip=skip)), full[skip:])
    with pytest.raises(ValueError, match=r"skip must be in \[0, 8\], got 9"):
        part.loader(epoch=3, skip=9)


def test_the_order_is_a_function_of_seed_and_epoch(even):
    first = list(stream(even, AugmentSettings()).loader(epoch=0))
    assert_same_batches(list(stream(even, AugmentSettings()).loader(epoch=0)), first)
    orders = [reading_ids(first)] + [reading_ids(stream(even, AugmentSettings(), **kwargs).loader(epoch=epoch))
                                     for epoch, kwargs in ((1, {}), (2, {}), (0, {"seed": 1}))]
    assert all(sorted(order) == sorted(orders[0]) for order in orders)  # one worker, evenly divided: every row
    assert len({tuple(order) for order in orders}) == len(orders)
    # the same rows in another epoch are augmented differently
    later = list(stream(even, AugmentSettings()).loader(epoch=1))
    position = {reading: index for index, reading in enumerate(reading_ids(later))}
    reading = reading_ids(first)[0]
    again = later[position[reading] // 3]["pixel_values"][position[reading] % 3]
    assert not torch.equal(first[0]["pixel_values"][0], again)


def test_a_split_too_small_for_the_readers_is_refused(even):
    with pytest.raises(ValueError, match=r"has 24 rows: 2 process\(es\) x 2 loader worker\(s\) x batch size 8 need "
                                         r"at least 32"):
        stream(even, batch_size=8, rank=1, world_size=2, num_workers=2)


def test_gaze_is_kept_only_for_the_readings_asked_for(even):
    gaze = even.gaze_readings("train")
    assert len(gaze) == 24
    kept = set(gaze[::3])
    rows = ShardRows(processor(), STORED.heatmap_size, gaze_kept=kept)
    prepared = load_shard_split(even, "train", rows)
    assert {row["reading_id"] for row in prepared if row["has_gaze"]} == kept
    for row in prepared:
        count = len(row["gaze_grid"])
        assert count == (len(row["sentences"]) if row["reading_id"] in kept else 0)
        if count:
            assert row["gaze_grid"].sum() > 0
    batches = list(ShardStream(even, "train", 3, rows, Collate()).loader(epoch=0))
    flags = {reading: bool(flag) for batch in batches for reading, flag in zip(batch["reading_id"], batch["has_gaze"])}
    assert flags == {reading: reading in kept for reading in gaze}
    for batch in batches:
        assert not batch["gaze_heatmaps"][~batch["has_gaze"]].any()
