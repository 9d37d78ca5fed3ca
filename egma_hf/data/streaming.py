"""Training from shards: rows of a `ShardSet` streamed into batches, split across processes and loader workers,
shuffled, augmented with their gaze, and resumable at any batch.

Each epoch permutes the split's shards (seeded by seed and epoch) and cuts the rows, in that order, into one
contiguous range of `rows // (processes * workers)` rows per loader worker of every process: ranges are disjoint
and together hold every row once, but for the fewer than `processes * workers` rows left over (a different few each
epoch). Every worker yields the same number of batches, so no process waits at a collective for another that ran
out. Within its range a worker shuffles through a buffer of `shuffle_buffer` rows; a row's augmentation is seeded
by (seed, epoch, reading id). The order is thus a function of (seed, epoch) alone, and `loader(epoch, skip)` starts
it after `skip` batches by re-reading (without decoding or augmenting) the rows those batches held.
"""

import numbers

import datasets
import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from .augment import AugmentSettings, JointAugment, is_identity, pool_heatmaps
from .shards import ShardSet


class ShardRows:
    """A shard row -> the prepared row `EGMADataCollator` stacks: `pixel_values` (size, size) float16 normalised,
    `gaze_grid` (sentences, grid, grid) float32 (0 sentences without gaze), and the ids, sentences and labels.

    `augment` (None: none) applies to every call given an `epoch`; `gaze_kept` (None: all) is the set of reading ids
    whose gaze is used (the others train as rows without gaze)."""

    def __init__(self, image_processor, stored_heatmap_size: int, augment: AugmentSettings | None = None,
                 seed: int = 0, gaze_kept=None):
        self.size = image_processor.size
        self.grid = image_processor.gaze_grid_size
        self.mean, self.std = image_processor.image_mean, image_processor.image_std
        self.heatmap_size = stored_heatmap_size
        self.augment = None if augment is None or is_identity(augment) else JointAugment(self.size, augment)
        self.seed = seed
        self.gaze_kept = None if gaze_kept is None else frozenset(gaze_kept)

    def __call__(self, row: dict, epoch: int | None = None) -> dict:
        side = int(round(len(row["pixels"]) ** 0.5))
        image = torch.frombuffer(bytearray(row["pixels"]), dtype=torch.uint8).view(1, side, side)
        reading = row["reading_id"]
        has_gaze = bool(row["has_gaze"]) and (self.gaze_kept is None or reading in self.gaze_kept)
        heatmaps = None
        if has_gaze:
            count = len(row["sentences"])
            heatmaps = torch.frombuffer(bytearray(row["heatmaps"]), dtype=torch.float16).view(
                count, self.heatmap_size, self.heatmap_size).float()
        if self.augment is not None and epoch is not None:
            image, heatmaps = self.augment(image, heatmaps, f"{self.seed}/{epoch}/{reading}")
        elif side != self.size:
            image = TF.resize(image, [self.size, self.size], antialias=True)
        pixels = ((image[0].float() / 255.0 - self.mean) / self.std).to(torch.float16)
        grid = (pool_heatmaps(heatmaps, self.grid) if has_gaze else torch.zeros(0, self.grid, self.grid)).numpy()
        return {"pixel_values": pixels.numpy(), "gaze_grid": grid, "sentences": list(row["sentences"]),
                "has_gaze": has_gaze, "reading_id": reading, "subject_id": row["subject_id"],
                "study_id": row["study_id"], "labels": list(row["labels"]), "split": row["split"]}


def load_shard_split(shards: ShardSet, split: str, rows: ShardRows) -> datasets.Dataset:
    """A whole split, prepared without augmentation, in memory (for the validate and test splits)."""
    prepared = [rows(row) for row in shards.read_split(split)]
    if not prepared:
        raise ValueError(f"the {split!r} split of {shards.location} has no rows")
    features = datasets.Features({
        "pixel_values": datasets.Array2D((rows.size, rows.size), "float16"),
        "gaze_grid": datasets.List(datasets.Array2D((rows.grid, rows.grid), "float32")),
        "sentences": datasets.List(datasets.Value("string")), "has_gaze": datasets.Value("bool"),
        **{name: datasets.Value("string") for name in ("reading_id", "subject_id", "study_id", "split")},
        "labels": datasets.List(datasets.Value("string")),
    })
    dataset = datasets.Dataset.from_list(prepared, features=features)
    return dataset.with_format("numpy", columns=["pixel_values", "gaze_grid"], output_all_columns=True)


