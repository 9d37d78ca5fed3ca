"""Zero-shot inference throughput (images/s) of `EGMAModel` against `CLIPModel` with towers of the same size.

Both models are randomly initialised (no download) with equal tower sizes: EGMA gets a `ViTConfig` image tower and
a `BertConfig` text tower, CLIP a `CLIPVisionConfig` / `CLIPTextConfig`, with the same hidden size, layers, heads,
MLP width, patch size, image size and projection dim (`--size small`: ViT-S/16-like, open_clip's ViT-S-16 dims;
`--size base`: CLIP ViT-B/16 dims). Both use one in-memory WordPiece vocabulary, so every prompt has the same
number of tokens for both. CLIP's MLPs use gelu like ViT and BERT (`--clip-act quick_gelu` for CLIP's stock
activation, which costs three elementwise passes instead of one and makes CLIP slower on CPU). Synthetic grayscale
"X-rays" (`--image-height` x `--image-width`, PIL, mode L) are the inputs.

Everything runs in one process. Each row is split into units (a batch, a pipeline call, an image); EGMA's and
CLIP's unit i run back to back, their order alternating, so that a busy machine hits both alike. images/s is N
images over the median time of `--repeats` rounds; EGMA/CLIP is the median over all paired units of
CLIP time / EGMA time, by the wall clock and by this process's CPU time (less disturbed by other jobs).

Rows:

- embedding path: prompts embedded once per class set (EGMA: `ZeroShotClassifier.from_prompts` on the
  CheXpert 5x200 prompts, max ensemble; CLIP: the open_clip-style cached classifier, the mean of the normalised
  `get_text_features` of each class's prompts, re-normalised), then `get_image_features` + scoring of
  preprocessed `pixel_values` in batches of `--batch-size` (EGMA via `egma_hf.zero_shot.embed_pixel_values`).
  The one-time classifier build is printed on its own line, not counted in images/s.
- standard pipeline: `pipeline("zero-shot-image-classification")` with 5 candidate labels, called on the list of
  images with `batch_size=--pipeline-batch-size` (default 1, as `classifier(image, candidate_labels=...)`). It
  runs the whole model, text tower included, for every batch: the prompts are re-encoded for every image.
- egma pipeline: `pipeline("egma-zero-shot-image-classification")` with the same 5 candidate labels; its prompt
  cache is emptied before every round, so each round pays the one classifier build for its N images.
- preprocessing only: each model's image processor on one image at a time (what both pipelines do per image),
  `CLIPImageProcessor` (resize, centre crop) vs `EGMAImageProcessor` (grayscale, resize, pad).
- reference: EGMA with its default towers (`EGMAConfig()`: Swin-T at 224 + BERT-base), embedding path; no CLIP
  counterpart.

Then the number of text-tower forward passes during one run of N images through each pipeline (EGMA's must be one
per class set, whatever N: it embeds every distinct prompt of a set once, in batches of 64 prompts), and, with
`--breakdown`, where the embedding path's time goes (vision tower alone, EGMA's patch projection, scoring).

    python benchmarks/zero_shot_throughput.py                    # ViT-S/16 dims, 32 images: minutes on 2 CPUs
    python benchmarks/zero_shot_throughput.py --size base --breakdown
    python benchmarks/zero_shot_throughput.py --quick            # tiny towers, a few seconds (the smoke test)

Measured figures and their discussion: docs/benchmarks.md (Zero-shot inference).
"""

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    BertConfig,
    BertTokenizerFast,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    ViTConfig,
    pipeline,
)
from transformers.image_utils import load_image

from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel
from egma_hf.prompts import chexpert_5x200_prompts
from egma_hf.training import build_tokenizer
from egma_hf.zero_shot import ZeroShotClassifier, embed_pixel_values

# Tower sizes shared by both models: (hidden, layers, heads, MLP width) per tower.
SIZES = {
    "quick": dict(image_size=32, patch_size=8, vision=(32, 2, 2, 64), text=(32, 2, 2, 64), projection_dim=16),
    "small": dict(image_size=224, patch_size=16, vision=(384, 12, 6, 1536), text=(384, 12, 6, 1536),
                  projection_dim=384),  # open_clip ViT-S-16
    "base": dict(image_size=224, patch_size=16, vision=(768, 12, 12, 3072), text=(512, 12, 8, 2048),
                 projection_dim=512),  # CLIP ViT-B/16
}
# The standard pipeline takes one prompt per class: the CheXpert competition findings.
CANDIDATE_LABELS = ["atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion"]
HYPOTHESIS_TEMPLATE = "a chest x-ray showing {}."
QUICK_SWIN = dict(model_type="swin", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                  window_size=4)
QUICK_BERT = dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64)


