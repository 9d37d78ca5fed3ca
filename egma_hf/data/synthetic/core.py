"""The records the synthetic generators share: findings, sentences, studies and readings, and the random pick."""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Finding:
    name: str
    side: str | None  # patient side: "right" is on the image's left
    zone: str | None  # "upper" / "lower" for opacities
    severity: int  # index into SEVERITIES
    boxes: list = field(default_factory=list)  # [x1, y1, x2, y2] in image pixels (two for bilateral edema)

    @property
    def bbox(self) -> list:
        x1, y1, x2, y2 = np.array(self.boxes).T
        return [float(x1.min()), float(y1.min()), float(x2.max()), float(y2.max())]


@dataclass
class Sentence:
    text: str
    topic: str  # a finding class or a NormalTopic name
    finding: int | None  # index into the image's findings
    boxes: list  # where the reader looks while saying it
    words: list = field(default_factory=list)  # (token, begin, end)


@dataclass
class Study:
    """One patient's study: one frontal image, its findings and its written report."""

    subject_id: int
    study_id: int
    dicom_id: str
    source: str  # "EyeGaze" or "REFLACX"
    split: str = ""
    width: int = 0
    height: int = 0
    findings: list = field(default_factory=list)
    anatomy: dict = field(default_factory=dict)  # name -> box in image pixels
    report: str = ""
    report_sentences: list = field(default_factory=list)
    chexpert: dict = field(default_factory=dict)
    readings: list = field(default_factory=list)

    @property
    def pool(self) -> str:
        return "test" if self.split == "test" else "train"


@dataclass
class Reading:
    """One radiologist dictating one image while the eye tracker records."""

    id: str
    study: Study
    radiologist: int
    discarded: bool = False
    sentences: list = field(default_factory=list)
    fixations: dict = field(default_factory=dict)  # start, end, x, y (image pixels), valid: numpy arrays
    certainty: dict = field(default_factory=dict)  # REFLACX label -> 0..5



def pick(rng, options):
    return options[int(rng.integers(len(options)))]
