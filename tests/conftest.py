"""Shared fixtures: offline hub, synthetic datasets, and the shared real data (skipped if absent)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

if TYPE_CHECKING:
    from pneumolab.choices import Task
    from pneumolab.once import Once
    from pneumolab.run import RunDir
    from pneumolab.run_meta import RunMeta

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# No time limits: tests assert behaviour, not speed (benchmarks/ measures that), and on a loaded
# machine (a training beside the suite, a busy CI host) hypothesis's default 200 ms per example failed.
settings.register_profile("pneumolab", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pneumolab")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data" / "chest_xray"
SHARED_FULLRES = SHARED / "data" / "chest_xray_fullres_sample" / "train"
SHARED_WEIGHTS = SHARED / "weights"


@pytest.fixture
def shared_data() -> Path:
    """The shared Kermany train/val copies; the test is skipped where ../shared/data is absent."""
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(f"shared dataset not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def shared_fullres() -> Path:
    """60 original-resolution X-rays; skipped where absent."""
    if not SHARED_FULLRES.is_dir():
        pytest.skip(f"full-resolution sample not found at {SHARED_FULLRES}")
    return SHARED_FULLRES


def xray_like(
    rng: np.random.Generator, mean: float, std: float, shape: tuple[int, int]
) -> np.ndarray:
    """Gaussian noise as uint8 with a brighter central band, as a chest X-ray's spine and
    mediastinum, so the polarity check takes it for an X-ray rather than a negative."""
    pixels = rng.normal(mean, std, shape)
    pixels[:, shape[1] * 2 // 5 : shape[1] * 3 // 5] += 40
    return pixels.clip(0, 255).astype(np.uint8)


def write_synthetic_dataset(root: Path, per_class: int = 12, size: int = 48, seed: int = 0) -> Path:
    """A tiny Kermany-style dataset of :func:`xray_like` images whose classes differ in
    brightness (learnable in one epoch)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = xray_like(rng, 80 + 90 * label, 20, (size, size))
            subtype = "bacteria" if i % 3 else "virus"
            stem = f"IM-{i:04d}-0001" if label == 0 else f"person{i}_{subtype}_{i}"
            Image.fromarray(pixels).save(folder / f"{stem}.png")
    return root


@pytest.fixture
def synthetic_data(tmp_path: Path) -> Path:
    """A tiny synthetic dataset root with ``train/{NORMAL,PNEUMONIA}``."""
    return write_synthetic_dataset(tmp_path / "data")


TINY_TRAINING = dict(
    model="pneumolab_cnn_small", pretrained=False, image_size=32, batch_size=8, num_workers=0
)
"""Settings of the tiny CNN that tests train for a few seconds."""


def write_backbone_weights(path: Path, seed: int) -> str:
    """A random ``pneumolab_cnn_small`` backbone saved as "pretrained" weights; the file's path."""
    import torch
    from safetensors.torch import save_file

    from pneumolab.models.registry import create_backbone

    torch.manual_seed(10_000 + seed)  # not any training's own init: a load is checked by that
    save_file(trained_like(create_backbone("pneumolab_cnn_small").state_dict()), path)
    return str(path)


def trained_like(state: dict) -> dict:
    """``state`` with its batch norms' running statistics moved off their initial 0 and 1, as
    a trained network's are (a weights file at the initial ones reads as one without them)."""
    return {
        key: value * 1.5 + 0.1 if key.endswith(("running_mean", "running_var")) else value
        for key, value in state.items()
    }


def nudge_head_bias(run_dir: Path, by: float = 1e-3) -> None:
    """Move a copied run's classifier bias by ``by``: another network for an ensemble (which
    refuses a copy of one), scoring almost as the original does."""
    from safetensors.torch import load_file, save_file

    weights = Path(run_dir) / "model.safetensors"
    state = load_file(weights)
    bias = next(name for name in state if name.endswith("bias") and state[name].numel() == 1)
    state[bias] = state[bias] + by
    save_file(state, weights)


