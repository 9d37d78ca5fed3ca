"""Decode once into shards: any reader's rows -> parquet files of uint8 images and small gaze heatmaps.

A shard folder holds `preprocessing.json` (the settings and the corpus it was written from, written first), one
folder per split of `shard-NNNNN.parquet` files with a `.json` beside each (its rows and skips), and
`egma_shards.json`, the manifest, written last: a folder without it is unfinished and is refused by `ShardSet`.

Each row keeps the reader's ids, split, sentences and labels, and adds:
- `pixels`: the image as grayscale uint8, resized so its longer side is `image_size` and centred on a black square
  (the geometry of `EGMAImageProcessor`), `image_size`² bytes;
- `heatmaps`: for a reading with gaze, each sentence's heatmap through the same geometry at `heatmap_size`²,
  float16, sentence after sentence (empty without gaze). They are not pooled to a patch grid, so that augmentation
  can move them with the image and any tower can pool them to its own grid.

Parquet is read by pyarrow, `datasets.load_dataset("parquet", ...)`, pandas and the Hub's dataset viewer alike.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import numbers
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from filelock import FileLock, Timeout
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..image_processing_egma import as_grayscale, fit_to_square
from .images import load_image

logger = logging.getLogger("egma_hf.data")

SHARD_FORMAT = "egma_hf shards"
FORMAT_VERSION = 1
MANIFEST = "egma_shards.json"
SETTINGS_FILE = "preprocessing.json"
LOCK_FILE = ".write.lock"  # held while a run writes; filelock leaves the file behind
ROW_GROUP_ROWS = 64  # what a reader fetches at once: small, so that a worker's row range wastes little at its ends
SHARD_COLUMNS = ("reading_id", "source", "subject_id", "study_id", "dicom_id", "split", "report", "sentences",
                 "labels", "has_gaze", "image_height", "image_width", "pixels", "heatmaps")
NEEDED_COLUMNS = ("reading_id", "split", "image", "sentences", "has_gaze")  # and sentence_heatmaps with gaze
SCHEMA = pa.schema([
    *[(name, pa.string()) for name in SHARD_COLUMNS[:7]],
    ("sentences", pa.list_(pa.string())), ("labels", pa.list_(pa.string())), ("has_gaze", pa.bool_()),
    ("image_height", pa.int32()), ("image_width", pa.int32()), ("pixels", pa.binary()), ("heatmaps", pa.binary()),
])


@dataclass(frozen=True)
class ShardSettings:
    """How rows are stored. `image_size`: the stored square's side, a little above the training size so random
    crops have room (256 for 224 training). `heatmap_size`: side of each stored sentence heatmap. `shard_size`:
    rows per shard file. `jpeg_draft`: let libjpeg decode JPEGs at the smallest 1/2, 1/4 or 1/8 scale that is still
    at least `image_size` on both sides (several times faster; pixels differ from a full decode by a few gray
    levels)."""

    image_size: int = 256
    heatmap_size: int = 64
    shard_size: int = 1000
    jpeg_draft: bool = True

    def __post_init__(self):
        for name, minimum in (("image_size", 8), ("heatmap_size", 1), ("shard_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.heatmap_size > self.image_size:
            raise ValueError(f"heatmap_size ({self.heatmap_size}) must not exceed image_size ({self.image_size})")
        if not isinstance(self.jpeg_draft, bool):
            raise ValueError(f"jpeg_draft must be True or False, got {self.jpeg_draft!r}")


# -- writing --------------------------------------------------------------------------------------------------------

def corpus_fingerprint(dataset: datasets.Dataset) -> str:
    """A hash of the rows' (split, reading_id, image) in order: what decides which row lands in which shard."""
    digest = hashlib.blake2b(digest_size=16)
    for start in range(0, len(dataset), 10_000):
        part = dataset.select_columns(["split", "reading_id", "image"])[start:start + 10_000]
        for split, reading, image in zip(part["split"], part["reading_id"], part["image"]):
            digest.update(f"{split}\0{reading}\0{image}\n".encode())
    return f"{len(dataset)}:{digest.hexdigest()}"


