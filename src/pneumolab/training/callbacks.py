"""Lightning callbacks: per-epoch history as CSV."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L


class HistoryCSV(L.Callback):
    """Append one row per validated epoch (losses, AUC, learning rate, seconds) to a CSV file."""

    fields = ("epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {
            "epoch": trainer.current_epoch,
            "train_loss": metrics.get("train_loss", float("nan")),
            "val_loss": metrics.get("val_loss", float("nan")),
            "val_auc": metrics.get("val_auc", float("nan")),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - self._epoch_start, 1),
        }
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
