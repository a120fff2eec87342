"""A training program the DDP tests start as a separate process; Lightning's launcher or
torchrun runs it once per rank. Each rank records what it saw into ``RECORD_DIR/rank<N>.json``.

usage: python ddp_worker.py DATA OUT RECORD_DIR {new,resume} [STOP_AT_EPOCH]
Exit code 3: training was interrupted (by STOP_AT_EPOCH) and can be resumed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from pneumolab.config import TrainConfig
from pneumolab.errors import TrainingInterrupted
from pneumolab.pipeline.train import train

CONFIG = TrainConfig(
    model="pneumolab_cnn_small",
    pretrained=False,
    image_size=32,
    batch_size=8,
    num_workers=0,
    precision="32",
    epochs=2,
    early_stopping_patience=5,
    val_fraction=0.25,
    accelerator="cpu",
    devices=2,
    distributed_strategy="ddp",
)


class RecordRank(L.Callback):
    """What this rank trained and validated on, and the metrics it logged per epoch."""

    def __init__(self, folder: Path, stop_at_epoch: int | None) -> None:
        self.folder, self.stop_at_epoch = folder, stop_at_epoch
        self.record: dict = {"epochs": []}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        self.record |= {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "train": sorted(str(s.path) for s in datamodule.train_samples),
            "val": sorted(str(s.path) for s in datamodule.val_images().samples),
            "lr": pl_module.lr,
            "threads": torch.get_num_threads(),  # the launcher has set them by now
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.stop_at_epoch:
            raise KeyboardInterrupt

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.record["epochs"].append(
            {
                "epoch": trainer.current_epoch,
                "val_images": int(metrics["val_images"]),
                "val_auc": float(metrics["val_auc"]),
            }
        )
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record))


def main() -> int:
    data, out, records, phase, *stop = sys.argv[1:]
    recorder = RecordRank(Path(records), int(stop[0]) if stop else None)
    try:
        if phase == "resume":
            train(data, out, resume=True, callbacks=[recorder])
        else:
            train(data, out, CONFIG, callbacks=[recorder])
    except TrainingInterrupted:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
