"""Training end to end on a tiny synthetic dataset: run-directory contents, safety and resume."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal

import lightning as L
import pytest
import torch

from conftest import copy_run
from pneumolab.config import TrainConfig, resolve_config
from pneumolab.errors import ConfigError, DataLayoutError, RunDirError, TrainingInterrupted
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir
from pneumolab.training.fit import build_trainer
from pneumolab.training.module import TrainingDiverged
from pneumolab.training.split import check_run_dir

TINY = dict(
    model="pneumolab_cnn_small", pretrained=False, image_size=32, batch_size=8, num_workers=0
)


class StopAtEpoch(L.Callback):
    """Simulates Ctrl+C at the first batch of epoch ``epoch`` (counted from 0)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_run_directory_contents(tiny_run):
    run = RunDir(tiny_run[0])
    for path in (run.config, run.split, run.weights, run.meta, run.history, run.val_predictions):
        assert path.is_file(), path
    meta = json.loads(run.meta.read_text())
    assert meta["model"] == "pneumolab_cnn_small"
    assert meta["image_size"] == 32
    assert meta["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert 0.0 <= meta["threshold"] <= 1.0
    assert (
        meta["val_metrics"]["sensitivity"] >= 0.95
    )  # the threshold rule, on the split it was chosen on
    points = meta["operating_points"]
    assert list(points) == ["sensitivity_95", "youden", "cost_ratio_5"]
    assert meta["default_operating_point"] == "sensitivity_95"
    assert points["sensitivity_95"]["threshold"] == meta["threshold"]
    default_metrics = points["sensitivity_95"]["val_metrics"]
    assert default_metrics["confusion_matrix"] == meta["val_metrics"]["confusion_matrix"]
    for point in points.values():
        assert point["provenance"].startswith("validation split of run, n=")
        assert point.keys() == {"threshold", "rule", "params", "provenance", "val_metrics"}
    assert meta["temperature"] > 0
    with run.split.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    sides = {}
    for row in rows:
        sides.setdefault(row["patient"], set()).add(row["subset"])
    assert all(len(s) == 1 for s in sides.values()), "a patient is on both sides of the split"


def test_existing_run_dir_is_never_overwritten(synthetic_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RunDirError, match="already exists"):
        train(synthetic_data, out, TrainConfig(epochs=1, **TINY))
    assert (out / "keep.txt").read_text() == "precious"


def test_resume_without_checkpoint_is_refused(synthetic_data, tmp_path):
    with pytest.raises(RunDirError, match=r"nothing to resume \(no config.yaml\)"):
        train(synthetic_data, tmp_path / "empty", resume=True)


def test_an_attempt_stopped_before_its_first_epoch_says_what_to_do(synthetic_data, tmp_path):
    run = RunDir(tmp_path / "run")  # what a training stopped after writing its split leaves
    run.root.mkdir()
    run.config.write_text("epochs: 1\n")
    (run.root / "split.csv").write_text("path,label,patient,subset\n")
    for resume in (False, True):
        with pytest.raises(RunDirError, match=r"stopped before its first epoch.*delete the folder"):
            check_run_dir(run.root, resume)


def test_a_folder_of_the_users_own_files_is_never_called_an_attempt_to_delete(tmp_path):
    """An experiment folder holding its config.yaml and notes was called a stopped attempt,
    and the user told to delete it."""
    run = RunDir(tmp_path / "exp1")
    run.root.mkdir()
    run.config.write_text("epochs: 1\n")
    (run.root / "notes.md").write_text("precious")
    for resume in (False, True):
        with pytest.raises(RunDirError) as error:
            check_run_dir(run.root, resume)
        assert "delete" not in str(error.value) and "stopped" not in str(error.value)
    assert (run.root / "notes.md").read_text() == "precious"


def test_a_finished_run_without_checkpoints_is_never_called_an_early_stop(tiny_run, tmp_path):
    run = RunDir(copy_run(tiny_run[0], tmp_path / "run"))
    shutil.rmtree(run.root / "checkpoints", ignore_errors=True)  # removed to save space
    for resume in (False, True):
        with pytest.raises(RunDirError) as error:
            check_run_dir(run.root, resume)
        assert "delete" not in str(error.value)


@pytest.mark.slow
def test_interrupted_training_resumes_from_last_checkpoint(synthetic_data, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(epochs=2, early_stopping_patience=5, **TINY)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(synthetic_data, out, config, callbacks=[StopAtEpoch(1)])
    run = RunDir(out)
    assert run.last_checkpoint.is_file() and not run.is_complete()
    with pytest.raises(RunDirError, match="not a finished run"):
        run.read_meta()
    as_trained = run.config.read_text()  # edited: a traceback, or two image sizes mixed
    run.config.write_text(as_trained.replace("image_size: 32", "image_size: 48"))
    with pytest.raises(
        RunDirError, match=r"config\.yaml: changed since last\.ckpt.*image_size: 32 -> 48"
    ):
        train(synthetic_data, out, resume=True)
    run.config.write_text(as_trained)
    saved = torch.load(run.last_checkpoint, weights_only=True)["callbacks"]["TrainingClock"]

    trained = EpochsTrained()
    train(synthetic_data, out, resume=True, callbacks=[trained])
    assert trained.epochs == [1]  # from the checkpoint, not from scratch
    assert run.is_complete()
    # the first leg's seconds are counted too (the last leg's alone were reported)
    # the first leg's clock is positive (unrounded: a fast machine's tiny epoch took 0.049 s,
    # which rounds to 0.0), and the reported seconds, rounded to 0.1, include it
    assert saved["seconds"] > 0
    assert run.read_meta().train_seconds >= round(saved["seconds"], 1)
    with run.history.open() as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1], "resume must continue at epoch 1, not start over"


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    synthetic_data, tmp_path, num_workers
):
    """The checkpoint files the random number generators' states: a resume replayed the
    seed's first shuffles and augmentations, so it trained other weights than the same run
    left alone. With loader workers, persistent ones drew their seed once per fit: once more
    after a resume."""
    from safetensors.torch import load_file

    settings = TINY | {"num_workers": num_workers}
    config = TrainConfig(epochs=2, mixup_alpha=0.2, **settings)  # mixup draws from NumPy too
    train(synthetic_data, tmp_path / "whole", config)
    with pytest.raises(TrainingInterrupted):
        train(synthetic_data, tmp_path / "legs", config, callbacks=[StopAtEpoch(1)])
    train(synthetic_data, tmp_path / "legs", resume=True)
    whole, legs = (load_file(RunDir(tmp_path / n).weights) for n in ("whole", "legs"))
    assert all(torch.equal(whole[name], legs[name]) for name in whole)


