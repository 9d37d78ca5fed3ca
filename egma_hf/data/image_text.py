"""Any image-text dataset -> one row per image-text pair in the gaze readers' schema (`FEATURES`), no gaze.

The column convention is that of transformers' contrastive-image-text example (`run_clip.py --image_column
--caption_column`): one column names the image, one holds its text. Rows look like `load_mimic_cxr`'s:
`source="image-text"`, `has_gaze=False`, 1 x 1 zero maps as `sentence_heatmaps` (one per sentence) and
`reading_heatmap`, `report` = `written_report` = the stripped text, split into `sentences` by
`split_report_into_sentences`.
"""

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import datasets
from PIL import Image, UnidentifiedImageError

from ..processing_egma import split_report_into_sentences
from .cache import build_once, default_cache_dir
from .images import image_size_of
from .mimic_cxr import NO_GAZE
from .readers import PATH_ESCAPES, ListedPathError, SkipLog, read_csv_file, resolve_inside, rows_to_dataset

logger = logging.getLogger("egma_hf.data")

SOURCE = "image-text"
SPLIT_NAMES = {"train": "train", "validation": "validate", "valid": "validate", "val": "validate",
               "validate": "validate", "test": "test"}
KNOWN_SPLITS = "train, validation / valid / val / validate, test"
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
IMAGE_COLUMN_NAMES = ("image", "image_path", "img", "image_file", "file_name", "filepath", "path")
TEXT_COLUMN_NAMES = ("text", "caption", "captions", "report", "sentence", "findings")
BATCH_SIZE = 256  # rows read at once: embedded images are never all in memory together
MANIFEST = "manifest.json"  # in the embedded-image folder: the file written for each row of each part

Parts = dict[str | None, datasets.Dataset]  # split name (None: the data names no splits) -> its rows


def load_image_text(
    data,
    image_column: str = "image",
    text_column: str = "text",
    split_column: str = "split",
    image_dir=None,
    id_column: str | None = None,
) -> datasets.Dataset:
    """Image-text pairs -> a `datasets.Dataset` in `FEATURES`, one row per pair, `has_gaze=False`.

    Args:
        data: a `datasets.Dataset` or `DatasetDict`; a folder written by `save_to_disk` (either); a `.csv`,
            `.json` / `.jsonl` (JSON lines) or `.parquet` file; or a Hub dataset id (`datasets.load_dataset(id)`).
        image_column: image paths (strings) or a `datasets.Image` feature (embedded bytes or paths).
        text_column: the text (caption, report) of each image.
        split_column: per-row split names, used when `data` is not a `DatasetDict` (whose split names are used
            instead; a `split_column` inside it must agree with them).
        image_dir: the folder image paths are relative to, and where embedded images are written. Default: the
            data file's folder (the `save_to_disk` folder itself); for Dataset objects and Hub ids, none.
        id_column: the column giving `reading_id`. Default: the listed image path, else (embedded images, which
            have no path of their own) the row index, `"<split>/<index>"` in a `DatasetDict`.

    Image paths must stay inside their root (`image_dir` or the data file's folder), absolute ones included; a path
    leading outside is a counted skip and is never opened. With no root (a Dataset object or Hub id without
    `image_dir`) absolute paths are used as they are and a relative one is a ValueError asking for `image_dir`.

    Embedded images are written once, in batches, to `<image_dir or default_cache_dir()/"image-text">/<hash>/`
    (`<hash>`: of the images' bytes), through `build_once`, so processes loading the same data at once share one
    complete copy; `image` then names the written file.

    Splits: train -> "train"; validation, valid, val, validate -> "validate"; test -> "test" (case and surrounding
    spaces ignored); any other name is a ValueError naming the column, the row and the value. Data with neither
    split names nor `split_column` is all "train" (logged).

    `labels`: from a `labels` column if there is one: a list of names (or `ClassLabel` ids), or a string of names
    separated by "|" (when it holds one) else by ","; sorted, without repeats. Otherwise [].
    `subject_id` / `study_id`: from columns of those names if present, else "": without subject ids no
    patient-level check of the split is possible. `dicom_id` is "".

    Counted skips (summary in `dataset.info.description`): rows with empty or missing text, or text without a
    sentence; rows without an image, whose image file is missing, whose path leads outside the root, whose image
    cannot be read; rows with a blank id or an id seen before (the first kept: with the default id, the same image
    twice; give `id_column` to keep several captions of one image). Errors (ValueError naming the argument and the
    columns found): `image_column`, `text_column` or `id_column` not in the data, an unsupported file suffix, a
    `data` of another type.
    """
    parts, root, what = _open_data(data)
    if image_dir is not None:
        root = Path(image_dir)
    columns_wanted = {image_column: "image_column", text_column: "text_column"}
    if id_column is not None:
        columns_wanted[id_column] = "id_column"
    for part in parts.values():
        for column, argument in columns_wanted.items():
            _check_column(part, column, argument, what)
    embedded = _embedded_images(parts, image_column, image_dir, what)
    if all(name is None for name in parts) and not any(split_column in part.column_names for part in parts.values()):
        logger.warning("%s names no splits (no DatasetDict and no %r column): every row is 'train'", what,
                       split_column)
    skips, rows, seen = SkipLog(SOURCE), [], set()
    for index, (name, part) in enumerate(parts.items()):
        reader = _PartReader(part, name, what, image_column, text_column, split_column, id_column, root, skips, seen,
                             embedded.get(index))
        rows += reader.rows()
    return rows_to_dataset(rows, skips, what)