def write_shards(dataset: datasets.Dataset, out_dir, settings: ShardSettings | None = None, num_proc: int = 1,
                 progress: bool = True) -> Path:
    """Decode every row of `dataset` (a reader's rows, gaze rows included) once into shards under `out_dir`.

    Resumable: shards already written are kept, so a killed run started again with the same rows and settings
    continues where it stopped; a shard is written under a temporary name and renamed when complete, so a
    half-written one is never read. A folder written with other settings or other rows is refused, and so is a run
    while another is writing to the folder. An image that cannot be decoded is a counted skip naming its reading.
    Returns `out_dir`.
    """
    settings = settings or ShardSettings()
    if not isinstance(settings, ShardSettings):
        raise TypeError(f"settings must be a ShardSettings, got {type(settings).__name__}")
    if isinstance(num_proc, bool) or not isinstance(num_proc, numbers.Integral) or num_proc < 1:
        raise ValueError(f"num_proc must be an int >= 1, got {num_proc!r}")
    _check_rows(dataset)
    out = Path(out_dir)
    wanted = {"format": SHARD_FORMAT, "version": FORMAT_VERSION, "settings": dataclasses.asdict(settings),
              "corpus": corpus_fingerprint(dataset)}
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} is a file, not a folder")
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not (out / SETTINGS_FILE).is_file():
        raise FileExistsError(f"out_dir {out} is not empty and holds no {SETTINGS_FILE}: it is not a shard folder; "
                              "give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK_FILE)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise RuntimeError(f"another process is writing shards to {out} (it holds {lock.lock_file}); wait for it "
                           "or give another folder") from None
    try:
        _check_or_write_settings(out, wanted)
        for stale in out.glob("*/shard-*.tmp"):  # left by a killed run: whoever writes holds the lock
            stale.unlink()
        tasks = _plan(dataset, settings)
        done = {task[0]: json.loads((out / task[0]).with_suffix(".json").read_text())
                for task in tasks if _finished(out, task[0])}
        todo = [task for task in tasks if task[0] not in done]
        if done:
            logger.info("%s: %d of %d shards were written before; writing the other %d", out, len(done),
                        len(tasks), len(todo))
        bar = tqdm(total=sum(len(task[2]) for task in todo), unit="img", desc=f"writing shards to {out}",
                   disable=not progress)
        for name, record in _run(dataset, settings, out, todo, num_proc):
            done[name] = record
            bar.update(record["rows"] + len(record["skipped"]))
        bar.close()
        manifest = _manifest(wanted, tasks, done, out)
        _write_atomically(out / MANIFEST, json.dumps(manifest, indent=1))
    finally:
        lock.release()
    skipped = manifest["skipped"]
    logger.info("%s: %s rows in %d shards, %.1f KB per row; %d skipped%s", out, manifest["rows"],
                sum(len(files) for files in manifest["splits"].values()), manifest["bytes_per_row"] / 1e3,
                skipped["count"], f" (e.g. {skipped['examples'][0]})" if skipped["examples"] else "")
    return out


def _check_rows(dataset) -> None:
    if not isinstance(dataset, datasets.Dataset):
        hint = " (pick one with dataset['train'] or concatenate them)" if isinstance(dataset, datasets.DatasetDict) \
            else ""
        raise TypeError(f"dataset must be a datasets.Dataset of reader rows, got {type(dataset).__name__}{hint}")
    missing = [c for c in NEEDED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset lacks the column(s) {missing} of a reader's rows; found {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty (0 rows)")
    for index, split in enumerate(dataset["split"]):
        if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise ValueError(f"dataset row {index}: split {split!r} is not a plain name (letters, digits, _ or -)")


def _check_or_write_settings(out: Path, wanted: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        _write_atomically(path, json.dumps(wanted, indent=1))
        return
    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it is not a shard folder this package wrote") from None
    flat = {**{k: v for k, v in found.items() if k != "settings"}, **found.get("settings", {})}
    asked = {**{k: v for k, v in wanted.items() if k != "settings"}, **wanted["settings"]}
    changed = [key for key in asked if flat.get(key) != asked[key]]
    if changed:
        what = "rows (a different corpus, split or order)" if changed == ["corpus"] else "settings"
        differ = "; ".join(f"{key} {flat.get(key)!r} there, {asked[key]!r} now" for key in changed)
        raise ValueError(f"{out} was written with other {what}: {differ}. Shards of two settings never "
                         "mix: give another folder, or the settings it was written with")


def _plan(dataset: datasets.Dataset, settings: ShardSettings) -> list[tuple[str, str, list[int]]]:
    """(shard file, split, dataset row indices) for every shard, splits in first-seen order, rows in dataset order."""
    by_split: dict[str, list[int]] = {}
    for index, split in enumerate(dataset["split"]):
        by_split.setdefault(split, []).append(index)
    tasks = []
    for split, indices in by_split.items():
        for number, start in enumerate(range(0, len(indices), settings.shard_size)):
            tasks.append((f"{split}/shard-{number:05d}.parquet", split, indices[start:start + settings.shard_size]))
    return tasks


def _finished(out: Path, name: str) -> bool:
    return (out / name).is_file() and (out / name).with_suffix(".json").is_file()


_WORKER_DATASET = None  # the rows, in a worker process


def _start_worker(dataset):
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    torch.set_num_threads(1)


def _run(dataset, settings, out, todo, num_proc):
    """Yields (shard file, record) as shards are finished, at most 2 * num_proc shards in flight."""
    if num_proc == 1 or len(todo) <= 1:
        for task in todo:
            yield task[0], _write_shard(dataset, settings, out, task)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with concurrent.futures.ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method),
                                                initializer=_start_worker, initargs=(dataset,)) as pool:
        pending, queue = set(), list(reversed(todo))
        while queue or pending:
            while queue and len(pending) < 2 * num_proc:
                task = queue.pop()
                pending.add(pool.submit(_write_shard_in_worker, settings, str(out), task))
            finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                yield future.result()


