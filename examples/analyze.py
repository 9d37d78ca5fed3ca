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

import datasets
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain  # noqa: E402  (examples/pretrain.py: the same readings as training)

from egma_hf import EGMAModel, EGMAProcessor  # noqa: E402
from egma_hf.conversion import check_egma_checkpoint  # noqa: E402
from egma_hf.analysis import (  # noqa: E402
    gaze_agreement,
    gaze_on_patch_grid,
    image_patch_mask,
    project_embeddings,
    silhouette,
    similarity_maps_batch,
    single_finding_labels,
    test_split_agreement,
)
from egma_hf.data import default_cache_dir, load_image  # noqa: E402
from egma_hf.evaluation import embed_images, image_file_batches  # noqa: E402
from egma_hf.image_processing_egma import fit_to_square  # noqa: E402

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


def load_readings(args) -> tuple[datasets.Dataset, str]:
    """The readings, as examples/pretrain.py loads them from the same flags (its cached synthetic corpus by default)."""
    if args.data and not Path(args.data).exists():
        raise SystemExit(f"--data {args.data} does not exist")
    flags = ["--cache_dir", args.cache_dir, *(["--data", args.data] if args.data else []),
             *(["--image_root", args.image_root] if args.image_root else [])]
    return pretrain.load_readings(pretrain.parse_args(flags))


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


def embeddings_analysis(models: dict, rows: datasets.Dataset, args, output_dir: Path) -> dict:
    from egma_hf.visualization import plot_embedding_projection

    indices, classes = single_finding_labels(list(rows["labels"]))
    paths = [rows[i]["image"] for i in indices]
    report = {"num_images": len(indices), "num_images_in_split": len(rows), "metric": "cosine",
              "classes": {name: classes.count(name) for name in sorted(set(classes))},
              "rule": "images with exactly one finding, or none ('No Finding'); classes with >= 2 such images",
              "projection": args.projection, "silhouette": {}}
    if len(set(classes)) < 2 or len(indices) < 3:
        logger.warning("too few single-finding images (%d in %d classes) for a silhouette",
                       len(indices), len(set(classes)))
        return report
    points = {}
    for name, (model, processor) in models.items():
        embeds = embed_images(model, image_file_batches(processor.image_processor, paths, args.batch_size)).cpu()
        report["silhouette"][name] = silhouette(embeds, classes)
        points[name] = project_embeddings(embeds, args.projection, seed=args.seed)
    plot_embedding_projection(points, classes, output_dir / "embeddings.png", scores=report["silhouette"],
                              title=f"image embeddings ({args.projection}), {args.split} split, coloured by class")
    return report


def pick_reading(rows: datasets.Dataset, reading_id: str | None) -> dict:
    """--reading_id, or the first reading by id that has gaze and a finding (else the first with gaze)."""
    candidates = sorted((row for row in rows if row["has_gaze"] and row["sentences"]), key=lambda r: r["reading_id"])
    if reading_id is not None:
        for row in candidates:
            if row["reading_id"] == reading_id:
                return row
        raise SystemExit(f"--reading_id {reading_id}: no reading with gaze of that id in the {len(rows)} rows analysed")
    if not candidates:
        raise SystemExit("no reading with gaze in this split")
    with_finding = [row for row in candidates if set(row["labels"]) - {"No Finding"}]
    return (with_finding or candidates)[0]


def attention_example(models: dict, row: dict, threshold: float, output_dir: Path) -> dict:
    """attention.png for one reading, and its per-sentence agreement numbers for each model."""
    from egma_hf.visualization import plot_similarity_vs_gaze

    image = load_image(row["image"])
    maps, captions, numbers = {}, {}, {}
    for name, (model, processor) in models.items():
        similarity = similarity_maps_batch(model, processor, [image], [row["sentences"]])[0]
        square_size, grid = processor.image_processor.size, similarity.shape[1:]
        gaze = gaze_on_patch_grid(row["sentence_heatmaps"], image.shape, square_size, grid)
        agreement = gaze_agreement(similarity, gaze, threshold, image_patch_mask(image.shape, square_size, grid))
        per_sentence = ["skipped"] * len(similarity)
        for index, correlation, auroc in zip(agreement["scored"], agreement["correlation"], agreement["auroc"]):
            per_sentence[index] = f"r={correlation:.2f} AUROC={auroc:.2f}"
        maps[name], captions[name], numbers[name] = similarity, per_sentence, agreement
    # every model's processor shares the geometry in practice; the first one's square and grid are drawn
    square_size = next(iter(models.values()))[1].image_processor.size
    square = fit_to_square(torch.from_numpy(image), image.shape, square_size).numpy()
    gaze = gaze_on_patch_grid(row["sentence_heatmaps"], image.shape, square_size, next(iter(maps.values())).shape[1:])
    plot_similarity_vs_gaze(square, row["sentences"], maps, gaze, output_dir / "attention.png", captions=captions)
    return {"reading_id": row["reading_id"], "image": row["image"], "sentences": list(row["sentences"]),
            "labels": list(row["labels"]), "per_model": numbers}


def format_summary(summary: dict | None) -> str:
    if summary is None:
        return "n/a"
    correlation, auroc = summary["correlation"], summary["auroc"]
    if not correlation["n"]:
        return "no scored sentence"
    return (f"r = {correlation['mean']:.3f} ± {correlation['std']:.3f}, AUROC = {auroc['mean']:.3f} ± "
            f"{auroc['std']:.3f} (n = {auroc['n']})")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    readings, source = load_readings(args)
    rows = readings if args.split == "all" else readings.filter(lambda split: split == args.split,
                                                                 input_columns="split")
    if len(rows) == 0:
        raise SystemExit(f"{source}: no readings in split {args.split!r} (splits: {sorted(set(readings['split']))})")
    example = pick_reading(rows, args.reading_id)  # before any model work, so a wrong id fails at once
    models = load_models(args, "cuda" if torch.cuda.is_available() else "cpu")
    logger.info("%s: %d readings in split %s; models %s", source, len(rows), args.split, list(models))

    embeddings = embeddings_analysis(models, rows, args, output_dir)
    silhouette_report = {"source": source, "split": args.split, **embeddings}
    (output_dir / "silhouette.json").write_text(json.dumps(silhouette_report, indent=1))

    threshold = next(iter(models.values()))[0].config.gaze_label_threshold
    attention = {"source": source, "split": args.split, "threshold": threshold,
                 "hot_patch_rule": "gaze map (pooled to the patch grid, scaled to max 1) > threshold",
                 "patches": "those lying at least half on the image (padding excluded)", "models": {}}
    for name, (model, processor) in models.items():
        attention["models"][name] = test_split_agreement(model, processor, rows, args.batch_size, threshold, args.seed)
    attention["example"] = attention_example(models, example, threshold, output_dir)
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
        print(f"  {name:<32} {format_summary(result['matched'])}")
        print(f"  {'  shuffled-gaze control':<32} {format_summary(result['shuffled'])}")
    print(f"wrote embeddings.png, silhouette.json, attention.png, attention.json to {output_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
