"""Image and gaze-heatmap preprocessing for EGMA.

Chest X-rays arrive in any size and mode (8-bit or 16-bit grayscale, RGB exports, float arrays). Each image is
turned into grayscale in [0, 1], resized so its longer side is `size` (aspect ratio kept), centred on a black
`size` x `size` square, repeated to 3 channels and normalised with the paper's grayscale statistics
(mean 0.5862785803, std 0.2795008897).

A gaze heatmap covers its whole image at any resolution with the same aspect ratio. It goes through exactly the
same resize-and-pad geometry as its image (the image's size decides the placement), then is average-pooled to
the vision tower's `gaze_grid_size` x `gaze_grid_size` patch grid (7 for Swin-T at 224).
"""

from collections.abc import Sequence

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


def _as_grayscale(image, argument: str = "images") -> np.ndarray:
    """Any supported image -> (H, W) float32 array in [0, 1]."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image).astype(np.float32) / 65535.0  # 16-bit PNG/TIFF (PIL reads some as "I")
        elif image.mode == "F":
            array = np.asarray(image, dtype=np.float32)
        else:
            array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    else:
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if not isinstance(image, np.ndarray):
            raise TypeError(f"{argument}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
        array = image
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # channels-first -> channels-last
        scale = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else 1.0
        array = array.astype(np.float32) / scale
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array[..., 0] if array.shape[-1] == 1 else array[..., :3] @ _LUMA
        if array.ndim != 2:
            raise ValueError(
                f"{argument}: expected (H, W), (H, W, C) or (C, H, W) with C in 1/3/4, got shape {tuple(image.shape)}"
            )
    return _check_range(array, argument)


def _check_range(array: np.ndarray, argument: str) -> np.ndarray:
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
        if isinstance(size, dict):  # accept transformers' {"height": s, "width": s}
            size = size.get("shortest_edge") or size["height"]
        if int(size) < 1 or int(gaze_grid_size) < 1:
            raise ValueError(f"size and gaze_grid_size must be >= 1, got {size} and {gaze_grid_size}")
        if float(image_std) <= 0:
            raise ValueError(f"image_std must be > 0, got {image_std}")
        self.size = int(size)
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)
        self.gaze_grid_size = int(gaze_grid_size)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """One image or a list -> BatchFeature with `pixel_values` (B, 3, size, size)."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' (EGMA is PyTorch-only), got {return_tensors!r}")
        if kwargs:
            raise TypeError(f"unexpected arguments for EGMAImageProcessor.preprocess: {sorted(kwargs)}")
        pixel_values, _ = self.prepare_images(images)
        return BatchFeature({"pixel_values": pixel_values})

    def prepare_images(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """One image or a list -> (pixel_values (B, 3, size, size), original (H, W) of each image)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("images: got an empty list")
        squares, image_sizes = [], []
        for index, image in enumerate(images):
            gray = torch.from_numpy(_as_grayscale(image, f"images[{index}]"))
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
        if len(gaze_heatmaps) != len(image_sizes):
            raise ValueError(f"gaze_heatmaps has {len(gaze_heatmaps)} entries but there are {len(image_sizes)} images")
        counts = [num_slots] * len(image_sizes) if isinstance(num_slots, int) else list(num_slots)
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
                    f"gaze_heatmaps[{sample}] are {map_height}x{map_width} but the image is {height}x{width}: a heatmap "
                    "must cover the whole image with the same aspect ratio"
                )
            square = fit_to_square(maps, image_size, self.size)
            output[sample, :count] = F.adaptive_avg_pool2d(square, grid)
            has_gaze[sample] = True
        return output, has_gaze

    @staticmethod
    def _stack_heatmaps(maps, argument: str) -> torch.Tensor:
        if isinstance(maps, (list, tuple)):
            if len(maps) == 0:
                raise ValueError(f"{argument}: empty list of heatmaps (use None for a sample without gaze)")
            arrays = [torch.as_tensor(np.asarray(m, dtype=np.float32)) for m in maps]
            shapes = {tuple(a.shape) for a in arrays}
            if len(shapes) != 1 or arrays[0].ndim != 2:
                raise ValueError(f"{argument}: heatmaps must be 2-D and all of one shape, got shapes {sorted(shapes)}")
            stacked = torch.stack(arrays)
        else:
            stacked = torch.as_tensor(np.asarray(maps, dtype=np.float32))
            if stacked.ndim != 3:
                raise ValueError(f"{argument}: expected (sentences, h, w) heatmaps, got shape {tuple(stacked.shape)}")
        if min(stacked.shape) == 0:
            raise ValueError(f"{argument}: empty heatmap of shape {tuple(stacked.shape)}")
        if not torch.isfinite(stacked).all():
            raise ValueError(f"{argument}: heatmaps contain NaN or inf")
        if (stacked < 0).any():
            raise ValueError(f"{argument}: heatmaps contain negative values")
        return stacked


__all__ = ["EGMAImageProcessor", "fit_to_square"]