def _write_shard_in_worker(settings, out, task):
    return task[0], _write_shard(_WORKER_DATASET, settings, Path(out), task)


def _write_shard(dataset, settings: ShardSettings, out: Path, task) -> dict:
    name, split, indices = task
    columns = [c for c in dataset.column_names if c not in ("reading_heatmap",)]
    rows = dataset.select(indices).select_columns(columns).with_format(None)
    table = {column: [] for column in SHARD_COLUMNS}
    skipped, gaze = [], []
    for row in rows:
        reading = str(row["reading_id"])
        try:
            pixels, image_size = decode_image(row["image"], settings)
            heatmaps = stored_heatmaps(row, image_size, settings) if row["has_gaze"] else b""
        except (OSError, ValueError) as error:
            skipped.append([reading, f"{type(error).__name__}: {error}"])
            continue
        values = {"pixels": pixels, "heatmaps": heatmaps, "image_height": image_size[0],
                  "image_width": image_size[1], "has_gaze": bool(row["has_gaze"]),
                  "sentences": [str(s) for s in row["sentences"]], "labels": [str(s) for s in row.get("labels") or []]}
        for column in SHARD_COLUMNS:
            table[column].append(values[column] if column in values else str(row.get(column) or ""))
        if values["has_gaze"]:
            gaze.append(reading)
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"file": name, "split": split, "rows": len(table["pixels"]), "skipped": skipped, "gaze": gaze}
    _write_atomically(path.with_suffix(".json"), json.dumps(record))
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.table(table, schema=SCHEMA), partial, row_group_size=ROW_GROUP_ROWS,
                   compression={c: "none" if c in ("pixels", "heatmaps") else "zstd" for c in SHARD_COLUMNS},
                   use_dictionary=["source", "split"])
    os.replace(partial, path)
    return record


def decode_image(path, settings: ShardSettings) -> tuple[bytes, tuple[int, int]]:
    """An image file -> (its stored square as uint8 bytes, its full (height, width)); ValueError / OSError naming
    the file when it cannot be decoded."""
    path = Path(path)
    if settings.jpeg_draft and path.suffix.lower() in (".jpg", ".jpeg"):
        if not path.is_file():
            raise FileNotFoundError(f"missing image file: {path}")
        try:
            with Image.open(path) as image:
                full_size = (image.height, image.width)
                image.draft("L", (settings.image_size, settings.image_size))
                gray = as_grayscale(image, str(path))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path}: not a readable image file ({error})") from None
    else:
        gray = load_image(path)
        full_size = gray.shape
    square = fit_to_square(torch.from_numpy(gray), gray.shape, settings.image_size)
    pixels = (square * 255).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.numpy().tobytes(), (int(full_size[0]), int(full_size[1]))


def stored_heatmaps(row, image_size: tuple[int, int], settings: ShardSettings) -> bytes:
    """A gaze row's sentence heatmaps through the image's geometry at heatmap_size², float16, as bytes."""
    maps = np.asarray(row["sentence_heatmaps"], np.float32)
    if maps.ndim != 3 or len(maps) != len(row["sentences"]):
        raise ValueError(f"reading {row['reading_id']}: {maps.shape[0] if maps.ndim == 3 else 'no'} sentence "
                         f"heatmaps of shape {maps.shape[1:]} for {len(row['sentences'])} sentences")
    if not np.isfinite(maps).all() or (maps < 0).any():
        raise ValueError(f"reading {row['reading_id']}: sentence heatmaps hold NaN, inf or negative values")
    square = fit_to_square(torch.from_numpy(maps), image_size, settings.heatmap_size)
    return square.to(torch.float16).numpy().tobytes()