def make_tokenizer(class_prompts, token_type_ids: bool = True) -> BertTokenizerFast:
    """A WordPiece tokenizer whose vocabulary holds every word of the benchmark's prompts (no download)."""
    texts = [p for prompts in class_prompts.values() for p in prompts]
    texts += [HYPOTHESIS_TEMPLATE.format(label) for label in CANDIDATE_LABELS]
    names = ["input_ids", "token_type_ids", "attention_mask"] if token_type_ids else ["input_ids", "attention_mask"]
    return build_tokenizer(texts, characters=False, model_input_names=names)


def tower_kwargs(dims):
    hidden, layers, heads, mlp = dims
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp)


def build_models(size: str, tokenizer, clip_act: str = "gelu"):
    spec = SIZES[size]
    vision = dict(tower_kwargs(spec["vision"]), image_size=spec["image_size"], patch_size=spec["patch_size"])
    text = tower_kwargs(spec["text"])
    torch.manual_seed(0)
    egma = EGMAModel(EGMAConfig(vision_config=ViTConfig(**vision),
                                text_config=BertConfig(**text, vocab_size=28996, max_position_embeddings=512),
                                projection_dim=spec["projection_dim"]))
    torch.manual_seed(0)
    clip_text = dict(text, vocab_size=49408, max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    clip = CLIPModel(CLIPConfig(vision_config=dict(vision, hidden_act=clip_act), projection_dim=spec["projection_dim"],
                                text_config=dict(clip_text, hidden_act=clip_act)))
    grid = spec["image_size"] // spec["patch_size"]
    egma_processor = EGMAImageProcessor(size=spec["image_size"], gaze_grid_size=grid)
    side = spec["image_size"]
    clip_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return egma.eval(), clip.eval(), egma_processor, clip_processor


def synthetic_xrays(count: int, height: int, width: int) -> list:
    """Grayscale uint8 images with a smooth body and noise, as PIL mode "L" (what a PNG chest X-ray loads as)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:height, 0:width]
    body = np.exp(-(((rows - height / 2) / (0.45 * height)) ** 2 + ((cols - width / 2) / (0.4 * width)) ** 2))
    images = []
    for _ in range(count):
        pixels = 200 * body + 40 * rng.random((height, width))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))  # 2-D uint8: mode L
    return images


class ClipClassifier:
    """open_clip's zero-shot head: per class, the mean of its normalised prompt embeddings, re-normalised."""

    @torch.no_grad()
    def __init__(self, model, tokenizer, class_prompts, batch_size: int = 64):
        self.class_names = list(class_prompts)
        prompts = [p for group in class_prompts.values() for p in group]
        device = next(model.parameters()).device
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size], padding=True, truncation=True, max_length=77,
                               return_tensors="pt").to(device)
            chunks.append(F.normalize(model.get_text_features(**tokens).pooler_output.float(), dim=-1))
        embeds = torch.cat(chunks)
        weights, start = [], 0
        for group in class_prompts.values():
            weights.append(F.normalize(embeds[start : start + len(group)].mean(0), dim=-1))
            start += len(group)
        self.weights = torch.stack(weights, dim=1)  # (D, C)
        self.logit_scale = model.logit_scale.detach().float().exp().item()

    def probabilities(self, image_embeds):
        return (self.logit_scale * image_embeds @ self.weights).softmax(-1)


@torch.no_grad()
def clip_embed_pixel_values(model, pixel_values):
    """CLIP's counterpart of `egma_hf.zero_shot.embed_pixel_values`, line for line."""
    parameter = next(model.parameters())
    features = model.get_image_features(pixel_values=pixel_values.to(parameter.device, parameter.dtype))
    return F.normalize(features.pooler_output.float(), dim=-1)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class TextPasses:
    """Counts forward passes of a model's text tower."""

    def __init__(self, text_model):
        self.count = 0
        text_model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


@dataclass
class Row:
    """One line of the table: EGMA's units of work (and CLIP's, paired with them) and what timing them gave."""

    name: str
    egma: list
    clip: list | None = None
    before_round: Callable | None = None
    wall: dict = field(default_factory=lambda: {"egma": [], "clip": []})  # per round, all units
    unit_wall: dict = field(default_factory=lambda: {"egma": [], "clip": []})  # per unit, all rounds
    unit_cpu: dict = field(default_factory=lambda: {"egma": [], "clip": []})
    text_passes: dict = field(default_factory=dict)  # text-tower forward passes in the last round

    @property
    def models(self):
        return ("egma", "clip") if self.clip is not None else ("egma",)

    def images_per_s(self, model, images):
        return images / statistics.median(self.wall[model])

    def ratio(self, clock):
        """EGMA throughput / CLIP throughput: the median over paired units of CLIP time / EGMA time."""
        times = self.unit_wall if clock == "wall" else self.unit_cpu
        return statistics.median(c / e for e, c in zip(times["egma"], times["clip"]))


