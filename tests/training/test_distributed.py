"""EGMA's loss over two real processes (gloo on CPU) against one process on the same global batch.

One `torch.multiprocessing.spawn` runs every two-process scenario; each rank `torch.save`s its results and the tests
compare them with the one-process computation done here.
"""

import datetime
import itertools

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from egma_hf import EGMAImageProcessor, EGMALoss, EGMAModel, EGMAProcessor
from egma_hf.distributed import gather_padded, gather_with_grad, world_info
from tests.helpers import GRID, IMAGE_SIZE, make_tokenizer, tiny_config

pytestmark = pytest.mark.slow  # trains or starts processes: excluded from the fast loop, `pytest -m "not slow"`

WORLD_SIZE = 2
B = 3  # pairs per rank
COUNTS = [3, 1, 2, 1, 4, 2]  # sentences per report: rank 0 pads to 3 slots, rank 1 to 4
SLOTS = 5  # the one-process batch carries an extra padding slot
N, D = 6, 5
GAZE_PATTERNS = {
    "mixed-gaze": [True, False, True, False, True, True],
    "rank0-without-gaze": [False, False, False, True, False, True],
}
LOSS_CASES = list(itertools.product(("images", "texts"), ("batch", "gaze_samples"), GAZE_PATTERNS))
# pairs 0 and 1 share a study on rank 0, pair 2 (rank 0) and pair 4 (rank 1) share one across the ranks
STUDY_IDS = torch.tensor([11, 11, 7, 3, 7, 5])
FEATURES = ("image_embeds", "text_embeds", "patch_embeds", "sentence_embeds", "logit_scale")
TERMS = ("loss", "global_loss", "mlce_loss", "fine_grained_loss", "egm_loss")


def loss_config(t2i_softmax_over, mlce_reduction):
    return tiny_config(global_loss_weight=0.5, mlce_loss_weight=2.0, fine_grained_loss_weight=1.5,
                       egm_loss_weight=0.25, fine_grained_t2i_softmax_over=t2i_softmax_over,
                       mlce_reduction=mlce_reduction)


def global_features(gaze_pattern, seed=0):
    """The loss inputs of the global batch (W * B pairs), float64; padding slots hold random garbage."""
    g = torch.Generator().manual_seed(seed)
    size = WORLD_SIZE * B

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)

    heat = torch.rand(size, SLOTS, N, generator=g, dtype=torch.float64)
    return dict(
        image_embeds=unit(size, D),
        text_embeds=unit(size, D),
        patch_embeds=unit(size, N, D),
        sentence_embeds=unit(size, SLOTS, D),
        sentence_mask=torch.arange(SLOTS)[None] < torch.tensor(COUNTS)[:, None],
        logit_scale=torch.tensor(10.0, dtype=torch.float64),
        gaze_maps=heat * (torch.rand(size, SLOTS, N, generator=g, dtype=torch.float64) > 0.4),
        has_gaze=torch.tensor(GAZE_PATTERNS[gaze_pattern]),
    )


SLOT_KEYS = ("sentence_embeds", "sentence_mask", "gaze_maps", "input_ids", "attention_mask", "token_type_ids",
             "gaze_heatmaps")  # inputs whose dim 1 is the sentence slot


def rank_slice(batch, rank, counts):
    """Rank `rank`'s share of a global batch whose reports have `counts` sentences, padded only to the rank's own
    longest report, as its collator would pad it."""
    size = len(counts) // WORLD_SIZE
    rows = slice(rank * size, (rank + 1) * size)
    slots = max(counts[rows])
    return {key: value if value.ndim == 0 else value[rows, :slots] if key in SLOT_KEYS else value[rows]
            for key, value in batch.items()}


def loss_with_grads(loss_fn, features):
    """Run `loss_fn` on fresh leaves; return its terms and the gradients of its total w.r.t. FEATURES."""
    leaves = {key: value.clone().requires_grad_(key in FEATURES) for key, value in features.items()}
    out = loss_fn(**leaves)
    out.loss.backward()
    terms = {name: getattr(out, name).detach() for name in TERMS}
    return terms, {key: leaves[key].grad for key in FEATURES}


