"""Shards (egma_hf/data/shards.py) on synthetic MIMIC-EYE and MIMIC-CXR-JPG trees in the real formats: what is
written agrees with the in-memory path, skips are counted, foreign folders and concurrent writers are refused, a
killed run resumes, and a folder reads the same from the (stand-in) Hub."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from egma_hf import EGMAImageProcessor
from egma_hf.data import (
    HeatmapSettings,
    ShardRows,
    ShardSet,
    ShardSettings,
    load_mimic_cxr,
    load_mimic_eye,
    make_synthetic_mimic_cxr,
    make_synthetic_mimic_eye,
    prepare_for_training,
    write_shards,
)
from egma_hf.data.shards import MANIFEST, SETTINGS_FILE
from tests.helpers import REPO_ROOT
from tests.hub_stand_in import HubStandIn

SIZE, GRID = 32, 4  # the processor's side and gaze grid in these tests
SMALL = ShardSettings(image_size=SIZE, heatmap_size=16, shard_size=8)


def synthetic_reader_rows(folder: Path) -> datasets.Dataset:
    """MIMIC-EYE rows with gaze (352x384 JPEGs) followed by MIMIC-CXR-JPG rows without, as the readers give them."""
    eye = load_mimic_eye(make_synthetic_mimic_eye(folder / "mimic-eye", num_samples=40, seed=0),
                         HeatmapSettings(recipe=12.0))
    cxr = load_mimic_cxr(make_synthetic_mimic_cxr(folder / "mimic-cxr", num_images=30, seed=0, image_size=64))
    return datasets.concatenate_datasets([eye, cxr])


def written_reading_ids(folder: Path) -> list[str]:
    """Reading ids of every row in every shard file below `folder`, read from the parquet files themselves."""
    return [reading for path in sorted(folder.glob("*/shard-*.parquet"))
            for reading in pq.read_table(path, columns=["reading_id"])["reading_id"].to_pylist()]


def row_digest(row: dict) -> dict:
    """A shard row with its byte columns replaced by their sha1, so two reads can be compared as JSON."""
    return {key: hashlib.sha1(value).hexdigest() if isinstance(value, bytes) else value for key, value in row.items()}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return synthetic_reader_rows(tmp_path_factory.mktemp("readers"))


@pytest.fixture(scope="module")
def processor():
    return EGMAImageProcessor(size=SIZE, gaze_grid_size=GRID)


@pytest.fixture(scope="module")
def prepared(rows, processor):
    return {row["reading_id"]: row for row in prepare_for_training(rows, processor)}


@pytest.fixture(scope="module")
def small_shards(rows, tmp_path_factory):
    return write_shards(rows, tmp_path_factory.mktemp("small") / "shards", SMALL, progress=False)


def read_prepared(folder: Path, processor, heatmap_size: int) -> dict:
    shards, prepare = ShardSet(folder), ShardRows(processor, heatmap_size)
    return {row["reading_id"]: prepare(row) for split in shards.splits for row in shards.read_split(split)}


def test_rows_read_back_agree_with_prepare_for_training(rows, processor, prepared, tmp_path):
    assert 0 < sum(rows["has_gaze"]) < len(rows)  # both kinds of row are in the corpus
    folder = write_shards(rows, tmp_path / "shards",
                          ShardSettings(image_size=SIZE, heatmap_size=SIZE, shard_size=8, jpeg_draft=False),
                          progress=False)
    got = read_prepared(folder, processor, SIZE)
    assert sorted(got) == sorted(prepared)
    for reading, expected in prepared.items():
        row = got[reading]
        assert row["sentences"] == list(expected["sentences"])
        assert row["labels"] == list(expected["labels"])
        assert row["has_gaze"] == expected["has_gaze"]
        assert (row["split"], row["subject_id"], row["study_id"]) == \
            (expected["split"], expected["subject_id"], expected["study_id"])
        mine, theirs = row["pixel_values"].astype(np.float64), expected["pixel_values"].astype(np.float64)
        # storing uint8 rounds by at most half a gray level; both sides are then rounded to float16 (half an ulp each)
        ulp = np.spacing(np.maximum(np.abs(mine), np.abs(theirs)).astype(np.float16))
        bound = 0.5 / 255 / processor.image_std + ulp
        assert (np.abs(mine - theirs) <= bound).all(), reading
        grid = np.asarray(expected["gaze_grid"], np.float32)
        if expected["has_gaze"]:  # float16 storage: a relative error of 2^-11 per value, a little more when averaged
            assert row["gaze_grid"].shape == grid.shape and grid.max() > 0
            np.testing.assert_allclose(row["gaze_grid"], grid, rtol=2e-3, atol=1e-3 * grid.max())
        else:  # the in-memory path pools the readers' all-zero placeholders; shards store no heatmap at all
            assert row["gaze_grid"].shape == (0, GRID, GRID) and not grid.any()


def test_draft_decoded_jpegs_stay_within_a_few_gray_levels(rows, processor, prepared, small_shards):
    """jpeg_draft (the default) lets libjpeg decode the 352x384 JPEGs at 1/8 scale (44x48) before the resize to 32,
    instead of resizing the full decode: measured on this corpus, a mean absolute difference of 1.4 gray levels
    (2.8 in the worst image) with isolated pixels up to 16 at sharp edges. Asserted: at most 2 over the corpus and
    4 in any image."""
    assert ShardSettings().jpeg_draft is True
    got = read_prepared(small_shards, processor, SMALL.heatmap_size)
    gray_levels = {reading: np.abs(got[reading]["pixel_values"].astype(np.float32)
                                   - expected["pixel_values"].astype(np.float32)) * processor.image_std * 255
                   for reading, expected in prepared.items()}
    per_image = np.array([diff.mean() for diff in gray_levels.values()])
    assert per_image.mean() <= 2.0 and per_image.max() <= 4.0, (per_image.mean(), per_image.max())
    assert per_image.mean() > 0.5  # the draft decode did happen: a full decode is within rounding (the test above)
    assert {reading: row["has_gaze"] for reading, row in got.items()} == \
        {reading: row["has_gaze"] for reading, row in prepared.items()}


def test_undecodable_images_are_counted_skips(rows, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    first, second = rows[0], rows[len(rows) - 1]  # one with gaze, one without
    data = Path(first["image"]).read_bytes()
    (broken / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (broken / "notes.png").write_text("this is a text file, not a PNG")
    swapped = {first["reading_id"]: str(broken / "truncated.jpg"), second["reading_id"]: str(broken / "notes.png")}
    damaged = rows.map(lambda row: {"image": swapped.get(row["reading_id"], row["image"])})
    folder = write_shards(damaged, tmp_path / "shards", SMALL, progress=False)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["skipped"]["count"] == 2
    assert manifest["skipped"]["by_reason"] == {"ValueError": 2}
    assert sorted(example.split(":")[0] for example in manifest["skipped"]["examples"]) == sorted(swapped)
    skipped_in_shards = [reading for path in folder.glob("*/shard-*.json")
                         for reading, _ in json.loads(path.read_text())["skipped"]]
    assert sorted(skipped_in_shards) == sorted(swapped)
    others = [reading for reading in rows["reading_id"] if reading not in swapped]
    assert sorted(written_reading_ids(folder)) == sorted(others)
    assert manifest["rows"] == len(others) == ShardSet(folder).rows("train") + ShardSet(folder).rows("validate") + \
        ShardSet(folder).rows("test")
    assert first["reading_id"] not in sum(manifest["gaze_readings"].values(), [])


@pytest.mark.parametrize("change, key", [
    ({"image_size": SIZE + 8}, "image_size"),
    ({"heatmap_size": 8}, "heatmap_size"),
    ({"jpeg_draft": False}, "jpeg_draft"),
])
def test_other_settings_in_the_same_folder_are_refused(rows, small_shards, change, key):
    before = (small_shards / MANIFEST).read_bytes()
    settings = ShardSettings(**{**SMALL.__dict__, **change})
    with pytest.raises(ValueError, match=rf"other settings: {key} ") as error:
        write_shards(rows, small_shards, settings, progress=False)
    assert "corpus" not in str(error.value)
    assert (small_shards / MANIFEST).read_bytes() == before


def test_another_corpus_in_the_same_folder_is_refused(rows, small_shards):
    message = (rf"other rows \(a different corpus, split or order\): corpus '{len(rows)}:\w+' there, "
               rf"'{len(rows) - 1}:\w+' now")
    with pytest.raises(ValueError, match=message):
        write_shards(rows.select(range(len(rows) - 1)), small_shards, SMALL, progress=False)


def test_an_unrelated_folder_is_refused(rows, tmp_path):
    (tmp_path / "thesis.txt").write_text("my own file")
    with pytest.raises(FileExistsError, match="is not empty and holds no preprocessing.json"):
        write_shards(rows, tmp_path, SMALL, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["thesis.txt"]


def test_an_unfinished_folder_is_refused_by_shard_set(rows, small_shards, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(small_shards, unfinished)
    (unfinished / MANIFEST).unlink()  # what a run killed after its shards but before its manifest leaves
    with pytest.raises(ValueError, match="preprocessing has not finished"):
        ShardSet(unfinished)
    (unfinished / SETTINGS_FILE).unlink()
    with pytest.raises(ValueError, match="it is not a shard folder"):
        ShardSet(unfinished)


def test_num_proc_2_writes_the_same_shards_as_num_proc_1(rows, small_shards, tmp_path):
    parallel = write_shards(rows, tmp_path / "parallel", SMALL, num_proc=2, progress=False)
    files = sorted(path.relative_to(small_shards) for path in small_shards.glob("*/shard-*.parquet"))
    assert len(files) >= 6
    assert files == sorted(path.relative_to(parallel) for path in parallel.glob("*/shard-*.parquet"))
    for name in files:
        assert pq.read_table(parallel / name).equals(pq.read_table(small_shards / name)), name
        sidecar = name.with_suffix(".json")
        assert (parallel / sidecar).read_text() == (small_shards / sidecar).read_text()
    assert json.loads((parallel / MANIFEST).read_text()) == json.loads((small_shards / MANIFEST).read_text())


@pytest.mark.parametrize("name", ["../x.parquet", "/etc/passwd", "train/../../x.parquet"])
def test_a_manifest_leading_outside_the_folder_is_refused(small_shards, tmp_path, name):
    folder = tmp_path / "shards"
    shutil.copytree(small_shards, folder)
    (tmp_path / "x.parquet").write_bytes((folder / "train" / "shard-00000.parquet").read_bytes())
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["splits"]["train"][0]["file"] = name
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="leads outside the shard folder"):
        ShardSet(folder)


def test_a_concurrent_writer_is_refused(rows, small_shards):
    before = {path: path.stat().st_mtime_ns for path in small_shards.rglob("*") if path.is_file()}
    lock = FileLock(small_shards / ".write.lock")
    with lock, pytest.raises(RuntimeError, match=r"another process is writing shards .*\.write\.lock"):
        write_shards(rows, small_shards, SMALL, progress=False)
    assert {path: path.stat().st_mtime_ns for path in small_shards.rglob("*") if path.is_file()} == before


def test_a_writer_on_a_new_folder_is_refused_by_the_lock_and_the_folder_stays_usable(rows, tmp_path):
    """Two runs started at once on a new folder: the first holds the lock before it has written anything else. The
    second must be told another process is writing, and once the first is gone (e.g. killed right after taking the
    lock) a new run must be able to write the folder."""
    folder = tmp_path / "shards"
    folder.mkdir()
    with FileLock(folder / ".write.lock"), pytest.raises(RuntimeError, match=r"\.write\.lock"):
        write_shards(rows, folder, SMALL, progress=False)
    write_shards(rows, folder, SMALL, progress=False)
    assert ShardSet(folder).manifest["rows"] == len(rows)


KILLED_WRITER = """
import json, sys
import datasets
from egma_hf.data import ShardSettings, write_shards
rows = datasets.load_from_disk(sys.argv[1])
write_shards(rows, sys.argv[2], ShardSettings(**json.loads(sys.argv[3])), progress=False)
"""


@pytest.mark.slow
def test_killed_preprocessing_resumes_without_rewriting_or_duplicating(rows, tmp_path):
    copies = [rows.map(lambda row, k=k: {"reading_id": f"{row['reading_id']}#{k}"}) for k in range(8)]
    many = datasets.concatenate_datasets(copies)  # 464 rows in 156 shards: seconds of work to interrupt
    shard_count = sum(-(-count // 3) for count in Counter(many["split"]).values())
    many.save_to_disk(tmp_path / "rows")
    settings = ShardSettings(image_size=SIZE, heatmap_size=16, shard_size=3)
    out = tmp_path / "shards"
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "rows"), str(out),
                                json.dumps(settings.__dict__)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    deadline = time.time() + 120
    while len(list(out.glob("*/shard-*.parquet"))) < 5 and time.time() < deadline:
        assert process.poll() is None, "the writer ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / MANIFEST).exists(), "the writer finished before it was killed"
    kept = {path: path.stat().st_mtime_ns for path in out.glob("*/shard-*.parquet")}
    assert 5 <= len(kept) < shard_count
    with pytest.raises(ValueError, match="preprocessing has not finished"):
        ShardSet(out)

    write_shards(many, out, settings, progress=False)
    written = written_reading_ids(out)
    assert len(written) == len(set(written)) == len(many)
    assert sorted(written) == sorted(many["reading_id"])
    assert list(out.rglob("*.tmp")) == []
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert len(list(out.glob("*/shard-*.parquet"))) == shard_count
    assert ShardSet(out).manifest["rows"] == len(many)


HUB_SCRIPT = """
import json, sys
from huggingface_hub import HfApi
from egma_hf.data import ShardSet
from tests.data.test_shards import row_digest
folder, repo = sys.argv[1:]
api = HfApi()
api.create_repo(repo, repo_type="dataset")
sha = api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset").oid
read = {}
for revision in (None, sha):
    shards = ShardSet(repo, revision=revision)
    read[str(revision)] = {split: [row_digest(row) for row in shards.read_split(split)] for split in shards.splits}
