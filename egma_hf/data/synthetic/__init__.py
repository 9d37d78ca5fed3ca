"""Synthetic data in the real file formats: a MIMIC-EYE corpus (`make_synthetic_mimic_eye`), a MIMIC-CXR-JPG tree
with reports that can include it (`make_synthetic_mimic_cxr`), a CheXpert Plus table (`make_synthetic_chexpert_plus`),
pre-rendered gaze folders in the released EGMA and CoGaze layouts (`write_prerendered_gaze`) and the public evaluation
sets (`make_synthetic_evaluation_sets`).

- `core`: the records the generators share (findings, sentences, studies, readings).
- `anatomy`: drawing chest X-ray-like images and the findings' boxes and masks.
- `language`: report phrasings, impressions, indications and label vocabularies.
- `gaze`: dictation timing and the fixations that follow it, on the EGD-CXR and REFLACX screens.
- `formats`: files in the released formats (EGD-CXR, REFLACX, CheXpert labeller values, CSV lines, DICOM).
- `mimic_eye`, `mimic_cxr` and `evaluation_sets`: the writers (`python -m egma_hf.data.synthetic` runs the MIMIC-EYE
  corpus CLI).
"""

from .chexpert_plus import make_synthetic_chexpert_plus
from .evaluation_sets import make_synthetic_evaluation_sets
from .mimic_cxr import make_synthetic_mimic_cxr
from .mimic_eye import main, make_synthetic_mimic_eye
from .prerendered_gaze import write_prerendered_gaze

__all__ = [
    "main",
    "make_synthetic_chexpert_plus",
    "make_synthetic_evaluation_sets",
    "make_synthetic_mimic_cxr",
    "make_synthetic_mimic_eye",
    "write_prerendered_gaze",
]
