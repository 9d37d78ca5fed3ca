"""Synthetic data in the real file formats: a MIMIC-EYE corpus (`make_synthetic_mimic_eye`) and the public evaluation
sets (`make_synthetic_evaluation_sets`).

- `core`: the records the generators share (findings, sentences, studies, readings).
- `anatomy`: drawing chest X-ray-like images and the findings' boxes and masks.
- `language`: report phrasings, impressions, indications and label vocabularies.
- `gaze`: dictation timing and the fixations that follow it, on the EGD-CXR and REFLACX screens.
- `formats`: files in the released formats (EGD-CXR, REFLACX, CheXpert labeller values, CSV lines, DICOM).
- `mimic_eye` and `evaluation_sets`: the two writers (`python -m egma_hf.data.synthetic` runs the corpus CLI).
"""

from .evaluation_sets import make_synthetic_evaluation_sets
from .mimic_eye import main, make_synthetic_mimic_eye

__all__ = ["make_synthetic_evaluation_sets", "make_synthetic_mimic_eye", "main"]
