"""Training on several processes (Lightning DDP): ranks, the learning-rate scale rule,
gathering every rank's rows so that validation sees the whole split, and a clean exit for
every process."""

from __future__ import annotations

import atexit
import hashlib
import math
import os
from contextlib import AbstractContextManager, nullcontext

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from pneumolab.errors import ConfigError, PneumolabError


def lr_factor(rule: str, processes: int) -> float:
    """What ``lr`` is multiplied by for ``processes`` data-parallel processes, each with its own
    ``batch_size`` (effective batch ``batch_size × processes``): ``sqrt`` (√N, the rule for
    Adam-type optimisers such as AdamW), ``linear`` (N, the rule for SGD) or ``none`` (1)."""
    factors = {"sqrt": math.sqrt(processes), "linear": float(processes), "none": 1.0}
    return factors[rule]


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")
"""Where launchers tell a process its rank (torchrun, Lightning's launcher, SLURM's srun), in
the order Lightning reads them: the first one set is the rank (torchrun's RANK=0 inside a SLURM
task of rank 1 is rank 0 of its own world)."""


def check_launch(strategy: str, devices: int, num_nodes: int) -> None:
    """ConfigError where an external launcher (torchrun: ``WORLD_SIZE``) started another number
    of processes than the config's ``devices × num_nodes``, or asks ``ddp_spawn`` to start its
    own beside them: each process would train alone into the same run folder; and where several
    nodes are asked for without a launcher (torchrun, SLURM's srun): the one process started
    would wait for the other nodes until Lightning's timeout (30 minutes); and where a
    one-process training runs in a process a launcher gave a rank other than 0 (it trained,
    unlocked, over the folder of the rank-0 process's run); and where SLURM started another
    number of tasks than that (:func:`check_slurm_tasks`)."""
    processes = devices * num_nodes
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched == 1:  # torchrun's WORLD_SIZE, where set, says what was started
        check_slurm_tasks(processes)
    given = next((v for v in RANK_VARIABLES if os.environ.get(v, "").strip()), None)
    stray = given if given is not None and os.environ[given].strip() != "0" else None
    if processes == 1 and launched == 1 and stray is not None:
        raise ConfigError(
            f"{stray}={os.environ[stray]} in the environment, but devices × num_nodes is 1: "
            "this process is not rank 0 of a training, yet would train alone into the run "
            "folder, over another process's run (srun or a job script started several tasks?); "
            "set --devices / --num-nodes to the tasks started, or unset the variable"
        )
    if num_nodes > 1 and launched == 1 and "SLURM_NTASKS" not in os.environ:
        raise ConfigError(
            f"--num-nodes {num_nodes} needs a launcher that starts the processes on every node "
            f"(torchrun --nnodes {num_nodes} --nproc-per-node {devices}, or srun under SLURM); "
            "started alone, training would wait for nodes that never join"
        )
    if launched > 1 and launched != processes:
        raise ConfigError(
            f"launched as {launched} processes (WORLD_SIZE), but devices × num_nodes is "
            f"{processes}: set --devices and --num-nodes to match the launcher"
        )
    if launched > 1 and strategy == "ddp_spawn":
        raise ConfigError(
            "distributed_strategy ddp_spawn starts its own processes: not under a launcher "
            "(torchrun) that started them already; use ddp or auto"
        )


INTERACTIVE_JOB_NAMES = ("bash", "interactive")
"""SLURM job names that Lightning does not treat as a SLURM cluster (it launches the processes)."""


def check_slurm_tasks(processes: int) -> None:
    """ConfigError, before anything is written, where SLURM's tasks cannot be the training's
    processes. In a batch job Lightning takes each task (``SLURM_NTASKS``) for one process:
    fewer tasks than ``processes`` (``devices × num_nodes``) trained on one process without a
    word, more failed inside Lightning (``--ntasks`` without ``--ntasks-per-node``: a
    RuntimeError; a per-node count other than ``devices``: a ValueError from inside training,
    after the run folder was written). In an interactive job (named ``bash`` or
    ``interactive``) Lightning passes SLURM over and starts the processes itself, from one
    task: the others of an srun of several each trained as rank 0, unlocked, into one folder.
    A batch script (or an ``salloc`` shell) that starts a training of several tasks without
    srun: SLURM's variables describe the job's tasks, not the one process running, and process
    0 waited for the others without end (:func:`in_slurm_step`)."""
    tasks = os.environ.get("SLURM_NTASKS", "").strip()
    if not tasks.isdigit() or TorchElasticEnvironment.detect():  # torchrun says what it started
        return
    if os.environ.get("SLURM_JOB_NAME", "").strip() in INTERACTIVE_JOB_NAMES:
        task = os.environ.get("SLURM_PROCID", "0").strip() or "0"
        if task != "0":
            raise ConfigError(
                f"SLURM task {task} of {tasks} in a job named {os.environ['SLURM_JOB_NAME']!r}, "
                "which Lightning does not treat as a SLURM cluster: this task would train alone "
                "into the same run folder as task 0; start one task (training starts --devices "
                "processes itself), or name the job otherwise (srun --job-name train) with one "
                "task per process"
            )
        return
    if int(tasks) > 1 and not in_slurm_step():
        raise ConfigError(
            f"SLURM_NTASKS is {tasks}, but this process was not started by srun (no "
            "SLURM_STEP_ID: the job's batch script or an salloc shell): it would wait without "
            f"end for {int(tasks) - 1} task(s) that never start; start it with srun "
            "(srun pneumolab train ...), which starts one process per task"
        )
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").strip()
    if int(tasks) > 1 and not per_node:
        raise ConfigError(
            f"SLURM started {tasks} tasks with --ntasks, which Lightning does not read: set "
            "--ntasks-per-node to --devices and --nodes to --num-nodes"
        )
    if int(tasks) != processes:
        raise ConfigError(
            f"SLURM started {tasks} task(s) (SLURM_NTASKS), but devices × num_nodes is "
            f"{processes}: under SLURM each task is one training process; set --devices and "
            "--num-nodes to the tasks (srun --ntasks-per-node D --nodes N)"
        )


