"""LightningModule: class-balanced BCE training, validation scores collected per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from sklearn.metrics import roc_auc_score
from timm.data.mixup import cutmix_bbox_and_lam

from pneumolab.errors import PneumolabError
from pneumolab.models.classifier import XrayClassifier
from pneumolab.training.distill import Teacher
from pneumolab.training.distributed import gather_rows, unique_by_index
from pneumolab.training.frozen import FeatureHead
from pneumolab.training.strategies import train_unfrozen_batch_norms, trainable_body_parameters


class TrainingDiverged(PneumolabError):
    """The weights blew up (non-finite scores): a learning rate too high for the model."""


class ClassifierModule(L.LightningModule):
    """Train a classifier (an :class:`XrayClassifier`, or a head on cached features) with AdamW
    and a one-cycle schedule.

    ``param_groups`` (``[{"params": ..., "lr": ...}]``) give per-group learning rates, e.g. a lower
    one for a pretrained backbone; by default every trainable parameter trains at ``lr``.
    The first ``head_epochs`` epochs train the classifier head alone (LP-FT: the head fits the
    pretrained features before fine-tuning can distort them), then every parameter that was
    trainable at the start; each phase has its own one-cycle schedule. Batch-norm layers whose
    parameters are all frozen stay in eval mode (their running statistics are part of the
    frozen backbone).

    The loss weights each class by the inverse of its frequency (``class_counts`` in train), so
    NORMAL (a quarter of train) counts as much as PNEUMONIA: binary cross-entropy on the
    pneumonia logit for two classes, cross-entropy on the model's ``class_logits`` for more
    (targets are then class indices, 0 = NORMAL). ``label_smoothing`` moves the targets towards
    uniform; ``mixup_alpha`` > 0 trains on mixed pairs of images (weight ~ Beta(alpha, alpha))
    against the same mix of their targets and class weights; ``cutmix_alpha`` > 0 pastes a box
    of another image instead (timm's box sampling), mixing targets and weights by its area.
    With both, each batch takes one of the two at random. A ``teacher`` (binary task) scores
    each training batch as the student sees it, mixed or not, and the target becomes
    ``(1 - distill_weight) x label + distill_weight x`` its P(pneumonia). Validation scores
    P(pneumonia) and logs ``val_loss`` (plain, unweighted log-loss: a proper scoring rule that
    keeps improving after AUC saturates), ``val_auc`` and ``val_images``, on the whole
    validation split also when several processes share it.
    """

    def __init__(
        self,
        model: XrayClassifier | FeatureHead,
        class_counts: Sequence[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        param_groups: list[dict[str, Any]] | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        teacher: Teacher | None = None,
        distill_weight: float = 0.5,
        head_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.head_epochs = head_epochs
        self._body: list[torch.nn.Parameter] = []
        self.teacher = teacher
        self.distill_weight = distill_weight
        self.label_smoothing = label_smoothing
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.model = model
        self.lr = lr
        self.param_groups = param_groups
        self.weight_decay = weight_decay
        self.class_counts = class_counts
        if class_counts is not None:
            self._set_class_weights(class_counts)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _set_class_weights(self, class_counts: Sequence[int]) -> None:
        counts = torch.tensor(class_counts, dtype=torch.float32)
        weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        # a plain attribute, not a buffer: it is known only at set-up, after Lightning's EMA
        # callback has copied the module's buffers
        self.class_weights = weights
        self.multiclass = len(counts) > 2

    def setup(self, stage: str) -> None:
        """Without ``class_counts``: those of the datamodule's train split (known once its
        ``setup`` has read the split)."""
        if self.class_counts is None:
            self.class_counts = self.trainer.datamodule.class_counts  # type: ignore[attr-defined]
            self._set_class_weights(self.class_counts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.head_epochs:
            self._body = trainable_body_parameters(self.model.backbone)

    def on_fit_end(self) -> None:
        for parameter in self._body:  # trainable again, also where training stopped early
            parameter.requires_grad_(True)

    def on_train_epoch_start(self) -> None:
        fine_tuning = self.current_epoch >= self.head_epochs
        for parameter in self._body:
            parameter.requires_grad_(fine_tuning)
        train_unfrozen_batch_norms(self.model)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, targets = batch
        class_weights = self.class_weights.to(images.device)
        soft = F.one_hot(targets.long(), len(class_weights)).float()
        soft = soft * (1 - self.label_smoothing) + self.label_smoothing / len(class_weights)
        weights = class_weights[targets.long()]
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            images, soft, weights = self._mix(images, soft, weights)
        if self.teacher is not None:
            taught = self.teacher.probabilities(images).to(soft.dtype)
            taught_soft = torch.stack([1 - taught, taught], dim=1)
            soft = (1 - self.distill_weight) * soft + self.distill_weight * taught_soft
        if self.multiclass:
            logits = self.model.class_logits(images).float()
            losses = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1)
            loss = (weights * losses).sum() / weights.sum()  # F.cross_entropy's weighted mean
        else:
            logits = self(images).float()
            losses = F.binary_cross_entropy_with_logits(logits, soft[:, 1], reduction="none")
            loss = (weights * losses).mean()  # F.binary_cross_entropy_with_logits(weight=...)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(targets),
            sync_dist=True,
        )
        return loss

    def _mix(
        self, images: torch.Tensor, soft: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image mixed with another of the batch (mixup, or cutmix's pasted box), one
        draw per batch; targets and class weights mixed by the share each image keeps."""
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or np.random.rand() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        keep = float(np.random.beta(alpha, alpha))
        order = torch.randperm(len(images), device=images.device)
        if use_cutmix:
            (top, bottom, left, right), keep = cutmix_bbox_and_lam(images.shape, keep)
            images = images.clone()
            images[:, :, top:bottom, left:right] = images[order, :, top:bottom, left:right]
        else:
            images = keep * images + (1 - keep) * images[order]
        return (
            images,
            keep * soft + (1 - keep) * soft[order],
            keep * weights + (1 - keep) * weights[order],
        )

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int
    ) -> None:
        """``batch``: images, targets and the images' indices in the validation split."""
        images, targets, index = batch
        probs = torch.sigmoid(self(images).float())
        self._val_outputs.append((index, probs, (targets > 0).float()))

    def on_validation_epoch_end(self) -> None:
        """Loss and AUC on the whole validation split: every rank's scores gathered, the
        samples the distributed sampler repeated dropped; the same values on every rank."""
        index, probs, labels = (
            gather_rows(self.trainer, torch.cat(column))
            for column in zip(*self._val_outputs, strict=True)
        )
        self._val_outputs.clear()
        probs, labels = unique_by_index(index, probs, labels)
        if not torch.isfinite(probs).all():
            raise TrainingDiverged(
                f"training diverged in epoch {self.current_epoch + 1}: the model's validation "
                "scores are not finite numbers; train again with a lower lr, into a new --out"
            )
        loss = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), labels)
        scores, truth = probs.cpu().numpy(), labels.cpu().numpy()
        auc = roc_auc_score(truth, scores) if len(np.unique(truth)) == 2 else float("nan")
        # identical on every rank: "max" keeps the value exact where Lightning syncs it
        self.log("val_loss", loss, prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log("val_auc", float(auc), prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log("val_images", float(len(truth)), sync_dist=True, reduce_fx="max")

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        groups = self.param_groups or [
            {"params": [p for p in self.parameters() if p.requires_grad], "lr": self.lr}
        ]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        peak = [group["lr"] for group in groups]
        total_steps = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs or 1  # build_trainer always sets the run's epochs
        head_steps = total_steps * self.head_epochs // epochs
        scheduler: torch.optim.lr_scheduler.LRScheduler = _one_cycle(
            optimizer, peak, total_steps - head_steps
        )
        if head_steps:  # the fine-tuning warms up anew from a low rate
            head_cycle = _one_cycle(optimizer, peak, head_steps)
            scheduler = torch.optim.lr_scheduler.SequentialLR(
                optimizer, [head_cycle, scheduler], milestones=[head_steps]
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _one_cycle(
    optimizer: torch.optim.Optimizer, peak: list[float], steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """A one-cycle schedule over ``steps`` steps up to the groups' ``peak`` rates (15% warm-up)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=steps, pct_start=0.15
    )