# ---------------------------------------------------------------------------------------------------------------
# Opening the data


def _open_data(data) -> tuple[Parts, Path | None, str]:
    """(parts, the folder relative image paths resolve against or None, how messages name the data)."""
    if isinstance(data, datasets.DatasetDict):
        return dict(data), None, "data (a DatasetDict)"
    if isinstance(data, datasets.Dataset):
        return {None: data}, None, "data (a Dataset)"
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return _parts_of(_load_from_disk(path)), path, str(path)
        if path.is_file():
            return {None: _load_file(path)}, path.parent, str(path)
        looks_local = isinstance(data, os.PathLike) or path.suffix.lower() in FILE_BUILDERS or str(data).startswith(
            (".", "/", "~", "\\"))
        if looks_local:
            raise FileNotFoundError(f"data: no such file or folder: {path}")
        return _parts_of(_load_hub(str(data))), None, f"Hub dataset {data!r}"
    raise ValueError(f"data must be a datasets.Dataset or DatasetDict, a save_to_disk folder, a "
                     f"{'/'.join(FILE_BUILDERS)} file or a Hub dataset id, got {type(data).__name__}")


def _parts_of(loaded) -> Parts:
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {None: loaded}


def _load_from_disk(folder: Path):
    try:
        return datasets.load_from_disk(str(folder))
    except FileNotFoundError as error:
        raise ValueError(f"data: {folder} is a folder but not one written by save_to_disk ({error})") from None


def _load_file(path: Path) -> datasets.Dataset:
    """A CSV (every column read as text, blank cells as ""), JSON-lines or parquet file -> its rows."""
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"data: {path} has the suffix {path.suffix!r}; supported: {', '.join(FILE_BUILDERS)}")
    options = {}
    if builder == "csv":  # as text, so ids such as "00123" keep their zeros
        header = read_csv_file(path, nrows=0).columns
        options = dict(features=datasets.Features({c: datasets.Value("string") for c in header}),
                       keep_default_na=False)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except (datasets.exceptions.DatasetGenerationError, ValueError) as error:
        raise ValueError(f"data: {path} is not a readable {builder} file ({type(error).__name__}: {error})") from None


def _load_hub(dataset_id: str):
    try:
        return datasets.load_dataset(dataset_id)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"data: {dataset_id!r} is neither a local file or folder nor a Hub dataset that "
                                f"could be loaded ({type(error).__name__}: {error})") from None


def _check_column(part: datasets.Dataset, column: str, argument: str, what: str) -> None:
    found = part.column_names
    if column in found:
        return
    names = IMAGE_COLUMN_NAMES if argument == "image_column" else TEXT_COLUMN_NAMES if argument == "text_column" else ()
    present = [name for name in names if name in found]
    hint = f" (pass {argument}={present[0]!r}?)" if present else ""
    raise ValueError(f"{what}: {argument} {column!r} is not a column; found {found}{hint}")


# ---------------------------------------------------------------------------------------------------------------
# Embedded images -> files, once


def _undecoded_images(part: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """The image column alone, as {"bytes", "path"} dicts (nothing decoded)."""
    return part.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))


def _batches(part: datasets.Dataset, column: str) -> Iterator[tuple[int, list]]:
    """(index of the first row, the column's cells) per batch of BATCH_SIZE rows."""
    for start, batch in zip(range(0, len(part), BATCH_SIZE), part.iter(batch_size=BATCH_SIZE)):
        yield start, batch[column]


