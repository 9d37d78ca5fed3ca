"""Sentence-level gaze heatmaps from fixations and word timestamps (paper Sec. 3.1, App. D).

The dictation is split into sentences by its word timestamps; each sentence's time window collects the fixations
that overlap it, each weighted by the overlapping duration; each fixation spreads as a 2-D Gaussian over the image;
the sum is scaled to a maximum of 1. A window without fixations gives an all-zero map (an unfocused sentence).

Maps are evaluated directly at a reduced resolution that keeps the image's aspect ratio (`heatmap_shape`), as a
product of separable 1-D Gaussians, so a 3000-px image never needs a full-size float array.

Three recipes for the Gaussian's width, all in original-image pixels:
- `"egma"`: fixed sigma = 500/6 ~ 83 px, the first author's earlier gaze code (PyGaze-style 500 px kernel).
- `"reflacx"`: sigma = 1 degree of visual angle per fixation (REFLACX's `angular_resolution_*_pixels_per_degree`),
  limited to the part of the image shown on screen at that moment.
- `"egd"`: fixed sigma = 150 px, EGD-CXR's official `gaussian_filter(sigma=150)`.
A number instead of a name is a fixed sigma in pixels (e.g. for images far smaller than the ~3000 px originals).
"""

import math
import numbers
from dataclasses import dataclass

import numpy as np

RECIPE_SIGMAS = {"egma": 500 / 6, "egd": 150.0, "reflacx": None}  # None: per-fixation 1 degree of visual angle
SENTENCE_END = (".", "!", "?")


def recipe_sigma(recipe, argument: str = "recipe") -> float | None:
    """A heatmap recipe -> its fixed sigma in pixels (None for "reflacx": per fixation); ValueError naming
    `argument` for anything else (an unknown name, NaN, inf, zero or a negative sigma, a bool)."""
    if isinstance(recipe, str):
        if recipe in RECIPE_SIGMAS:
            return RECIPE_SIGMAS[recipe]
    elif isinstance(recipe, numbers.Real) and not isinstance(recipe, bool):
        if not (math.isfinite(recipe) and recipe > 0):
            raise ValueError(f"{argument}: a numeric recipe is a Gaussian sigma in pixels and must be > 0 and finite, "
                             f"got {recipe}")
        return float(recipe)
    raise ValueError(f"{argument} must be one of {sorted(RECIPE_SIGMAS)} or a sigma in pixels, got {recipe!r}")


def _check_size(value, argument: str) -> tuple[int, int]:
    """An (height, width) pair of positive integers, or ValueError naming `argument`."""
    try:
        height, width = value
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be a (height, width) pair, got {value!r}") from None
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, numbers.Integral) or side < 1:
            raise ValueError(f"{argument} must be two integers >= 1, got {value!r}")
    return int(height), int(width)


@dataclass
class Fixations:
    """Fixations of one reading: positions in original-image pixel indices (pixel j is centred on j), times in
    seconds on the transcript's clock.

    `sigma_x` / `sigma_y` (pixels per degree of visual angle) are needed for the "reflacx" recipe; `shown_box`
    (F, 4) as xmin, ymin, xmax, ymax limits each Gaussian to the image part that was on screen.
    """

    x: np.ndarray
    y: np.ndarray
    start: np.ndarray
    end: np.ndarray
    sigma_x: np.ndarray | None = None
    sigma_y: np.ndarray | None = None
    shown_box: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def select(self, keep: np.ndarray) -> "Fixations":
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return Fixations(self.x[keep], self.y[keep], self.start[keep], self.end[keep], pick(self.sigma_x),
                         pick(self.sigma_y), pick(self.shown_box))


@dataclass
class Sentence:
    text: str
    start: float
    end: float


def group_words_into_sentences(words: list[str], starts, ends) -> list[Sentence]:
    """Words with timestamps -> sentences with time windows [first word's start, last word's end].

    A word ending in ".", "!" or "?" closes a sentence; punctuation-only words (REFLACX writes "." and "," as
    rows of their own) attach to the previous word. Words after the last full stop form a final sentence.
    Raises ValueError if the three lists differ in length, a timestamp is not a finite number, or a word ends
    before it starts.
    """
    words, starts, ends = list(words), list(starts), list(ends)
    if not len(words) == len(starts) == len(ends):
        raise ValueError(f"words, starts and ends differ in length ({len(words)}, {len(starts)}, {len(ends)})")
    sentences, tokens, window = [], [], None
    for index, (word, start, end) in enumerate(zip(words, starts, ends)):
        word = str(word).strip()
        if not word:
            continue
        try:
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise ValueError(f"word {index} ({word!r}) has non-numeric timestamps {start!r}, {end!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"word {index} ({word!r}) has a non-finite timestamp (start {start}, end {end})")
        if not end >= start:
            raise ValueError(f"word {index} ({word!r}) ends at {end} s before it starts at {start} s")
        if any(char.isalnum() for char in word):
            tokens.append(word)
            window = (start, end) if window is None else (window[0], max(window[1], end))
        elif tokens:
            tokens[-1] += word
        if tokens and tokens[-1].endswith(SENTENCE_END):
            sentences.append(Sentence(" ".join(tokens), float(window[0]), float(window[1])))
            tokens, window = [], None
    if tokens:
        sentences.append(Sentence(" ".join(tokens), float(window[0]), float(window[1])))
    return sentences


def heatmap_shape(image_size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """(H, W) of an image -> (h, w) of its heatmaps: longer side `longest_side`, aspect ratio kept."""
    height, width = _check_size(image_size, "image_size")
    if isinstance(longest_side, bool) or not isinstance(longest_side, numbers.Integral) or longest_side < 1:
        raise ValueError(f"longest_side must be an integer >= 1, got {longest_side!r}")
    scale = longest_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _gaussians(centres, sigmas, grid, low=None, high=None) -> np.ndarray:
    """(F,) centres and sigmas, (n,) grid -> (F, n) 1-D Gaussians, zero outside [low, high] when given."""
    values = np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / sigmas[:, None]) ** 2)
    if low is not None:
        values *= (grid[None, :] >= low[:, None]) & (grid[None, :] <= high[:, None])
    return values


