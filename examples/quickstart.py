"""A one-minute tour of egma_hf on a CPU, with no download: build a tiny EGMA model, train it briefly on toy
X-rays whose findings sit where the (simulated) radiologist looked, save it, and classify with the transformers
zero-shot pipeline.

    python examples/quickstart.py [--steps 60] [--output-dir egma-quickstart]

The toy data and sizes are only for the tour; real pre-training is `examples/pretrain.py` (issue 4).
"""

import argparse

import numpy as np
import torch
from PIL import Image
from transformers import pipeline

from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
from egma_hf.training import build_tokenizer

FINDINGS = {  # finding -> (sentence, blob centre as fractions of (row, column))
    "left opacity": ("There is an opacity in the left lung.", (0.55, 0.72)),
    "right opacity": ("There is an opacity in the right lung.", (0.55, 0.28)),
    "enlarged heart": ("The heart is enlarged.", (0.70, 0.50)),
}
NORMAL_SENTENCE = "The bones are intact."


def toy_sample(rng, finding, size=64):
    """A noisy 'X-ray' with a bright blob for the finding, and one gaze heatmap per report sentence."""
    sentence, (row, col) = FINDINGS[finding]
    yy, xx = np.mgrid[0:size, 0:size] / size
    blob = np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * 0.08**2))
    image = np.clip(0.3 + 0.1 * rng.standard_normal((size, size)) + 0.6 * blob, 0, 1).astype(np.float32)
    heatmaps = np.stack([blob, np.full_like(blob, 0.0)]).astype(np.float32)  # gaze on the finding; none on bones
    return image, f"{sentence} {NORMAL_SENTENCE}", heatmaps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output-dir", default="egma-quickstart")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    tokenizer = build_tokenizer([s for s, _ in FINDINGS.values()] + [NORMAL_SENTENCE], characters=False)
    config = EGMAConfig(
        vision_config=dict(model_type="swin", image_size=64, patch_size=4, embed_dim=24, depths=[1, 1, 1],
                           num_heads=[2, 2, 4], window_size=4),
        text_config=dict(model_type="bert", vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64),
        projection_dim=32,
        global_loss_weight=1.0,  # training from scratch: keep the global InfoNCE on as well
    )
    model = EGMAModel(config)
    processor = EGMAProcessor(EGMAImageProcessor(size=64, gaze_grid_size=4), tokenizer)
    print(f"EGMA with a {config.vision_config.model_type} tower ({4}x{4} patch grid) and a "
          f"{config.text_config.num_hidden_layers}-layer BERT: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    names = list(FINDINGS)
    for step in range(1, args.steps + 1):
        samples = [toy_sample(rng, names[i % 3]) for i in rng.permutation(12)]
        images, reports, heatmaps = map(list, zip(*samples))
        heatmaps = [h if rng.random() < 0.5 else None for h in heatmaps]  # half the readings have gaze
        out = model.train()(**processor(images=images, text=reports, gaze_heatmaps=heatmaps), return_loss=True)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step == 1 or step % 20 == 0:
            print(f"step {step:3d}  loss {out.loss.item():.3f}  (global {out.global_loss.item():.3f}, "
                  f"mlce {out.mlce_loss.item():.3f}, fine-grained {out.fine_grained_loss.item():.3f}, "
                  f"egm {out.egm_loss.item():.3f})")

    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    print(f"saved model and processor to {args.output_dir}/")

    classifier = pipeline("zero-shot-image-classification", model=args.output_dir)
    correct = 0
    for index in range(30):
        finding = names[index % 3]
        image = toy_sample(rng, finding)[0]
        best = classifier(Image.fromarray((image * 255).astype(np.uint8)),
                          candidate_labels=[FINDINGS[n][0] for n in names], hypothesis_template="{}")[0]["label"]
        correct += best == FINDINGS[finding][0]
    print(f"zero-shot pipeline on 30 new toy images: {correct}/30 correct (chance: 10/30)")


if __name__ == "__main__":
    main()
