"""A SIGTERM (what SLURM and Kubernetes send before they kill a job) to any process of a
multi-process training stops every process at the same training step."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from types import FrameType

import lightning as L
from lightning.pytorch.strategies.launchers import (
    _MultiProcessingLauncher,
    _SubprocessScriptLauncher,
)
from lightning.pytorch.utilities.exceptions import SIGTERMException

CHILD_EXIT_SECONDS = 30.0
"""How long the process that started the others (Lightning's launcher) waits for them to end
after a stop, before it kills them."""

_started: list[subprocess.Popen] = []
"""The processes Lightning's launcher started from this one, at its first fit (the list its
watcher reads): a study's later fits find them running and start none."""


class SynchronisedSigterm(L.Callback):
    """On several processes, a SIGTERM only records that a stop was asked; at every training
    step, at each epoch's start (the last finished epoch checkpointed) and at the end of
    training, all processes agree (Lightning's ``reduce_boolean_decision``: one all-reduce)
    and, where any was signalled, all raise Lightning's :class:`SIGTERMException` there.
    Lightning's own handler
    broadcast inside the signal handler, at whatever point the signalled process was, while
    the others were in another collective (DDP's gradient all-reduce): the training hung or
    ended in a gloo error. On one process Lightning's handling stays as it is, and so it does
    under ``ddp_spawn``, whose main process waits for its workers' results, which a stopped
    worker does not give.

    The handler replaces Lightning's once Lightning has set its own (``on_train_start``);
    Lightning puts back the handlers of before the fit when the fit ends, however it ends."""

    def __init__(self) -> None:
        self.asked = False
        self.active = False
        """Whether this fit stops at a SIGTERM this way (the same on every process)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a SIGTERM since Lightning set its handler (after set-up) went to it: asked here too
        self.asked = bool(trainer.received_sigterm)
        self.active = trainer.world_size > 1 and not isinstance(
            trainer.strategy.launcher, _MultiProcessingLauncher
        )
        if self.active:
            if threading.current_thread() is threading.main_thread():  # signal.signal's rule
                signal.signal(signal.SIGTERM, self._ask)  # elsewhere only Lightning's flag counts
            launcher = trainer.strategy.launcher
            if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
                global _started
                _started = launcher.procs

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        self.asked = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        self._stop_if_asked(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        """Raise SIGTERMException on every process where any process was signalled."""
        if not self.active:
            return
        if trainer.strategy.reduce_boolean_decision(self.asked, all=False):
            _end_children()
            raise SIGTERMException


def _end_children() -> None:
    """In the process of Lightning's launcher, which started the others (at this process's
    first fit: a study's later fits start none): wait until they end (they stop at the same
    step), killing those still running after ``CHILD_EXIT_SECONDS`` in all. Its watcher, which
    kills every process (SIGKILL) once a child exits with a non-zero code (143 here), is left
    no child to watch: the launcher exits last, with 143 too."""
    children = list(_started)
    _started.clear()  # the list the watcher reads
    deadline = time.monotonic() + CHILD_EXIT_SECONDS
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