def render_heatmaps(
    fixations: Fixations,
    windows: list[tuple[float, float]],
    image_size: tuple[int, int],
    out_shape: tuple[int, int],
    recipe: str | float = "egma",
    gaze_lead: float = 0.0,
) -> np.ndarray:
    """One heatmap per time window -> (S, h, w) float32, each scaled to max 1 (all zero without fixations).

    Args:
        fixations: the reading's fixations (image pixels, seconds).
        windows: (start, end) seconds per sentence; use (-inf, inf) for a whole-reading map.
        image_size: (H, W) of the original image the coordinates refer to.
        out_shape: (h, w) of the maps, normally `heatmap_shape(image_size, longest_side)`.
        recipe: "egma", "reflacx" or "egd" (module docstring), or a fixed sigma in image pixels.
        gaze_lead: seconds by which gaze precedes speech; each window is shifted that much earlier.

    Raises ValueError for a non-finite fixation value (position, time, or the "reflacx" recipe's pixels per
    degree), a fixation or window that ends before it starts, a NaN window bound or a non-finite `gaze_lead`,
    so no input gives a NaN map.
    """
    sigma = recipe_sigma(recipe)
    height, width = _check_size(image_size, "image_size")
    out_h, out_w = _check_size(out_shape, "out_shape")
    if isinstance(gaze_lead, bool) or not isinstance(gaze_lead, numbers.Real) or not math.isfinite(gaze_lead):
        raise ValueError(f"gaze_lead must be a finite number of seconds, got {gaze_lead!r}")
    bounds = np.asarray(windows, np.float64).reshape(-1, 2) - gaze_lead  # (S, 2); inf bounds stay inf
    if np.isnan(bounds).any() or (bounds[:, 1] < bounds[:, 0]).any():
        index = int(np.flatnonzero(np.isnan(bounds).any(axis=1) | (bounds[:, 1] < bounds[:, 0]))[0])
        raise ValueError(f"windows[{index}] = {tuple(windows[index])} is not a (start, end) pair with start <= end")
    maps = np.zeros((len(bounds), out_h, out_w), np.float32)
    if len(fixations) == 0 or len(bounds) == 0:
        return maps
    if sigma is None:
        if fixations.sigma_x is None or fixations.sigma_y is None:
            raise ValueError("the 'reflacx' recipe needs per-fixation pixels per degree (sigma_x, sigma_y)")
        sigma_x, sigma_y = fixations.sigma_x.astype(np.float64), fixations.sigma_y.astype(np.float64)
        for name, values in (("sigma_x", sigma_x), ("sigma_y", sigma_y)):
            bad = ~(np.isfinite(values) & (values > 0))
            if bad.any():
                raise ValueError(f"fixation {int(np.flatnonzero(bad)[0])}: {name} (pixels per degree) must be "
                                 f"finite and > 0, got {values[bad][0]}")
    else:
        sigma_x = sigma_y = np.full(len(fixations), sigma, np.float64)
    for name in ("x", "y", "start", "end"):
        values = np.asarray(getattr(fixations, name), np.float64)
        if len(values) != len(fixations) or not np.isfinite(values).all():
            raise ValueError(f"fixations.{name} must hold {len(fixations)} finite numbers; "
                             f"got {len(values)} values, {int((~np.isfinite(values)).sum())} of them non-finite")
    backwards = fixations.end < fixations.start
    if backwards.any():
        raise ValueError(f"fixation {int(np.flatnonzero(backwards)[0])} ends before it starts")
    overlap = np.minimum(fixations.end[None, :], bounds[:, 1:]) - np.maximum(fixations.start[None, :], bounds[:, :1])
    weights = np.clip(overlap, 0.0, None)  # (S, F) seconds of each fixation inside each window
    # centres of the map's pixels in image pixel indices (image pixel j is centred on j)
    xs = (np.arange(out_w) + 0.5) * width / out_w - 0.5
    ys = (np.arange(out_h) + 0.5) * height / out_h - 0.5
    box = fixations.shown_box
    gx = _gaussians(fixations.x, sigma_x, xs, *(None, None) if box is None else (box[:, 0], box[:, 2]))
    gy = _gaussians(fixations.y, sigma_y, ys, *(None, None) if box is None else (box[:, 1], box[:, 3]))
    for index, row in enumerate(weights):
        active = row > 0
        if active.any():
            heat = (gy[active].T * row[active]) @ gx[active]  # (h, w)
            peak = heat.max()
            if peak > 0:
                maps[index] = heat / peak
    return maps
