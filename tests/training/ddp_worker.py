"""A training program the DDP tests start as a separate process; Lightning's launcher or
torchrun runs it once per rank. Each rank records what it saw into ``RECORD_DIR/rank<N>.json``.

usage: python ddp_worker.py DATA OUT RECORD_DIR {new,resume,sigterm} [STOP_AT_EPOCH]
Exit code 3: training was interrupted (by STOP_AT_EPOCH) and can be resumed; 143: stopped by
a SIGTERM (as the command line exits), and can be resumed. Each rank files the code it exits
with in ``RECORD_DIR/exit<N>``.

``sigterm``: at the first batch of epoch 1 each rank files its process id in
``RECORD_DIR/pid<N>``, and rank 0 then waits (in that batch, the other rank in its gradient
all-reduce) until ``RECORD_DIR/signalled`` exists: the test's SIGTERM comes meanwhile.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch

from pneumolab.config import TrainConfig
from pneumolab.errors import TrainingInterrupted
from pneumolab.pipeline.train import train
from pneumolab.training.distributed import global_rank

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


class AwaitSignal(L.Callback):
    """Files this process's id at the first batch of epoch 1; there rank 0 waits (at most a
    minute) until the test says it has sent its signal."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch != 1 or batch_idx != 0:
            return
        pid = self.folder / f"pid{trainer.global_rank}"
        pid.with_suffix(".part").write_text(str(os.getpid()))
        pid.with_suffix(".part").rename(pid)  # whole, when the test reads it
        waited = 0.0
        while trainer.is_global_zero and not (self.folder / "signalled").exists() and waited < 60:
            time.sleep(0.05)
            waited += 0.05


def main() -> int:
    data, out, records, phase, *stop = sys.argv[1:]
    recorder = RecordRank(Path(records), int(stop[0]) if stop else None)
    callbacks: list[L.Callback] = [recorder]
    code = 0
    try:
        if phase == "resume":
            train(data, out, resume=True, callbacks=callbacks)
        else:
            callbacks += [AwaitSignal(Path(records))] if phase == "sigterm" else []
            train(data, out, CONFIG, callbacks=callbacks)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        code = 143 if exc.signal == "SIGTERM" else 3
    Path(records, f"exit{global_rank()}").write_text(str(code))
    return code


if __name__ == "__main__":
    sys.exit(main())
