"""Augmenting an image and its gaze together: one geometric transform for the image and every sentence heatmap
(torchvision `transforms.v2` with `tv_tensors`), brightness and contrast for the image only."""

import hashlib
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


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


class JointAugment:
    """(image (1, S, S) uint8, heatmaps (m, h, h) float or None) -> (image (1, size, size) uint8, heatmaps
    (m, round(size * h / S), ...) float32 or None), the same geometry applied to both.

    One set of parameters is drawn from the image (torchvision's `make_params`), and torchvision's kernels apply it
    to the image (as a PIL image) and, scaled by h / S, to the heatmaps (as tensors) at their own resolution (so a
    row with gaze costs little more than one without; crop corners are rounded to whole heatmap pixels, S / h image
    pixels at most).
    Brightness and contrast change the image only. The randomness is a function of `key` alone (seeded for the
    call, the global RNG left as it was), so a row gets the same transform whatever process, worker or resume
    reads it."""

    def __init__(self, size: int, settings: AugmentSettings | None = None):
        self.size = int(size)
        self.settings = settings = settings or AugmentSettings()
        ratio = (1 / settings.crop_ratio, settings.crop_ratio)
        self.crop = v2.RandomResizedCrop(self.size, scale=(settings.crop_scale, 1.0), ratio=ratio, antialias=True)
        self.affine = None
        if settings.rotation or settings.translate:
            self.affine = v2.RandomAffine(degrees=settings.rotation, translate=(settings.translate, settings.translate),
                                          interpolation=v2.InterpolationMode.BILINEAR)
        self.photometric = v2.ColorJitter(brightness=settings.brightness or None, contrast=settings.contrast or None)

    def __call__(self, image: torch.Tensor, heatmaps: torch.Tensor | None, key: str):
        generator = torch.default_generator  # torchvision draws from it; torch.manual_seed would cost ~1 ms a call
        saved = generator.get_state()
        generator.manual_seed(seed_of(key))
        try:
            crop = self.crop.make_params([tv_tensors.Image(image)])
            source_side = image.shape[-1]
            # The image goes through the kernels as a PIL image: the same geometry, at half the tensor kernels'
            # cost for one uint8 channel (RandomAffine's tensor path builds a float sampling grid per pixel).
            picture = TF.resized_crop(TF.to_pil_image(image), **crop, size=[self.size, self.size], antialias=True)
            if heatmaps is not None:
                ratio = heatmaps.shape[-1] / source_side
                side = max(1, round(self.size * ratio))
                box = {k: round(v * ratio) for k, v in crop.items()}
                box["height"], box["width"] = max(1, box["height"]), max(1, box["width"])
                heatmaps = TF.resized_crop(heatmaps.float(), **box, size=[side, side], antialias=True)
            if self.affine is not None:
                move = self.affine.make_params([picture])
                picture = TF.affine(picture, **move, interpolation=v2.InterpolationMode.BILINEAR)
                if heatmaps is not None:
                    shift = [t * heatmaps.shape[-1] / self.size for t in move["translate"]]
                    heatmaps = TF.affine(heatmaps, **{**move, "translate": shift},
                                         interpolation=v2.InterpolationMode.BILINEAR)
            if self.settings.hflip and torch.rand(1).item() < 0.5:
                picture = TF.horizontal_flip(picture)
                heatmaps = None if heatmaps is None else TF.horizontal_flip(heatmaps)
            image = TF.pil_to_tensor(self.photometric(picture))
        finally:
            generator.set_state(saved)
        return image, None if heatmaps is None else heatmaps.clamp_(min=0)


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
