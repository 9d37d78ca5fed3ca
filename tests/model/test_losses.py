"""The batched losses against per-sample loops written directly from the paper's equations (Sec. 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from egma_hf.losses import (
    EGMALoss,
    clip_contrastive_loss,
    fine_grained_contrastive_loss,
    fine_grained_similarity,
    gaze_mapping_loss,
    gaze_mlce_loss,
    multilabel_categorical_crossentropy,
)
from tests.helpers import tiny_config

T = torch.tensor(10.0, dtype=torch.float64)
COUNTS = [3, 1, 4, 2]  # ragged sentence counts
HAS_GAZE = [True, False, True, True]
N, D = 6, 5


# ---------------------------------------------------------------------------------------------------------------
# Reference implementations: one sample at a time, only real sentences, no masking tricks.


def ref_mlce(s, y):
    return torch.log(1 + torch.exp(s[y == 0]).sum()) + torch.log(1 + torch.exp(-s[y == 1]).sum())


def ref_fine_grained(patches, sentences, scale):
    b = len(patches)
    z_image, z_text = torch.zeros(b, b, dtype=torch.float64), torch.zeros(b, b, dtype=torch.float64)
    for k in range(b):
        for l in range(b):  # noqa: E741 (k, l: the paper's indices)
            x = scale * patches[k] @ sentences[l].T  # (N, m_l)
            z_image[k, l] = x.max(1).values.mean()  # each patch's best sentence
            z_text[k, l] = x.max(0).values.mean()  # each sentence's best patch
    return z_image, z_text


def ref_infonce_rows(logits):
    """mean over rows r of -log softmax(logits[r])[r]."""
    return torch.stack([-torch.log_softmax(logits[r], 0)[r] for r in range(logits.shape[0])]).mean()


def ref_fine_loss(z_image, z_text, over):
    i2t = ref_infonce_rows(z_image)
    t2i = ref_infonce_rows(z_text.T) if over == "images" else ref_infonce_rows(z_text)
    return 0.5 * (i2t + t2i)


def ref_mlce_loss(patches, sentences, maps, has_gaze, scale, threshold=0.0, s2p_weight=0.5, reduction="batch"):
    total = 0.0
    for k in range(len(patches)):
        if not has_gaze[k]:
            continue
        x = scale * sentences[k] @ patches[k].T  # (m, N)
        labels = maps[k] > threshold
        s2p = torch.stack([ref_mlce(x[j], labels[j]) for j in range(x.shape[0])]).mean()
        p2s = torch.stack([ref_mlce(x[:, i], labels[:, i]) for i in range(x.shape[1])]).mean()
        total = total + s2p_weight * s2p + (1 - s2p_weight) * p2s
    denominator = len(patches) if reduction == "batch" else max(1, sum(has_gaze))
    return total / denominator


def ref_omega(row, threshold, binarize):
    low, high = row.min(), row.max()
    scaled = torch.zeros_like(row) if high == low else (row - low) / (high - low)
    keep = scaled >= threshold
    return keep.to(row.dtype) if binarize else scaled * keep


def ref_within_instance(mapped, targets, scale):
    if mapped.shape[0] == 1:
        return torch.tensor(0.0, dtype=torch.float64)
    logits = scale * mapped @ targets.T
    return 0.5 * (ref_infonce_rows(logits) + ref_infonce_rows(logits.T))


def ref_egm(patches, sentences, maps, has_gaze, scale, threshold=3 / 7, eps=0.01, text_weight=0.5,
            binarize=False, normalize=True):
    total = 0.0
    for k in range(len(patches)):
        a = scale * sentences[k] @ patches[k].T  # (m, N)
        w_text = torch.stack([ref_omega(a[j], threshold, binarize) for j in range(a.shape[0])])
        w_image = torch.stack([ref_omega(a[:, i], threshold, binarize) for i in range(a.shape[1])])
        if has_gaze[k]:
            w_text = (w_text + maps[k]) / 2
            w_image = (w_image + maps[k].T) / 2
        w_text = (w_text + eps) / (w_text + eps).sum(1, keepdim=True)
        w_image = (w_image + eps) / (w_image + eps).sum(1, keepdim=True)
        mapped_sentences, mapped_patches = w_text @ patches[k], w_image @ sentences[k]
        if normalize:
            mapped_sentences = F.normalize(mapped_sentences, dim=-1)
            mapped_patches = F.normalize(mapped_patches, dim=-1)
        text_side = ref_within_instance(mapped_sentences, sentences[k], scale)
        image_side = ref_within_instance(mapped_patches, patches[k], scale)
        total = total + text_weight * text_side + (1 - text_weight) * image_side
    return total / len(patches)


# ---------------------------------------------------------------------------------------------------------------
# Random ragged data and its padded, batched layout


def make_samples(seed=0):
    g = torch.Generator().manual_seed(seed)
    patches = [F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=-1) for _ in COUNTS]
    sentences = [F.normalize(torch.randn(m, D, generator=g, dtype=torch.float64), dim=-1) for m in COUNTS]
    maps = []
    for m in COUNTS:
        heat = torch.rand(m, N, generator=g, dtype=torch.float64)
        heat = heat * (torch.rand(m, N, generator=g, dtype=torch.float64) > 0.4)  # mixed positive/negative labels
        maps.append(heat)
    maps[0][1] = 0.0  # an unfocused sentence: all-zero heatmap
    maps[2][0] = 0.7  # a constant heatmap
    return patches, sentences, maps


def pad(sentences, maps, slots, seed=1):
    """Batched layout; padding slots hold random garbage, which must not matter."""
    g = torch.Generator().manual_seed(seed)
    b = len(sentences)
    sentence_embeds = F.normalize(torch.randn(b, slots, D, generator=g, dtype=torch.float64), dim=-1)
    gaze_maps = torch.rand(b, slots, N, generator=g, dtype=torch.float64)
    mask = torch.zeros(b, slots, dtype=torch.bool)
    for k, (s, hm) in enumerate(zip(sentences, maps)):
        sentence_embeds[k, : len(s)] = s
        gaze_maps[k, : len(s)] = hm
        mask[k, : len(s)] = True
    return sentence_embeds, gaze_maps, mask


@pytest.fixture(params=[4, 7], ids=["tight", "extra-padding"])
def batch(request):
    patches, sentences, maps = make_samples()
    sentence_embeds, gaze_maps, mask = pad(sentences, maps, request.param)
    return dict(
        samples=(patches, sentences, maps),
        patch_embeds=torch.stack(patches),
        sentence_embeds=sentence_embeds,
        gaze_maps=gaze_maps,
        sentence_mask=mask,
        has_gaze=torch.tensor(HAS_GAZE),
    )


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------


def test_mlce_matches_formula_and_keeps_leading_dims():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 9, generator=g, dtype=torch.float64) * 3
    labels = torch.rand(2, 3, 9, generator=g) > 0.5
    labels[0, 0] = False  # no positive
    labels[0, 1] = True  # no negative
    loss = multilabel_categorical_crossentropy(scores, labels.float())
    assert loss.shape == (2, 3)
    expected = torch.stack([ref_mlce(s, y) for s, y in zip(scores.reshape(-1, 9), labels.reshape(-1, 9))])
    close(loss.reshape(-1), expected)


def test_mlce_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="same shape"):
        multilabel_categorical_crossentropy(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_categorical_crossentropy(torch.zeros(3), torch.tensor([0.0, 0.5, 1.0]))


def test_fine_grained_similarity_matches_loop(batch):
    patches, sentences, _ = batch["samples"]
    z_image, z_text = fine_grained_similarity(
        batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], T)
    ref_image, ref_text = ref_fine_grained(patches, sentences, T)
    close(z_image, ref_image)
    close(z_text, ref_text)


def test_fine_grained_similarity_is_rectangular_for_unpaired_batches(batch):
    z_image, z_text = fine_grained_similarity(batch["patch_embeds"][:2], batch["sentence_embeds"],
                                              batch["sentence_mask"], T)
    assert z_image.shape == z_text.shape == (2, 4)


@pytest.mark.parametrize("over", ["images", "texts"])
def test_fine_grained_loss_matches_loop(batch, over):
    patches, sentences, _ = batch["samples"]
    z_image, z_text = fine_grained_similarity(
        batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], T)
    expected = ref_fine_loss(*ref_fine_grained(patches, sentences, T), over)
    close(fine_grained_contrastive_loss(z_image, z_text, over), expected)


def test_paper_and_code_t2i_directions_differ(batch):
    z_image, z_text = fine_grained_similarity(
        batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], T)
    paper = fine_grained_contrastive_loss(z_image, z_text, "images")
    code = fine_grained_contrastive_loss(z_image, z_text, "texts")
    assert not torch.isclose(paper, code)


@pytest.mark.parametrize("s2p_weight,reduction,threshold", [(0.5, "batch", 0.0), (0.8, "gaze_samples", 0.3)])
def test_mlce_loss_matches_loop(batch, s2p_weight, reduction, threshold):
    patches, sentences, maps = batch["samples"]
    labels = batch["gaze_maps"] > threshold
    loss = gaze_mlce_loss(batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], labels,
                          batch["has_gaze"], T, s2p_weight=s2p_weight, reduction=reduction)
    close(loss, ref_mlce_loss(patches, sentences, maps, HAS_GAZE, T, threshold, s2p_weight, reduction))


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(threshold=1 / 7, eps=0.05, text_weight=0.3),
        dict(binarize=True),
        dict(normalize=False),
    ],
    ids=["paper", "code-weights", "binarize", "unnormalised"],
)
def test_egm_loss_matches_loop(batch, options):
    patches, sentences, maps = batch["samples"]
    kwargs = {("normalize_mapped" if k == "normalize" else k): v for k, v in options.items()}
    loss = gaze_mapping_loss(batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"],
                             batch["gaze_maps"], batch["has_gaze"], T, **kwargs)
    close(loss, ref_egm(patches, sentences, maps, HAS_GAZE, T, **options))


def test_egm_without_any_gaze_equals_reference_without_gaze(batch):
    patches, sentences, maps = batch["samples"]
    loss = gaze_mapping_loss(batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], None, None, T)
    close(loss, ref_egm(patches, sentences, maps, [False] * 4, T))


def test_gaze_changes_egm_and_mlce(batch):
    args = (batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"])
    with_gaze = gaze_mapping_loss(*args, batch["gaze_maps"], batch["has_gaze"], T)
    without = gaze_mapping_loss(*args, None, None, T)
    assert not torch.isclose(with_gaze, without)


def test_samples_without_gaze_do_not_contribute_to_mlce(batch):
    labels = batch["gaze_maps"] > 0
    args = (batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"])
    base = gaze_mlce_loss(*args, labels, batch["has_gaze"], T)
    flipped = labels.clone()
    flipped[1] = ~flipped[1]  # sample 1 has no gaze: its labels must be ignored
    close(gaze_mlce_loss(*args, flipped, batch["has_gaze"], T), base)


def test_total_loss_is_the_weighted_sum_of_terms(batch):
    image_embeds = F.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1)
    text_embeds = F.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1)
    config = tiny_config(global_loss_weight=0.5, mlce_loss_weight=2.0, fine_grained_loss_weight=1.5,
                         egm_loss_weight=0.25)
    out = EGMALoss(config)(image_embeds, text_embeds, batch["patch_embeds"], batch["sentence_embeds"],
                           batch["sentence_mask"], T, batch["gaze_maps"], batch["has_gaze"])
    close(out.loss, 0.5 * out.global_loss + 2.0 * out.mlce_loss + 1.5 * out.fine_grained_loss + 0.25 * out.egm_loss)
    close(out.global_loss, 0.5 * (ref_infonce_rows(T * image_embeds @ text_embeds.T)
                                  + ref_infonce_rows(T * text_embeds @ image_embeds.T)))
    close(out.global_loss, clip_contrastive_loss(T * image_embeds @ text_embeds.T))

    switched_off = EGMALoss(tiny_config(egm_loss_weight=0.0, mlce_loss_weight=0.0))(
        image_embeds, text_embeds, batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], T,
        batch["gaze_maps"], batch["has_gaze"])
    assert switched_off.egm_loss is None and switched_off.mlce_loss is None and switched_off.global_loss is None
    close(switched_off.loss, out.fine_grained_loss)


def test_all_zero_and_constant_heatmaps_give_finite_losses_and_gradients():
    patches, sentences, _ = make_samples()
    b = len(COUNTS)
    patch_embeds = torch.stack(patches).requires_grad_(True)
    sentence_embeds, gaze_maps, mask = pad(sentences, [torch.zeros(m, N, dtype=torch.float64) for m in COUNTS], 4)
    sentence_embeds.requires_grad_(True)
    for maps in (gaze_maps * 0, torch.ones_like(gaze_maps)):
        config = tiny_config()
        out = EGMALoss(config)(patch_embeds.mean(1), sentence_embeds.mean(1), patch_embeds, sentence_embeds, mask, T,
                               maps, torch.ones(b, dtype=torch.bool))
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert torch.isfinite(patch_embeds.grad).all() and torch.isfinite(sentence_embeds.grad).all()


def test_empty_report_is_rejected():
    patches = F.normalize(torch.randn(2, N, D), dim=-1)
    sentences = F.normalize(torch.randn(2, 3, D), dim=-1)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="at least one real sentence"):
        fine_grained_similarity(patches, sentences, mask, 10.0)


def test_losses_accept_half_precision_inputs_and_return_float32(batch):
    half = {k: v.to(torch.bfloat16) for k, v in batch.items() if k in ("patch_embeds", "sentence_embeds", "gaze_maps")}
    loss = gaze_mapping_loss(half["patch_embeds"], half["sentence_embeds"], batch["sentence_mask"], half["gaze_maps"],
                             batch["has_gaze"], T.to(torch.bfloat16))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_all_false_has_gaze_gives_the_same_loss_as_no_gaze(batch):
    # EGMALoss never reads has_gaze back to the host (a GPU stall), so a gaze-free batch passed with heatmaps
    # must come out exactly as one passed without.
    image_embeds = F.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1)
    text_embeds = F.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1)
    loss = EGMALoss(tiny_config(global_loss_weight=1.0))
    args = (image_embeds, text_embeds, batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], T)
    without = loss(*args, None, None)
    all_false = loss(*args, batch["gaze_maps"], torch.zeros(4, dtype=torch.bool))
    assert without.mlce_loss == 0 and all_false.mlce_loss == 0
    for name in ("loss", "global_loss", "fine_grained_loss", "egm_loss"):
        close(getattr(all_false, name), getattr(without, name))


# ---------------------------------------------------------------------------------------------------------------
# Pairs of one study are positives of each other (multi-positive targets)


def ref_multi_positive_rows(logits, study_ids):
    """mean over rows r of -(1 / |P_r|) sum over p in P_r of log softmax(logits[r])[p], P_r: r's study's pairs."""
    rows = []
    for r in range(logits.shape[0]):
        positives = [p for p in range(logits.shape[1]) if study_ids[p] == study_ids[r]]
        rows.append(-torch.log_softmax(logits[r], 0)[positives].mean())
    return torch.stack(rows).mean()


STUDIES = torch.tensor([4, 9, 4, 2])  # pairs 0 and 2: one study


def test_same_study_pairs_are_positives_in_both_contrastive_terms(batch):
    image_embeds = F.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1)
    text_embeds = F.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1)
    config = tiny_config(global_loss_weight=1.0, mlce_loss_weight=1.0, fine_grained_loss_weight=1.0,
                         egm_loss_weight=1.0)
    args = (image_embeds, text_embeds, batch["patch_embeds"], batch["sentence_embeds"], batch["sentence_mask"], T,
            batch["gaze_maps"], batch["has_gaze"])
    out = EGMALoss(config)(*args, study_ids=STUDIES)
    close(out.global_loss, 0.5 * (ref_multi_positive_rows(T * image_embeds @ text_embeds.T, STUDIES)
                                  + ref_multi_positive_rows(T * text_embeds @ image_embeds.T, STUDIES)))
    z_image, z_text = ref_fine_grained(*batch["samples"][:2], T)
    close(out.fine_grained_loss, 0.5 * (ref_multi_positive_rows(z_image, STUDIES)
                                        + ref_multi_positive_rows(z_text.T, STUDIES)))
    plain = EGMALoss(config)(*args)
    assert not torch.isclose(out.global_loss, plain.global_loss)
    close(out.mlce_loss, plain.mlce_loss)  # within-sample terms: no negatives, nothing changes
    close(out.egm_loss, plain.egm_loss)
    distinct = EGMALoss(config)(*args, study_ids=torch.tensor([1, 2, 3, 4]))  # distinct ids: CLIP's targets
    for name in ("loss", "global_loss", "fine_grained_loss"):
        close(getattr(distinct, name), getattr(plain, name))


def test_model_passes_study_ids_to_the_loss_and_checks_them():
    from egma_hf import EGMAImageProcessor, EGMAModel, EGMAProcessor
    from tests.helpers import GRID, IMAGE_SIZE, make_batch, make_tokenizer

    torch.manual_seed(0)
    model = EGMAModel(tiny_config(global_loss_weight=1.0)).eval()
    model.logit_scale.data.fill_(math.log(100.0))  # random towers' similarities differ by little: sharpen them
    processor = EGMAProcessor(EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID), make_tokenizer())
    inputs = dict(make_batch(processor))
    with torch.no_grad():
        plain = model(**inputs, return_loss=True)
        shared = model(**inputs, study_ids=torch.tensor([5, 6, 5]), return_loss=True)  # 0, 2: one study
        distinct = model(**inputs, study_ids=torch.tensor([5, 6, 7]), return_loss=True)
    close(distinct.global_loss, plain.global_loss)
    expected = EGMALoss(model.config)(shared.image_embeds, shared.text_embeds, shared.patch_embeds,
                                      shared.sentence_embeds, shared.sentence_mask, torch.tensor(100.0),
                                      study_ids=torch.tensor([5, 6, 5]))
    close(shared.global_loss, expected.global_loss)
    assert not torch.isclose(shared.global_loss, plain.global_loss)
    close(shared.mlce_loss, plain.mlce_loss)
    with pytest.raises(ValueError, match=r"study_ids must be \(3,\) integer ids"):
        model(**inputs, study_ids=torch.tensor([1.0, 2.0, 3.0]), return_loss=True)
    with pytest.raises(ValueError, match=r"study_ids must be \(3,\) integer ids"):
        model(**inputs, study_ids=torch.tensor([1, 2]), return_loss=True)
