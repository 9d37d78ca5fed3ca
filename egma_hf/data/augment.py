"""Augmenting an image and its gaze together: one geometric transform for the image and every sentence heatmap
(torchvision `transforms.v2` with `tv_tensors`), brightness and contrast for the image only."""

import hashlib
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2


@dataclass(frozen=True)
class AugmentSettings:
    """The random transforms of a training row. `crop_scale`: the smallest area share a random resized crop keeps
    (1 turns cropping off; the aspect ratio varies within `crop_ratio`). `rotation` in degrees and `translate` as a
    share of the side: the largest random rotation and shift. `brightness` / `contrast`: ColorJitter's factors.
    `hflip`: random horizontal flips, off by default because reports say "left" and "right"."""

    crop_scale: float = 0.8
    crop_ratio: float = 1.1  # aspect ratios in [1 / crop_ratio, crop_ratio]
    rotation: float = 5.0
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    hflip: bool = False

    def __post_init__(self):
        checks = {"crop_scale": (0.05, 1.0), "crop_ratio": (1.0, 4.0), "rotation": (0.0, 180.0),
                  "translate": (0.0, 0.5), "brightness": (0.0, 1.0), "contrast": (0.0, 1.0)}
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if not isinstance(self.hflip, bool):
            raise ValueError(f"hflip must be True or False, got {self.hflip!r}")

    @classmethod
    def none(cls) -> "AugmentSettings":
        """No random transform at all."""
        return cls(crop_scale=1.0, crop_ratio=1.0, rotation=0.0, translate=0.0, brightness=0.0, contrast=0.0)


class JointAugment:
    """(image (1, S, S) uint8, heatmaps (m, h, h) float or None) -> (image (1, size, size) uint8, heatmaps
    (m, size, size) float32 or None), the same geometry applied to both.

    The randomness is a function of `key` alone (seeded for the call, the global RNG left as it was), so a row gets
    the same transform whatever process, worker or resume reads it."""

    def __init__(self, size: int, settings: AugmentSettings | None = None):
        self.size = int(size)
        self.settings = settings = settings or AugmentSettings()
        ratio = (1 / settings.crop_ratio, settings.crop_ratio)
        geometric = [v2.RandomResizedCrop(self.size, scale=(settings.crop_scale, 1.0), ratio=ratio, antialias=True)]
        if settings.rotation or settings.translate:
            geometric.append(v2.RandomAffine(degrees=settings.rotation,
                                             translate=(settings.translate, settings.translate)))
        if settings.hflip:
            geometric.append(v2.RandomHorizontalFlip())
        self.geometric = v2.Compose(geometric)
        self.photometric = v2.ColorJitter(brightness=settings.brightness or None, contrast=settings.contrast or None)

    def __call__(self, image: torch.Tensor, heatmaps: torch.Tensor | None, key: str):
        generator = torch.default_generator  # v2 draws from it; torch.manual_seed would cost ~1 ms a call
        saved = generator.get_state()
        generator.manual_seed(seed_of(key))
        try:
            if heatmaps is None:
                image = self.geometric(tv_tensors.Image(image))
            else:  # v2 draws one set of parameters for all its inputs, which must then share their size
                side = image.shape[-1]
                heatmaps = F.interpolate(heatmaps[None].float(), size=(side, side), mode="bilinear",
                                         align_corners=False)[0]
                image, heatmaps = self.geometric(tv_tensors.Image(image), tv_tensors.Image(heatmaps))
                heatmaps = heatmaps.as_subclass(torch.Tensor).clamp_(min=0)
            image = self.photometric(image).as_subclass(torch.Tensor)
        finally:
            generator.set_state(saved)
        return image, heatmaps


def seed_of(key: str) -> int:
    """A 63-bit seed from a string, the same in every process."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def pool_heatmaps(heatmaps: torch.Tensor, grid: int) -> torch.Tensor:
    """(m, h, w) -> (m, grid, grid) by average pooling, as `EGMAImageProcessor.preprocess_gaze` does."""
    return F.adaptive_avg_pool2d(heatmaps.float(), grid)


def is_identity(settings: AugmentSettings) -> bool:
    s = settings
    return s.crop_scale == 1.0 and s.crop_ratio == 1.0 and not (s.rotation or s.translate or s.brightness
                                                                 or s.contrast or s.hflip)


__all__ = ["AugmentSettings", "JointAugment", "is_identity", "pool_heatmaps", "seed_of"]
