"""Image and gaze-heatmap preprocessing for EGMA.

Chest X-rays arrive in any size and mode (8-bit or 16-bit grayscale, RGB exports, float arrays). Each image is
turned into grayscale in [0, 1], resized so its longer side is `size` (aspect ratio kept), centred on a black
`size` x `size` square, repeated to 3 channels and normalised with the paper's grayscale statistics
(mean 0.5862785803, std 0.2795008897).

A gaze heatmap covers its whole image at any resolution with the same aspect ratio. It goes through exactly the
same resize-and-pad geometry as its image (the image's size decides the placement), then is average-pooled to
the vision tower's `gaze_grid_size` x `gaze_grid_size` patch grid (7 for Swin-T at 224).
"""

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

# Grayscale statistics of MIMIC-CXR used by MedCLIP and EGMA.
CXR_MEAN = 0.5862785803
CXR_STD = 0.2795008897
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def as_grayscale(image, argument: str = "images") -> np.ndarray:
    """Any supported image -> (H, W) float32 array in [0, 1].

    Integer pixels are divided by their type's maximum (255 for uint8, 65535 for uint16); integer types wider than
    16 bits hold 16-bit values, as in PIL's "I" mode that 16-bit PNGs open in. Floats must already be in [0, 1].
    """
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise ValueError(f"{argument}: empty image of size {image.size[0]}x{image.size[1]}")
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            return _check_range(_scale_integers(np.asarray(image), argument), argument)  # 16-bit PNG/TIFF
        if image.mode == "F":
            return _check_range(np.asarray(image, dtype=np.float32), argument)
        return _check_range(np.asarray(image.convert("L"), dtype=np.float32) / 255.0, argument)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.is_floating_point() else image).numpy()  # numpy has no bfloat16
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{argument}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_) or np.iscomplexobj(image):
        raise TypeError(f"{argument}: pixels must be real numbers, got dtype {image.dtype}")
    array = image
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first -> channels-last
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        hint = "; give a batch as a list of images" if image.ndim == 4 else ""
        raise ValueError(
            f"{argument}: expected (H, W), (H, W, C) or (C, H, W) with C in 1/3/4, got shape {tuple(image.shape)}{hint}"
        )
    array = _scale_integers(array, argument) if np.issubdtype(array.dtype, np.integer) else array.astype(np.float32)
    gray = _check_range(array, argument)
    return gray @ _LUMA if gray.ndim == 3 else gray


def _scale_integers(array: np.ndarray, argument: str) -> np.ndarray:
    """Integer pixels -> float32 in [0, 1]; pixels outside the type's range (16-bit for wider types) are an error."""
    maximum = 65535 if np.iinfo(array.dtype).bits > 16 else np.iinfo(array.dtype).max
    if array.size and (array.min() < 0 or array.max() > maximum):
        wide = " (integer types wider than 16 bits hold 16-bit pixels)" if maximum != np.iinfo(array.dtype).max else ""
        raise ValueError(
            f"{argument}: {array.dtype} pixels must lie in [0, {maximum}]{wide}, "
            f"got values in [{array.min()}, {array.max()}]"
        )
    return array.astype(np.float32) / maximum


def _check_range(array: np.ndarray, argument: str) -> np.ndarray:
    """Empty images, NaN / inf and floats outside [0, 1] are errors; returns `array`."""
    if array.size == 0 or min(array.shape) == 0:
        raise ValueError(f"{argument}: empty image of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{argument}: image contains NaN or inf")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(
            f"{argument}: float images must be scaled to [0, 1], got values in [{array.min():.3g}, {array.max():.3g}]"
        )
    return array


def fit_to_square(array: torch.Tensor, image_size: tuple[int, int], size: int) -> torch.Tensor:
    """Resize (..., h, w) so the image it covers has its longer side at `size`, then centre it on a zero square.

    `image_size` (H, W) is the size of the image that `array` covers; it alone decides the geometry, so an image
    and its lower-resolution heatmap land on the same pixels. Returns (..., size, size).
    """
    height, width = image_size
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    lead = array.shape[:-2]
    flat = array.reshape(-1, 1, *array.shape[-2:]).float()
    shrinking = new_height < flat.shape[-2] or new_width < flat.shape[-1]  # anti-aliasing only matters then
    resized = F.interpolate(flat, size=(new_height, new_width), mode="bilinear", align_corners=False,
                            antialias=shrinking)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    square = resized.new_zeros(flat.shape[0], 1, size, size)
    square[..., top : top + new_height, left : left + new_width] = resized
    return square.reshape(*lead, size, size)