@contextmanager
def counting(counter: TextPasses, into: dict, key: str):
    start = counter.count
    yield
    into[key] = counter.count - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=[s for s in SIZES if s != "quick"], default="small")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch on the embedding path")
    parser.add_argument("--pipeline-batch-size", type=int, default=1, help="batch_size passed to the pipelines")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one untimed warm-up round first)")
    parser.add_argument("--image-height", type=int, default=512)
    parser.add_argument("--image-width", type=int, default=448)
    parser.add_argument("--clip-act", choices=["gelu", "quick_gelu"], default="gelu",
                        help="CLIP's MLP activation: gelu as ViT/BERT (default, same work per layer) or CLIP's stock "
                             "quick_gelu (three elementwise passes instead of one: slower on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-reference", action="store_true", help="skip the default-EGMA (Swin-T) reference row")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of the embedding path")
    parser.add_argument("--quick", action="store_true",
                        help="tiny towers, 4 small images, 2 rounds, 1 thread: seconds (the smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.num_images, args.batch_size, args.repeats = "quick", 4, 2, 2
        args.image_height, args.image_width = 48, 40
        args.threads = args.threads or 1  # tiny towers gain nothing from threads, and lose most to a busy machine
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipeline_device = device if device.type != "cpu" else -1

    class_prompts = chexpert_5x200_prompts()
    tokenizer = make_tokenizer(class_prompts)
    clip_tokenizer = make_tokenizer(class_prompts, token_type_ids=False)  # CLIPModel takes no token_type_ids
    egma, clip, egma_processor, clip_processor = build_models(args.size, clip_tokenizer, args.clip_act)
    egma, clip = egma.to(device), clip.to(device)
    images = synthetic_xrays(args.num_images, args.image_height, args.image_width)
    egma_text, clip_text = TextPasses(egma.text_model), TextPasses(clip.text_model)
    spec = SIZES[args.size]
    print(f"device={device} threads={torch.get_num_threads()} size={args.size} (image {spec['image_size']}/"
          f"{spec['patch_size']}, vision {spec['vision']}, text {spec['text']} as (hidden, layers, heads, mlp), "
          f"projection {spec['projection_dim']}) clip_act={args.clip_act} images={args.num_images} of "
          f"{args.image_height}x{args.image_width} batch={args.batch_size} "
          f"pipeline_batch={args.pipeline_batch_size} repeats={args.repeats}")

    # ---------------------------------------------------------------------------------------------------- setup
    def build_time(fn):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        return result, time.perf_counter() - start

    n_prompts = sum(len(group) for group in class_prompts.values())
    builds = {}
    with counting(egma_text, builds, "egma"):
        egma_classifier, egma_build = build_time(
            lambda: ZeroShotClassifier.from_prompts(egma, tokenizer, class_prompts).to(device))
    with counting(clip_text, builds, "clip"):
        clip_classifier, clip_build = build_time(lambda: ClipClassifier(clip, clip_tokenizer, class_prompts))

    def batches(processor):
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        return [pixel_values[i : i + args.batch_size] for i in range(0, len(pixel_values), args.batch_size)]

    egma_batches, clip_batches = batches(egma_processor), batches(clip_processor)
    labels = dict(candidate_labels=CANDIDATE_LABELS, hypothesis_template=HYPOTHESIS_TEMPLATE,
                  batch_size=args.pipeline_batch_size)
    egma_standard = pipeline("zero-shot-image-classification", model=egma, tokenizer=tokenizer,
                             image_processor=egma_processor, device=pipeline_device)
    clip_standard = pipeline("zero-shot-image-classification", model=clip, tokenizer=clip_tokenizer,
                             image_processor=clip_processor, device=pipeline_device)
    egma_cached = pipeline("egma-zero-shot-image-classification", model=egma, tokenizer=tokenizer,
                           image_processor=egma_processor, device=pipeline_device)

    reference = None
    if not args.no_reference:
        if args.quick:
            ref_config = EGMAConfig(vision_config=dict(QUICK_SWIN), text_config=dict(QUICK_BERT), projection_dim=16)
            ref_name, ref_side = "tiny Swin + tiny BERT (--quick)", QUICK_SWIN["image_size"]
        else:
            ref_config, ref_name, ref_side = EGMAConfig(), "EGMAConfig() defaults: Swin-T/224 + BERT-base", 224
        torch.manual_seed(0)
        ref_model = EGMAModel(ref_config).eval().to(device)
        ref_classifier = ZeroShotClassifier.from_prompts(ref_model, tokenizer, class_prompts).to(device)
        ref_processor = EGMAImageProcessor(size=ref_side, gaze_grid_size=4 if args.quick else 7)
        reference = (ref_name, ref_model, ref_classifier, batches(ref_processor))

    # --------------------------------------------------------------------------------------------- the rows
    # Each row is a list of units (a batch, a pipeline call, an image) per model. EGMA's and CLIP's unit i run back
    # to back, their order alternating, so that the load of a shared machine hits both alike.
    def embedding_units(model, classifier, pixel_batches, embed):
        def unit(pixel_values):
            return lambda: classifier.probabilities(embed(model, pixel_values.to(device))).tolist()
        return [unit(pixel_values) for pixel_values in pixel_batches]

    chunks = [images[i : i + args.pipeline_batch_size] for i in range(0, len(images), args.pipeline_batch_size)]

    def pipeline_units(classify):
        return [lambda chunk=chunk: classify(chunk, **labels) for chunk in chunks]

    def preprocessing_units(processor):
        return [lambda image=image: processor(images=[load_image(image)], return_tensors="pt") for image in images]

    rows = [
        Row("embedding path, cached prompts",
            embedding_units(egma, egma_classifier, egma_batches, embed_pixel_values),
            embedding_units(clip, clip_classifier, clip_batches, clip_embed_pixel_values)),
        Row("standard pipeline (prompts per image)", pipeline_units(egma_standard), pipeline_units(clip_standard)),
        # The cache is emptied before every round: each run of N images pays its one classifier build.
        Row("egma pipeline, cached prompts", pipeline_units(egma_cached), before_round=egma_cached._classifiers.clear),
        Row("preprocessing only (per image)", preprocessing_units(egma_processor), preprocessing_units(clip_processor)),
    ]
    if reference is not None:
        ref_name, ref_model, ref_classifier, ref_batches = reference
        rows.append(Row(f"reference: {ref_name}, embedding path",
                        embedding_units(ref_model, ref_classifier, ref_batches, embed_pixel_values)))

    text_counters = {"egma": egma_text, "clip": clip_text}
    for round_index in range(args.repeats + 1):  # round 0 warms up
        for row in rows:
            if row.before_round is not None:
                row.before_round()
            passes = {model: counter.count for model, counter in text_counters.items()}
            wall, cpu = {"egma": [], "clip": []}, {"egma": [], "clip": []}
            for index, egma_unit in enumerate(row.egma):
                pair = [("egma", egma_unit)] + ([("clip", row.clip[index])] if row.clip is not None else [])
                for model, unit in pair if (index + round_index) % 2 == 0 else pair[::-1]:
                    synchronize(device)
                    start_wall, start_cpu = time.perf_counter(), time.process_time()
                    unit()
                    synchronize(device)
                    wall[model].append(time.perf_counter() - start_wall)
                    cpu[model].append(time.process_time() - start_cpu)
            if round_index > 0:
                for model in row.models:
                    row.wall[model].append(sum(wall[model]))
                    row.unit_wall[model] += wall[model]
                    row.unit_cpu[model] += cpu[model]
                    row.text_passes[model] = text_counters[model].count - passes[model]

    # --------------------------------------------------------------------------------------------- report
    n = args.num_images
    standard_clip = rows[1].images_per_s("clip", n)
    print()
    print(f"{'':<58} {'images/s':>9} {'images/s':>9} {'EGMA/CLIP':>10} {'EGMA/CLIP':>10}  text passes per")
    print(f"{'median of ' + str(args.repeats) + ' rounds':<58} {'EGMA':>9} {'CLIP':>9} {'(wall)':>10} "
          f"{'(CPU time)':>10}  {n} images (EGMA, CLIP)")
    for row in rows:
        egma_ips = row.images_per_s("egma", n)
        passes = ", ".join(str(row.text_passes[model]) for model in row.models)
        if row.clip is not None:
            print(f"{row.name:<58} {egma_ips:9.2f} {row.images_per_s('clip', n):9.2f} {row.ratio('wall'):10.3f} "
                  f"{row.ratio('cpu'):10.3f}  {passes}")
        elif row.name.startswith("egma pipeline"):
            print(f"{row.name:<58} {egma_ips:9.2f} {'-':>9} {egma_ips / standard_clip:10.3f} {'':>10}  {passes}  "
                  "(ratio: vs CLIP's standard pipeline)")
        else:
            print(f"{row.name:<58} {egma_ips:9.2f} {'-':>9} {'-':>10} {'-':>10}  {passes}")
    print("images/s: images / median time of a round. EGMA/CLIP: median over all rounds and units (batch, pipeline "
          "call, image) of the paired ratio CLIP time / EGMA time, by the wall clock or by this process's CPU time "
          "(which a shared machine disturbs less)")
    print()
    print(f"one-time classifier build, CheXpert 5x200 ({len(class_prompts)} classes, {n_prompts} prompts): "
          f"EGMA {egma_build * 1e3:.0f} ms ({builds['egma']} text-tower passes), "
          f"CLIP {clip_build * 1e3:.0f} ms ({builds['clip']} text-tower passes)")

    # One fresh run per class set through EGMA's pipeline, counting get_text_features calls: once per class set.
    calls = {"n": 0}
    original = egma.get_text_features

    def counting_get_text_features(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    egma.get_text_features = counting_get_text_features
    try:
        egma_cached._classifiers.clear()
        egma_cached(images, **labels)
        first = calls["n"]
        egma_cached(images, **labels)  # the same set again: cached
        again = calls["n"] - first
        calls["n"] = 0
        egma_cached(images, class_prompts=class_prompts, batch_size=args.pipeline_batch_size)
        ensemble = calls["n"]
    finally:
        del egma.get_text_features
    print(f"egma pipeline get_text_features calls: candidate labels ({len(CANDIDATE_LABELS)} prompts): {first} for "
          f"{n} images, {again} for {n} more; CheXpert 5x200 ({n_prompts} prompts): {ensemble} for {n} images "
          f"(prompt batches of 64: {-(-n_prompts // 64)})")

    if args.breakdown:
        breakdown(egma, clip, egma_batches, egma_classifier, clip_classifier, args.repeats, device)


def breakdown(egma, clip, pixel_batches, egma_classifier, clip_classifier, repeats, device):
    """Where the embedding path's time goes: the towers alone and what EGMA adds on top."""
    pixel_values = pixel_batches[0].to(device)
    batch = pixel_values.shape[0]
    with torch.no_grad():
        egma_out = egma.vision_model(pixel_values=pixel_values, return_dict=True)
        clip_embeds = clip_embed_pixel_values(clip, pixel_values)
    patches = egma_out.last_hidden_state[:, 1:]

    def without_patch_projection():  # get_image_features less the patch embeddings, zero-shot needs the pooled only
        out = egma.vision_model(pixel_values=pixel_values, return_dict=True)
        return F.normalize(egma.visual_projection(out.pooler_output).float(), dim=-1)

    parts = {
        "EGMA embed_pixel_values (get_image_features + normalise)": lambda: embed_pixel_values(egma, pixel_values),
        "EGMA same, without the patch projection": without_patch_projection,
        "CLIP embed (get_image_features + normalise)": lambda: clip_embed_pixel_values(clip, pixel_values),
        "EGMA vision tower alone (ViTModel)": lambda: egma.vision_model(pixel_values=pixel_values),
        "CLIP vision tower alone (CLIPVisionModel)": lambda: clip.vision_model(pixel_values=pixel_values),
        "EGMA patch projection alone": lambda: egma.visual_projection(patches),
        "EGMA scoring (max ensemble)": lambda: egma_classifier.probabilities(clip_embeds),
        "CLIP scoring (mean classifier)": lambda: clip_classifier.probabilities(clip_embeds),
    }
    wall, cpu = {name: [] for name in parts}, {name: [] for name in parts}
    with torch.no_grad():
        for round_index in range(2 * repeats + 1):  # round 0 warms up
            for name in list(parts) if round_index % 2 == 0 else list(parts)[::-1]:
                synchronize(device)
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                parts[name]()
                synchronize(device)
                if round_index > 0:
                    wall[name].append(time.perf_counter() - start_wall)
                    cpu[name].append(time.process_time() - start_cpu)
    full = next(iter(parts))
    print()
    print(f"breakdown of the embedding path, one batch of {batch}, median over {2 * repeats} rounds; last column: "
          "median per-round CPU time relative to the first line")
    print(f"  {'':<58} {'wall ms':>9} {'CPU ms':>9} {'relative':>9}")
    for name in parts:
        relative = statistics.median(a / b for a, b in zip(cpu[name], cpu[full]))
        print(f"  {name:<58} {statistics.median(wall[name]) * 1e3:9.2f} {statistics.median(cpu[name]) * 1e3:9.2f} "
              f"{relative:9.2%}")

if __name__ == "__main__":
    main()
