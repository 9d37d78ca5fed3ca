"""Report language. "train" phrasings are used for train and validate, "test" ones only for the test split."""

import re
import textwrap
from dataclasses import dataclass

import numpy as np

from .core import Finding, Sentence, Study, pick

SEVERITIES = ("mild", "moderate", "severe")
SEVERITY_WORDS = {  # class -> (adjectives per severity, adverbs per severity)
    "opacity": ((("small", "subtle"), ("patchy", "moderate"), ("dense", "extensive")), None),
    "cardiomegaly": ((("mild",), ("moderate",), ("marked", "severe")),
                     (("mildly",), ("moderately",), ("markedly", "severely"))),
    "effusion": ((("small", "trace"), ("moderate",), ("large",)), None),
    "edema": ((("mild",), ("moderate",), ("severe",)), None),
    "pneumothorax": ((("small", "tiny"), ("moderate",), ("large",)), None),
}
ZONE_WORDS = {
    "train": {"upper": ("upper lobe", "upper lung zone"), "lower": ("lower lobe", "lung base", "lower lung zone")},
    "test": {"upper": ("upper lobe", "upper lung field"), "lower": ("lower lobe", "lung base", "lower lung field")},
}
FINDING_TEMPLATES = {
    "train": {
        "opacity": (
            "There is a {sev} opacity in the {side} {zone}.",
            "{sev} consolidation in the {side} {zone}, concerning for pneumonia.",
            "Focal airspace opacity is seen in the {side} {zone}.",
            "{side} {zone} consolidation.",
            "Airspace disease is noted in the {side} {zone}.",
            "{sev} {side} {zone} opacity, likely pneumonia.",
        ),
        "cardiomegaly": (
            "The heart is {sevly} enlarged.",
            "{sev} cardiomegaly.",
            "The cardiac silhouette is enlarged.",
            "There is {sev} enlargement of the cardiac silhouette.",
        ),
        "effusion": (
            "There is a {sev} {side} pleural effusion.",
            "{sev} {side} pleural effusion.",
            "Blunting of the {side} costophrenic angle consistent with a {sev} effusion.",
            "A {sev} {side} effusion is present.",
        ),
        "edema": (
            "There is {sev} pulmonary edema.",
            "{sev} interstitial edema with perihilar haziness.",
            "Bilateral perihilar opacities consistent with {sev} pulmonary edema.",
            "Pulmonary vascular congestion with {sev} edema.",
        ),
        "pneumothorax": (
            "There is a {sev} {side} apical pneumothorax.",
            "{sev} {side} pneumothorax.",
            "A {sev} pneumothorax is seen at the {side} apex.",
            "{side} apical pneumothorax, {sev} in size.",
        ),
    },
    "test": {
        "opacity": (
            "Opacification of the {side} {zone} may reflect pneumonia.",
            "The {side} {zone} shows a {sev} area of consolidation.",
            "{sev} infiltrate projecting over the {side} {zone}.",
        ),
        "cardiomegaly": (
            "Cardiac size is {sevly} increased.",
            "The cardiac silhouette appears {sevly} prominent, consistent with cardiomegaly.",
            "{sev} enlargement of the heart is noted.",
        ),
        "effusion": (
            "{sev} fluid in the {side} pleural space.",
            "The {side} costophrenic angle is blunted, suggesting a {sev} pleural effusion.",
            "Layering {side} pleural fluid, {sev} in amount.",
        ),
        "edema": (
            "{sev} perihilar haze in both lungs suggests fluid overload.",
            "Findings are compatible with {sev} interstitial pulmonary edema.",
            "Hazy bilateral perihilar opacity, likely {sev} edema.",
        ),
        "pneumothorax": (
            "A {sev} {side}-sided pneumothorax is present at the apex.",
            "There is a thin pleural line at the {side} apex consistent with a {sev} pneumothorax.",
            "{sev} apical air collection on the {side}, compatible with pneumothorax.",
        ),
    },
}


@dataclass(frozen=True)
class NormalTopic:
    """A normal or negated statement: when it may be said, what the reader looks at, and its phrasings."""

    name: str
    allowed: object  # callable(set of finding classes, sides with an effusion) -> bool
    regions: tuple  # anatomy box names; "{other}" is the side without an effusion
    train: tuple
    test: tuple


