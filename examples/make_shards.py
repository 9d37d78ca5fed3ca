"""Decode a corpus once into shards for `examples/pretrain.py --shards`.

    python examples/make_shards.py --out_dir shards/synthetic                    # the synthetic gaze corpus
    python examples/make_shards.py --data /data/mimic-cxr-jpg --gaze_data /data/mimic-eye \\
        --out_dir /data/shards/mimic-cxr --num_proc 16                           # MIMIC-CXR with gaze on a subset

It takes pre-training's data flags (--data, --gaze_data, --image_root, --all_views, ...), stores each image as a
256-px uint8 square and each sentence's gaze heatmap at 64 px, and can be stopped and started again: shards already
written are kept. The library function is `egma_hf.training.make_shards` (and `egma_hf.data.write_shards`).
"""

from egma_hf.training import make_shards, shards_argument_parser


def parse_args(argv=None):
    return shards_argument_parser(__doc__).parse_args(argv)


def main(argv=None):
    make_shards(argv, description=__doc__)


if __name__ == "__main__":
    main()
