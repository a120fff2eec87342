"""Training on two CPU processes (gloo): the split computed once and identical on every rank,
validation on the whole split, the run written by rank 0, resume under DDP (Lightning's launcher,
then torchrun), the frozen strategy's features shared out and LP-FT's head epochs (ddp_spawn),
the process group destroyed at exit, a SIGTERM to either rank stopping both at the same step."""

from __future__ import annotations

import atexit
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lightning.fabric.utilities.distributed import _suggested_max_num_threads
from lightning.pytorch.strategies.launchers import (
    _MultiProcessingLauncher,
    _SubprocessScriptLauncher,
)
from lightning.pytorch.utilities.exceptions import SIGTERMException
from sklearn.metrics import roc_auc_score
from torch.utils.data import DistributedSampler

from conftest import TINY_TRAINING, write_backbone_weights, write_synthetic_dataset
from pneumolab.config import TrainConfig
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir, read_predictions
from pneumolab.training import sigterm
from pneumolab.training.distributed import (
    ProcessGroupExit,
    lr_factor,
    shard,
    unique_by_index,
)
from pneumolab.training.sigterm import SynchronisedSigterm

WORKER = Path(__file__).with_name("ddp_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _launch(*command: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command], env=_env(), capture_output=True, text=True, timeout=900
    )


def _records(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """A 2-process run stopped in its second epoch (Lightning's launcher), resumed by torchrun."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_synthetic_dataset(root / "data", per_class=10)  # 5 validation images: odd
    run = RunDir(root / "run")
    first, second = root / "first", root / "second"
    first.mkdir(), second.mkdir()
    stopped = _launch(sys.executable, WORKER, data, run.root, first, "new", 1)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    interrupted = SimpleNamespace(
        checkpoint=run.last_checkpoint.is_file(), complete=run.is_complete()
    )
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", 2)
    resumed = _launch(sys.executable, *torchrun, WORKER, data, run.root, second, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return SimpleNamespace(
        data=data,
        run=run,
        interrupted=interrupted,
        records=_records(first) + _records(second),
    )


def _pids(records: Path, training: subprocess.Popen) -> list[int]:
    """Both ranks' process ids, once both have filed them (their first batch of epoch 1)."""
    files = [records / f"pid{rank}" for rank in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(f.exists() for f in files):
        assert training.poll() is None, training.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training never reached epoch 1"
        time.sleep(0.1)
    return [int(f.read_text()) for f in files]


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [0, 1])
def test_a_sigterm_to_one_rank_stops_both_at_the_same_step(tmp_path, signalled):
    """Lightning's SIGTERM handler broadcast inside the signal handler, while the other rank
    was in DDP's gradient all-reduce: the training hung, or ended in a gloo error."""
    data = write_synthetic_dataset(tmp_path / "data", per_class=10)
    run = RunDir(tmp_path / "run")
    records = tmp_path / "records"
    records.mkdir()
    command = [sys.executable, WORKER, data, run.root, records, "sigterm"]
    training = subprocess.Popen(
        [str(c) for c in command],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: both ranks, to kill on a hang
    )
    try:
        pids = _pids(records, training)
        os.kill(pids[signalled], signal.SIGTERM)
        (records / "signalled").touch()  # rank 0 trains on: the signal came mid-batch
        stderr = training.communicate(timeout=120)[1]  # both ranks' stderr: it ends with both
    finally:
        if training.poll() is None:
            os.killpg(training.pid, signal.SIGKILL)
    assert training.returncode == 143, stderr[-3000:]
    assert [(records / f"exit{rank}").read_text() for rank in (0, 1)] == ["143", "143"]
    assert "continue it with `pneumolab train --resume" in stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-3000:]
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)  # rank 0 ended after rank 1, which it started
    assert run.last_checkpoint.is_file() and not run.is_complete()
    assert torch.load(run.last_checkpoint, weights_only=True)["epoch"] == 0

    resumed = _launch(sys.executable, WORKER, data, run.root, records, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run.is_complete()
    with run.history.open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]


@pytest.mark.parametrize(
    ("processes", "launcher", "replaced"),
    [
        (1, None, False),  # one process: Lightning's own handler stays
        (2, None, True),  # torchrun, srun (Lightning's launcher: the same)
        (2, _MultiProcessingLauncher.__new__(_MultiProcessingLauncher), False),  # ddp_spawn
    ],
)
def test_the_sigterm_handler_is_replaced_only_where_processes_stop_together(
    processes, launcher, replaced
):
    before = signal.getsignal(signal.SIGTERM)
    trainer = SimpleNamespace(
        world_size=processes, received_sigterm=False, strategy=SimpleNamespace(launcher=launcher)
    )
    try:
        SynchronisedSigterm().on_train_start(trainer, None)
        assert (signal.getsignal(signal.SIGTERM) != before) == replaced
    finally:
        signal.signal(signal.SIGTERM, before)


def _launcher(procs: list) -> _SubprocessScriptLauncher:
    launcher = _SubprocessScriptLauncher.__new__(_SubprocessScriptLauncher)
    launcher.procs = procs
    return launcher