MODEL_COUNTS = [3, 1, 2, 2]  # rank 0 pads to 3 slots, rank 1 to 2
REPORTS = [
    "The heart size is normal. The lungs are clear. No pleural effusion.",
    "Mild cardiomegaly with edema.",
    "Small left lower lobe opacity. Pneumonia.",
    "The lungs are clear. No pneumothorax.",
]


def model_batch():
    """Four image-report pairs with MODEL_COUNTS sentences, mixed gaze."""
    processor = EGMAProcessor(image_processor=EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID),
                              tokenizer=make_tokenizer())
    rng = np.random.default_rng(0)
    images = [rng.random((40, 36)).astype(np.float32) for _ in REPORTS]
    gaze = [True, False, False, True]
    heatmaps = [rng.random((m, 20, 18)).astype(np.float32) if on else None for m, on in zip(MODEL_COUNTS, gaze)]
    return dict(processor(images=images, text=REPORTS, gaze_heatmaps=heatmaps))


def gather_weights(rank):
    """Rank `rank`'s weights on the transposed (3, 2, 4) result of `gather_padded` in the worker."""
    return (rank + 1) * torch.arange(24, dtype=torch.float64).reshape(3, 2, 4)


def build_model():
    torch.manual_seed(0)
    return EGMAModel(tiny_config(global_loss_weight=1.0)).double().train()


def model_grads(model, inputs):
    """Parameter gradients after one backward of the loss; `model` may be wrapped in DDP."""
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    model(**inputs, return_loss=True).loss.backward()
    return {name: p.grad for name, p in getattr(model, "module", model).named_parameters()}


# ---------------------------------------------------------------------------------------------------------------
# The two processes