@pytest.mark.slow
def test_a_run_stopped_early_then_interrupted_while_finishing_trains_no_more(
    synthetic_data, tmp_path, monkeypatch
):
    """Lightning does not checkpoint its stop: interrupted while being finished, an early-
    stopped run resumed into the epochs it had stopped before, and kept another model."""
    from safetensors.torch import load_file

    from pneumolab.pipeline import train as pipeline

    config = TrainConfig(epochs=6, monitor="val_loss", early_stopping_patience=1, lr=0.008, **TINY)
    whole = train(synthetic_data, tmp_path / "whole", config)
    stopped_after = len(whole.history.read_text().splitlines()) - 1
    assert stopped_after < config.epochs  # early stopping did stop it

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "fit_scorer", interrupted)  # after fit, before the files
        with pytest.raises(KeyboardInterrupt):
            train(synthetic_data, tmp_path / "legs", config)
    trained = EpochsTrained()
    legs = train(synthetic_data, tmp_path / "legs", resume=True, callbacks=[trained])
    assert trained.epochs == []
    assert len(legs.history.read_text().splitlines()) - 1 == stopped_after
    first, second = load_file(whole.weights), load_file(legs.weights)
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
def test_a_run_resumed_in_another_precision_says_so(synthetic_data, tmp_path):
    """meta.json and the card named the last leg's precision alone, as if the whole run had
    trained in it."""
    out = tmp_path / "run"
    config = TrainConfig(epochs=2, precision="32", **TINY)
    with pytest.raises(TrainingInterrupted):
        train(synthetic_data, out, config, callbacks=[StopAtEpoch(1)])
    run = RunDir(out)
    run.config.write_text(
        run.config.read_text().replace("precision: '32'", "precision: bf16-mixed")
    )
    assert "precision: bf16-mixed" in run.config.read_text()
    train(synthetic_data, out, resume=True)
    compute = run.read_meta().compute
    assert compute is not None and compute.precision == "bf16-mixed"
    assert [leg.precision for leg in compute.earlier_legs] == ["32-true"]
    card = (run.root / "MODEL_CARD.md").read_text()
    assert "Resumed: earlier epochs trained in `32-true`" in card


