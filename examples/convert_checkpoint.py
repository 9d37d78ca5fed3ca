"""Convert an original MedCLIP / EGMA checkpoint (`pytorch_model.bin`, e.g. MedCLIP's medclip-vit-pretrained) into an
EGMA model folder that `EGMAModel.from_pretrained` loads.

    python examples/convert_checkpoint.py --checkpoint medclip-vit-pretrained --output_dir egma-medclip-vit
    python examples/convert_checkpoint.py --checkpoint run/pytorch_model.bin --output_dir out --config my_config.json

Without --config the model is the paper's architecture with the released code's text pooling (the mean over all
token positions, padding included); see `egma_hf.conversion`. The report of mapped, dropped, missing and unexpected
keys is printed. Only the model (config and weights) is written: add a processor with the Bio_ClinicalBERT tokenizer
for the zero-shot pipeline.
"""

import argparse
import sys

from egma_hf.conversion import check_output_folder, load_original_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="pytorch_model.bin, or the folder that holds it")
    parser.add_argument("--output_dir", required=True, help="where to save the EGMA model")
    parser.add_argument("--config", help="EGMA config: a config.json file or a folder with one (default: see above)")
    parser.add_argument(
        "--allow_partial", action="store_true",
        help="save even if some EGMA weights are missing from the checkpoint or some checkpoint keys are unknown",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # OSError: FileNotFoundError and friends, each naming the file
        check_output_folder(args.output_dir, args.checkpoint, "--output_dir", "--checkpoint")
        model, report = load_original_checkpoint(
            args.checkpoint, config=args.config, strict=not args.allow_partial, return_report=True
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report)
    model.save_pretrained(args.output_dir)
    print(f"saved to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
