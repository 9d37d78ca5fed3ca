"""The prompt sets of EGMA's zero-shot evaluations (paper Sec. 4.1, App. C), keyed by class name.

- CheXpert 5x200: radiologist-written prompt components (severity, subtype, location, from GLoRIA) combined in the
  components' order; a class with more than 50 combinations keeps a seeded sample of 50, as the released code does
  (the sample itself differs from the released code's, which depends on Python's `random` state).
- CheXpert 8x200 retrieval: five expert queries per class (from ConVIRT).
- RSNA pneumonia: the paper's version (the 8x200 "No Finding" and "Pneumonia" queries) and the released code's
  version (MedCLIP's, whose pneumonia prompts never contain the word "pneumonia"), named as such.
- SIIM-ACR pneumothorax: the 8x200 "No Finding" and "Pneumothorax" queries.
- Finding prompt pairs (not from the paper): a positive and a negative prompt set per CheXpert-style finding, for
  multi-label zero-shot scoring (CheXzero-style) on MIMIC-EYE and the synthetic corpus.

Typos in the originals ("apperance", "presistent", "uppper", "abormalities", "communuted") are kept so results can
be compared with the paper's.
"""

import itertools

import numpy as np

_ATELECTASIS_LOCATIONS = [
    "at the mid lung zone", "at the upper lung zone", "at the right lung zone", "at the left lung zone",
    "at the lung bases", "at the right lung base", "at the left lung base", "at the bilateral lung bases",
    "at the left lower lobe", "at the right lower lobe",
]

CHEXPERT_COMPONENTS = {  # class -> component lists, combined in this order
    "Atelectasis": [
        ["", "mild", "minimal"],
        ["subsegmental atelectasis", "linear atelectasis", "trace atelectasis", "bibasilar atelectasis",
         "retrocardiac atelectasis", "bandlike atelectasis", "residual atelectasis"],
        _ATELECTASIS_LOCATIONS,
    ],
    "Cardiomegaly": [
        [""],
        ["cardiac silhouette size is upper limits of normal", "cardiomegaly which is unchanged",
         "mildly prominent cardiac silhouette", "portable view of the chest demonstrates stable cardiomegaly",
         "portable view of the chest demonstrates mild cardiomegaly", "persistent severe cardiomegaly",
         "heart size is borderline enlarged", "cardiomegaly unchanged", "heart size is at the upper limits of normal",
         "redemonstration of cardiomegaly",
         "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
         "cardiac silhouette size is mildly enlarged",
         "mildly enlarged cardiac silhouette, likely left ventricular enlargement. other chambers are less prominent",
         "heart size remains at mildly enlarged", "persistent cardiomegaly with prominent upper lobe vessels"],
        [""],
    ],
    "Consolidation": [
        ["", "increased", "improved", "apperance of"],
        ["bilateral consolidation", "reticular consolidation", "retrocardiac consolidation", "patchy consolidation",
         "airspace consolidation", "partial consolidation"],
        ["at the lower lung zone", "at the upper lung zone", "at the left lower lobe", "at the right lower lobe",
         "at the left upper lobe", "at the right uppper lobe", "at the right lung base", "at the left lung base"],
    ],
    "Edema": [
        ["", "mild", "improvement in", "presistent", "moderate", "decreased"],
        ["pulmonary edema", "trace interstitial edema", "pulmonary interstitial edema"],
        [""],
    ],
    "Pleural Effusion": [  # severity, location, subtype: "{severity} {left|right|tiny} {subtype}"
        ["", "small", "stable", "large", "decreased", "increased"],
        ["left", "right", "tiny"],
        ["bilateral pleural effusion", "subpulmonic pleural effusion", "bilateral pleural effusion"],
    ],
}