def _manifest(wanted: dict, tasks, done: dict, out: Path) -> dict:
    splits, gaze, reasons, examples = {}, {}, Counter(), []
    for name, split, _ in tasks:
        record = done[name]
        splits.setdefault(split, []).append({"file": name, "rows": record["rows"]})
        gaze.setdefault(split, []).extend(record["gaze"])
        for reading, reason in record["skipped"]:
            reasons[reason.split(":")[0]] += 1
            if len(examples) < 20:
                examples.append(f"{reading}: {reason}")
    rows = sum(f["rows"] for files in splits.values() for f in files)
    size = sum((out / name).stat().st_size for name, _, _ in tasks)
    return {**wanted, "rows": rows, "bytes_per_row": size / max(rows, 1),
            "splits": splits, "gaze_readings": gaze,
            "skipped": {"count": sum(reasons.values()), "by_reason": dict(reasons), "examples": examples}}


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


# -- reading --------------------------------------------------------------------------------------------------------

class ShardSet:
    """A finished shard folder: a local path, or a Hub dataset repo id whose files are downloaded (and cached by
    huggingface_hub) as they are first read. ValueError naming the folder when it is unfinished, not a shard folder,
    or of another format version."""

    def __init__(self, location, revision: str | None = None):
        self.location = str(location)
        self.revision = revision
        self.root = Path(location) if Path(location).is_dir() else None
        manifest_file = self.file(MANIFEST)
        try:
            self.manifest = json.loads(Path(manifest_file).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{manifest_file} is not valid JSON ({error})") from None
        if self.manifest.get("format") != SHARD_FORMAT or self.manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_file}: not egma_hf shards of format version {FORMAT_VERSION} (found "
                             f"{self.manifest.get('format')!r} version {self.manifest.get('version')!r})")
        self.settings = ShardSettings(**self.manifest["settings"])
        self.splits: dict[str, list[dict]] = self.manifest["splits"]
        for files in self.splits.values():
            for entry in files:
                _relative(entry["file"], manifest_file)

    def file(self, name: str) -> Path:
        """The local path of one of the folder's files (downloaded first from the Hub)."""
        if self.root is not None:
            path = self.root / _relative(name, self.root / MANIFEST)
            if not path.is_file():
                if name == MANIFEST:
                    unfinished = (self.root / SETTINGS_FILE).is_file()
                    raise ValueError(f"{self.root} has no {MANIFEST}: " + (
                        "its preprocessing has not finished; run it again with the same settings to finish it"
                        if unfinished else "it is not a shard folder (write one with write_shards)"))
                raise FileNotFoundError(f"{path}: listed in {self.root / MANIFEST} but missing")
            return path
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return Path(hf_hub_download(self.location, name, repo_type="dataset", revision=self.revision))
        except (HfHubHTTPError, OSError, ValueError) as error:
            raise ValueError(f"{self.location}: not a local folder, and its {name} cannot be read from the Hub "
                             f"({type(error).__name__}: {error})") from None

    def rows(self, split: str) -> int:
        return sum(entry["rows"] for entry in self.split_files(split))

    def split_files(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise ValueError(f"{self.location} has no {split!r} split; its splits are {sorted(self.splits)}")
        return self.splits[split]

    def gaze_readings(self, split: str) -> list[str]:
        """Reading ids of the split's rows with gaze, in row order."""
        return list(self.manifest["gaze_readings"].get(split, []))

    def read(self, split: str, ranges, columns=None):
        """Rows of `split` as dicts, for `ranges`: (shard number, first row, end row) triples, read row group by row
        group. `pixels` / `heatmaps` stay bytes."""
        files = self.split_files(split)
        for number, start, stop in ranges:
            parquet = pq.ParquetFile(self.file(files[number]["file"]), memory_map=True)
            first_group, offset = start // ROW_GROUP_ROWS, start // ROW_GROUP_ROWS * ROW_GROUP_ROWS
            groups = list(range(first_group, (stop + ROW_GROUP_ROWS - 1) // ROW_GROUP_ROWS))
            if not groups:
                continue
            table = parquet.read_row_groups(groups, columns=columns)
            yield from table.slice(start - offset, stop - start).to_pylist()

    def read_split(self, split: str, columns=None):
        """Every row of `split`, in order."""
        return self.read(split, [(n, 0, e["rows"]) for n, e in enumerate(self.split_files(split))], columns)


def _relative(name: str, source) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"{source}: file name {name!r} leads outside the shard folder")
    return path
