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
from dataclasses import dataclass

import numpy as np

RECIPE_SIGMAS = {"egma": 500 / 6, "egd": 150.0, "reflacx": None}  # None: per-fixation 1 degree of visual angle
SENTENCE_END = (".", "!", "?")


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
    Raises ValueError if a word ends before it starts.
    """
    sentences, tokens, window = [], [], None
    for index, (word, start, end) in enumerate(zip(words, starts, ends)):
        word = str(word).strip()
        if not word:
            continue
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
    height, width = image_size
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
    """
    if isinstance(recipe, (int, float)) and not isinstance(recipe, bool):
        if not (math.isfinite(recipe) and recipe > 0):
            raise ValueError(f"a numeric recipe is a Gaussian sigma in pixels and must be > 0, got {recipe}")
        sigma = float(recipe)
    elif recipe in RECIPE_SIGMAS:
        sigma = RECIPE_SIGMAS[recipe]
    else:
        raise ValueError(f"recipe must be one of {sorted(RECIPE_SIGMAS)} or a sigma in pixels, got {recipe!r}")
    height, width = image_size
    out_h, out_w = out_shape
    maps = np.zeros((len(windows), out_h, out_w), np.float32)
    if len(fixations) == 0 or len(windows) == 0:
        return maps
    if sigma is None:
        if fixations.sigma_x is None or fixations.sigma_y is None:
            raise ValueError("the 'reflacx' recipe needs per-fixation pixels per degree (sigma_x, sigma_y)")
        sigma_x, sigma_y = fixations.sigma_x.astype(np.float64), fixations.sigma_y.astype(np.float64)
    else:
        sigma_x = sigma_y = np.full(len(fixations), sigma, np.float64)

    bounds = np.asarray(windows, np.float64) - gaze_lead  # (S, 2)
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
