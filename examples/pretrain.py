"""Pre-train EGMA with 🤗 Accelerate, from one CPU to many GPUs.

    accelerate launch examples/pretrain.py                      # synthetic gaze corpus, tiny model, ~3 min on 2 CPUs
    python examples/pretrain.py --data /data/mimic-eye --vision_model microsoft/swin-tiny-patch4-window7-224 \\
        --text_model emilyalsentzer/Bio_ClinicalBERT --gaze_fraction 0.1 --losses egma --epochs 50
    accelerate launch --multi_gpu --num_processes 4 examples/pretrain.py --config my_run.yaml
    python examples/pretrain.py --output_dir runs/a --resume latest   # continue a killed run exactly

With no arguments it builds (once, cached) the synthetic MIMIC-EYE corpus, trains a tokenizer on its training
reports, trains a small EGMA model (a small CNN and a 2-layer BERT), keeps the checkpoint with the best validation
zero-shot AUROC, and prints the zero-shot AUROC on the held-out test split (reports phrased differently from
training). The output directory loads with `EGMAModel.from_pretrained` and
`pipeline("zero-shot-image-classification", model=<dir>)`.

Every flag can also come from a YAML or JSON file (`--config`); flags on the command line win. The loop itself is
`egma_hf.training.train`.
"""

from egma_hf.training import TrainingSettings, train


def parse_args(argv=None) -> TrainingSettings:
    return TrainingSettings.from_args(argv, description=__doc__)


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