CHEXPERT_8X200_QUERIES = {
    "No Finding": ["The lungs are clear.", "No abnormalities are present.", "The chest is normal.",
                   "No clinically significant radiographic abormalities.",
                   "No radiographically visible abnormalities in the chest."],
    "Cardiomegaly": ["The heart is mildly enlarged.", "Cardiomegaly is present.", "The heart shadow is enlarged.",
                     "The cardiac silhouette is enlarged.", "Cardiac enlargement is seen."],
    "Edema": ["Mild interstitial pulmonary edema is present.",
              "The presence of hazy opacity suggests interstitial pulmonary edema.",
              "Moderate alveolar edema is present.", "Mild diffuse opacity likely represents pulmonary edema.",
              "Cardiogenic edema likely is present."],
    "Pneumonia": ["A consolidation at the base likely represents pneumonia.", "Pneumonia is present.",
                  "The presence of air bronchograms suggest pneumonia.", "A fluffy opacity suggests pneumonia.",
                  "A pulmonary opacity with ill defined borders likely represents pneumonia."],
    "Atelectasis": ["Platelike opacity likely represents atelectasis.",
                    "Geometric opacity likely represents atelectasis.", "Atelectasis is present.",
                    "Basilar opacity and volume loss is likely due to atelectasis.", "Patchy atelectasis is seen."],
    "Pneumothorax": ["An apical pneumothorax is present.", "A basilar pneumothorax is seen.",
                     "A medial pneumothorax is present adjacent to the heart.",
                     "A lateral pleural line suggests pneumothorax.", "Pleural air is present."],
    "Pleural Effusion": ["A pleural effusion is present.",
                         "Blunting of the costophrenic angles represents pleural effusions.",
                         "Trace pleural fluid is present.", "The pleural space is partially filled with fluid.",
                         "Layering pleural effusions are present."],
    "Fracture": ["An angulated fracture is present.", "An oblique radiolucent line suggests a fracture.",
                 "A cortical step off indicates the presence of a fracture.",
                 "A communuted displaced fracture is present.", "A fracture is present."],
}

_RSNA_CODE_COMPONENTS = [
    ["round", "early", "focal", "multifocal", "small", ""],
    ["bacterial", "viral", "mycoplasma", ""],
    _ATELECTASIS_LOCATIONS + ["at the left middle lobe", "at the right middle lobe", ""],
]


def _combine(components) -> list[str]:
    return [" ".join(part for part in parts if part) for parts in itertools.product(*components)]


def _sample(prompts: list[str], count: int, rng) -> list[str]:
    if len(prompts) <= count:
        return prompts
    return [prompts[i] for i in sorted(rng.choice(len(prompts), count, replace=False))]


def chexpert_5x200_prompts(per_class: int = 50, seed: int = 42) -> dict[str, list[str]]:
    """{class: prompts} for CheXpert 5x200 zero-shot classification."""
    rng = np.random.default_rng(seed)
    return {name: _sample(_combine(parts), per_class, rng) for name, parts in CHEXPERT_COMPONENTS.items()}


def rsna_prompts(version: str = "paper", per_class: int = 50, seed: int = 42) -> dict[str, list[str]]:
    """{"Normal": [...], "Pneumonia": [...]}; version "paper" (App. C.3) or "released_code" (MedCLIP's prompts)."""
    if version == "paper":
        return {"Normal": CHEXPERT_8X200_QUERIES["No Finding"], "Pneumonia": CHEXPERT_8X200_QUERIES["Pneumonia"]}
    if version == "released_code":
        rng = np.random.default_rng(seed)
        return {"Normal": CHEXPERT_8X200_QUERIES["No Finding"],
                "Pneumonia": _sample(_combine(_RSNA_CODE_COMPONENTS), per_class, rng)}
    raise ValueError(f"version must be 'paper' or 'released_code', got {version!r}")


def siim_acr_prompts() -> dict[str, list[str]]:
    """{"No Finding": [...], "Pneumothorax": [...]} for SIIM-ACR zero-shot classification."""
    return {"No Finding": CHEXPERT_8X200_QUERIES["No Finding"], "Pneumothorax": CHEXPERT_8X200_QUERIES["Pneumothorax"]}


FINDING_PROMPT_PAIRS = {  # finding -> (positive prompts, negative prompts)
    "Cardiomegaly": (["The heart is enlarged.", "Cardiomegaly is present."],
                     ["The heart size is normal.", "No cardiomegaly."]),
    "Edema": (["There is pulmonary edema.", "Interstitial edema is present."],
              ["No pulmonary edema.", "There is no edema."]),
    "Lung Opacity": (["There is a focal opacity in the lung.", "A lung opacity is seen."],
                     ["The lungs are clear.", "No focal opacity."]),
    "Pleural Effusion": (["There is a pleural effusion.", "A pleural effusion is present."],
                         ["No pleural effusion.", "The costophrenic angles are sharp."]),
    "Pneumothorax": (["There is a pneumothorax.", "A pneumothorax is seen."],
                     ["No pneumothorax.", "There is no pneumothorax."]),
}
