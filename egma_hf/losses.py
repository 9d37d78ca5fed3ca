"""EGMA's training losses as pure, batched functions (no loop over samples).

Notation (paper, Sec. 3). A batch holds B image-report pairs. Image k has N patch embeddings P_k (N, D); report l
has up to M sentence slots S_l (M, D), of which `sentence_mask[l]` marks the real ones. All embeddings given to these
functions are L2-normalised; `logit_scale` is the already-exponentiated temperature T = exp(logit_scale) <= 100.
Gaze enters as `gaze_maps` (B, M, N): each sentence's eye-gaze heatmap pooled to the patch grid and scaled to
max 1 (GS in the paper), and `has_gaze` (B,) marking the samples that have gaze at all.

The contrastive terms take their targets either as each pair's index (every other pair is a negative) or, when
pairs may share a study (a frontal and a lateral image with one report, two readings of one image), as a (B, G)
matrix of target probabilities from `same_study_targets`: a pair's positives are all pairs of its study.

Terms:
- `clip_contrastive_loss`: global InfoNCE (Eqs. 1-2).
- `multilabel_categorical_crossentropy` + `gaze_mlce_loss`: EGF's sentence<->patch MLCE against gaze labels (Eq. 4).
- `fine_grained_similarity` + `fine_grained_contrastive_loss`: EGF's FILIP-style instance scores (Eqs. 5-6).
- `gaze_mapping_loss`: EGM, the gaze-weighted cross-modal mapping contrast (Eqs. 7-9).
- `EGMALoss`: the weighted sum, configured from `EGMAConfig`; over several processes it gathers the global batch.

Every loss is computed in at least float32, whatever the autocast dtype of its inputs.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import gather, gather_padded, gather_with_grad, sum_over_ranks, world_info


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision (autocast) tensors -> float32; float32/float64 unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def clip_contrastive_loss(
    logits_per_image: torch.Tensor, logits_per_text: torch.Tensor | None = None, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE. Returns a scalar.

    One process: `logits_per_image` is a square (B, B) matrix whose diagonal holds the matching pairs, and
    `logits_per_text` defaults to its transpose. Over a gathered global batch of G pairs (see `EGMALoss`):
    `logits_per_image` (B, G) scores the local images against all texts, `logits_per_text` (B, G) the local texts
    against all images, and `targets` (B,) holds each local pair's index in the global batch. `targets` may
    instead be a (B, G) matrix of target probabilities (rows summing to 1; `same_study_targets`).
    """
    logits_per_image = _full(logits_per_image)
    logits_per_text = logits_per_image.t() if logits_per_text is None else _full(logits_per_text)
    if targets is None:
        targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets))