def train_tiny_run(root: Path, epochs: int = 1, **overrides: object) -> Path:
    """Train the tiny CNN for one epoch on a synthetic dataset under ``root``; the run directory."""
    from pneumolab.config import TrainConfig
    from pneumolab.pipeline.train import train

    data = write_synthetic_dataset(root / "data")
    config = TrainConfig(epochs=epochs, **(TINY_TRAINING | overrides))
    return train(data, root / "run", config).root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny trained run shared by the tests that only read it: ``(run dir, data root)``.
    Tests that write into a run (evaluate, model cards) copy it first (:func:`copy_run`)."""
    root = tmp_path_factory.mktemp("tiny-run")
    return train_tiny_run(root), root / "data"


@pytest.fixture
def lock(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``lock(path)``: ``path`` behaves as ``chmod 000`` makes it for a user who is not root (a
    file or a folder that exists but cannot be opened, nothing under a folder reachable);
    ``lock(folder, listable=True)`` as ``chmod 644`` does (its names listed, none reachable).
    The OS calls are refused as the kernel would: tests may run as root, whom permission bits
    do not stop."""
    import builtins
    import errno
    import io

    locked: list[tuple[Path, bool]] = []
    real_stat, real_lstat, real_scandir, real_access, real_open = (
        os.stat,
        os.lstat,
        os.scandir,
        os.access,
        builtins.open,
    )

    def where(path: object) -> tuple[Path, bool] | None:
        """The locked path ``path`` is or is under, and whether it is that path itself."""
        if not isinstance(path, str | bytes | os.PathLike):
            return None  # a file descriptor
        absolute = Path(os.path.abspath(os.fsdecode(path)))
        for root, _ in locked:
            if absolute == root or root in absolute.parents:
                return root, absolute == root
        return None

    def refuse(path: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    def checked(real: Callable[..., Any], listing: bool = False) -> Callable[..., Any]:
        def call(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            found = where(path)
            if found is not None:
                root, itself = found
                listable = dict(locked)[root]
                if not itself or (listing and not listable) or (real is real_open):
                    refuse(path)
            return real(path, *args, **kwargs)

        return call

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        found = where(path)
        if found is None:
            return real_access(path, mode, *args, **kwargs)
        root, itself = found  # a listable folder may be read, not entered
        return itself and dict(locked)[root] and not mode & os.X_OK

    monkeypatch.setattr(os, "stat", checked(real_stat))
    monkeypatch.setattr(os, "lstat", checked(real_lstat))
    monkeypatch.setattr(os, "scandir", checked(real_scandir, listing=True))
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(builtins, "open", checked(real_open))
    monkeypatch.setattr(io, "open", checked(real_open))

    def lock_path(path: Path, listable: bool = False) -> None:
        locked.append((Path(os.path.abspath(path)), listable))

    return lock_path


def held_only(once: Once) -> list[str]:
    """Make ``once`` assert, at each check and claim of a key, that its lock is held (a check
    and a claim in two steps let two threads both be first; asserted so, no thread timing is
    needed); the steps it makes, in order: ``"check"``, ``"claim"``."""
    steps: list[str] = []
    lock = once._lock

    class HeldOnly(set):
        def __contains__(self, key: object) -> bool:
            assert lock.locked(), "checked without the lock"
            steps.append("check")
            return super().__contains__(key)

        def add(self, key: object) -> None:
            assert lock.locked(), "claimed without the lock"
            steps.append("claim")
            super().add(key)

    once._claimed = HeldOnly(once._claimed)
    return steps


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A private copy of a run directory, for tests that write into it."""
    shutil.copytree(run_dir, dest)
    return dest


def fixed_threshold_meta(
    model: str, image_size: int, threshold: float, intensity: str = "none", task: Task = "binary"
) -> RunMeta:
    """The meta.json of a run made by hand (untrained weights) with a given threshold."""
    from pneumolab.evaluation.metrics import binary_metrics
    from pneumolab.results import DecisionRule, StoredOperatingPoint
    from pneumolab.run_meta import RunDescription, TrainingSummary, describe_run

    rule = "set by the test"
    decision = DecisionRule(
        threshold=threshold,
        threshold_rule=rule,
        default_operating_point="fixed",
        operating_points={"fixed": StoredOperatingPoint(threshold=threshold, rule=rule)},
        temperature=None,
        platt=None,
        val_metrics=binary_metrics(np.array([0, 1]), np.array([0.0, 1.0]), threshold),
    )
    training = TrainingSummary(strategy="untrained", parameters=None, train_seconds=None)
    description = RunDescription(model, image_size, intensity, task, None, None, training)
    return describe_run(description, decision)


def write_run(
    root: Path,
    images: list[Path],
    intensity: str = "none",
    seed: int = 0,
    task: Task = "binary",
    size: int = 32,
) -> RunDir:
    """A finished run of an untrained tiny CNN (three logits for ``task="three_class"``) at
    ``size`` px whose threshold splits ``images`` in two; they are its validation images."""
    import torch
    from safetensors.torch import save_file

    from pneumolab.inference.predictor import Predictor
    from pneumolab.inference.torch_scoring import predict_pixels
    from pneumolab.models.registry import create_classifier
    from pneumolab.run import RunDir

    torch.manual_seed(seed)
    classes = 3 if task == "three_class" else 1
    model = create_classifier("pneumolab_cnn_small", pretrained=False, num_classes=classes)
    last_layer = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(last_layer.weight, std=2.0)  # spread the scores
    run = RunDir(root)
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run.weights)
    run.write_meta(fixed_threshold_meta("pneumolab_cnn_small", size, 0.5, intensity, task))
    predictor = Predictor.from_run(root)
    pixels = np.stack([predictor.preprocess_array(path) for path in images])
    probs = np.sort(predict_pixels(predictor.model, pixels, intensity))
    middle = len(probs) // 2
    threshold = float(probs[middle - 1] + probs[middle]) / 2
    run.write_meta(fixed_threshold_meta("pneumolab_cnn_small", size, threshold, intensity, task))
    run.val_predictions.write_text(
        "path,label,probability\n" + "".join(f"{p},0,0.5\n" for p in images)
    )
    return run


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, list[Path]]:
    """An untrained tiny run and the four images its threshold was set on."""
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    images = [folder / f"scan{i}.png" for i in range(4)]
    for i, path in enumerate(images):
        Image.fromarray(xray_like(rng, 60 + 20 * i, 15, (40, 40))).save(path)
    return write_run(tmp_path_factory.mktemp("runs") / "run", images).root, images


QUICK_MODELS = {"pneumolab_cnn_small", "pneumolab_cnn_separable", "resnet18"}
"""Networks small enough for the quick loop; tests over other families are marked ``slow``."""


def by_size(names: Iterable[str]) -> list[object]:
    """``names`` as pytest parameters, those outside :data:`QUICK_MODELS` marked ``slow``."""
    return [
        name if name in QUICK_MODELS else pytest.param(name, marks=pytest.mark.slow)
        for name in names
    ]


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium():
    """Debian's headless Chromium driven by Playwright (a browser); skipped where either is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (Python) not installed"
    )
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(config) -> Iterator[str]:
    """Run the ``uvicorn.Config`` in a thread; yields its base URL, stops it afterwards."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def dirty_suffix(package: Path) -> str:
    """``-dirty`` where the package's tracked files differ from the checkout's commit."""
    status = ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
    changed = subprocess.run(status, cwd=package, capture_output=True, text=True).stdout
    return "-dirty" if changed.strip() else ""


def class_probabilities(model: Any, pixels: Any, intensity: str = "none") -> np.ndarray:
    """``(N, K)`` softmax class probabilities of a three-class model for raw uint8 pixels, in
    a pass of its own: the reference the scoring pass's probabilities are checked against."""
    from pneumolab.inference.torch_scoring import score_batches

    return score_batches(
        lambda x: model.class_logits(x).softmax(dim=1), model, pixels, intensity, 64
    )
