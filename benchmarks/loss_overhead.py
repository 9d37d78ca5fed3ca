"""How much EGMA's gaze losses add to a training step, and how their memory grows with sentences per report.

Three measurements, each side by side in one run:

1. One training step (forward + backward) of the same towers with EGMA's full loss (global + MLCE + fine-grained
   + EGM) and with the global InfoNCE alone; prints `egma_step / clip_step`. On a GPU it also lists where each
   variant's step makes the host wait for the GPU (torch's sync debug mode).
2. The loss alone (forward + backward on feature tensors) at the paper's shapes: 49 patches, up to 12 sentences,
   batch 32, d = 512; prints its time as a fraction of the EGMA step of (1).
3. Bytes the loss saves for backward for 3, 6, 12 and 24 sentences per report; linear growth means the marginal
   bytes per added sentence stay flat.

    python benchmarks/loss_overhead.py                       # tiny towers, seconds on a CPU
    python benchmarks/loss_overhead.py --towers real         # Swin-T + BERT-base (random weights, no download)
    python benchmarks/loss_overhead.py --towers real --batch-size 128 --bf16 --repeats 10   # on a GPU
"""

import argparse
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from egma_hf import EGMAConfig, EGMAModel
from egma_hf.losses import EGMALoss

TOWERS = {
    "tiny": dict(
        vision_config=dict(model_type="swin", image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                           num_heads=[1, 1, 2, 2], window_size=7),
        text_config=dict(model_type="bert", vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64),
    ),
    "real": dict(),  # EGMAConfig defaults: Swin-T at 224 + BERT-base (Bio_ClinicalBERT vocabulary)
}
ALL_TERMS = dict(global_loss_weight=1.0, mlce_loss_weight=1.0, fine_grained_loss_weight=1.0, egm_loss_weight=1.0)
GLOBAL_ONLY = dict(global_loss_weight=1.0, mlce_loss_weight=0.0, fine_grained_loss_weight=0.0, egm_loss_weight=0.0)


def make_batch(config, batch_size, sentences, tokens, device):
    g = torch.Generator().manual_seed(0)
    return dict(
        pixel_values=torch.randn(batch_size, 3, 224, 224, generator=g).to(device),
        input_ids=torch.randint(5, config.text_config.vocab_size, (batch_size, sentences, tokens),
                                generator=g).to(device),
        attention_mask=torch.ones(batch_size, sentences, tokens, dtype=torch.long, device=device),
        gaze_heatmaps=torch.rand(batch_size, sentences, 7, 7, generator=g).to(device),
    )


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def best_of(fn, repeats, device):
    fn()  # warm-up
    return min(timed(fn, device) for _ in range(repeats))


VARIANTS = {"clip": GLOBAL_ONLY, "egma": ALL_TERMS}


def training_step(args, device):
    """One model and batch for both variants; returns step(variant): forward + backward with its loss weights."""
    config = EGMAConfig(**TOWERS[args.towers], **ALL_TERMS)
    model = EGMAModel(config).to(device).train()
    batch = make_batch(config, args.batch_size, args.sentences, args.tokens, device)

    def step(variant: str):
        for key, value in VARIANTS[variant].items():
            setattr(config, key, value)
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch, return_loss=True).loss
        loss.backward()

    return step


def step_times(step, repeats: int, device) -> dict[str, float]:
    """Best time of each variant, alternating clip/egma steps so that machine drift hits both alike."""
    results = {name: float("inf") for name in VARIANTS}
    for round_index in range(repeats + 1):  # round 0 warms up
        for name in VARIANTS:
            elapsed = timed(lambda name=name: step(name), device)
            if round_index > 0:
                results[name] = min(results[name], elapsed)
    return results