def same_study_targets(study_ids: torch.Tensor, all_study_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive InfoNCE targets: (B,) local study ids against the (G,) ids of the whole batch (default: the
    local ones) -> (B, G) float32, row k spread evenly over the pairs of k's study (its own pair included). With
    distinct ids this is the one-hot matrix of the pairs' own indices."""
    all_study_ids = study_ids if all_study_ids is None else all_study_ids
    same = (study_ids[:, None] == all_study_ids[None, :]).float()
    return same / same.sum(1, keepdim=True)


def _masked_mlce(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MLCE over the last dim, ignoring entries where `valid` is False. scores (..., K), labels bool -> (...)."""
    if valid is None:
        positive, negative = labels, ~labels
    else:
        positive, negative = labels & valid, ~labels & valid
    zero = scores.new_zeros(scores.shape[:-1] + (1,))
    negative_term = torch.cat([zero, scores.masked_fill(~negative, float("-inf"))], dim=-1).logsumexp(-1)
    positive_term = torch.cat([zero, (-scores).masked_fill(~positive, float("-inf"))], dim=-1).logsumexp(-1)
    return negative_term + positive_term


def multilabel_categorical_crossentropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label categorical cross-entropy (ZLPR), paper Eq. 4, without reduction.

    `mlce(s, y) = log(1 + sum_{y_q=0} exp(s_q)) + log(1 + sum_{y_q=1} exp(-s_q))`: it pushes every positive score
    above 0 and every negative below 0, with no fixed number of positives.

    Args:
        scores: (..., K) real scores.
        labels: (..., K) in {0, 1} (bool, integer or float).
    Returns:
        (...) loss per row.
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same shape, got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.dtype != torch.bool:
        if not torch.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must contain only 0 and 1")
        labels = labels.bool()
    return _masked_mlce(_full(scores), labels)


def gaze_labels_from_maps(gaze_maps: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Gaze labels GL = 1[GS > threshold] (paper: threshold 0). (B, M, N) float -> (B, M, N) bool."""
    return gaze_maps > threshold


def gaze_mlce_loss(
    patch_embeds: torch.Tensor,
    sentence_embeds: torch.Tensor,
    sentence_mask: torch.Tensor,
    gaze_labels: torch.Tensor,
    has_gaze: torch.Tensor,
    logit_scale: torch.Tensor,
    s2p_weight: float = 0.5,
    reduction: str = "batch",
) -> torch.Tensor:
    """EGF's MLCE term (Eqs. 3-4): each sentence's patch scores and each patch's sentence scores against gaze labels.

    Per sample k: fL_S2P = mean over real sentences of mlce(T S_k P_k^T row, GL_k row); fL_P2S = mean over patches
    of mlce(T P_k S_k^T row over real sentences, GL_k^T row). The sample loss is
    `s2p_weight * fL_S2P + (1 - s2p_weight) * fL_P2S`, zero for samples without gaze.

    Args:
        patch_embeds: (B, N, D); sentence_embeds: (B, M, D); sentence_mask: (B, M) bool.
        gaze_labels: (B, M, N) bool; has_gaze: (B,) bool; logit_scale: scalar T.
        reduction: "batch" divides the sum by B (paper, Eq. 6); "gaze_samples" by the number of gaze samples
            (released code; 0 when none has gaze); "sum" returns the sum, for callers that normalise it themselves.
    Returns:
        Scalar loss.
    """
    if reduction not in ("batch", "gaze_samples", "sum"):
        raise ValueError(f"reduction must be 'batch', 'gaze_samples' or 'sum', got {reduction!r}")
    scores = _full(logit_scale) * _full(sentence_embeds) @ _full(patch_embeds).transpose(1, 2)  # (B, M, N)
    mask = sentence_mask.float()

    s2p_rows = _masked_mlce(scores, gaze_labels)  # (B, M)
    s2p = (s2p_rows * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    p2s_rows = _masked_mlce(scores.transpose(1, 2), gaze_labels.transpose(1, 2), sentence_mask[:, None, :])  # (B, N)
    p2s = p2s_rows.mean(-1)

    per_sample = torch.where(has_gaze, s2p_weight * s2p + (1.0 - s2p_weight) * p2s, torch.zeros_like(s2p))
    if reduction == "batch":
        return per_sample.sum() / per_sample.shape[0]
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / has_gaze.sum().clamp_min(1)


def fine_grained_similarity(
    patch_embeds: torch.Tensor,
    sentence_embeds: torch.Tensor,
    sentence_mask: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP-style instance scores of every image against every report (paper Eq. 5).

    For image k and report l, with x[i, j] = T * <P_k[i], S_l[j]> over real sentences j of l:
    image_to_text[k, l] = mean_i max_j x[i, j] (z^I), text_to_image[k, l] = mean_j max_i x[i, j] (z^T).
    Padded sentence slots take no part in either max or mean.

    Args:
        patch_embeds: (B_img, N, D), L2-normalised.
        sentence_embeds: (B_txt, M, D), L2-normalised.
        sentence_mask: (B_txt, M) bool; every report needs at least one real sentence.
        logit_scale: scalar multiplier T (already exponentiated).
    Returns:
        (image_to_text, text_to_image), each (B_img, B_txt); entry [k, l] is image k against report l.
    """
    if sentence_mask.shape != sentence_embeds.shape[:2]:
        raise ValueError(
            f"sentence_mask must have shape {tuple(sentence_embeds.shape[:2])} (reports, sentence slots), "
            f"got {tuple(sentence_mask.shape)}"
        )
    if not sentence_mask.bool().any(-1).all():
        raise ValueError("every report needs at least one real sentence; sentence_mask has an all-False row")
    return _fine_grained_scores(patch_embeds, sentence_embeds, sentence_mask, logit_scale)


def _fine_grained_scores(patch_embeds, sentence_embeds, sentence_mask, logit_scale):
    """`fine_grained_similarity` without its checks, which read the mask back to the host (a GPU stall)."""
    sentence_mask = sentence_mask.bool()
    sentence_counts = sentence_mask.sum(-1)
    scores = torch.einsum("knd,lmd->klnm", _full(patch_embeds), _full(sentence_embeds)) * logit_scale  # (Bi,Bt,N,M)
    real = sentence_mask[None, :, None, :]
    image_to_text = scores.masked_fill(~real, float("-inf")).amax(-1).mean(-1)
    best_patch = scores.amax(2)  # (Bi, Bt, M)
    text_to_image = (best_patch * sentence_mask[None]).sum(-1) / sentence_counts[None]
    return image_to_text, text_to_image


def fine_grained_contrastive_loss(
    image_to_text: torch.Tensor,
    text_to_image: torch.Tensor,
    t2i_softmax_over: str = "images",
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """EGF's instance contrast on the fine-grained scores (second half of Eq. 6); entry [k, l] is image k vs report l.

    The image->text term normalises each image's row over reports. The text->image term normalises each report's
    scores over images (`"images"`, paper) or, as the released code does, over reports (`"texts"`).

    One process: both inputs are (B, B) with the pairs on the diagonal. Over a gathered global batch of G pairs (see
    `EGMALoss`): `image_to_text` (B, G) scores the local images against all reports; `text_to_image` is (G, B), all
    images against the local reports, for `"images"`, or (B, G) for `"texts"`; `targets` (B,) holds each local
    pair's index in the global batch, or is a (B, G) matrix of target probabilities (`same_study_targets`).
    """
    if targets is None:
        targets = torch.arange(image_to_text.shape[0], device=image_to_text.device)
    image_to_text, text_to_image = _full(image_to_text), _full(text_to_image)
    loss_i2t = F.cross_entropy(image_to_text, targets)
    if t2i_softmax_over == "images":
        loss_t2i = F.cross_entropy(text_to_image.t(), targets)
    elif t2i_softmax_over == "texts":
        loss_t2i = F.cross_entropy(text_to_image, targets)
    else:
        raise ValueError(f"t2i_softmax_over must be 'images' or 'texts', got {t2i_softmax_over!r}")
    return 0.5 * (loss_i2t + loss_t2i)


def _sparse_minmax(
    scores: torch.Tensor, valid: torch.Tensor | None, threshold: float, binarize: bool
) -> torch.Tensor:
    """omega of Eq. 7: min-max normalise each row over its valid entries, zero entries below `threshold`.

    A constant row has no ordering and becomes all zero. Invalid entries come out as 0.
    """
    if valid is None:
        low, high = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
    else:
        low = scores.masked_fill(~valid, float("inf")).amin(-1, keepdim=True)
        high = scores.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
    span = high - low
    scaled = torch.where(span > 0, (scores - low) / span.clamp_min(torch.finfo(scores.dtype).tiny), 0.0)
    keep = scaled >= threshold
    if valid is not None:
        keep = keep & valid
    return keep.to(scores.dtype) if binarize else scaled * keep


def _within_instance_infonce(
    mapped: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between mapped[k, r] and targets[k, r] inside each instance k. (B, R, D) -> (B,).

    The negatives of row r are the other valid rows of the same instance. An instance with one valid row has no
    negatives and gets exactly 0.
    """
    logits = logit_scale * mapped @ targets.transpose(1, 2)  # (B, R, R)
    if valid is None:
        valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    pair_valid = valid[:, :, None] & valid[:, None, :]
    # A finite fill keeps fully masked rows (padding) free of inf - inf = NaN in the backward pass.
    logits = logits.masked_fill(~pair_valid, torch.finfo(logits.dtype).min)
    diagonal = logits.diagonal(dim1=1, dim2=2)  # (B, R)
    row_loss = torch.where(valid, logits.logsumexp(-1) - diagonal, 0.0)
    column_loss = torch.where(valid, logits.logsumexp(-2) - diagonal, 0.0)
    count = valid.sum(-1).clamp_min(1)
    return 0.5 * (row_loss.sum(-1) + column_loss.sum(-1)) / count


def gaze_mapping_loss(
    patch_embeds: torch.Tensor,
    sentence_embeds: torch.Tensor,
    sentence_mask: torch.Tensor,
    gaze_maps: torch.Tensor | None,
    has_gaze: torch.Tensor | None,
    logit_scale: torch.Tensor,
    threshold: float = 3 / 7,
    eps: float = 0.01,
    text_weight: float = 0.5,
    binarize: bool = False,
    normalize_mapped: bool = True,
) -> torch.Tensor:
    """EGM (Eqs. 7-9): map each modality onto the other with gaze-weighted similarities, then contrast in-instance.

    For sample k with A = T S_k P_k^T (M, N):
    - sentence side: W = rownorm((omega(A) + GS_k) / 2 + eps) over patches; mapped sentences = W P_k (M, D),
      contrasted with S_k among the report's own sentences;
    - patch side: W = rownorm((omega(A^T) + GS_k^T) / 2 + eps) over real sentences; mapped patches = W S_k (N, D),
      contrasted with P_k among the image's own patches.
    Samples without gaze use omega(.) + eps alone. The sample loss is
    `text_weight * sentence side + (1 - text_weight) * patch side`, averaged over the batch.

    Args:
        patch_embeds: (B, N, D); sentence_embeds: (B, M, D); sentence_mask: (B, M) bool.
        gaze_maps: (B, M, N) in [0, 1], or None when no sample has gaze; has_gaze: (B,) bool or None.
        logit_scale: scalar T.
    Returns:
        Scalar loss.
    """
    patches, sentences = _full(patch_embeds), _full(sentence_embeds)
    logit_scale = _full(logit_scale)
    scores = logit_scale * sentences @ patches.transpose(1, 2)  # (B, M, N)
    use_gaze = gaze_maps is not None and has_gaze is not None
    if use_gaze:
        gaze_maps = _full(gaze_maps).to(patches.dtype)
        gaze_on = has_gaze[:, None, None]

    sentence_weights = _sparse_minmax(scores, None, threshold, binarize)
    if use_gaze:
        sentence_weights = torch.where(gaze_on, (sentence_weights + gaze_maps) / 2, sentence_weights)
    sentence_weights = sentence_weights + eps
    sentence_weights = sentence_weights / sentence_weights.sum(-1, keepdim=True)
    mapped_sentences = sentence_weights @ patches  # (B, M, D)

    real = sentence_mask.bool()[:, None, :]  # (B, 1, M)
    patch_weights = _sparse_minmax(scores.transpose(1, 2), real, threshold, binarize)  # (B, N, M)
    if use_gaze:
        patch_weights = torch.where(gaze_on, (patch_weights + gaze_maps.transpose(1, 2)) / 2, patch_weights)
    patch_weights = (patch_weights + eps) * real
    patch_weights = patch_weights / patch_weights.sum(-1, keepdim=True)
    mapped_patches = patch_weights @ sentences  # (B, N, D)

    if normalize_mapped:
        mapped_sentences = F.normalize(mapped_sentences, dim=-1)
        mapped_patches = F.normalize(mapped_patches, dim=-1)
    sentence_side = _within_instance_infonce(mapped_sentences, sentences, sentence_mask.bool(), logit_scale)
    patch_side = _within_instance_infonce(mapped_patches, patches, None, logit_scale)
    return (text_weight * sentence_side + (1.0 - text_weight) * patch_side).mean()


@dataclass
class EGMALossOutput:
    """Total loss and each term (scalars; a term that is switched off is None)."""

    loss: torch.Tensor
    global_loss: torch.Tensor | None = None
    mlce_loss: torch.Tensor | None = None
    fine_grained_loss: torch.Tensor | None = None
    egm_loss: torch.Tensor | None = None


class EGMALoss:
    """EGMA's total loss, `sum(weight * term)`, with the recipe read from an `EGMAConfig`.

    A term whose weight is 0 is not computed. Call it with L2-normalised embeddings of B matching pairs.

    Several processes (torch.distributed, world size W, rank r holding pairs r * B ... r * B + B - 1 of a global
    batch of G = W * B): the contrastive terms (global InfoNCE, fine-grained contrast) score the local pairs against
    all G pairs, gathered with gradients, as open_clip's `--gather-with-grad --local-loss`. MLCE and EGM have no
    cross-sample terms and see the local pairs only. Every rank must call the loss at the same time with the same B.

    Why this matches one process on the global batch: each rank's loss is the mean over its own rows (for the
    "gaze_samples" MLCE: W * local sum / global gaze count), so the mean of the W rank losses is the 1-process loss.
    The gather's backward sums, into each rank's embeddings, the gradients that all W rank losses send them, and DDP
    averages parameter gradients over the ranks, so every rank ends up with the gradient of that mean.

    Args:
        config: `EGMAConfig` with the loss recipe.
        gather_with_grad: True gathers over the initialised process group (identity with one process), False never
            gathers, None (default) gathers when torch.distributed is initialised with world size > 1.
    """

    def __init__(self, config, gather_with_grad: bool | None = None):
        self.config = config
        self.gather_with_grad = gather_with_grad

    def _world(self) -> tuple[int, int]:
        """(rank, world size) to gather over; (0, 1) for the local batch alone."""
        if self.gather_with_grad is False:
            return 0, 1
        if self.gather_with_grad and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("EGMALoss(gather_with_grad=True) needs an initialised torch.distributed process group")
        return world_info()

    def __call__(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        patch_embeds: torch.Tensor,
        sentence_embeds: torch.Tensor,
        sentence_mask: torch.Tensor,
        logit_scale: torch.Tensor,
        gaze_maps: torch.Tensor | None = None,
        has_gaze: torch.Tensor | None = None,
        study_ids: torch.Tensor | None = None,
    ) -> EGMALossOutput:
        """
        Args:
            image_embeds, text_embeds: (B, D) global embeddings.
            patch_embeds: (B, N, D); sentence_embeds: (B, M, D); sentence_mask: (B, M) bool. M may differ by rank.
            logit_scale: scalar T (already exponentiated and clamped).
            gaze_maps: (B, M, N) in [0, 1] or None; has_gaze: (B,) bool or None (None = no sample has gaze). An
                all-False has_gaze gives the same loss as None, only computed the long way; the loss never reads it
                back to the host, which would make a GPU step wait (EGMAModel passes None for gaze-free batches).
            study_ids: (B,) int64 or None. Pairs with the same id (images of one study) are positives of each other
                in the contrastive terms, over the global batch; None: each pair is its own positive only.
        Every report needs at least one real sentence, which EGMAModel checks on its inputs; the loss does not
        check the mask again, for the same reason.
        """
        config = self.config
        rank, world_size = self._world()
        gathering = world_size > 1
        batch = image_embeds.shape[0]
        targets = rank * batch + torch.arange(batch, device=image_embeds.device)  # local pairs' global indices
        if study_ids is not None:
            study_ids = study_ids.to(image_embeds.device)
            targets = same_study_targets(study_ids, gather(study_ids) if gathering else None)
        if gaze_maps is None or has_gaze is None:
            gaze_maps, has_gaze = None, None
        terms = {}
        if config.global_loss_weight > 0:
            images, texts = _full(image_embeds), _full(text_embeds)
            if gathering:
                terms["global_loss"] = clip_contrastive_loss(
                    logit_scale * images @ gather_with_grad(texts).t(),
                    logit_scale * texts @ gather_with_grad(images).t(),
                    targets,
                )
            else:
                terms["global_loss"] = clip_contrastive_loss(logit_scale * images @ texts.t(), targets=targets)
        if config.mlce_loss_weight > 0:
            # Over several processes, "gaze_samples" divides by the global number of gaze samples.
            count_globally = gathering and config.mlce_reduction == "gaze_samples"
            if has_gaze is None:
                mlce = image_embeds.new_zeros((), dtype=torch.float32)  # no gaze in this batch
            else:
                mlce = gaze_mlce_loss(
                    patch_embeds,
                    sentence_embeds,
                    sentence_mask,
                    gaze_labels_from_maps(gaze_maps, config.gaze_label_threshold),
                    has_gaze,
                    logit_scale,
                    s2p_weight=config.mlce_s2p_weight,
                    reduction="sum" if count_globally else config.mlce_reduction,
                )
            if count_globally:  # every rank joins the count, gaze of its own or not
                local_count = torch.as_tensor(0 if has_gaze is None else has_gaze.sum(), device=image_embeds.device)
                mlce = mlce * world_size / sum_over_ranks(local_count).clamp_min(1)
            terms["mlce_loss"] = mlce
        if config.fine_grained_loss_weight > 0:
            over = config.fine_grained_t2i_softmax_over
            all_sentences, all_mask = sentence_embeds, sentence_mask
            if gathering:
                all_sentences = gather_padded(sentence_embeds, dim=1, fill=0.0, with_grad=True)
                all_mask = gather_padded(sentence_mask, dim=1, fill=False, with_grad=False)
            # (B, G): the local images against all reports
            image_to_text, text_to_image = _fine_grained_scores(patch_embeds, all_sentences, all_mask, logit_scale)
            if gathering and over == "images":  # each local report's z^T over all images: (G, B)
                _, text_to_image = _fine_grained_scores(
                    gather_with_grad(patch_embeds), sentence_embeds, sentence_mask, logit_scale
                )
            terms["fine_grained_loss"] = fine_grained_contrastive_loss(image_to_text, text_to_image, over, targets)
        if config.egm_loss_weight > 0:
            terms["egm_loss"] = gaze_mapping_loss(
                patch_embeds,
                sentence_embeds,
                sentence_mask,
                gaze_maps,
                has_gaze,
                logit_scale,
                threshold=config.egm_threshold,
                eps=config.egm_eps,
                text_weight=config.egm_text_weight,
                binarize=config.egm_binarize,
                normalize_mapped=config.egm_normalize_mapped,
            )
        weights = {
            "global_loss": config.global_loss_weight,
            "mlce_loss": config.mlce_loss_weight,
            "fine_grained_loss": config.fine_grained_loss_weight,
            "egm_loss": config.egm_loss_weight,
        }
        total = image_embeds.new_zeros((), dtype=torch.float32)
        for name, value in terms.items():
            total = total + weights[name] * value
        return EGMALossOutput(loss=total, **terms)
