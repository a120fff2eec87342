"""Lightning callbacks: one summary per trained epoch, as a CSV row and as a plain log line; a
checkpoint callback whose state follows its run folder; the training clock and the random
states a resume continues from."""

from __future__ import annotations

import csv
import io
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, TextIO, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from pneumolab.files import atomic_write


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose restored state follows the run folder: a run moved or
    copied elsewhere resumes with its own best checkpoint and best score (Lightning keeps just
    the old folder's best path there, which loads another folder's weights, or none). Its state
    is filed under ModelCheckpoint's key, so runs checkpointed by that class resume with theirs,
    and it writes ``best.ckpt`` and ``last.ckpt`` over themselves, never beside (``-v1``)."""

    def __init__(self, from_epoch: int = 0, **options: Any) -> None:
        super().__init__(enable_version_counter=False, **options)
        self.from_epoch = from_epoch
        """With a ``monitor``: the first epoch (0-based) that may be kept as the best (the head
        epochs of LP-FT are not: their backbone is the pretrained one, not the fine-tuned)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor is None or trainer.current_epoch >= self.from_epoch:
            super().on_train_epoch_end(trainer, pl_module)

    @property
    def state_key(self) -> str:
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and str(old) != str(new):
            state_dict = _rebased(state_dict, str(old), str(new))
        super().load_state_dict(state_dict)


class FineTuningEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping, counting from epoch ``from_epoch`` (0-based): the head epochs
    of LP-FT cannot improve the backbone, and a saturated validation AUC stopped a "finetune"
    run before it fine-tuned at all."""

    def __init__(self, from_epoch: int = 0, **options: Any) -> None:
        super().__init__(**options)
        self.from_epoch = from_epoch

    @property
    def state_key(self) -> str:
        """EarlyStopping's key: checkpoints of runs it stopped resume with their patience."""
        return "EarlyStopping" + super().state_key.removeprefix(type(self).__qualname__)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A fit resumed from a run this callback had stopped stays stopped (Lightning does not
        checkpoint ``should_stop``: a run interrupted while it was being finished trained on)."""
        if self.stopped_epoch:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.from_epoch:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.from_epoch:
            super().on_validation_end(trainer, pl_module)


def _rebased(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``state``'s checkpoint paths under ``old`` moved to the same names under ``new``."""

    def moved(path: Any) -> Any:
        inside = isinstance(path, str) and path and os.path.dirname(path) == old
        return os.path.join(new, os.path.basename(path)) if inside else path

    paths = ("best_model_path", "kth_best_model_path", "last_model_path")
    return (
        state
        | {key: moved(state.get(key)) for key in paths if key in state}
        | {
            "dirpath": new,
            "best_k_models": {moved(k): v for k, v in state.get("best_k_models", {}).items()},
        }
    )


class RandomStates(L.Callback):
    """Files the random number generators' states (torch's on the CPU and every GPU, NumPy's,
    Python's) in each checkpoint and restores them on resume, so that a resumed run draws the
    shuffles, augmentations and mixing weights the uninterrupted run would have drawn: it
    replayed the seed's first ones instead and ended with other weights. Stored as tensors and
    plain numbers, which ``torch.load(weights_only=True)`` reads.

    On a GPU only the process's own device's generator is filed and restored to each process's
    own device: Lightning writes rank 0's checkpoint, and every rank, seeded alike and drawing
    as many numbers for its equally sized batches, holds the same states on its own device, so
    rank 0's fit every rank; a resume on fewer GPUs than were visible loses nothing."""

    def state_dict(self) -> dict[str, Any]:
        legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
        kind, keys, position, has_gauss, gauss = legacy
        return {
            "torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():  # this process's current device
            torch.cuda.set_rng_state(state_dict["cuda"][0])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(state_dict["python"])


class TrainingClock(L.Callback):
    """Seconds spent training, over every leg of a resumed run: each checkpoint files the
    total so far, and a resume starts from it (a resumed run's ``train_seconds`` counted only
    its last leg; one resumed with every epoch done reported 0 s)."""

    def __init__(self) -> None:
        self.earlier = 0.0
        self.started = time.perf_counter()

    def restart(self) -> None:
        """Count this leg from now."""
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Earlier legs (as the checkpoint resumed from filed them) plus this one so far."""
        return self.earlier + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier = float(state_dict.get("seconds", 0.0))


class EpochSummary(L.Callback):
    """Times every training epoch and hands :meth:`write` its summary (epoch, losses, validation
    AUC, validation images scored, learning rate, seconds) at the epoch's end, after validation;
    under several processes, on rank 0 only."""

    fields = ("epoch", "train_loss", "val_loss", "val_auc", "val_images", "lr", "seconds")

    def __init__(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        nan = float("nan")
        self.write(
            trainer,
            {
                "epoch": trainer.current_epoch,
                "train_loss": metrics.get("train_loss", nan),
                "val_loss": metrics.get("val_loss", nan),
                "val_auc": metrics.get("val_auc", nan),
                "val_images": int(metrics.get("val_images", 0)),
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - self._epoch_start, 1),
            },
        )

    def write(self, trainer: L.Trainer, row: dict[str, Any]) -> None:
        raise NotImplementedError


class HistoryCSV(EpochSummary):
    """Append one row per trained epoch to a CSV file (``RUN_DIR/history.csv``)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On a resume, keep the rows of the epochs the checkpoint holds (a kill may have left
        a later epoch's row, or half of one), under the file's own columns."""
        if not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(complete))
        rows = [
            row
            for row in reader
            if row.get("epoch", "").isdigit() and int(row["epoch"]) < trainer.current_epoch
        ]
        with atomic_write(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=reader.fieldnames or self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, trainer: L.Trainer, row: dict[str, Any]) -> None:
        new_file = not self.path.exists()
        # a run resumed from an older version keeps its file's columns
        fields = self.fields if new_file else _header(self.path)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


class EpochLines(EpochSummary):
    """Print one line per trained epoch: the progress display where there is no terminal
    (CI logs, ``nohup``, cluster jobs), where a live progress bar would print nothing useful."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def write(self, trainer: L.Trainer, row: dict[str, Any]) -> None:
        print(
            f"epoch {row['epoch'] + 1}/{trainer.max_epochs}: {row['seconds']:.1f} s, "
            f"train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val AUC {row['val_auc']:.4f}",
            file=self.stream or sys.stderr,
            flush=True,
        )


def progress_display(stream: TextIO | None = None) -> L.Callback:
    """A live progress bar on a terminal, else one printed line per epoch; on stderr, with the
    other messages (stdout holds results: the validation table)."""
    if (stream or sys.stderr).isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar(console_kwargs={"stderr": True})
    return EpochLines(stream)  # None: sys.stderr when printing (ddp_spawn pickles callbacks)
