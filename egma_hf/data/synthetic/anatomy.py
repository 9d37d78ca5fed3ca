"""Anatomy and drawing: chest X-ray-like images and where each finding is on them.

Coordinates: u = x / width, v = y / height; the patient's right lung is on the image's left.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .core import Finding

IMAGE_SIZES = ((320, 384), (352, 384), (352, 352), (384, 352), (336, 384), (384, 384), (320, 352))  # (width, height)

# Candidate findings (class, patient side, zone) and how often each is drawn.
CANDIDATES = (
    [("opacity", side, zone) for side in ("right", "left") for zone in ("upper", "lower")]
    + [("cardiomegaly", None, None), ("edema", None, None)]
    + [(name, side, None) for name in ("effusion", "pneumothorax") for side in ("right", "left")]
)
CANDIDATE_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 1.5, 1.2, 1.0, 1.0, 0.6, 0.6])
FINDING_COUNT_P = (0.12, 0.2, 0.4, 0.28)  # 0, 1, 2 or 3 findings per image


def _sign(side: str) -> float:
    return -1.0 if side == "right" else 1.0


@dataclass
class Anatomy:
    cx: float
    top: float  # lung apices
    dome: float  # costophrenic angles, the lowest lung points
    lung_half_width: float
    lung_offset: float  # lung centre distance from the midline
    heart_half_width: float
    heart_half_height: float

    def lung_centre(self, side: str) -> float:
        return self.cx + _sign(side) * self.lung_offset

    @property
    def lung_height(self) -> float:
        return self.dome - self.top

    @property
    def heart_centre(self) -> tuple:
        return self.cx + 0.04, self.dome - 0.075

    def hilum(self, side: str) -> tuple:
        return self.cx + _sign(side) * 0.1, self.top + 0.42 * self.lung_height


def sample_anatomy(rng, findings) -> Anatomy:
    heart_scale = 1.0
    for finding in findings:
        if finding.name == "cardiomegaly":
            heart_scale = (1.3, 1.45, 1.6)[finding.severity]
    return Anatomy(
        cx=0.5 + rng.uniform(-0.025, 0.025), top=0.14 + rng.uniform(-0.025, 0.025),
        dome=0.76 + rng.uniform(-0.04, 0.03),
        lung_half_width=0.16 + rng.uniform(-0.015, 0.015), lung_offset=0.175 + rng.uniform(-0.012, 0.012),
        heart_half_width=(0.13 + rng.uniform(-0.01, 0.01)) * heart_scale,
        heart_half_height=0.11 * (1 + 0.3 * (heart_scale - 1)),
    )


def _lung(u, v, centre, half_width, top, dome):
    """Lung field mask: rounded apex, widening downwards, domed diaphragm with sharp costophrenic angles."""
    depth = np.clip((v - top) / (dome - top), 0.0, 1.0)
    width = half_width * np.sqrt(np.clip((v - top) / 0.16, 0.0, 1.0)) * (0.8 + 0.2 * depth)
    du = u - centre
    floor = dome - 0.06 * np.clip(1.0 - (du / half_width) ** 2, 0.0, 1.0)
    return (np.abs(du) < width) & (v < floor)


def _smooth_noise(rng, shape, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a cells x cells random grid resized bilinearly to `shape`."""
    grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32))
    return np.asarray(grid.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _mask_box(mask) -> list:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def anatomy_boxes(an: Anatomy, width: int, height: int) -> dict:
    """Named anatomical boxes (EGD-CXR bounding_boxes.csv names) in image pixels, from the drawing geometry."""
    boxes = {}

    def put(name, u1, v1, u2, v2):
        boxes[name] = [round(min(max(t, 0.0), 1.0) * size, 1) for t, size in
                       ((u1, width), (v1, height), (u2, width), (v2, height))]

    a, h = an.lung_half_width, an.lung_height
    for side in ("right", "left"):
        uc, lateral = an.lung_centre(side), an.lung_centre(side) + _sign(side) * a
        put(f"{side} lung", uc - a, an.top, uc + a, an.dome)
        put(f"{side} apical zone", uc - a, an.top, uc + a, an.top + 0.3 * h)
        for index, zone in enumerate(("upper", "mid", "lower")):
            put(f"{side} {zone} lung zone", uc - a, an.top + index * h / 3, uc + a, an.top + (index + 1) * h / 3)
        hu, hv = an.hilum(side)
        put(f"{side} hilar structures", hu - 0.06, hv - 0.08, hu + 0.06, hv + 0.08)
        put(f"{side} costophrenic angle", lateral - 0.07, an.dome - 0.09, lateral + 0.04, an.dome + 0.02)
        put(f"{side} hemidiaphragm", uc - a, an.dome - 0.065, uc + a, an.dome + 0.015)
        clavicle = sorted((an.cx + _sign(side) * 0.05, an.cx + _sign(side) * 0.33))
        put(f"{side} clavicle", clavicle[0], an.top - 0.06, clavicle[1], an.top + 0.045)
    hu, hv = an.heart_centre
    put("cardiac silhouette", hu - an.heart_half_width, hv - an.heart_half_height, hu + an.heart_half_width,
        min(hv + an.heart_half_height, an.dome))
    put("upper mediastinum", an.cx - 0.06, an.top - 0.05, an.cx + 0.06, hv - an.heart_half_height)
    put("trachea", an.cx - 0.025, an.top - 0.08, an.cx + 0.025, an.top + 0.12)
    return boxes


def _gaussian(t, centre: float, sigma: float):
    return np.exp(-0.5 * ((t - centre) / sigma) ** 2)


def draw(rng, an: Anatomy, findings: list, width: int, height: int) -> np.ndarray:
    """Render a chest X-ray-like uint8 image and fill in each finding's boxes (image pixels).

    Brightness is X-ray density: air dark, soft tissue grey, bone and heart bright. Every 2-D term is built from
    (1, W) and (H, 1) factors (separable Gaussians, a rib pattern from the cosine addition formula).
    """
    u = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    v = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    coarse, fine = _smooth_noise(rng, (height, width), 7), _smooth_noise(rng, (height, width), 30)
    w = u - an.cx

    body = (np.abs(w) / 0.47) ** 4 + ((v - 0.6) / 0.66) ** 4 < 1
    img = np.where(body, 0.5 + 0.1 * np.clip((v - an.dome + 0.05) / 0.05, 0, 1) + 0.05 * coarse, 0.04)
    lungs = {side: _lung(u, v, an.lung_centre(side), an.lung_half_width, an.top, an.dome) for side in ("right", "left")}
    any_lung = lungs["right"] | lungs["left"]
    phase, bend = 2 * np.pi * 9 * v, 2 * np.pi * 9 * 0.9 * w**2
    ribs = 0.5 + 0.5 * (np.cos(phase) * np.cos(bend) + np.sin(phase) * np.sin(bend))  # cos(phase - bend)
    medial = np.clip(1 - np.abs(w) / 0.35, 0, 1)
    img = np.where(any_lung, 0.17 + 0.08 * medial + 0.07 * fine + 0.06 * ribs * ribs * ribs, img)
    if rng.random() < 0.4:  # breast shadows: a normal bilateral lower-zone density that no report mentions
        lateral = _gaussian(u, an.cx - 0.22, 0.09) + _gaussian(u, an.cx + 0.22, 0.09)
        img = img + rng.uniform(0.04, 0.09) * _gaussian(v, an.dome - 0.08, 0.07) * lateral * body

    for finding in findings:
        lung, sign, grade = lungs.get(finding.side, any_lung), _sign(finding.side or "left"), finding.severity
        if finding.name == "opacity":
            uc = an.lung_centre(finding.side) + sign * rng.uniform(0.0, 0.35) * an.lung_half_width
            vc = an.top + an.lung_height * (0.3 if finding.zone == "upper" else 0.68) + rng.uniform(-0.03, 0.03)
            radius = (0.05, 0.065, 0.085)[grade] * height * rng.uniform(0.9, 1.1)
            blob = _gaussian(v * height, vc * height, radius) * _gaussian(u * width, uc * width, radius)
            img = img + (0.2, 0.28, 0.38)[grade] * blob * (0.75 + 0.5 * coarse) * lung
            finding.boxes = [_mask_box((blob > 0.25) & lung)]
        elif finding.name == "edema":
            for side in ("right", "left"):
                hu, hv = an.hilum(side)
                haze = _gaussian(v, hv, 0.1) * _gaussian(u, hu, 0.06)
                img = img + (0.12, 0.18, 0.26)[grade] * haze * (0.6 + 0.8 * fine) * lungs[side]
                finding.boxes.append(_mask_box((haze > 0.3) & lungs[side]))
        elif finding.name == "effusion":
            uc, a = an.lung_centre(finding.side), an.lung_half_width
            lateral = np.clip(sign * (u - uc) / a, -1, 1) * 0.5 + 0.5
            fluid = lung & (v > an.dome - (0.05, 0.08, 0.13)[grade] * (0.55 + 0.45 * lateral))
            img = np.where(fluid, 0.55 + 0.05 * coarse, img)
            finding.boxes = [_mask_box(fluid)]
        elif finding.name == "pneumothorax":
            depth = (0.035, 0.05, 0.07)[grade]
            uc, a = an.lung_centre(finding.side), an.lung_half_width
            apex = v < an.top + 2.5 * depth
            collapsed = _lung(u, v, uc - sign * 0.35 * depth, a - 0.35 * depth, an.top + depth, an.dome)
            inner = _lung(u, v, uc - sign * 0.35 * depth, a - 0.35 * depth - 0.008, an.top + depth + 0.01, an.dome)
            air = lung & ~collapsed & apex
            img = np.where(air, 0.09 + 0.05 * ribs, img)
            img = np.where(collapsed & ~inner & apex, img + 0.22, img)
            finding.boxes = [_mask_box(air)]

    hu, hv = an.heart_centre
    heart = ((u - hu) / an.heart_half_width) ** 2 + ((v - hv) / an.heart_half_height) ** 2 < 1
    mediastinum = (np.abs(w) < 0.05 + 0.02 * np.clip((v - an.top) / 0.3, 0, 1)) & (v < hv) & body
    aortic_knob = ((u - an.cx - 0.055) / 0.03) ** 2 + ((v - an.top - 0.13) / 0.035) ** 2 < 1
    img = np.where(mediastinum | heart | aortic_knob, 0.66 + 0.04 * coarse, img)
    img = img + 0.04 * ((np.abs(w) < 0.022) & body)  # spine
    trachea = (np.abs(w) < 0.014) & (v > an.top - 0.1) & (v < an.top + 0.12)
    img = np.where(trachea, img - 0.2, img)  # air
    off_midline = np.abs(w)
    clavicles = ((np.abs(v - (an.top + 0.03 - 0.28 * (off_midline - 0.05))) < 0.012)
                 & (off_midline > 0.05) & (off_midline < 0.33))
    img = img + 0.16 * clavicles
    for finding in findings:
        if finding.name == "cardiomegaly":
            finding.boxes = [_mask_box(heart & (v < an.dome))]

    gamma = rng.uniform(0.8, 1.25)
    curve = (255 * (np.arange(256) / 255) ** gamma).astype(np.uint8)  # exposure as a lookup table
    exposure = np.clip(img * (255 * rng.uniform(0.88, 1.12)) + 255 * rng.uniform(-0.04, 0.04), 0, 255)
    blurred = Image.fromarray(curve[exposure.astype(np.uint8)]).filter(ImageFilter.BoxBlur(1))
    noise = (rng.random((height, width), dtype=np.float32) - 0.5) * rng.uniform(10, 24)
    return np.clip(np.asarray(blurred, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def sample_findings(rng) -> list:
    """Zero to three findings at distinct places, at most two of them opacities."""
    count = int(rng.choice(len(FINDING_COUNT_P), p=FINDING_COUNT_P))
    while True:
        chosen = rng.choice(len(CANDIDATES), size=count, replace=False, p=CANDIDATE_WEIGHTS / CANDIDATE_WEIGHTS.sum())
        if sum(CANDIDATES[i][0] == "opacity" for i in chosen) <= 2:
            return [Finding(*CANDIDATES[i], severity=int(rng.integers(3))) for i in sorted(chosen)]



def pneumothorax_mask(anatomy, finding, width: int, height: int) -> np.ndarray:
    """The pleural air `draw` paints for an apical pneumothorax, as a (H, W) bool mask (the same geometry)."""
    u = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    v = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    depth = (0.035, 0.05, 0.07)[finding.severity]
    sign, centre, half_width = _sign(finding.side), anatomy.lung_centre(finding.side), anatomy.lung_half_width
    lung = _lung(u, v, centre, half_width, anatomy.top, anatomy.dome)
    collapsed = _lung(u, v, centre - sign * 0.35 * depth, half_width - 0.35 * depth, anatomy.top + depth, anatomy.dome)
    mask = lung & ~collapsed & (v < anatomy.top + 2.5 * depth)
    if _mask_box(mask) != finding.boxes[0]:
        raise RuntimeError("pneumothorax mask out of step with draw")
    return mask