def test_a_later_fit_of_a_study_stops_after_the_processes_the_first_fit_started(monkeypatch):
    """Lightning's launcher starts the other processes at a process's first fit only (it has
    set LOCAL_RANK: a study's later fits find them running): the process that started them
    exited without waiting for them, while its watcher, which SIGKILLs every process once a
    child exits with 143, still read the first fit's list."""
    monkeypatch.setattr(sigterm, "_started", [], raising=False)  # this process started none yet
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(143)"])
    started = [child]  # the list the first fit's launcher filled, which its watcher reads
    for procs in (started, []):  # the study's first model, then its second
        strategy = SimpleNamespace(launcher=_launcher(procs))
        trainer = SimpleNamespace(world_size=2, received_sigterm=False, strategy=strategy)
        before = signal.getsignal(signal.SIGTERM)
        try:
            SynchronisedSigterm().on_train_start(trainer, None)
        finally:
            signal.signal(signal.SIGTERM, before)
    sigterm._end_children()  # at a stop in the second model
    assert child.returncode == 143 and started == []


def _agreeing(decisions: list[bool]) -> SimpleNamespace:
    """A strategy whose ``reduce_boolean_decision(any)`` sees the other processes' ``decisions``."""

    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
        assert not all  # a stop asked by any process stops every process
        return decision or any(decisions)

    return SimpleNamespace(launcher=None, reduce_boolean_decision=reduce_boolean_decision)


def test_a_sigterm_lightning_took_before_training_started_stops_every_process():
    """Lightning's handler takes a SIGTERM from its registration (after set-up) until
    on_train_start: only the signalled process had received_sigterm, on which Lightning's loop
    stopped that process alone while the others waited in their next collective."""
    trainer = SimpleNamespace(world_size=2, received_sigterm=True, strategy=_agreeing([False]))
    before = signal.getsignal(signal.SIGTERM)
    try:
        callback = SynchronisedSigterm()
        callback.on_train_start(trainer, None)
        with pytest.raises(SIGTERMException):  # all processes agree at the first epoch's start
            callback.on_train_epoch_start(trainer, None)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_process_training_off_the_main_thread_still_stops_with_the_others():
    """Where signal.signal cannot be called (a training on another thread), the callback used
    to switch itself off on that process alone: it left the agreement the others wait in."""
    trainer = SimpleNamespace(world_size=2, received_sigterm=False, strategy=_agreeing([True]))
    callback = SynchronisedSigterm()
    worker = threading.Thread(target=callback.on_train_start, args=(trainer, None))
    worker.start()
    worker.join()
    assert callback.active
    with pytest.raises(SIGTERMException):  # another process was signalled
        callback.on_train_batch_end(trainer, None, None, None, 0)


def _val_split(run: RunDir) -> list[str]:
    with run.split.open(newline="") as f:
        return [row["path"] for row in csv.DictReader(f) if row["subset"] == "val"]


@pytest.mark.slow
def test_interrupted_ddp_run_resumes_under_torchrun(ddp):
    assert ddp.interrupted.checkpoint and not ddp.interrupted.complete
    assert ddp.run.is_complete()
    with ddp.run.history.open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]
    assert [r["world_size"] for r in ddp.records] == [2, 2, 2, 2]
    assert [e["epoch"] for e in ddp.records[2]["epochs"]] == [1]  # resumed, not restarted


@pytest.mark.slow
def test_split_is_the_same_on_every_rank_and_in_the_run(ddp):
    written = sorted(str(ddp.data / p) for p in _val_split(ddp.run))
    for record in ddp.records:
        assert record["val"] == written
        assert record["train"] == ddp.records[0]["train"]
    assert not set(ddp.records[0]["train"]) & set(written)


@pytest.mark.slow
def test_validation_covers_the_whole_split_on_every_rank(ddp):
    n_val = len(_val_split(ddp.run))
    assert n_val == 5  # odd: the distributed sampler gives each of 2 ranks 3 (one repeated)
    for record in ddp.records:
        assert [e["val_images"] for e in record["epochs"]] == [n_val] * len(record["epochs"])
    with ddp.run.history.open() as f:
        history = list(csv.DictReader(f))
    assert [int(row["val_images"]) for row in history] == [n_val, n_val]
    meta = ddp.run.read_meta()
    assert meta.val_metrics.n == n_val
    # the AUC that chose the checkpoint is the AUC of the whole split under the kept weights
    rows = read_predictions(ddp.run.val_predictions)
    full_auc = roc_auc_score([r.label for r in rows], [r.probability for r in rows])
    best = history[meta.best_epoch]
    assert float(best["val_auc"]) == pytest.approx(full_auc, abs=1e-6)