class EGMAImageProcessor(BaseImageProcessor):
    r"""
    Args:
        size (`int`, defaults to 224): side of the square model input.
        image_mean (`float`, defaults to 0.5862785803) / image_std (`float`, defaults to 0.2795008897):
            grayscale normalisation, applied to all three (identical) channels.
        gaze_grid_size (`int`, defaults to 7): side of the vision tower's patch grid that heatmaps are pooled to.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int = 224,
        image_mean: float = CXR_MEAN,
        image_std: float = CXR_STD,
        gaze_grid_size: int = 7,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(size, dict):  # accept transformers' {"height": s, "width": s} or {"shortest_edge": s}
            size = _square_side(size)
        self.size = _positive_int(size, "size")
        self.gaze_grid_size = _positive_int(gaze_grid_size, "gaze_grid_size")
        if self.gaze_grid_size > self.size:
            raise ValueError(f"gaze_grid_size ({self.gaze_grid_size}) must not exceed size ({self.size})")
        self.image_mean = _finite_number(image_mean, "image_mean")
        self.image_std = _finite_number(image_std, "image_std")
        if self.image_std <= 0:
            raise ValueError(f"image_std must be > 0, got {image_std}")

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """One image or a list -> BatchFeature with `pixel_values` (B, 3, size, size): a torch tensor for
        `return_tensors="pt"` or None, a numpy array for "np"."""
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        if kwargs:
            raise TypeError(f"unexpected arguments for EGMAImageProcessor.preprocess: {sorted(kwargs)}")
        pixel_values, _ = self.prepare_images(images)
        if return_tensors == "np":
            return BatchFeature({"pixel_values": pixel_values.numpy()}, tensor_type="np")
        return BatchFeature({"pixel_values": pixel_values})

    def prepare_images(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """One image or a list -> (pixel_values (B, 3, size, size), original (H, W) of each image)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("images: got an empty list")
        squares, image_sizes = [], []
        for index, image in enumerate(images):
            gray = torch.from_numpy(as_grayscale(image, f"images[{index}]"))
            image_sizes.append(tuple(gray.shape))
            squares.append(fit_to_square(gray, tuple(gray.shape), self.size))
        pixel_values = (torch.stack(squares) - self.image_mean) / self.image_std
        return pixel_values[:, None].expand(-1, 3, -1, -1).contiguous(), image_sizes

    def preprocess_gaze(
        self,
        gaze_heatmaps: Sequence,
        image_sizes: Sequence[tuple[int, int]],
        num_slots: Sequence[int] | int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample heatmaps -> (gaze_heatmaps (B, M, g, g) float32, has_gaze (B,) bool).

        Args:
            gaze_heatmaps: one entry per sample: None (no gaze) or the sentence heatmaps as a sequence of 2-D arrays
                or one (m, h, w) array, each covering the whole image.
            image_sizes: (H, W) of each sample's original image.
            num_slots: the sentence count of each sample (a sample with gaze needs exactly that many heatmaps), or
                one int for all.
        """
        if not isinstance(gaze_heatmaps, Sequence) or isinstance(gaze_heatmaps, str):
            raise TypeError(
                f"gaze_heatmaps must be a list with one entry (or None) per sample, got {type(gaze_heatmaps).__name__}"
            )
        image_sizes = [_image_size(size, f"image_sizes[{index}]") for index, size in enumerate(image_sizes)]
        if not image_sizes:
            raise ValueError("image_sizes: got no images")
        if len(gaze_heatmaps) != len(image_sizes):
            raise ValueError(f"gaze_heatmaps has {len(gaze_heatmaps)} entries but there are {len(image_sizes)} images")
        counts = [num_slots] * len(image_sizes) if isinstance(num_slots, Integral) else list(num_slots)
        if len(counts) != len(image_sizes):
            raise ValueError(f"num_slots has {len(counts)} entries but there are {len(image_sizes)} images")
        for index, count in enumerate(counts):
            if isinstance(count, bool) or not isinstance(count, Integral) or count < 0:
                raise ValueError(f"num_slots[{index}] must be a sentence count (an int >= 0), got {count!r}")
        grid = self.gaze_grid_size
        output = torch.zeros(len(image_sizes), max(counts), grid, grid)
        has_gaze = torch.zeros(len(image_sizes), dtype=torch.bool)
        for sample, (maps, image_size, count) in enumerate(zip(gaze_heatmaps, image_sizes, counts)):
            if maps is None:
                continue
            maps = self._stack_heatmaps(maps, f"gaze_heatmaps[{sample}]")
            if maps.shape[0] != count:
                raise ValueError(
                    f"gaze_heatmaps[{sample}] has {maps.shape[0]} heatmaps but its report has {count} sentences; "
                    "give one heatmap per sentence (or None for a sample without gaze)"
                )
            height, width = image_size
            map_height, map_width = maps.shape[-2:]
            if abs(map_height * width - map_width * height) > height + width:
                raise ValueError(
                    f"gaze_heatmaps[{sample}] are {map_height}x{map_width} but the image is {height}x{width}: "
                    "a heatmap "
                    "must cover the whole image with the same aspect ratio"
                )
            square = fit_to_square(maps, image_size, self.size)
            pooled = F.adaptive_avg_pool2d(square, grid)
            if not torch.isfinite(pooled).all():  # finite but huge values overflow float32 when averaged
                raise ValueError(
                    f"gaze_heatmaps[{sample}]: values up to {maps.max().item():.3g} overflow float32 when pooled; "
                    "scale each heatmap (e.g. to a maximum of 1)"
                )
            output[sample, :count] = pooled
            has_gaze[sample] = True
        return output, has_gaze

    @staticmethod
    def _stack_heatmaps(maps, argument: str) -> torch.Tensor:
        """One sample's heatmaps (a list of 2-D arrays or one (m, h, w) array) -> (m, h, w) float32, checked."""
        if isinstance(maps, (list, tuple)):
            if len(maps) == 0:
                raise ValueError(f"{argument}: empty list of heatmaps (use None for a sample without gaze)")
            arrays = [_heatmap_tensor(m, f"{argument}[{index}]") for index, m in enumerate(maps)]
            shapes = {tuple(a.shape) for a in arrays}
            if len(shapes) != 1 or arrays[0].ndim != 2:
                raise ValueError(f"{argument}: heatmaps must be 2-D and all of one shape, got shapes {sorted(shapes)}")
            stacked = torch.stack(arrays)
        else:
            stacked = _heatmap_tensor(maps, argument)
            if stacked.ndim != 3:
                raise ValueError(f"{argument}: expected (sentences, h, w) heatmaps, got shape {tuple(stacked.shape)}")
        if min(stacked.shape) == 0:
            raise ValueError(f"{argument}: empty heatmap of shape {tuple(stacked.shape)}")
        for problem, bad in (("NaN or inf (or a value beyond float32's range)", ~torch.isfinite(stacked)),
                             ("negative values", stacked < 0)):
            sentences = bad.flatten(1).any(1).nonzero().flatten().tolist()
            if sentences:
                raise ValueError(
                    f"{argument}: the heatmaps of sentences {sentences} (0-based) contain {problem}; "
                    "gaze heatmaps must be finite and >= 0"
                )
        return stacked


def _heatmap_tensor(maps, argument: str) -> torch.Tensor:
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().float()
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported by the caller
            array = np.asarray(maps, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{argument}: expected numeric heatmaps (2-D arrays, or one (sentences, h, w) array), "
            f"got {type(maps).__name__} ({error})"
        ) from None
    return torch.from_numpy(array)


def _positive_int(value, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{argument} must be an int >= 1, got {value!r}")
    return int(value)


def _square_side(size: dict) -> int:
    """transformers' size dict -> the side of EGMA's square input."""
    if "shortest_edge" in size:
        return size["shortest_edge"]
    if "height" in size and "width" in size and size["height"] == size["width"]:
        return size["height"]
    raise ValueError(f"size: EGMA's input is square; give an int or {{'height': s, 'width': s}}, got {size!r}")


def _finite_number(value, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(
            f"{argument} must be one finite number (grayscale statistics, applied to all three channels), "
            f"got {value!r}"
        )
    return float(value)


def _image_size(size, argument: str) -> tuple[int, int]:
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be an (H, W) pair, got {size!r}") from None
    return _positive_int(height, f"{argument} height"), _positive_int(width, f"{argument} width")


__all__ = ["EGMAImageProcessor", "as_grayscale", "fit_to_square"]
