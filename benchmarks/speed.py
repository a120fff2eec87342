"""Inference speed of pneumolab against a plain PIL + timm loop, measured in the same run.

    python benchmarks/speed.py RUN_DIR --images ../shared/data/chest_xray_fullres_sample \
        --out benchmarks/results/speed

RUN_DIR needs ``model.onnx`` (``pneumolab export RUN_DIR``); ``model.int8.onnx`` and
``model.openvino.xml`` are measured when present (``pneumolab export --format onnx-int8`` /
``--format openvino``, which check parity first). Every figure is the median of ``--repeats``
measurements taken in turn, so a busy neighbour slows each setting alike:

- one image through the Python API (decode + preprocess + model), p50 over the image set;
- throughput of ``Predictor.predict_paths`` over the image set looped ``--passes`` times,
  batch 32, with its decoding threads and with one, and onnxruntime session variants;
- whole ``pneumolab`` processes (``--help``, one-image ``predict``): wall time and peak memory
  from ``/usr/bin/time -v``;
- the plain baseline: PIL decodes the full image, ``convert("L")``, resize, the run's own
  intensity normalisation done plainly (torchvision's equalisation, or OpenCV's CLAHE with
  pneumolab's clip limit and tiles), the same timm network in fp32 PyTorch, image by image
  (batch 32 for throughput). Before timing, its probabilities are compared with pneumolab's on
  the image set (the table states the largest difference): a baseline that skipped the
  normalisation would score other inputs (it did for CLAHE runs until 2026-12-07).

Writes ``speed.md`` and ``speed.csv`` under ``--out`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.v2 import functional as F

from pneumolab.choices import BackendName
from pneumolab.data.intensity import CLAHE_CLIP_LIMIT, CLAHE_TILES
from pneumolab.inference.inputs import expand_paths
from pneumolab.inference.onnx_backend import OnnxBackend, session_options
from pneumolab.inference.predictor import Predictor
from pneumolab.models.registry import create_classifier
from pneumolab.run import RunDir

BATCH = 32
SRC = Path(__file__).resolve().parents[1] / "src"


class PlainBaseline:
    """What a user of PIL + timm would write: full decode, fp32 PyTorch, no pneumolab."""

    def __init__(self, run_dir: Path) -> None:
        meta = RunDir(run_dir).read_meta()
        self.size, self.intensity = meta.image_size, meta.intensity
        self.model = create_classifier(meta.model, pretrained=False)
        self.model.load_state_dict(load_file(RunDir(run_dir).weights))
        self.model.eval()

    def pixels(self, path: Path) -> torch.Tensor:
        image = (
            Image.open(path).convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        )
        return torch.from_numpy(np.asarray(image).copy())[None]

    @torch.inference_mode()
    def score(self, pixels: torch.Tensor) -> np.ndarray:
        if self.intensity == "equalize":
            pixels = F.equalize(pixels)
        elif self.intensity == "clahe":
            clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES)
            pixels = torch.stack(
                [torch.from_numpy(clahe.apply(p[0].numpy()))[None] for p in pixels]
            )
        elif self.intensity != "none":
            raise SystemExit(f"the plain baseline has no {self.intensity!r} normalisation")
        return self.model(pixels.float() / 255.0).sigmoid().numpy()

    def predict_paths(self, files: list[Path]) -> np.ndarray:
        return np.concatenate(
            [
                self.score(torch.stack([self.pixels(p) for p in files[i : i + BATCH]]))
                for i in range(0, len(files), BATCH)
            ]
        )


def p50_ms(predict: Callable[[Path], object], files: list[Path]) -> float:
    """Median wall time (ms) of predicting one image, over ``files`` (after one warm-up)."""
    predict(files[0])
    times = []
    for path in files:
        started = time.perf_counter()
        predict(path)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def images_per_second(predict_all: Callable[[list[Path]], object], files: list[Path]) -> float:
    predict_all(files[:BATCH])  # warm-up
    started = time.perf_counter()
    predict_all(files)
    return len(files) / (time.perf_counter() - started)


def process(*argv: str) -> tuple[float, float]:
    """Wall seconds and peak resident MB of ``python -m pneumolab ARGV``, from /usr/bin/time -v."""
    env = os.environ | {"PYTHONPATH": str(SRC)}
    done = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, *argv],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    if wall is None:
        raise RuntimeError(f"no wall clock time in /usr/bin/time -v's output:\n{done.stderr}")
    hours, minutes, seconds = (float(g or 0) for g in wall.groups())
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if peak is None:
        raise RuntimeError(
            f"no maximum resident set size in /usr/bin/time -v's output:\n{done.stderr}"
        )
    return 3600 * hours + 60 * minutes + seconds, int(peak.group(1)) / 1024


def _onnx_variant(run_dir: Path, threads: int | None, spin: bool) -> Predictor:
    predictor = Predictor.from_run(run_dir, backend="onnx")
    predictor.scorer = OnnxBackend(run_dir / "model.onnx", session_options(threads, spin))
    return predictor


def _listed(predictor: Predictor, **options: int) -> Callable[[list[Path]], object]:
    """``predictor.predict_paths(files, BATCH, **options)``, run to the end (a list)."""
    return lambda files: list(predictor.predict_paths(files, BATCH, **options))


def _field(measure: Callable[[], tuple[float, float]], index: int) -> float:
    """Item ``index`` of a fresh ``measure()``: of :func:`process`, 0 wall s, 1 peak MB."""
    return measure()[index]


def measurements(run_dir: Path, files: list[Path], passes: int) -> dict[str, Callable[[], float]]:
    """Name → a function that measures it once (ms, img/s, s or MB)."""
    plain = PlainBaseline(run_dir)
    exported: dict[BackendName, str] = {
        "onnx-int8": "model.int8.onnx",
        "openvino": "model.openvino.xml",
    }
    backends: list[BackendName] = ["torch", "onnx"]
    backends += [name for name, file in exported.items() if (run_dir / file).is_file()]
    loaded = {name: Predictor.from_run(run_dir, backend=name) for name in backends}
    many = files * passes
    image = str(files[0])
    cli = ("-m", "pneumolab", "predict", str(run_dir), image, "--json")
    found: dict[str, Callable[[], float]] = {
        "one image p50 ms | plain PIL + timm": lambda: p50_ms(
            lambda p: plain.score(plain.pixels(p)[None]), files
        ),
        "batch img/s | plain PIL + timm": lambda: images_per_second(plain.predict_paths, many),
    }
    # functools.partial binds each loop's predictor/backend now, as the ``pr=predictor`` lambda
    # defaults did (mypy cannot type a lambda with defaults as a ``Callable[[], float]``)
    for name, predictor in loaded.items():
        found[f"one image p50 ms | {name}"] = partial(p50_ms, predictor.predict, files)
        found[f"batch img/s | {name}"] = partial(images_per_second, _listed(predictor), many)
    for name in backends[1:]:
        found[f"batch img/s | {name}, 1 decoding thread"] = partial(
            images_per_second, _listed(loaded[name], workers=1), many
        )
    for threads, spin in ((1, False), (None, False), (None, True)):
        variant = _onnx_variant(run_dir, threads, spin)
        label = f"onnx, {threads or 'all'} intra-op thread(s), spinning {'on' if spin else 'off'}"
        found[f"batch img/s | {label}"] = partial(images_per_second, _listed(variant), many)
    for backend in ("onnx", "torch"):
        run = partial(process, *cli, "--backend", backend)
        found[f"process s | predict --backend {backend}"] = partial(_field, run, 0)
        found[f"process MB | predict --backend {backend}"] = partial(_field, run, 1)
    found["process s | --help"] = lambda: process("-m", "pneumolab", "--help")[0]
    found["process s | python -c 'import torch'"] = lambda: process("-c", "import torch")[0]
    return found


def _parity(run_dir: Path, files: list[Path]) -> float:
    """The largest difference between the plain baseline's probabilities and pneumolab's."""
    results = list(Predictor.from_run(run_dir).predict_paths(files))
    unread = [r for r in results if isinstance(r, Exception)]
    if unread:
        raise SystemExit(f"the images must all be readable: {unread[0]}")
    ours = np.array([r.probability for r in results if not isinstance(r, Exception)])
    return float(np.abs(PlainBaseline(run_dir).predict_paths(files) - ours).max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=Path, required=True, help="folder of full-size X-rays")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=4, help="loops over the images (batch)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    files = expand_paths([args.images])
    parity = _parity(args.run_dir, files)
    measure = measurements(args.run_dir, files, args.passes)
    values: dict[str, list[float]] = {name: [] for name in measure}
    for repeat in range(args.repeats):
        for name, once in measure.items():
            values[name].append(once())
            print(f"[{repeat + 1}/{args.repeats}] {name}: {values[name][-1]:.3f}", file=sys.stderr)
    write_tables(values, args, len(files), parity)


def write_tables(
    values: dict[str, list[float]], args: argparse.Namespace, images: int, parity: float
) -> None:
    """``speed.csv`` (every measurement) and ``speed.md`` (medians, ratios to the plain loop)."""
    args.out.mkdir(parents=True, exist_ok=True)
    median = {name: statistics.median(v) for name, v in values.items()}
    plain = {
        "one image p50 ms": median["one image p50 ms | plain PIL + timm"],
        "batch img/s": median["batch img/s | plain PIL + timm"],
    }
    with (args.out / "speed.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", "setting", "median", "runs"])
        for name, runs in values.items():
            measure, setting = name.split(" | ")
            writer.writerow(
                [measure, setting, f"{median[name]:.4g}", " ".join(f"{v:.4g}" for v in runs)]
            )
    lines = [
        f"`python benchmarks/speed.py {args.run_dir} --images {args.images} --repeats "
        f"{args.repeats} --passes {args.passes}`: {images} images x {args.passes} passes; "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}; medians of {args.repeats} runs. The plain baseline's "
        f"probabilities differ from pneumolab's by at most {parity:.4f} on these images (it "
        "decodes the full image; pneumolab decodes JPEGs at reduced scale).",
        "",
        "| measure | setting | median | vs plain PIL + timm | runs |",
        "|---|---|---|---|---|",
    ]
    for name, runs in values.items():
        measure, setting = name.split(" | ")
        ratio = ""
        if setting == "plain PIL + timm":
            ratio = "baseline"
        elif measure == "one image p50 ms":
            ratio = f"{plain[measure] / median[name]:.2f}x faster"
        elif measure == "batch img/s":
            ratio = f"{median[name] / plain[measure]:.2f}x"
        lines.append(
            f"| {measure} | {setting} | {median[name]:.3g} | {ratio} | "
            f"{', '.join(f'{v:.3g}' for v in runs)} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out / "speed.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