NORMAL_TOPICS = (
    NormalTopic("heart", lambda c, e: "cardiomegaly" not in c, ("cardiac silhouette",),
                ("The heart size is normal.", "Heart size is within normal limits.",
                 "The cardiac silhouette is normal in size."),
                ("Normal cardiac dimensions.", "The heart is not enlarged.")),
    NormalTopic("mediastinum", lambda c, e: True,
                ("upper mediastinum", "right hilar structures", "left hilar structures"),
                ("The mediastinal and hilar contours are normal.", "Mediastinal and hilar contours are unremarkable."),
                ("Normal mediastinal and hilar silhouettes.", "The hila and mediastinum appear unremarkable.")),
    NormalTopic("lungs", lambda c, e: not c & {"opacity", "edema", "pneumothorax"}, ("right lung", "left lung"),
                ("The lungs are clear.", "Lungs are clear bilaterally."),
                ("Both lungs are well aerated and clear.", "No parenchymal abnormality is seen in either lung.")),
    NormalTopic("lungs otherwise", lambda c, e: "opacity" in c and "edema" not in c, ("right lung", "left lung"),
                ("Lungs are otherwise clear.", "The remainder of the lungs is clear."),
                ("Elsewhere the lungs appear clear.",)),
    NormalTopic("consolidation", lambda c, e: "opacity" not in c, ("right lung", "left lung"),
                ("No focal consolidation.", "There is no focal airspace consolidation."),
                ("No evidence of pneumonia.", "Without focal airspace disease.")),
    NormalTopic("effusion", lambda c, e: "effusion" not in c,
                ("right costophrenic angle", "left costophrenic angle"),
                ("No pleural effusion.", "There is no pleural effusion."),
                ("The costophrenic angles are sharp.", "No pleural fluid is identified.")),
    NormalTopic("effusion other side", lambda c, e: len(e) == 1, ("{other} costophrenic angle",),
                ("No {other} pleural effusion.", "There is no {other} effusion."),
                ("The {other} costophrenic angle is clear.",)),
    NormalTopic("pneumothorax", lambda c, e: "pneumothorax" not in c, ("right apical zone", "left apical zone"),
                ("No pneumothorax.", "There is no pneumothorax."),
                ("No evidence of pneumothorax.", "No apical pneumothorax is seen.")),
    NormalTopic("edema", lambda c, e: "edema" not in c, ("right hilar structures", "left hilar structures"),
                ("No pulmonary edema.", "There is no pulmonary vascular congestion."),
                ("No signs of fluid overload.",)),
    NormalTopic("bones", lambda c, e: True, ("right clavicle", "left clavicle", "right lung", "left lung"),
                ("No acute osseous abnormality.",),
                ("The visualized bones are intact.",)),
)
TOPIC_ORDER = {"cardiomegaly": 0, "heart": 0, "mediastinum": 1, "opacity": 2, "edema": 2, "lungs": 2,
               "lungs otherwise": 2.5, "consolidation": 2, "effusion": 3, "effusion other side": 3,
               "pneumothorax": 4, "bones": 5}
