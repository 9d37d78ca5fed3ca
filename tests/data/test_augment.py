"""Joint augmentation (egma_hf/data/augment.py): the gaze moves with the image, randomness is a function of the key,
horizontal flips only when asked for, and settings out of range are refused."""

import pytest
import torch

from egma_hf.data import AugmentSettings, JointAugment
from egma_hf.data.augment import pool_heatmaps

SIDE, OUT, GRID = 256, 224, 7
PATCH = OUT // GRID
LANDMARK = (92, 165)  # row, column of the disc's centre: up and right of the middle
KEYS = [f"0/1/reading-{k}" for k in range(30)]
STRONG = AugmentSettings(crop_scale=0.6, rotation=15, translate=0.1)


def landmark_image(centre=LANDMARK, radius: float = 5.0) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(SIDE, dtype=torch.float32), torch.arange(SIDE, dtype=torch.float32),
                                indexing="ij")
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    return torch.where(disc, 250, 20).to(torch.uint8)[None]


def gaze_peak(centre=LANDMARK, size: int = 128, sigma: float = 2.0) -> torch.Tensor:
    """One sentence's heatmap at `size`², a Gaussian on `centre` (given in image pixels)."""
    scale = size / SIDE
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / scale - 0.5
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * (sigma / scale) ** 2))[None]


def bright_centre(image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Centroid (row, col) of the pixels above mid-level in an augmented (1, H, W) uint8 image, and their count."""
    plane = image[0].float()
    mask = plane > (plane.max() + plane.min()) / 2
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return torch.stack([rows.float().mean(), cols.float().mean()]), int(mask.sum())


def argmax_patch(heatmaps: torch.Tensor) -> tuple[int, int]:
    index = int(pool_heatmaps(heatmaps, GRID)[0].argmax())
    return divmod(index, GRID)


def test_gaze_follows_the_landmark_through_the_transform():
    augment = JointAugment(OUT, STRONG)
    image, heatmap = landmark_image(), gaze_peak()
    checked, moved, disagree_other_key, disagree_unmoved = 0, 0, 0, 0
    for index, key in enumerate(KEYS):
        out_image, out_maps = augment(image, heatmap, key)
        assert out_image.shape == (1, OUT, OUT) and out_image.dtype == torch.uint8
        side = OUT * heatmap.shape[-1] // SIDE  # heatmaps come out at their own resolution
        assert out_maps.shape == (1, side, side) and out_maps.dtype == torch.float32
        centre, area = bright_centre(out_image)
        if area < 40:  # the disc was cropped out of view (it keeps >= 60 px when whole at the smallest zoom)
            continue
        # the gaze peak lands on the landmark's centre, within one heatmap pixel (crop corners are rounded to them)
        step = OUT / side
        peak = (torch.tensor(divmod(int(out_maps[0].argmax()), side), dtype=torch.float32) + 0.5) * step - 0.5
        assert torch.dist(peak, centre) < 2.5 + step, (key, peak, centre)
        # and so does the pooled patch, wherever the centre is not on a patch border
        expected = (int(centre[0]) // PATCH, int(centre[1]) // PATCH)
        near_border = any(min(float(c) % PATCH, PATCH - float(c) % PATCH) < 2 for c in centre)
        if not near_border:
            assert argmax_patch(out_maps) == expected, key
            checked += 1
            moved += expected != (LANDMARK[0] * OUT // SIDE // PATCH, LANDMARK[1] * OUT // SIDE // PATCH)
            # controls: the gaze transformed under another row's key, or only resized, misses the landmark
            _, other_maps = augment(image, heatmap, KEYS[(index + 1) % len(KEYS)])
            disagree_other_key += argmax_patch(other_maps) != expected
            unmoved = torch.nn.functional.interpolate(heatmap[None], size=(side, side), mode="bilinear")[0]
            disagree_unmoved += argmax_patch(unmoved) != expected
    assert checked >= 15, checked
    assert moved >= checked // 3  # the transforms are strong enough to move the landmark to other patches
    assert disagree_other_key >= checked // 3 and disagree_unmoved >= checked // 3, \
        (checked, disagree_other_key, disagree_unmoved)


def test_same_key_same_output_and_the_global_rng_is_left_alone():
    augment = JointAugment(OUT, AugmentSettings())
    image = torch.randint(0, 256, (1, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    heatmaps = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = augment(image, heatmaps, "7/0/abc")
    assert torch.equal(torch.get_rng_state(), state)
    draw_after = torch.rand(4)
    torch.set_rng_state(state)
    assert torch.equal(torch.rand(4), draw_after)  # the next draw is what it would have been without the call
    torch.manual_seed(99)  # another global state: the output depends on the key alone
    again = augment(image, heatmaps, "7/0/abc")
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    images_only = augment(image, None, "7/0/abc")
    assert images_only[1] is None
    others = [augment(image, heatmaps, key) for key in ("7/1/abc", "8/0/abc", "7/0/abd")]
    for other in others:
        assert not torch.equal(other[0], first[0]) and not torch.equal(other[1], first[1])


def halves(tensor: torch.Tensor) -> tuple[float, float]:
    plane = tensor[0].float()
    return float(plane[:, : plane.shape[1] // 2].sum()), float(plane[:, plane.shape[1] // 2 :].sum())


def test_horizontal_flips_only_when_asked_for():
    assert AugmentSettings().hflip is False
    image = torch.full((1, SIDE, SIDE), 10, dtype=torch.uint8)
    image[:, :, 20:100] = 240  # bright on the left
    heatmap = torch.zeros(1, 64, 64)
    heatmap[:, 20:40, 5:25] = 1.0  # gaze on the left too
    default, flipping = JointAugment(OUT, AugmentSettings()), JointAugment(OUT, AugmentSettings(hflip=True))
    swapped = 0
    for key in KEYS:
        out_image, out_maps = default(image, heatmap, key)
        left, right = halves(out_image)
        assert left > 2 * right, key
        gaze_left, gaze_right = halves(out_maps)
        assert gaze_left > 2 * gaze_right, key
        out_image, out_maps = flipping(image, heatmap, key)
        image_swapped = halves(out_image)[1] > 2 * halves(out_image)[0]
        gaze_swapped = halves(out_maps)[1] > 2 * halves(out_maps)[0]
        assert image_swapped == gaze_swapped, key  # a flip moves the gaze with the image
        swapped += image_swapped
    assert 5 <= swapped <= 25, swapped  # p = 0.5 over 30 keys


@pytest.mark.parametrize("field, value", [
    ("crop_scale", 0.0), ("crop_scale", 1.5), ("crop_ratio", 0.5), ("rotation", -1.0), ("rotation", 200.0),
    ("translate", 0.6), ("brightness", -0.1), ("contrast", 1.5), ("contrast", True), ("rotation", float("nan")),
    ("hflip", "yes"), ("hflip", 1),
])
def test_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        AugmentSettings(**{field: value})