try:
    ShardSet("user/no-such-shards")
    missing = None
except ValueError as error:
    missing = str(error)
print(json.dumps({"sha": sha, "read": read, "missing": missing}))
"""


@pytest.mark.slow
def test_a_shard_folder_reads_the_same_from_the_hub(small_shards, tmp_path):
    local = ShardSet(small_shards)
    expected = {split: [row_digest(row) for row in local.read_split(split)] for split in local.splits}
    with HubStandIn() as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN="hf_stand_in", HF_HOME=str(tmp_path / "home"),
                   PYTHONPATH=str(REPO_ROOT), HF_HUB_DISABLE_TELEMETRY="1")
        env.pop("HF_HUB_OFFLINE", None)
        done = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(small_shards), "user/egma-shards"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        stored = hub.files("user/egma-shards", repo_type="dataset")
    assert result["read"]["None"] == expected
    assert result["read"][result["sha"]] == expected
    assert stored[MANIFEST] == (small_shards / MANIFEST).read_bytes()
    assert stored["train/shard-00000.parquet"] == (small_shards / "train/shard-00000.parquet").read_bytes()
    downloads = [request for request in hub.requests if request.startswith("GET /datasets/user/egma-shards/resolve/")]
    needed = {MANIFEST} | {name for name in stored if name.endswith(".parquet")}  # not the sidecars
    assert {request.split("/resolve/main/")[1] for request in downloads} == needed
    assert "user/egma-shards" not in hub.repos  # a dataset, not a model repo
    assert "user/no-such-shards: not a local folder" in result["missing"]
    assert "RepositoryNotFoundError" in result["missing"]
