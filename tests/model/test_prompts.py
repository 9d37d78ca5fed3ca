"""The paper's prompt sets: combination counts from the reference, seeded sampling, names not positions."""

from egma_hf.prompts import (
    CHEXPERT_8X200_QUERIES,
    CHEXPERT_COMPONENTS,
    _combine,
    chexpert_5x200_prompts,
    rsna_prompts,
    siim_acr_prompts,
)


def test_chexpert_5x200_combination_counts_and_sampling():
    counts = {name: len(_combine(parts)) for name, parts in CHEXPERT_COMPONENTS.items()}
    assert counts == {"Atelectasis": 210, "Cardiomegaly": 15, "Consolidation": 192, "Edema": 18, "Pleural Effusion": 54}
    prompts = chexpert_5x200_prompts()
    assert {name: len(p) for name, p in prompts.items()} == {
        "Atelectasis": 50, "Cardiomegaly": 15, "Consolidation": 50, "Edema": 18, "Pleural Effusion": 50}
    assert prompts == chexpert_5x200_prompts() and prompts != chexpert_5x200_prompts(seed=0)
    assert "mild subsegmental atelectasis at the mid lung zone" in _combine(CHEXPERT_COMPONENTS["Atelectasis"])
    assert "small left bilateral pleural effusion" in _combine(CHEXPERT_COMPONENTS["Pleural Effusion"])
    assert all("  " not in p and p == p.strip() for ps in prompts.values() for p in ps)


def test_retrieval_rsna_and_siim_sets():
    assert len(CHEXPERT_8X200_QUERIES) == 8 and all(len(q) == 5 for q in CHEXPERT_8X200_QUERIES.values())
    paper = rsna_prompts("paper")
    assert paper["Pneumonia"] == CHEXPERT_8X200_QUERIES["Pneumonia"]
    from egma_hf.prompts import _RSNA_CODE_COMPONENTS

    assert len(_combine(_RSNA_CODE_COMPONENTS)) == 312
    code = rsna_prompts("released_code")
    assert len(code["Pneumonia"]) == 50 and not any("pneumonia" in p for p in code["Pneumonia"])
    assert set(siim_acr_prompts()) == {"No Finding", "Pneumothorax"}