def host_syncs(step) -> dict[str, list[str]]:
    """Per variant, where one training step makes the host wait for the GPU: 'file:line' of each synchronizing
    call, from torch's sync debug mode. A wait after the towers are queued leaves the GPU idle while the host
    queues the rest of the step."""
    found = {}
    for name in VARIANTS:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step(name)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        found[name] = [f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}" for w in caught
                       if "synchroniz" in str(w.message)]
    return found


def loss_inputs(batch_size, sentences, patches=49, dim=512, device="cpu", requires_grad=True):
    g = torch.Generator().manual_seed(1)
    tensors = dict(
        image_embeds=F.normalize(torch.randn(batch_size, dim, generator=g), dim=-1),
        text_embeds=F.normalize(torch.randn(batch_size, dim, generator=g), dim=-1),
        patch_embeds=F.normalize(torch.randn(batch_size, patches, dim, generator=g), dim=-1),
        sentence_embeds=F.normalize(torch.randn(batch_size, sentences, dim, generator=g), dim=-1),
    )
    tensors = {k: v.to(device).requires_grad_(requires_grad) for k, v in tensors.items()}
    counts = torch.randint(1, sentences + 1, (batch_size,), generator=g)
    tensors["sentence_mask"] = (torch.arange(sentences)[None] < counts[:, None]).to(device)
    tensors["gaze_maps"] = torch.rand(batch_size, sentences, patches, generator=g).to(device)
    tensors["has_gaze"] = torch.ones(batch_size, dtype=torch.bool, device=device)
    tensors["logit_scale"] = torch.tensor(1 / 0.07, device=device)
    return tensors


def loss_only_time(args, device):
    loss_fn = EGMALoss(EGMAConfig(**TOWERS["tiny"], **ALL_TERMS))
    inputs = loss_inputs(args.batch_size, args.sentences, device=device)
    return best_of(lambda: loss_fn(**inputs).loss.backward(), args.repeats, device)


def saved_bytes(sentences, batch_size):
    """Bytes of tensors autograd keeps for the backward pass of the full loss."""
    loss_fn = EGMALoss(EGMAConfig(**TOWERS["tiny"], **ALL_TERMS))
    inputs = loss_inputs(batch_size, sentences)
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(**inputs)  # the forward alone: the saved-tensor hook counts what backward would keep
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", choices=sorted(TOWERS), default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=12, help="sentence slots per report")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per sentence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="run the steps of (1) under bf16 autocast, as `accelerate launch --mixed_precision bf16`")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"device={device} towers={args.towers} batch={args.batch_size} sentences={args.sentences} "
          f"tokens={args.tokens} threads={torch.get_num_threads()} bf16={args.bf16}")
    step = training_step(args, device)
    steps = step_times(step, args.repeats, device)
    print(f"1. step (fwd+bwd): clip {steps['clip']:.3f} s, egma {steps['egma']:.3f} s, "
          f"egma_step / clip_step = {steps['egma'] / steps['clip']:.3f}")
    if device.type == "cuda":
        for name, places in host_syncs(step).items():
            print(f"   host waits for the GPU in one {name} step: {len(places)} "
                  f"({', '.join(f'{place} x{n}' for place, n in Counter(places).items())})")
    loss_time = loss_only_time(args, device)
    print(f"2. EGMA loss alone at B={args.batch_size}, N=49, M={args.sentences}, d=512: {loss_time * 1e3:.1f} ms "
          f"= {loss_time / steps['egma']:.1%} of the egma step above")
    print("3. bytes saved for backward by the loss (B=32, N=49, d=512); flat marginal bytes per sentence = linear:")
    previous = None
    for sentences in (3, 6, 12, 24):
        size = saved_bytes(sentences, 32)
        line = f"   M={sentences:2d}: {size / 2**20:7.2f} MiB"
        if previous is not None:
            marginal = (size - previous[1]) / (sentences - previous[0])
            line += f", marginal {marginal / 2**20:.3f} MiB per added sentence"
        print(line)
        previous = (sentences, size)


if __name__ == "__main__":
    main()