class EpochsTrained(L.Callback):
    """The epochs a fit trains, in order (a resume starts after the checkpoint's epoch)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


@pytest.mark.slow
def test_a_monitored_run_moved_elsewhere_resumes_from_its_own_checkpoints(synthetic_data, tmp_path):
    config = TrainConfig(epochs=4, monitor="val_auc", early_stopping_patience=5, **TINY)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(synthetic_data, tmp_path / "run", config, callbacks=[StopAtEpoch(2)])
    moved = RunDir(tmp_path / "moved")
    shutil.move(tmp_path / "run", moved.root)
    last = torch.load(moved.last_checkpoint, weights_only=False)
    assert last["epoch"] == 1  # every finished epoch, not only the improving ones
    kept = [key for key in last["callbacks"] if "Checkpoint" in key]
    assert len(kept) == 2 and all(key.startswith("ModelCheckpoint{") for key in kept)  # as before
    trained = EpochsTrained()
    train(synthetic_data, moved.root, resume=True, callbacks=[trained])
    assert trained.epochs == [2, 3]  # after the checkpoint's epoch 1
    with moved.history.open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2, 3]
    best = torch.load(moved.checkpoints / "best.ckpt", weights_only=False)
    assert moved.read_meta().best_epoch == best["epoch"]
    assert sorted(p.name for p in moved.checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_a_sigterm_stops_a_one_process_training_resumably(synthetic_data, tmp_path):
    """Lightning's own SIGTERM handling, kept on one process: stopped in the batch signalled,
    the last finished epoch kept, the signal named (the command line exits 143)."""

    class SigtermAtEpoch1(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "run"
    config = TrainConfig(epochs=2, early_stopping_patience=5, **TINY)
    with pytest.raises(TrainingInterrupted, match="--resume") as stopped:
        train(synthetic_data, out, config, callbacks=[SigtermAtEpoch1()])
    assert stopped.value.signal == "SIGTERM"
    assert torch.load(RunDir(out).last_checkpoint, weights_only=True)["epoch"] == 0
    trained = EpochsTrained()
    train(synthetic_data, out, resume=True, callbacks=[trained])
    assert trained.epochs == [1]


def test_an_interruption_before_the_first_epoch_ended_says_to_start_again(synthetic_data, tmp_path):
    class StopAtOnce(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="nothing to resume; delete"):
        train(
            synthetic_data,
            tmp_path / "run",
            TrainConfig(epochs=1, **TINY),
            callbacks=[StopAtOnce()],
        )


def test_a_diverging_training_says_so(synthetic_data, tmp_path):
    with pytest.raises(TrainingDiverged, match="lower lr"):
        train(synthetic_data, tmp_path / "run", TrainConfig(epochs=1, lr=1e30, **TINY))


def test_resume_takes_no_config_of_its_own(synthetic_data, tmp_path):
    with pytest.raises(ConfigError, match="pass no config"):
        train(synthetic_data, tmp_path / "run", TrainConfig(epochs=8), resume=True)


def test_settings_by_name_are_a_config(synthetic_data, tmp_path):
    run = train(synthetic_data, tmp_path / "run", dict(TINY, epochs=1))
    assert run.read_meta().model == TINY["model"]
    with pytest.raises(ConfigError, match=r"invalid training config \(epochs: "):
        train(synthetic_data, tmp_path / "other", {"epochs": 0})


def test_images_training_could_not_read_are_recorded_and_named_in_the_card(
    synthetic_data, tmp_path
):
    """The card's table counted split.csv's rows, the images left out only in a log line."""
    data = tmp_path / "copy"
    shutil.copytree(synthetic_data, data)
    broken = sorted((data / "train" / "NORMAL").iterdir())[0]
    broken.write_text("not an image")
    run = train(data, tmp_path / "run", dict(TINY, epochs=1))
    assert run.read_meta().unreadable == [str(broken)]
    card = " ".join((run.root / "MODEL_CARD.md").read_text().split())
    assert "1 image(s) of these could not be read when the model was trained" in card
    assert broken.name in card


@pytest.mark.parametrize(("world", "strategy"), [("2", "auto"), ("2", "ddp_spawn")])
def test_a_launcher_that_disagrees_with_the_config_is_refused(
    tmp_path, monkeypatch, world, strategy
):
    monkeypatch.setenv("WORLD_SIZE", world)
    devices = 1 if strategy == "auto" else 2
    config = TrainConfig(devices=devices, distributed_strategy=strategy, **TINY)
    with pytest.raises(ConfigError, match=r"launched as 2 processes|ddp_spawn starts its own"):
        build_trainer(config, RunDir(tmp_path / "run"), [])


def test_several_nodes_without_a_launcher_are_refused_not_waited_for(tmp_path, monkeypatch):
    """Started alone, ``--num-nodes 2`` waited for a node that never joins (30 minutes)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    config = TrainConfig(num_nodes=2, **TINY)
    with pytest.raises(ConfigError, match=r"--num-nodes 2 needs a launcher .*torchrun --nnodes 2"):
        build_trainer(config, RunDir(tmp_path / "run"), [])