STEP_VARIABLES = ("SLURM_STEP_ID", "SLURM_STEPID")
"""Where SLURM tells a task its job step: set by slurmstepd for the tasks of an srun step
(steps 0, 1, ...), not in the batch step that runs the job script, nor in an salloc shell."""


def in_slurm_step() -> bool:
    """Whether this process is a task of an srun step (``SLURM_STEP_ID`` set): only there do
    ``SLURM_NTASKS`` and ``SLURM_PROCID`` describe processes that are running."""
    return any(os.environ.get(name, "").strip() for name in STEP_VARIABLES)


def cluster_plugins() -> list[SLURMEnvironment]:
    """SLURM's environment without Lightning's auto-requeue where Lightning would pick SLURM
    (not under torchrun, whose environment comes first): on SIGUSR1 Lightning saved
    ``hpc_ckpt_N.ckpt`` into the working directory and requeued the job, which then ran without
    ``--resume`` (refused: the run folder exists), and a later training started there resumed
    from that checkpoint silently. A job is continued with ``--resume`` instead."""
    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def lightning_strategy(strategy: str, processes: int, head_epochs: int) -> str:
    """Lightning's strategy for ``strategy`` (``auto``, ``ddp``, ``ddp_spawn``): with head
    epochs on several processes, DDP is told that some parameters get no gradient in some
    epochs (``find_unused_parameters``), else it waits for gradients that never come."""
    if not head_epochs or processes == 1:
        return strategy
    return f"{'ddp' if strategy == 'auto' else strategy}_find_unused_parameters_true"


class ProcessGroupExit(L.Callback):
    """Has this process destroy its process group when it exits, whatever launched it
    (``ddp_spawn``, Lightning's ``ddp`` launcher, torchrun, SLURM) and however training
    ended; until then a study trains its next model on the same group. Lightning does so
    only for NCCL: gloo processes that exited at once with their group alive could abort
    (SIGABRT, "terminate called without an active exception")."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if torch.distributed.is_initialized():
            atexit.unregister(_destroy_process_group)  # once per process, however many fits
            atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def global_rank() -> int:
    """This process's rank among the training processes: from the process group once training
    has started, else from the launcher's environment (torchrun, SLURM, Lightning); 0 alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def on_rank_zero(context: AbstractContextManager[None]) -> AbstractContextManager[None]:
    """``context`` in the process of rank 0 (:func:`global_rank`), nothing in the others (a
    folder lock that every rank took would refuse all ranks but one)."""
    return context if global_rank() == 0 else nullcontext()


def shard(count: int, trainer: L.Trainer, rank: int | None = None) -> range:
    """The contiguous part of ``range(count)`` that ``rank`` (default: this process's) works
    on; the parts of all ranks cover it once, their sizes differ by one at most."""
    world = trainer.world_size
    rank = trainer.global_rank if rank is None else rank
    return range(count * rank // world, count * (rank + 1) // world)


def gather_rows(trainer: L.Trainer, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (``(n_rank, ...)``, ``n_rank`` may differ) concatenated in rank
    order, on every rank. On one process: ``rows`` unchanged. (On GPUs, ``rows`` must be on
    this rank's device.)"""
    if trainer.world_size == 1:
        return rows
    counts = _all_gather(torch.tensor([len(rows)], device=rows.device))
    longest = max(int(n) for n in counts)
    padding = rows.new_zeros((longest - len(rows), *rows.shape[1:]))
    parts = _all_gather(torch.cat([rows, padding]).contiguous())
    return torch.cat([part[: int(n)] for part, n in zip(parts, counts, strict=True)])


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor)
    return parts


def unique_by_index(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``values`` ordered by ``index``, one row per distinct index. Lightning's
    DistributedSampler repeats a few samples so that every rank gets as many; this drops them."""
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = order[first]
    return tuple(value[keep] for value in values)


def check_same_on_every_rank(trainer: L.Trainer, text: str, what: str) -> None:
    """Raise on every rank unless ``text`` (e.g. the split's file list) is identical on all."""
    if trainer.world_size == 1:
        return
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")
    device = trainer.strategy.root_device
    digests = gather_rows(trainer, torch.tensor([digest], dtype=torch.long, device=device))
    differing = [rank for rank, d in enumerate(digests.tolist()) if d != digests[0].item()]
    if differing:
        raise PneumolabError(
            f"{what} differs between rank 0 and rank(s) {differing}: every process must see "
            "the same run directory and data folder (a shared filesystem on several machines)"
        )
