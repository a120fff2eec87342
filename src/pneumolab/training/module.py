"""LightningModule: class-balanced BCE training, validation scores collected per epoch."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from pneumolab.models.classifier import XrayClassifier


class ClassifierModule(L.LightningModule):
    """Train an :class:`XrayClassifier` with AdamW and a one-cycle schedule.

    The loss weights each class by the inverse of its frequency, so NORMAL (a quarter of
    train) counts as much as PNEUMONIA. Validation logs ``val_loss`` (plain, unweighted
    log-loss: a proper scoring rule that keeps improving after AUC saturates) and ``val_auc``.
    """

    def __init__(
        self,
        model: XrayClassifier,
        positive_fraction: float,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.class_weights = (0.5 / (1.0 - positive_fraction), 0.5 / positive_fraction)
        self._val_probs: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        logits = self(images).float()
        weights = torch.where(labels > 0.5, self.class_weights[1], self.class_weights[0])
        loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels)
        )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self._val_probs.append(torch.sigmoid(self(images).float()).cpu())
        self._val_labels.append(labels.cpu())

    def on_validation_epoch_end(self) -> None:
        probs = torch.cat(self._val_probs).clamp(1e-7, 1 - 1e-7)
        labels = torch.cat(self._val_labels)
        self._val_probs.clear()
        self._val_labels.clear()
        loss = F.binary_cross_entropy(probs, labels)
        both = len(np.unique(labels.numpy())) == 2
        auc = roc_auc_score(labels.numpy(), probs.numpy()) if both else float("nan")
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_auc", float(auc), prog_bar=True)

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=0.15,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
