"""Reading chest X-ray files: JPG/PNG through Pillow, DICOM through pydicom (the optional `dicom` extra)."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..image_processing_egma import as_grayscale


def _dicom(path: Path, stop_before_pixels: bool):
    try:
        import pydicom
    except ImportError:
        raise ImportError(f"{path} is DICOM: install the 'dicom' extra (pip install 'egma_hf[dicom]')") from None
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing image file: {path}") from None
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable DICOM file ({error})") from None


def _dicom_field(header, name: str, path: Path, low: int, high: int) -> int:
    """An integer DICOM header field in [low, high], or ValueError naming the file and the field."""
    value = getattr(header, name, None)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise ValueError(f"{path}: DICOM field {name} is {value!r}; expected an integer in [{low}, {high}]")
    return number


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom")


def image_size_of(path) -> tuple[int, int]:
    """(height, width) of an image file without decoding its pixels."""
    path = Path(path)
    if _is_dicom(path):
        header = _dicom(path, stop_before_pixels=True)
        return _dicom_field(header, "Rows", path, 1, 2**16 - 1), _dicom_field(header, "Columns", path, 1, 2**16 - 1)
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise FileNotFoundError(f"missing image file: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image file ({error})") from None


def load_image(path) -> np.ndarray:
    """An X-ray file -> (H, W) float32 grayscale in [0, 1], white = dense (bone).

    DICOM: scaled by the stored bit depth (`BitsStored`), inverted for MONOCHROME1. Others: 8-bit or 16-bit
    grayscale, or RGB converted to luminance.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing image file: {path}")
    if _is_dicom(path):
        dataset = _dicom(path, stop_before_pixels=False)
        bits = _dicom_field(dataset, "BitsStored", path, 1, 32)
        try:
            pixels = dataset.pixel_array.astype(np.float32)
        except Exception as error:  # pydicom raises many kinds (no PixelData, unsupported transfer syntax, ...)
            raise ValueError(f"{path}: cannot decode the DICOM pixel data ({type(error).__name__}: {error})") from None
        if pixels.ndim != 2:
            raise ValueError(f"{path}: expected a single grayscale frame, got pixel array of shape {pixels.shape}")
        pixels = np.clip(pixels / float(2**bits - 1), 0.0, 1.0)
        if str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
            pixels = 1.0 - pixels
        return pixels
    try:
        with Image.open(path) as image:
            return as_grayscale(image, str(path))  # the image processor's own conversion, so both agree
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image file ({error})") from None
