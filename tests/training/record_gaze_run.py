"""A pre-training run that records, per process, what gaze reached the model: for tests/training/test_gaze_subset.py.

`python -m tests.training.record_gaze_run RECORD_DIR <pretrain.py flags>` (also under `accelerate launch`) trains
with `egma_hf.training.train` and writes `RECORD_DIR/rank<r>.json`:
- `rows`: every row the collator batched (training and evaluation), with its `has_gaze` flag;
- `losses`: per loss call, how many pairs had gaze, and the largest change of any loss term when the gaze maps of
  the pairs without gaze are replaced by noise (0 when only gaze pairs' maps enter the loss).
"""

import json
import os
import sys
from pathlib import Path

import torch

from egma_hf.data import EGMADataCollator
from egma_hf.losses import EGMALoss
from egma_hf.training import TrainingSettings, train

TERMS = ("loss", "global_loss", "mlce_loss", "fine_grained_loss", "egm_loss")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    record_dir, flags = Path(argv[0]), argv[1:]
    rows, losses = [], []
    collate, loss = EGMADataCollator.__call__, EGMALoss.__call__

    def recording_collate(self, batch_rows):
        batch = collate(self, batch_rows)
        rows.extend(dict(reading_id=row["reading_id"], has_gaze=bool(flag))
                    for row, flag in zip(batch_rows, batch["has_gaze"].tolist()))
        return batch

    def checked_loss(self, *args, gaze_maps=None, has_gaze=None, **kwargs):
        out = loss(self, *args, gaze_maps=gaze_maps, has_gaze=has_gaze, **kwargs)
        record = {"pairs": int(args[0].shape[0]), "with_gaze": 0 if has_gaze is None else int(has_gaze.sum())}
        # every process recomputes (the loss gathers over the processes), with or without gaze of its own
        noisy = None if has_gaze is None else torch.where(has_gaze[:, None, None], gaze_maps,
                                                          torch.rand_like(gaze_maps))
        with torch.no_grad():
            again = loss(self, *[a.detach() for a in args], gaze_maps=noisy, has_gaze=has_gaze, **kwargs)
        record["change"] = max(abs(getattr(out, t).item() - getattr(again, t).item())
                               for t in TERMS if getattr(out, t) is not None)
        losses.append(record)
        return out

    EGMADataCollator.__call__, EGMALoss.__call__ = recording_collate, checked_loss
    settings = TrainingSettings.from_args(flags)
    train(settings)
    rank = int(os.environ.get("RANK", "0"))  # set by accelerate launch
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{rank}.json").write_text(json.dumps({"rows": rows, "losses": losses}))


if __name__ == "__main__":
    main()