def _worker(rank, directory):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/init", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    results = {"world_info": world_info()}

    results["loss_cases"] = [
        loss_with_grads(EGMALoss(loss_config(over, reduction)), rank_slice(global_features(gaze), rank, COUNTS))
        for over, reduction, gaze in LOSS_CASES
    ]
    results["same_study"] = [
        loss_with_grads(EGMALoss(loss_config(over, "batch")),
                        rank_slice(dict(global_features("mixed-gaze"), study_ids=STUDY_IDS), rank, COUNTS))
        for over in ("images", "texts")
    ]
    results["local_only"] = loss_with_grads(
        EGMALoss(loss_config("images", "gaze_samples"), gather_with_grad=False),
        rank_slice(global_features("mixed-gaze"), rank, COUNTS),
    )[0]

    # gather_padded with a ragged middle dim; the transpose sends a non-contiguous gradient into the gather
    x = torch.full((2, rank + 1, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gathered = gather_padded(x, dim=1, fill=-1.0, with_grad=True)
    (gathered.transpose(0, 2) * gather_weights(rank)).sum().backward()
    results["gather_padded"] = (gathered.detach(), x.grad)

    ddp = DistributedDataParallel(build_model())
    results["model_grads"] = model_grads(ddp, rank_slice(model_batch(), rank, MODEL_COUNTS))

    config = tiny_config(global_loss_weight=1.0)
    uneven = rank_slice(global_features("mixed-gaze"), 0, COUNTS)
    uneven = {k: v[: 2 - rank] if v.ndim else v for k, v in uneven.items()}  # rank 0: 2 pairs, rank 1: 1 pair
    try:
        EGMALoss(config)(**uneven)
        results["mismatch"] = None
    except ValueError as error:
        results["mismatch"] = str(error)

    dist.destroy_process_group()
    torch.save(results, f"{directory}/rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(directory),), nprocs=WORLD_SIZE, join=True)
    return [torch.load(directory / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------


def test_each_rank_sees_the_process_group(ranks):
    assert [r["world_info"] for r in ranks] == [(0, 2), (1, 2)]


@pytest.mark.parametrize("case", range(len(LOSS_CASES)), ids=["-".join(c) for c in LOSS_CASES])
def test_loss_terms_and_gradients_match_one_process(ranks, case):
    over, reduction, gaze = LOSS_CASES[case]
    terms, grads = loss_with_grads(EGMALoss(loss_config(over, reduction)), global_features(gaze))
    rank_terms = [r["loss_cases"][case][0] for r in ranks]
    for name in TERMS:
        close(torch.stack([t[name] for t in rank_terms]).mean(), terms[name])

    # Each rank's leaves got every rank's gradient through the gather; DDP would then average over the ranks.
    rank_grads = [r["loss_cases"][case][1] for r in ranks]
    for key in ("image_embeds", "text_embeds", "patch_embeds"):
        close(torch.cat([g[key] for g in rank_grads]) / WORLD_SIZE, grads[key])
    sentences = torch.cat([F.pad(g["sentence_embeds"], (0, 0, 0, SLOTS - g["sentence_embeds"].shape[1]))
                           for g in rank_grads])
    close(sentences / WORLD_SIZE, grads["sentence_embeds"])
    close(torch.stack([g["logit_scale"] for g in rank_grads]).mean(), grads["logit_scale"])


@pytest.mark.parametrize("case, over", enumerate(("images", "texts")))
def test_same_study_positives_match_one_process(ranks, case, over):
    """Multi-positive targets over the gathered batch: a study shared across the ranks is positive on both."""
    features = dict(global_features("mixed-gaze"), study_ids=STUDY_IDS)
    terms, grads = loss_with_grads(EGMALoss(loss_config(over, "batch")), features)
    plain = loss_with_grads(EGMALoss(loss_config(over, "batch")), global_features("mixed-gaze"))[0]
    assert abs(terms["global_loss"] - plain["global_loss"]) > 1e-3  # the shared studies change the targets
    for name in TERMS:
        close(torch.stack([r["same_study"][case][0][name] for r in ranks]).mean(), terms[name])
    for key in ("image_embeds", "text_embeds"):
        close(torch.cat([r["same_study"][case][1][key] for r in ranks]) / WORLD_SIZE, grads[key])


def test_gather_with_grad_false_keeps_the_loss_local(ranks):
    config = loss_config("images", "gaze_samples")
    for rank, result in enumerate(ranks):
        expected = EGMALoss(config)(**rank_slice(global_features("mixed-gaze"), rank, COUNTS))
        for name in TERMS:
            close(result["local_only"][name], getattr(expected, name))


def test_gather_padded_pads_then_concatenates_and_sums_gradients(ranks):
    expected = torch.tensor([[[1.0] * 3, [-1.0] * 3]] * 2 + [[[2.0] * 3] * 2] * 2, dtype=torch.float64)
    summed_grad = sum(gather_weights(rank) for rank in range(WORLD_SIZE)).transpose(0, 2)  # (4, 2, 3)
    for rank, result in enumerate(ranks):
        gathered, grad = result["gather_padded"]
        close(gathered, expected)
        close(grad, summed_grad[2 * rank : 2 * rank + 2, : rank + 1])


def test_ddp_gradients_match_one_process_on_the_global_batch(ranks):
    model = build_model()
    expected = model_grads(model, model_batch())
    assert all(grad is not None for grad in expected.values())
    for result in ranks:
        assert result["model_grads"].keys() == expected.keys()
        for name, grad in expected.items():
            close(result["model_grads"][name], grad)


def test_uneven_local_batches_raise_on_every_rank(ranks):
    for result in ranks:
        assert result["mismatch"] is not None and "[2, 1]" in result["mismatch"]


def test_one_process_needs_no_process_group():
    assert world_info() == (0, 1)
    x = torch.randn(2, 3)
    assert gather_with_grad(x) is x and gather_padded(x, dim=1, fill=0.0, with_grad=False) is x
    features = global_features("mixed-gaze")
    config = loss_config("images", "batch")
    auto, local = EGMALoss(config)(**features), EGMALoss(config, gather_with_grad=False)(**features)
    close(auto.loss, local.loss)
    with pytest.raises(RuntimeError, match="initialised"):
        EGMALoss(config, gather_with_grad=True)(**features)