@pytest.mark.slow
def test_run_written_by_rank_zero_with_the_effective_batch_and_lr(ddp):
    meta = ddp.run.read_meta()
    assert meta.distributed.model_dump() == {
        "processes": 2,
        "strategy": "DDPStrategy",
        "accelerator": "CPUAccelerator",
        "batch_size_per_process": 8,
        "effective_batch_size": 16,
        "lr_scaling": "sqrt",
        "lr": pytest.approx(1e-3 * 2**0.5),
    }
    assert [r["lr"] for r in ddp.records] == [pytest.approx(1e-3 * 2**0.5)] * 4
    assert meta.compute.threads == ddp.records[2]["threads"]  # the resumed rank 0's, as it trained
    assert "Trained by 2 process(es)" in (ddp.run.root / "MODEL_CARD.md").read_text()
    leftovers = [p.name for p in ddp.run.root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # no half-written file left by an atomic write


@pytest.mark.slow
def test_one_process_run_validates_the_same_images(ddp, tmp_path):
    config = TrainConfig(**TINY_TRAINING | dict(epochs=1, val_fraction=0.25, precision="32"))
    single = train(ddp.data, tmp_path / "single", config)
    assert single.split.read_text() == ddp.run.split.read_text()
    assert single.read_meta().val_metrics.n == ddp.run.read_meta().val_metrics.n


def _pretrained_on_two_processes(tmp_path: Path, **settings: object) -> TrainConfig:
    """The tiny CNN from "pretrained" weights, trained by two spawned CPU processes."""
    return TrainConfig(
        **TINY_TRAINING
        | dict(
            pretrained=True,
            weights=write_backbone_weights(tmp_path / "w.safetensors", 0),
            precision="32",
            accelerator="cpu",
            devices=2,
            distributed_strategy="ddp_spawn",
        )
        | settings
    )


@pytest.mark.slow
def test_frozen_features_are_shared_out_across_ranks(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data")
    config = _pretrained_on_two_processes(
        tmp_path, strategy="frozen", feature_cache=str(tmp_path / "cache"), epochs=1
    )
    run = train(data, tmp_path / "run", config)
    meta = run.read_meta()
    assert meta.feature_cache.computed == 24
    assert meta.feature_cache.computed_per_rank == [12, 12]
    assert meta.val_metrics.n == len(_val_split(run))
    cache_files = list((tmp_path / "cache").rglob("*.pt"))
    assert len(cache_files) == 1  # one writer: no second file, no leftover temporary
    assert len(torch.load(cache_files[0], weights_only=True)["entries"]) == 24


@pytest.mark.slow
def test_head_epochs_train_on_two_processes(tmp_path):
    """LP-FT's head epoch leaves the backbone without gradients; DDP, told so, trains on."""
    data = write_synthetic_dataset(tmp_path / "data")
    config = _pretrained_on_two_processes(tmp_path, epochs=2, head_epochs=1)
    run = train(data, tmp_path / "run", config)
    assert run.read_meta().distributed.processes == 2
    if "OMP_NUM_THREADS" not in os.environ:  # Lightning's launcher shares the cores out
        assert run.read_meta().compute.threads == _suggested_max_num_threads(2)
    assert len(run.history.read_text().splitlines()) == 1 + 2  # header, both epochs


def _train_in_a_spawned_worker(rank: int, store: str, folder: str) -> None:
    """A worker as ddp_spawn starts it: a two-rank gloo group, training set up, exit. It
    records whether the group is alive after set-up and when the process exits."""
    record = Path(folder, f"rank{rank}")
    # registered first, so it runs last at exit (atexit runs in reverse order)
    atexit.register(lambda: record.write_text(f"{record.read_text()} {dist.is_initialized()}"))
    dist.init_process_group("gloo", f"file://{store}", rank=rank, world_size=2)
    ProcessGroupExit().setup(None, None, "fit")
    ProcessGroupExit().setup(None, None, "fit")  # a study's next model
    record.write_text(str(dist.is_initialized()))


@pytest.mark.slow
def test_every_process_destroys_its_process_group_at_exit(tmp_path):
    """Two spawned gloo workers that kept their group to the exit aborted in 26 of 60 tries
    (benchmarks/gloo_exit.py)."""
    args = (str(tmp_path / "store"), str(tmp_path))
    torch.multiprocessing.spawn(_train_in_a_spawned_worker, args=args, nprocs=2)
    # alive for the next model while the process goes on; destroyed when it exits
    assert [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)] == ["True False"] * 2


def test_repeated_samples_of_the_distributed_sampler_are_dropped():
    dataset = list(range(5))
    shards = [list(DistributedSampler(dataset, 2, rank, shuffle=False)) for rank in (0, 1)]
    assert sum(map(len, shards)) == 6  # one repeated to give both ranks 3
    index = torch.tensor(shards[0] + shards[1])
    (values,) = unique_by_index(index, index.float() * 10)
    assert values.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]


@pytest.mark.parametrize("count", [0, 1, 5, 24])
def test_shards_cover_every_row_once(count):
    trainer = SimpleNamespace(world_size=3, global_rank=0)
    parts = [list(shard(count, trainer, rank)) for rank in range(3)]
    assert [row for part in parts for row in part] == list(range(count))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_learning_rate_rules():
    assert [lr_factor(rule, 4) for rule in ("sqrt", "linear", "none")] == [2.0, 4.0, 1.0]
    assert lr_factor("sqrt", 1) == 1.0