@pytest.mark.parametrize("variable", ["SLURM_PROCID", "RANK", "LOCAL_RANK"])
def test_a_one_process_training_given_another_rank_is_refused(tmp_path, monkeypatch, variable):
    """srun of a one-process training in a job of several tasks: the task of rank 1 skipped
    the run folder's check and lock, and trained over the finished run of rank 0."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ConfigError, match=rf"{variable}=1 in the environment, but devices"):
        build_trainer(TrainConfig(**TINY), RunDir(tmp_path / "run"), [])
    monkeypatch.setenv(variable, "0")  # rank 0 of its own job: trains
    build_trainer(TrainConfig(**TINY), RunDir(tmp_path / "run"), [])
    if variable != "RANK":  # torchrun's RANK=0 inside a SLURM task of rank 1: rank 0, as
        monkeypatch.setenv(variable, "1")  # Lightning reads the first variable set
        monkeypatch.setenv("RANK", "0")
        build_trainer(TrainConfig(**TINY), RunDir(tmp_path / "run"), [])


SLURM_TASK = {
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_ID": "7",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "node1",
    "SLURM_STEP_ID": "0",
}


def _slurm(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """This process as a task of a SLURM job (one task of one node, started by srun, unless
    ``variables`` say otherwise; a value of ``""`` unsets the variable: ``SLURM_STEP_ID=""``
    is the job's batch script or an salloc shell), under no other launcher; the rank that
    Lightning records while building a Trainer is restored after the test."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (SLURM_TASK | variables).items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)


def test_under_slurm_nothing_is_requeued_or_resumed_from_the_working_directory(
    tmp_path, monkeypatch
):
    """Lightning's SLURM default saved hpc_ckpt_N.ckpt into the working directory on SIGUSR1
    and requeued the job (which then ran without --resume), and a later training started in
    that directory resumed from it silently."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    _slurm(monkeypatch, SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2")
    run = RunDir(tmp_path / "run")
    trainer = build_trainer(TrainConfig(**TINY | {"devices": 2}), run, [])
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert trainer.default_root_dir == str(run.root)


def test_torchrun_inside_a_slurm_job_keeps_its_ranks(tmp_path, monkeypatch):
    """torchrun's variables come first, as in Lightning: SLURM's environment, forced, made
    each torchrun worker rank 0 of a world of one."""
    _slurm(monkeypatch)
    for name, value in {
        "TORCHELASTIC_RUN_ID": "job",
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }.items():
        monkeypatch.setenv(name, value)
    trainer = build_trainer(TrainConfig(**TINY | {"devices": 2}), RunDir(tmp_path / "run"), [])
    assert (trainer.world_size, trainer.global_rank) == (2, 1)


@pytest.mark.parametrize(
    ("variables", "devices", "message"),
    [
        (
            {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4"},
            2,
            r"SLURM started 4 task\(s\) \(SLURM_NTASKS\), but devices × num_nodes is 2",
        ),
        ({}, 2, r"SLURM started 1 task\(s\) \(SLURM_NTASKS\), but devices × num_nodes is 2"),
        (
            {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": ""},
            2,
            r"SLURM started 2 tasks with --ntasks, which Lightning does not read",
        ),
        (
            {"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "interactive", "SLURM_PROCID": "1"},
            4,
            r"SLURM task 1 of 4 in a job named 'interactive', which Lightning does not",
        ),
        (
            {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_ID": ""},
            2,
            r"SLURM_NTASKS is 2, but this process was not started by srun .*start it with srun",
        ),
    ],
)
def test_slurm_tasks_that_are_not_the_training_processes_are_refused(
    tmp_path, monkeypatch, variables, devices, message
):
    """Each of several srun tasks in an interactive job (named bash or interactive, which
    Lightning passes over) trained as rank 0 into one folder; a batch job of one task trained
    two devices' worth on one process without a word, and other mismatches failed inside
    Lightning, the last after the run folder was written; a batch script of two tasks that
    started the training without srun waited at the rendezvous for the task never started."""
    _slurm(monkeypatch, **variables)
    config = TrainConfig(**TINY | {"devices": devices})
    with pytest.raises(ConfigError, match=message):
        build_trainer(config, RunDir(tmp_path / "run"), [])


def test_one_task_of_an_interactive_slurm_job_starts_its_own_processes(tmp_path, monkeypatch):
    """salloc -n 4 and one command: Lightning starts the four processes (SLURM_NTASKS is the
    allocation's, not the copies running), in the salloc shell (no srun step) or in one srun
    task."""
    for step in ("", "0"):
        _slurm(monkeypatch, SLURM_NTASKS="4", SLURM_JOB_NAME="interactive", SLURM_STEP_ID=step)
        config = TrainConfig(**TINY | {"devices": 4})
        assert build_trainer(config, RunDir(tmp_path / "run"), []).world_size == 4


def test_a_one_task_batch_job_trains_without_srun(tmp_path, monkeypatch):
    """sbatch --ntasks-per-node 1 and ``pneumolab train`` in the script itself: one task, one
    process, nothing to wait for (only several tasks need srun)."""
    _slurm(monkeypatch, SLURM_STEP_ID="", SLURM_STEPID="")
    trainer = build_trainer(TrainConfig(**TINY), RunDir(tmp_path / "run"), [])
    assert (trainer.world_size, trainer.global_rank) == (1, 0)


def test_fp16_on_a_cpu_is_refused_not_trained_as_bf16(monkeypatch):
    """Lightning trained ``16-mixed`` on a CPU as bf16-mixed, with a warning of its own, while
    config.yaml kept 16-mixed."""
    from pneumolab.training import fit

    monkeypatch.setattr(fit.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"precision 16-mixed \(fp16 autocast\) needs a GPU"):
        fit.resolve_precision("16-mixed")
    monkeypatch.setattr(fit.torch.cuda, "is_available", lambda: True)
    assert fit.resolve_precision("16-mixed") == "16-mixed"
    with pytest.raises(ConfigError, match="needs a GPU"):
        fit.resolve_precision("16-mixed", "cpu")


def test_precision_auto_follows_the_accelerator(monkeypatch):
    from pneumolab.training import fit

    monkeypatch.setattr(fit.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fit.torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(fit, "cpu_has_bf16", lambda: False)
    assert fit.resolve_precision("auto") == "16-mixed"  # the GPU's rule
    assert fit.resolve_precision("auto", "cpu") == "32"  # this CPU has no native bf16


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU this machine has")
def test_a_gpu_asked_for_where_there_is_none_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="accelerator gpu"):
        build_trainer(TrainConfig(accelerator="gpu"), RunDir(tmp_path / "run"), [])


def test_a_subset_too_close_to_the_whole_says_which_setting(synthetic_data, tmp_path):
    with pytest.raises(DataLayoutError, match="max_train_images 23 of 24 images"):
        train(synthetic_data, tmp_path / "run", TrainConfig(max_train_images=23, **TINY))


@pytest.mark.parametrize(
    "settings",
    [
        dict(seed=-1),
        dict(split_seed=2**32),
        dict(lr=float("inf")),
        dict(lr=float("nan")),
        dict(augment_strength=4),
    ],
)
def test_seeds_and_rates_out_of_range_are_refused(settings):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TrainConfig(**settings)


def test_stored_preprocessing_reproduces_validation_scores(tiny_run):
    """A loaded run scores files exactly as training scored them, with and without TTA (the
    thresholds rely on it)."""
    from pneumolab.inference.predictor import Predictor

    run = RunDir(tiny_run[0])
    assert resolve_config(run.config).intensity == "clahe"
    with run.val_predictions.open() as f:
        rows = list(csv.DictReader(f))
    predictor = Predictor.from_run(run.root)
    assert predictor.intensity == "clahe"
    results = list(predictor.predict_paths([row["path"] for row in rows]))
    for row, result in zip(rows, results, strict=True):
        assert result.probability == pytest.approx(float(row["probability"]), abs=1e-5)
    with_tta = Predictor.from_run(run.root, tta=True).predict_paths([row["path"] for row in rows])
    for row, result in zip(rows, with_tta, strict=True):  # the identity view reused, not skipped
        assert result.probability == pytest.approx(float(row["tta_probability"]), abs=1e-5)


@pytest.mark.slow
def test_without_a_terminal_training_prints_one_line_per_epoch(synthetic_data, tmp_path, capfd):
    capfd.readouterr()
    train(
        synthetic_data, tmp_path / "run", TrainConfig(epochs=2, early_stopping_patience=5, **TINY)
    )
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, err
    assert "epoch " not in out  # progress is a message: stdout holds results
    pattern = r"epoch (\d)/2: \d+\.\d s, train loss \d\.\d{4}, val loss \d\.\d{4}, val AUC [\d.]+"
    assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["1", "2"]
    assert "\r" not in out + err  # no progress bar redrawn into a log


def test_on_a_terminal_training_shows_the_progress_bar():
    from lightning.pytorch.callbacks import RichProgressBar

    from pneumolab.training.callbacks import EpochLines, progress_display

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_display(Terminal()), RichProgressBar)
    assert isinstance(progress_display(io.StringIO()), EpochLines)


def test_a_resumed_history_keeps_its_own_columns_and_the_checkpoints_epochs(tmp_path):
    from types import SimpleNamespace

    from pneumolab.training.callbacks import HistoryCSV

    path = tmp_path / "history.csv"  # an older version's columns, and a row cut by a kill
    path.write_text("epoch,train_loss,old_column\n0,0.5,x\n1,0.4,y\n2,0.3")
    history = HistoryCSV(path)
    history.on_train_start(SimpleNamespace(current_epoch=1), None)
    assert path.read_text().splitlines() == ["epoch,train_loss,old_column", "0,0.5,x"]
    history.write(None, {"epoch": 1, "train_loss": 0.25, "val_auc": 0.9})
    assert path.read_text().splitlines()[-1] == "1,0.25,"


@pytest.mark.slow
def test_the_training_phases_leave_an_unfinished_run_until_the_post_training_step(
    synthetic_data, tmp_path
):
    from pneumolab.pipeline.train import describe_trained
    from pneumolab.training.split import check_run_dir, prepare_split
    from pneumolab.training.train import train_model

    config = TrainConfig(epochs=1, **TINY)
    planned = prepare_split(synthetic_data, check_run_dir(tmp_path / "run", False), config, False)
    assert not (tmp_path / "run").exists()  # planning the split writes nothing
    patients = [{s.patient for s in side} for side in (planned.train, planned.val)]
    assert planned.val and not patients[0] & patients[1]

    trained = train_model(synthetic_data, tmp_path / "run", config)
    assert trained.run.weights.is_file() and not trained.run.is_complete()  # no meta.json yet
    assert [s.path for s in trained.split.val] == [s.path for s in planned.val]  # same seed
    description = describe_trained(trained)
    assert description.model == "pneumolab_cnn_small" and description.training.best_epoch == 0


def test_split_seed_fixes_the_split_while_seed_changes_the_rest(synthetic_data, tmp_path):
    from pneumolab.training.split import check_run_dir, prepare_split

    def val_paths(**seeds: int) -> list[str]:
        config = TrainConfig(**TINY, **seeds)
        split = prepare_split(synthetic_data, check_run_dir(tmp_path / "run", False), config, False)
        return [str(s.path) for s in split.val]

    assert val_paths(seed=3, split_seed=0) == val_paths(seed=0)
    assert val_paths(seed=3) != val_paths(seed=0)  # without it, the seed moves the split too
    assert TrainConfig(seed=3).data_seed == 3 and TrainConfig(seed=3, split_seed=1).data_seed == 1


@pytest.mark.slow
@pytest.mark.parametrize("monitor", ["last", "val_loss", "val_auc"])
def test_the_monitor_picks_the_checkpoint_it_names(synthetic_data, tmp_path, monitor):
    config = TrainConfig(epochs=3, monitor=monitor, lr=0.05, **TINY)
    run = train(synthetic_data, tmp_path / monitor, config)
    with run.history.open() as f:
        history = list(csv.DictReader(f))
    assert len(history) == 3  # `last` never stops early, the others not within patience 3
    losses = [float(row["val_loss"]) for row in history]
    aucs = [float(row["val_auc"]) for row in history]
    expected = {  # the first of equal values, as Lightning keeps it
        "last": len(history) - 1,
        "val_loss": losses.index(min(losses)),
        "val_auc": aucs.index(max(aucs)),
    }[monitor]
    assert run.read_meta().best_epoch == expected


def test_a_network_that_cannot_take_the_image_size_is_refused_before_the_run(
    synthetic_data, tmp_path
):
    """A ViT built for 224 px failed in its first forward pass with timm's AssertionError
    traceback, leaving config.yaml and split.csv that blocked the rerun."""
    from pneumolab.errors import ModelError

    config = TrainConfig(**(TINY | {"model": "vit_tiny_patch16_224", "pretrained": False}))
    with pytest.raises(ModelError, match=r"vit_tiny_patch16_224 cannot take 32 x 32 px images"):
        train(synthetic_data, tmp_path / "run", config)
    assert not (tmp_path / "run").exists()
