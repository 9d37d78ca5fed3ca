"""Dictation timing and gaze: word times, fixations that follow the dictated sentence, and the screens they were
recorded on."""

import numpy as np

from .core import Reading, pick
from .language import compose

EGD_SCREEN = (1920, 1080)  # width, height of the EGD monitor
REFLACX_SCREEN = (3840, 2160)  # 4K; the image area starts at x=661, buttons sit left of it
REFLACX_IMAGE_X0 = 661


def _speak(rng, sentences: list, start: float, pace: float, decimals: int) -> float:
    """Give every word a (begin, end); returns the end of the last word."""
    t = start
    for sentence in sentences:
        for token in sentence.text.split():
            duration = (0.08 + 0.045 * len(token.strip(".,"))) * pace * rng.uniform(0.8, 1.2)
            sentence.words.append((token, round(t, decimals), round(t + duration, decimals)))
            t += duration + rng.uniform(0.02, 0.1) + (rng.uniform(0.2, 0.4) if token.endswith(",") else 0)
        t = sentence.words[-1][2] + rng.uniform(0.55, 1.4)
    return sentences[-1].words[-1][2]


def _scan(rng, stream: dict, until: float, boxes: list, size: tuple, p_noise: float):
    """Append fixations up to time `until`: a random walk inside the boxes, some noise anywhere on the image."""
    width, height = size
    while stream["t"] < until:
        duration = 0.08 + rng.gamma(4.0, 0.055)
        box = stream["box"]
        if rng.random() < p_noise:
            point, box = (rng.uniform(0, width), rng.uniform(0, height)), None
        elif box is not None and box in boxes and rng.random() < 0.7:
            x1, y1, x2, y2 = box
            step = rng.normal(0, 0.3, 2) * (x2 - x1, y2 - y1)
            point = (min(max(stream["xy"][0] + float(step[0]), x1 + 1), x2 - 1),
                     min(max(stream["xy"][1] + float(step[1]), y1 + 1), y2 - 1))
        else:
            box = pick(rng, boxes)
            x1, y1, x2, y2 = box
            point = (rng.uniform(0.9 * x1 + 0.1 * x2, 0.1 * x1 + 0.9 * x2),
                     rng.uniform(0.9 * y1 + 0.1 * y2, 0.1 * y1 + 0.9 * y2))
        stream["rows"].append((stream["t"], stream["t"] + duration, *point))
        stream["t"] += duration + 0.02 + rng.exponential(0.03)
        stream["box"], stream["xy"] = box, point


def dictate(rng, reading: Reading, decimals: int) -> None:
    """Sentences with word times, and fixations that follow them (gaze leads speech by 0.2-0.45 s)."""
    study = reading.study
    sentences = compose(rng, study)
    size = (study.width, study.height)
    survey = [study.anatomy[n] for n in ("right lung", "left lung", "cardiac silhouette", "upper mediastinum",
                                         "right costophrenic angle", "left costophrenic angle")]
    survey += [f.bbox for f in study.findings]
    pace = 0.9 + 0.05 * reading.radiologist + rng.uniform(-0.1, 0.1)  # each radiologist has a tempo
    end = _speak(rng, sentences, start=rng.uniform(2.0, 6.0), pace=pace, decimals=decimals)

    stream = {"t": round(rng.uniform(0.05, 0.25), 3), "box": None, "xy": (size[0] / 2, size[1] / 2), "rows": []}
    leads = [s.words[0][1] - rng.uniform(0.2, 0.45) for s in sentences]
    _scan(rng, stream, leads[0], survey, size, p_noise=0.25)
    for sentence, until in zip(sentences, leads[1:] + [end]):
        _scan(rng, stream, until, sentence.boxes, size, p_noise=0.12)
    _scan(rng, stream, end + rng.uniform(0.5, 2.0), survey, size, p_noise=0.3)
    start, stop, x, y = (np.array(column) for column in zip(*stream["rows"]))
    reading.sentences = sentences
    reading.fixations = {"start": start, "end": stop, "x": x, "y": y, "valid": rng.random(len(x)) > 0.02}


def egd_screen_pads(width: int, height: int) -> tuple:
    """(top, bottom, left, right) pads of the image fitted, aspect kept and centred, on the 1920 x 1080 screen."""
    scale = min(EGD_SCREEN[0] / width, EGD_SCREEN[1] / height)
    shown_w, shown_h = round(width * scale), round(height * scale)
    left, top = (EGD_SCREEN[0] - shown_w) // 2, (EGD_SCREEN[1] - shown_h) // 2
    return top, EGD_SCREEN[1] - shown_h - top, left, EGD_SCREEN[0] - shown_w - left


def reflacx_screen_box(width: int, height: int) -> tuple:
    """(xmin, ymin, xmax, ymax) of the whole image fitted into the 4K screen's image area, right of the buttons."""
    area_w, area_h = REFLACX_SCREEN[0] - REFLACX_IMAGE_X0, REFLACX_SCREEN[1]
    scale = min(area_w / width, area_h / height)
    xmin = REFLACX_IMAGE_X0 + round((area_w - width * scale) / 2)
    ymin = round((area_h - height * scale) / 2)
    return xmin, ymin, xmin + round(width * scale), ymin + round(height * scale)


def look_off_image(rng, reading: Reading, count: int, egd: bool) -> None:
    """Move `count` fixations off the image: into the EGD side pads (all IMAGE_SIZES are narrower than 16:9), or
    onto the REFLACX buttons (the last fixations)."""
    study, fix = reading.study, reading.fixations
    if egd:
        top, bottom, left, right = egd_screen_pads(study.width, study.height)
        scale = (EGD_SCREEN[0] - left - right) / study.width
        indices = rng.choice(np.arange(1, len(fix["x"])), size=count, replace=False)
        pad_x = rng.uniform(0.1, 0.9, count) * left / scale
        fix["x"][indices] = np.where(rng.random(count) < 0.5, -pad_x, study.width + pad_x)
    else:
        xmin, ymin, xmax, ymax = reflacx_screen_box(study.width, study.height)
        scale = (xmax - xmin) / study.width
        indices = np.arange(len(fix["x"]) - count, len(fix["x"]))
        fix["x"][indices] = (rng.uniform(80, 600, count) - xmin) / scale
        fix["y"][indices] = (rng.uniform(300, 1900, count) - ymin) / scale



def calibration_fixations(rng) -> dict:
    """Fixations on the white dot at the screen centre, in the calibration image's own (screen-sized) pixels."""
    count = int(rng.integers(3, 7))
    start = np.cumsum(rng.uniform(0.25, 0.6, count)) - 0.2
    return {"start": start, "end": start + rng.uniform(0.15, 0.35, count),
            "x": rng.normal(EGD_SCREEN[0] / 2, 15, count), "y": rng.normal(EGD_SCREEN[1] / 2, 12, count),
            "valid": np.ones(count, bool)}
