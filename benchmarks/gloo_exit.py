"""How often two spawned gloo workers abort at exit: with their process group kept to the end
(what Lightning leaves a gloo ``ddp_spawn`` worker), and with pneumolab's ``ProcessGroupExit``
callback set up (the group destroyed by an exit handler).

Each try spawns two workers (``torch.multiprocessing.spawn``, as ``ddp_spawn`` does), which join
a gloo group, exchange a few tensors and return together.

usage: python benchmarks/gloo_exit.py [--tries 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pneumolab.training.distributed import ProcessGroupExit

if TYPE_CHECKING:
    import lightning as L


def _worker(rank: int, store: str, release: bool) -> None:
    dist.init_process_group("gloo", f"file://{store}", rank=rank, world_size=2)
    if release:
        # no Lightning here: setup reads neither the trainer nor the module
        ProcessGroupExit().setup(cast("L.Trainer", None), cast("L.LightningModule", None), "fit")
    tensor = torch.ones(1000)
    for _ in range(20):
        dist.all_reduce(tensor)
    dist.broadcast(tensor, 0)


def aborted_tries(tries: int, release: bool) -> tuple[int, float]:
    """How many of ``tries`` two-worker runs ended with a worker killed by a signal, and the
    seconds they took."""
    started, aborted = time.perf_counter(), 0
    for _ in range(tries):
        with tempfile.TemporaryDirectory() as folder:
            try:
                mp.spawn(_worker, args=(str(Path(folder, "store")), release), nprocs=2)
            except mp.ProcessExitedException:
                aborted += 1
    return aborted, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=60)
    args = parser.parse_args()
    print("| process group at exit | tries | aborted | seconds |\n|---|---|---|---|")
    for label, release in (("kept (gloo under Lightning)", False), ("ProcessGroupExit", True)):
        aborted, seconds = aborted_tries(args.tries, release)
        print(f"| {label} | {args.tries} | {aborted} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
