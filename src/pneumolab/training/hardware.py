"""What the training machine is, as far as it changes a run's numbers.

The same recipe and seed give different weights in bf16 autocast and in fp32, and
``precision: auto`` picks bf16 only on hardware with native bf16 arithmetic, so each run records
its precision and device (:class:`pneumolab.run_meta.Compute`).
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumolab.run_meta import Compute

CPU_INFO = Path("/proc/cpuinfo")
THREADS_KEY = "pneumolab/threads"
"""The ``trainer.callback_metrics`` entry in which :class:`TrainingCompute` leaves the thread count."""
log = logging.getLogger(__name__)


def _cpu_info() -> str:
    try:
        return CPU_INFO.read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX)."""
    flags = _cpu_info()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` knows)."""
    for line in _cpu_info().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(accelerator: str) -> str:
    """The device training ran on: a GPU's name, or the CPU's with the vector instructions
    PyTorch uses on it and whether it has native bf16."""
    if accelerator == "CUDAAccelerator" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    bf16 = "native bf16" if cpu_has_bf16() else "no native bf16"
    return f"{cpu_name()} (CPU, {torch.backends.cpu.get_cpu_capability()}, {bf16})"


def compute_record(trainer: L.Trainer) -> Compute:
    """The precision, device and CPU threads of ``trainer``'s training processes (the threads
    :class:`TrainingCompute` saw once training started, where it ran)."""
    threads = trainer.callback_metrics.get(THREADS_KEY)
    return Compute(
        precision=str(trainer.precision),
        device=describe_device(type(trainer.accelerator).__name__),
        threads=torch.get_num_threads() if threads is None else int(threads),
    )


class TrainingCompute(L.Callback):
    """Says, as training starts, what it runs on, and leaves the thread count in
    ``trainer.callback_metrics`` for :func:`compute_record`: a multi-process launcher lowers
    the threads of each process only then (inside ``fit``), in a worker that ``ddp_spawn``
    started, whose metrics are what Lightning carries back to the main process. Checkpoints
    file every leg's record, so that a run resumed in another precision or on another device
    says so (:meth:`record`)."""

    def __init__(self) -> None:
        self.legs: list[Compute] = []
        """The legs the checkpoint resumed from filed, and this one once it started."""

    def record(self, trainer: L.Trainer) -> Compute:
        """This leg's :func:`compute_record`, with the earlier legs that differed from it."""
        final = compute_record(trainer)
        other: list[Compute] = []
        for leg in self.legs:
            if not final.same_arithmetic(leg) and not any(leg.same_arithmetic(o) for o in other):
                other.append(leg)
        return final.model_copy(update={"earlier_legs": other})

    def state_dict(self) -> dict[str, Any]:
        return {"legs": [leg.model_dump() for leg in self.legs]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.legs = [Compute(**leg) for leg in state_dict.get("legs", [])]

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        trainer.callback_metrics[THREADS_KEY] = torch.tensor(torch.get_num_threads())
        compute = compute_record(trainer)
        self.legs.append(compute)
        if trainer.is_global_zero:
            log.info(
                "training in %s on %s, %d threads",
                compute.precision,
                compute.device,
                compute.threads,
            )