class ShardStream:
    """The batches of one split for one process (`rank` of `world_size`), with `num_workers` loader workers."""

    def __init__(self, shards: ShardSet, split: str, batch_size: int, rows: ShardRows, collate, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, shuffle_buffer: int = 1000):
        for name, value, minimum in (("batch_size", batch_size, 1), ("seed", seed, 0), ("rank", rank, 0),
                                     ("world_size", world_size, 1), ("num_workers", num_workers, 0),
                                     ("shuffle_buffer", shuffle_buffer, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"rank {rank} must be below world_size {world_size}")
        self.shards, self.split, self.batch_size = shards, split, batch_size
        self.rows, self.collate, self.seed = rows, collate, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.shuffle_buffer = shuffle_buffer
        self.sizes = [entry["rows"] for entry in shards.split_files(split)]
        readers = world_size * max(1, num_workers)
        self.rows_per_worker = sum(self.sizes) // readers
        self.batches_per_worker = self.rows_per_worker // batch_size
        if self.batches_per_worker == 0:
            raise ValueError(f"the {split!r} split of {shards.location} has {sum(self.sizes)} rows: {world_size} "
                             f"process(es) x {max(1, num_workers)} loader worker(s) x batch size {batch_size} need "
                             f"at least {readers * batch_size}")

    @property
    def batches_per_epoch(self) -> int:
        """Batches this process gets per epoch (the same on every process)."""
        return self.batches_per_worker * max(1, self.num_workers)

    def worker_ranges(self, epoch: int, reader: int) -> list[tuple[int, int, int]]:
        """(shard number, first row, end row) of reader `reader` (rank * workers + worker) in `epoch`."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sizes))
        start, stop = reader * self.rows_per_worker, (reader + 1) * self.rows_per_worker
        ranges, offset = [], 0
        for shard in order:
            size = self.sizes[shard]
            low, high = max(start, offset), min(stop, offset + size)
            if low < high:
                ranges.append((int(shard), low - offset, high - offset))
            offset += size
        return ranges

    def loader(self, epoch: int, skip: int = 0) -> torch.utils.data.DataLoader:
        """The epoch's batches after the first `skip`, in the order an uninterrupted epoch gives them."""
        if not 0 <= skip <= self.batches_per_epoch:
            raise ValueError(f"skip must be in [0, {self.batches_per_epoch}], got {skip}")
        return torch.utils.data.DataLoader(_EpochBatches(self, epoch, skip), batch_size=None,
                                           num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                                           generator=torch.Generator().manual_seed(self.seed))


class _EpochBatches(torch.utils.data.IterableDataset):
    def __init__(self, stream: ShardStream, epoch: int, skip: int):
        self.stream, self.epoch, self.skip = stream, epoch, skip

    def __iter__(self):
        stream = self.stream
        info = torch.utils.data.get_worker_info()
        workers = max(1, stream.num_workers)
        # the DataLoader takes batches from its workers in turn, starting with worker 0: after `skip` batches the
        # next one is worker (skip % workers)'s, so worker ids rotate by `skip`
        worker = ((info.id if info is not None else 0) + self.skip) % workers
        already = len(range(worker, self.skip, workers))
        reader = stream.rank * workers + worker
        rows = stream.shards.read(stream.split, stream.worker_ranges(self.epoch, reader))
        rng = np.random.default_rng([stream.seed, self.epoch, reader])
        rows = _shuffled(rows, stream.shuffle_buffer, rng)
        for number in range(stream.batches_per_worker):
            batch = [next(rows) for _ in range(stream.batch_size)]
            if number >= already:
                yield stream.collate([stream.rows(row, self.epoch) for row in batch])


def _shuffled(rows, size: int, rng: np.random.Generator):
    """Rows through a shuffle buffer of `size` (0 or 1: in order)."""
    if size <= 1:
        yield from rows
        return
    buffer = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        index = int(rng.integers(size))
        yield buffer[index]
        buffer[index] = row
    rng.shuffle(buffer)
    yield from buffer