def _suffix_of(content: bytes, listed_path) -> str:
    """The file suffix for an embedded image: from its format, else from the path it carries, else ".bin"."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            kind = image.format
    except (UnidentifiedImageError, OSError):
        kind = None
    if kind:
        return ".jpg" if kind == "JPEG" else f".{kind.lower()}"
    suffix = Path(listed_path).suffix.lower() if listed_path else ""
    return suffix if suffix.isascii() and suffix[1:].isalnum() else ".bin"


def _embedded_images(parts: Parts, image_column: str, image_dir, what: str) -> dict[int, tuple[Path, list]]:
    """{part index: (folder, file name per row, None where the row has no bytes)} for the parts whose image column
    is a `datasets.Image` feature, their bytes written once (see `load_image_text`)."""
    images = {}
    for index, part in enumerate(parts.values()):
        feature = part.features[image_column]
        if isinstance(feature, datasets.Image):
            images[index] = _undecoded_images(part, image_column)
        elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise ValueError(f"{what}: image_column {image_column!r} holds {feature}; expected image paths (strings) "
                             "or a datasets.Image feature")
    if not images:
        return {}
    digest = hashlib.sha256()
    for index, view in images.items():
        digest.update(f"part {index} of {len(view)} rows\n".encode())
        for _, cells in _batches(view, image_column):
            for cell in cells:
                content = (cell or {}).get("bytes")
                digest.update(b"-" if content is None else len(content).to_bytes(8, "little") + content)
    folder = Path(image_dir or default_cache_dir() / SOURCE) / digest.hexdigest()[:32]

    def write_images(out: Path):
        manifest = {}
        for index, view in images.items():
            names = []
            for start, cells in _batches(view, image_column):
                (out / str(index)).mkdir(parents=True, exist_ok=True)
                for row, cell in enumerate(cells, start):
                    content = (cell or {}).get("bytes")
                    if content is None:
                        names.append(None)
                        continue
                    names.append(f"{index}/{row:08d}{_suffix_of(content, cell.get('path'))}")
                    (out / names[-1]).write_bytes(content)
            manifest[str(index)] = names
        (out / MANIFEST).write_text(json.dumps(manifest))

    build_once(folder, write_images)
    manifest = json.loads((folder / MANIFEST).read_text())
    return {index: (folder, manifest[str(index)]) for index in images}


# ---------------------------------------------------------------------------------------------------------------
# Rows


class _PartReader:
    """The rows of one part (a split of a DatasetDict, or the whole data), with their skips counted."""

    def __init__(self, part, name, what, image_column, text_column, split_column, id_column, root, skips, seen,
                 embedded):
        self.part, self.name, self.what = part, name, what
        self.image_column, self.text_column, self.split_column, self.id_column = (image_column, text_column,
                                                                                  split_column, id_column)
        self.root, self.skips, self.seen, self.embedded = root, skips, seen, embedded
        self.split = None if name is None else self._split_name(name, "the DatasetDict's split name")
        self.label_names = _label_names(part.features.get("labels"))

    def where(self, row: int) -> str:
        return f"{self.what}: {'' if self.name is None else f'split {self.name!r}, '}data row {row + 1}"

    def _split_name(self, value, source: str, row: int | None = None) -> str:
        split = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
        if split is None:
            place = self.what if row is None else f"{self.where(row)}, column {self.split_column!r}"
            raise ValueError(f"{place}: {source} {value!r} is not a split name; expected one of {KNOWN_SPLITS}")
        return split

    def rows(self) -> list[dict]:
        wanted = [self.image_column, self.text_column, self.split_column, self.id_column, "labels", "subject_id",
                  "study_id"]
        columns = list(dict.fromkeys(c for c in wanted if c is not None and c in self.part.column_names))
        view = self.part.select_columns(columns)
        if self.embedded is not None:
            view = view.cast_column(self.image_column, datasets.Image(decode=False))
        rows = []
        for start, batch in zip(range(0, len(view), BATCH_SIZE), view.iter(batch_size=BATCH_SIZE)):
            for offset in range(len(batch[self.image_column])):
                row = self.row({column: batch[column][offset] for column in columns}, start + offset)
                if row is not None:
                    rows.append(row)
        return rows

    def row(self, cells: dict, row: int) -> dict | None:
        split = self._row_split(cells, row)  # first: a bad split name is an error even in a row skipped below
        listed = self._listed_path(cells[self.image_column], row)
        reading = self._reading_id(cells, row, listed)
        if reading is None:
            return None
        text = cells[self.text_column]
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{self.where(row)}, column {self.text_column!r} holds a {type(text).__name__} "
                             f"({text!r}); expected text")
        report = (text or "").strip()
        if not report:
            self.skips.skip("rows with empty or missing text skipped", reading, example=self.where(row))
            return None
        sentences = split_report_into_sentences(report)
        if not sentences:
            self.skips.skip("rows whose text has no sentence (no letter or digit) skipped", reading,
                            example=f"{self.where(row)}: {report[:40]!r}")
            return None
        image = self._image_file(listed, row, reading)
        if image is None:
            return None
        try:
            image_height, image_width = image_size_of(image)
        except (OSError, ValueError) as error:
            self.skips.skip("rows whose image cannot be read skipped", reading, example=str(error))
            return None
        return dict(
            reading_id=reading, source=SOURCE, subject_id=self._text_cell(cells, "subject_id", row),
            study_id=self._text_cell(cells, "study_id", row), dicom_id="", split=split, image=str(image),
            image_height=image_height, image_width=image_width, report=report, written_report=report,
            sentences=sentences, sentence_heatmaps=[NO_GAZE] * len(sentences), reading_heatmap=NO_GAZE,
            has_gaze=False, num_fixations=0, labels=self._labels(cells.get("labels"), row),
        )

    def _listed_path(self, cell, row: int) -> str | Path | None:
        """A path string from the data, the written file (Path) of an embedded image, or None for no image."""
        if self.embedded is not None:
            folder, names = self.embedded
            if names[row] is not None:
                return folder / names[row]
            cell = (cell or {}).get("path")
        if cell is not None and not isinstance(cell, str):
            raise ValueError(f"{self.where(row)}, column {self.image_column!r} holds a {type(cell).__name__}; "
                             "expected an image path")
        return cell.strip() if cell and cell.strip() else None

    def _reading_id(self, cells: dict, row: int, listed) -> str | None:
        if self.id_column is not None:
            reading = self._text_cell(cells, self.id_column, row)
            if not reading:
                self.skips.skip("rows with a blank id skipped", f"{self.name}/{row}", example=self.where(row))
                return None
        elif isinstance(listed, str):
            reading = listed
        else:
            reading = str(row) if self.name is None else f"{self.name}/{row}"
        if reading in self.seen:
            self.skips.skip("rows whose id was seen before skipped (the first kept)", reading,
                            example=f"{self.where(row)}: {reading}")
            return None
        self.seen.add(reading)
        return reading

    def _row_split(self, cells: dict, row: int) -> str:
        if self.split_column not in cells:
            return self.split or "train"
        split = self._split_name(cells[self.split_column], "split", row)
        if self.split is not None and split != self.split:
            raise ValueError(f"{self.where(row)}, column {self.split_column!r}: split {cells[self.split_column]!r} "
                             f"disagrees with the DatasetDict's split {self.name!r}")
        return split

    def _image_file(self, listed, row: int, reading: str) -> Path | None:
        """The image file of a row, or None (counted) when there is none to read."""
        if listed is None:
            self.skips.skip("rows without an image skipped", reading, example=self.where(row))
            return None
        if isinstance(listed, Path):  # written by us from embedded bytes
            return listed
        if self.root is None:
            if not Path(listed).is_absolute():
                raise ValueError(f"{self.where(row)}, column {self.image_column!r}: relative image path {listed!r} "
                                 "and no folder to resolve it against; pass image_dir")
            path = Path(listed)
        else:
            try:
                path = resolve_inside(self.root, listed, f"{self.image_column} path")
            except ListedPathError as error:
                self.skips.skip(PATH_ESCAPES, reading, example=f"{self.where(row)}: {error}")
                return None
        if not path.is_file():
            self.skips.skip("rows whose image file is missing skipped", reading, example=listed)
            return None
        return path

    def _text_cell(self, cells: dict, column: str, row: int) -> str:
        cell = cells.get(column)
        if isinstance(cell, (list, dict)):
            raise ValueError(f"{self.where(row)}, column {column!r} holds a {type(cell).__name__}; expected text")
        return "" if cell is None else str(cell).strip()

    def _labels(self, cell, row: int) -> list[str]:
        if cell is None:
            return []
        if isinstance(cell, str):
            names = cell.split("|" if "|" in cell else ",")
        elif isinstance(cell, (list, tuple)) and self.label_names is not None:
            names = [self.label_names.int2str(int(value)) for value in cell]
        elif isinstance(cell, int) and not isinstance(cell, bool) and self.label_names is not None:
            names = [self.label_names.int2str(cell)]
        elif isinstance(cell, (list, tuple)) and all(isinstance(name, str) for name in cell):
            names = list(cell)
        else:
            raise ValueError(f"{self.where(row)}, column 'labels' holds {cell!r}; expected a list of label names or "
                             "a '|'- or ','-separated string of them")
        return sorted({name.strip() for name in names if name.strip()})


def _label_names(feature) -> datasets.ClassLabel | None:
    """The ClassLabel of a `labels` column of class ids (one, or a list), else None."""
    if isinstance(feature, datasets.ClassLabel):
        return feature
    inner = getattr(feature, "feature", None)
    return inner if isinstance(inner, datasets.ClassLabel) else None