IMPRESSIONS = {
    "train": {
        "opacity": ("{side} {zone} pneumonia.", "Findings concerning for {side} {zone} pneumonia."),
        "cardiomegaly": ("Cardiomegaly.", "Enlarged heart."),
        "effusion": ("{side} pleural effusion.",),
        "edema": ("Pulmonary edema.", "Findings consistent with pulmonary edema."),
        "pneumothorax": ("{side} pneumothorax.",),
        None: ("No acute cardiopulmonary process.", "No acute intrathoracic abnormality."),
    },
    "test": {
        "opacity": ("Probable pneumonia in the {side} {zone}.",),
        "cardiomegaly": ("Cardiac enlargement.",),
        "effusion": ("Pleural fluid on the {side}.",),
        "edema": ("Interstitial edema, likely cardiogenic.",),
        "pneumothorax": ("Apical pneumothorax on the {side}.",),
        None: ("Normal chest radiograph.", "No acute abnormality identified."),
    },
}
INDICATIONS = (
    "___ year old woman with shortness of breath, evaluate for pneumonia",
    '___M with cough and fever.\nEval for "infiltrate", effusion',
    "Chest pain, rule out acute process",
    '___F with CHF exacerbation, assess for "fluid overload"',
    "Dyspnea",
    'History: fall, "rib pain".\nEvaluate for pneumothorax, fracture',
    "Hypoxia",
)
DIAGNOSES = {  # ED diagnoses (title, ICD-10) suggested by a finding class; None = unspecific complaints
    "opacity": ("PNEUMONIA, UNSPECIFIED ORGANISM", "J189"),
    "cardiomegaly": ("CONGESTIVE HEART FAILURE, UNSPECIFIED", "I509"),
    "effusion": ("PLEURAL EFFUSION, NOT ELSEWHERE CLASSIFIED", "J90"),
    "edema": ("ACUTE PULMONARY EDEMA", "J810"),
    "pneumothorax": ("OTHER PNEUMOTHORAX", "J9383"),
    None: (("CHEST PAIN, UNSPECIFIED", "R079"), ("SHORTNESS OF BREATH", "R0602"), ("COUGH", "R05")),
}
# Finding class -> (CheXpert label set to 1.0, REFLACX label).
FINDING_LABELS = {
    "opacity": ("Lung Opacity", "Consolidation"),
    "cardiomegaly": ("Cardiomegaly", "Enlarged cardiac silhouette"),
    "effusion": ("Pleural Effusion", "Pleural abnormality"),
    "edema": ("Edema", "Pulmonary edema"),
    "pneumothorax": ("Pneumothorax", "Pneumothorax"),
}
NEGATED_CHEXPERT = {"heart": "Cardiomegaly", "consolidation": "Consolidation", "effusion": "Pleural Effusion",
                    "pneumothorax": "Pneumothorax", "edema": "Edema"}


def _finish(text: str) -> str:
    """Fix "a" before a vowel and capitalise the first letter."""
    text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)
    return text[0].upper() + text[1:]


def _finding_sentence(rng, finding: Finding, pool: str) -> str:
    adjectives, adverbs = SEVERITY_WORDS[finding.name]
    return _finish(pick(rng, FINDING_TEMPLATES[pool][finding.name]).format(
        sev=pick(rng, adjectives[finding.severity]),
        sevly=pick(rng, adverbs[finding.severity]) if adverbs else "",
        side=finding.side or "",
        zone=pick(rng, ZONE_WORDS[pool][finding.zone]) if finding.zone else "",
    ))


def compose(rng, study: Study) -> list:
    """Finding sentences plus two to five normal / negated ones, in a loosely anatomical order."""
    findings, pool = study.findings, study.pool
    classes = {f.name for f in findings}
    effusion_sides = {f.side for f in findings if f.name == "effusion"}
    other = ({"right", "left"} - effusion_sides).pop() if len(effusion_sides) == 1 else None
    sentences = [Sentence(_finding_sentence(rng, f, pool), f.name, i, f.boxes) for i, f in enumerate(findings)]
    topics = [t for t in NORMAL_TOPICS if t.allowed(classes, effusion_sides)]
    count = min(len(topics), int(rng.integers(2, 5)) + (not findings))
    for index in sorted(rng.choice(len(topics), size=count, replace=False)):
        topic = topics[index]
        text = pick(rng, getattr(topic, pool)).format(other=other)
        boxes = [study.anatomy[name.format(other=other)] for name in topic.regions]
        sentences.append(Sentence(text, topic.name, None, boxes))
    keys = [TOPIC_ORDER[s.topic] + rng.uniform(0, 1.6) for s in sentences]
    return [sentences[i] for i in np.argsort(keys, kind="stable")]


def written_report(rng, study: Study) -> tuple[str, list, set]:
    """The MIMIC-CXR report (FINDINGS in its own wording, IMPRESSION; hard-wrapped), its sentences and topics."""
    composed = compose(rng, study)
    findings_text = [s.text for s in composed]
    pool = IMPRESSIONS[study.pool]
    impression = [_finish(pick(rng, pool[f.name]).format(
        side=f.side, zone=pick(rng, ZONE_WORDS[study.pool][f.zone]) if f.zone else "")) for f in study.findings]
    impression = impression or [pick(rng, pool[None])]
    sections = [textwrap.fill(" ".join(text), width=72, initial_indent=f"{header}: ")
                for header, text in (("FINDINGS", findings_text), ("IMPRESSION", impression))]
    return "\n\n".join(sections) + "\n", findings_text + impression, {s.topic for s in composed}
