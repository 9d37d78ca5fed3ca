"""What did a trained EGMA model learn? Embedding clusters and gaze agreement, each as a picture and a number.

    python examples/analyze.py --model egma-pretrain                          # vs the same model untrained
    python examples/analyze.py --model egma-pretrain --baseline nogaze-baseline untrained --split test
    python examples/analyze.py --model runs/egma --data /data/mimic-eye --output_dir analysis/

Writes to --output_dir (default analysis/):
- embeddings.png / silhouette.json: t-SNE of the split's image embeddings, one panel per model, coloured by class,
  and each model's silhouette score (cosine, on the full embeddings). Only images with exactly one finding or none
  ("No Finding") have a class; classes with a single such image are left out.
- attention.png: for one reading with gaze (--reading_id, default the first by id that has a finding), each
  sentence's similarity map for every model next to the radiologist's gaze for it, both on the patch grid.
- attention.json: over every sentence with gaze in the split, the Pearson correlation and AUROC of the similarity
  map against gaze-hot patches (mean and std), for each model and for a shuffled control (each sentence against
  the gaze of a reading of another image); the example reading's per-sentence numbers too.

Default data: the synthetic corpus as examples/pretrain.py caches it (built once if missing). --data takes a
dataset saved with save_to_disk or a MIMIC-EYE root (EGD-CXR and REFLACX roots with --image_root).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from egma_hf import EGMAModel, EGMAProcessor
from egma_hf.conversion import check_egma_checkpoint
from egma_hf.data import default_cache_dir
from egma_hf.evaluation.analysis import embedding_clusters, pick_reading, reading_agreement, test_split_agreement
from egma_hf.evaluation.plots import plot_embedding_projection, plot_similarity_vs_gaze
from egma_hf.evaluation.reports import format_agreement
from egma_hf.training import TrainingSettings, load_readings

logger = logging.getLogger("analyze")

UNTRAINED = "untrained"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="a saved EGMA directory (with its processor)")
    add("--baseline", nargs="+", default=[],
        help=f"models to compare with; {UNTRAINED!r} is --model's config, untrained (the default)")
    add("--data", help="saved dataset or MIMIC-EYE / EGD-CXR / REFLACX root (default: the cached synthetic corpus)")
    add("--image_root", help="MIMIC-CXR(-JPG) root, for EGD-CXR and REFLACX roots")
    add("--cache_dir", default=str(default_cache_dir()))
    add("--split", default="test", help="the split to analyse, or 'all'")
    add("--output_dir", default="analysis")
    add("--reading_id", help="the reading drawn in attention.png")
    add("--projection", choices=["tsne", "pca"], default="tsne")
    add("--batch_size", type=int, default=16)
    add("--seed", type=int, default=0, help="t-SNE, the shuffled control and the untrained baseline")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} is a file, not a folder")
    return args


def load_models(args, device) -> dict:
    """{display name: (model, processor)}: the model first, then the baselines."""
    models = {}

    def add(name, model, processor):
        unique, count = name, 2
        while unique in models:
            unique, count = f"{name} ({count})", count + 1
        models[unique] = (model.to(device).eval(), processor)

    for path in [args.model, *(path for path in args.baseline if path != UNTRAINED)]:
        try:
            check_egma_checkpoint(path, "--model" if path == args.model else "--baseline")
        except (ValueError, OSError) as error:
            raise SystemExit(f"error: {error}") from None
        add(Path(path).resolve().name, EGMAModel.from_pretrained(path), EGMAProcessor.from_pretrained(path))
    if not args.baseline or UNTRAINED in args.baseline:
        trained, processor = models[next(iter(models))]
        torch.manual_seed(args.seed)
        add("untrained (same config)", EGMAModel(trained.config), processor)
    return models


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.data and not Path(args.data).exists():
        raise SystemExit(f"--data {args.data} does not exist")
    # the readings as examples/pretrain.py loads them from the same flags (its cached synthetic corpus by default)
    readings, source = load_readings(TrainingSettings(data=args.data, image_root=args.image_root,
                                                      cache_dir=args.cache_dir))
    rows = readings if args.split == "all" else readings.filter(lambda split: split == args.split,
                                                                 input_columns="split")
    if len(rows) == 0:
        raise SystemExit(f"{source}: no readings in split {args.split!r} (splits: {sorted(set(readings['split']))})")
    try:
        example = pick_reading(rows, args.reading_id)  # before any model work, so a wrong id fails at once
    except ValueError as error:
        raise SystemExit(str(error)) from None
    models = load_models(args, "cuda" if torch.cuda.is_available() else "cpu")
    logger.info("%s: %d readings in split %s; models %s", source, len(rows), args.split, list(models))

    embeddings, points, classes = embedding_clusters(models, rows, args.projection, args.batch_size, args.seed)
    if points:
        plot_embedding_projection(points, classes, output_dir / "embeddings.png", scores=embeddings["silhouette"],
                                  title=f"image embeddings ({args.projection}), {args.split} split, coloured by class")
    else:
        logger.warning("too few single-finding images (%d in %d classes) for a silhouette",
                       embeddings["num_images"], len(embeddings["classes"]))
    (output_dir / "silhouette.json").write_text(json.dumps({"source": source, "split": args.split, **embeddings},
                                                           indent=1))

    threshold = next(iter(models.values()))[0].config.gaze_label_threshold
    attention = {"source": source, "split": args.split, "threshold": threshold,
                 "hot_patch_rule": "gaze map (pooled to the patch grid, scaled to max 1) > threshold",
                 "patches": "those lying at least half on the image (padding excluded)", "models": {}}
    for name, (model, processor) in models.items():
        attention["models"][name] = test_split_agreement(model, processor, rows, args.batch_size, threshold, args.seed)
    attention["example"], figure = reading_agreement(models, example, threshold)
    plot_similarity_vs_gaze(figure["square"], example["sentences"], figure["similarity"], figure["gaze"],
                            output_dir / "attention.png", captions=figure["captions"])
    (output_dir / "attention.json").write_text(json.dumps(attention, indent=1))

    print(f"\n{source}, split {args.split}")
    print(f"Silhouette (cosine) of {embeddings['num_images']} single-finding images, "
          f"{len(embeddings['classes'])} classes:")
    for name, score in embeddings["silhouette"].items():
        print(f"  {name:<32} {score:+.3f}")
    first = next(iter(attention["models"].values()))
    print(f"Sentence->patch similarity vs gaze over {first['num_sentences']} sentences of "
          f"{first['num_readings']} readings:")
    for name, result in attention["models"].items():
        print(f"  {name:<32} {format_agreement(result['matched'])}")
        print(f"  {'  shuffled-gaze control':<32} {format_agreement(result['shuffled'])}")
    print(f"wrote embeddings.png, silhouette.json, attention.png, attention.json to {output_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
