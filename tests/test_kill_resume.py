"""SIGKILL in the middle of `predict --out` and of training: the rerun loses and repeats nothing."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TRAINING, train_tiny_run, write_synthetic_dataset

pytestmark = pytest.mark.slow  # trains and starts the command line in subprocesses

SRC = Path(__file__).resolve().parents[1] / "src"


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "pneumolab", *map(str, args)]


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}


def kill_when(command: list[str], ready, timeout: float = 120) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()``; fails if it ended by itself."""
    process = subprocess.Popen(command, env=env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "finished before it could be killed"
            assert time.monotonic() < deadline, "never reached the point to kill it at"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def data_rows(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\r\n") - 1) if path.exists() else 0


def test_predict_out_killed_midway_then_rerun(tmp_path):
    run = train_tiny_run(tmp_path / "r")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(150):
        Image.fromarray(rng.integers(0, 256, (160, 160), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "results.csv"
    command = cli("predict", run, folder, "--out", out, "--batch-size", 1)
    kill_when(command, lambda: data_rows(out) >= 5)
    whole = data_rows(out)  # rows the kill left whole (a torn last one is scored again)
    assert whole < 150
    rerun = subprocess.run(command, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    # the rerun keeps the whole rows and scores only the rest
    said = re.search(r"(\d+) written to .*?\((\d+) failed, (\d+) already there", rerun.stderr, re.S)
    assert said, rerun.stderr
    assert said.groups() == (str(150 - whole), "0", str(whole))
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source"] for r in rows) == sorted(str(p.resolve()) for p in folder.iterdir())
    assert all(r["probability"] and not r["error"] for r in rows)


def test_training_killed_after_an_epoch_then_resumed(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", per_class=16)
    run = tmp_path / "run"
    flags = {k.replace("_", "-"): v for k, v in TINY_TRAINING.items() if k != "num_workers"}
    command = cli("train", "--data", data, "--out", run, "--epochs", 4, "--no-pretrained")
    command += [x for k, v in flags.items() if k != "pretrained" for x in (f"--{k}", str(v))]
    kill_when(command, lambda: (run / "checkpoints" / "last.ckpt").is_file())
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]
    resumed = subprocess.run(
        cli("train", "--resume", "--data", data, "--out", run),
        env=env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    # one line per trained epoch (1-based): the resume goes on after the checkpoint's epoch
    trained = [int(n) for n in re.findall(r"^epoch (\d+)/4:", resumed.stderr, re.MULTILINE)]
    assert trained == list(range(saved + 2, 5)), resumed.stderr
    with (run / "history.csv").open(newline="") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 2  # each epoch once, none lost
    assert (run / "meta.json").is_file()
