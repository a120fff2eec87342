"""How well does the input-scope gate separate chest X-rays from everything else?

    python benchmarks/ood_benchmark.py RUN_DIR --data DATA_DIR [--xrays 100] [--json FILE]

In-distribution: the run's validation split (the OOD threshold was chosen on it, so its
false-rejection rate is <= 1% by construction), the dataset's official ``val/`` folder and the
60 full-resolution originals (``../shared/data/chest_xray_fullres_sample``, train patients).
Out of distribution, built from what installs offline: scikit-image's sample photos and
micrographs (``pip install scikit-image``), every single-frame pydicom test image (CT, MR, US,
RT, secondary captures...), rendered text pages (PIL), synthetic noise, gradients, checkerboards
and blank images, and validation X-rays rotated 90°, inverted, or cut to their top-left corner.

Three content scores from the same forward pass are compared: Mahalanobis distance of the
scope descriptor (what runs store: mean activations of the stage at 1/16 resolution), the
energy score and 1 − maximum class probability, each thresholded at the 99th percentile of validation. For each: ROC AUC of in-distribution vs each
OOD family, and the share flagged; ``gate`` adds the sanity and DICOM header checks to the
stored Mahalanobis threshold (what ``predict`` does).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from sklearn.metrics import roc_auc_score

from pneumolab.data.imageio import load_image, resize_square
from pneumolab.errors import ImageLoadError
from pneumolab.evaluation.robustness import PERTURBATIONS
from pneumolab.evaluation.shift import SCENARIOS, apply_shift
from pneumolab.inference.inputs import ImageInput, expand_paths
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.scores import torch_scorer
from pneumolab.inference.torch_scoring import score_batches
from pneumolab.models.classifier import XrayClassifier
from pneumolab.run import RunDir
from pneumolab.scope.checks import image_sanity
from pneumolab.scope.ood import OodModel, validation_threshold

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SKIMAGE_SAMPLES = [
    "astronaut",
    "camera",
    "coins",
    "coffee",
    "chelsea",
    "rocket",
    "moon",
    "page",
    "text",
    "horse",
    "clock",
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cell",
    "colorwheel",
    "logo",
    "cat",
    "microaneurysms",
    "shepp_logan_phantom",
]


def skimage_photos() -> Iterator[tuple[str, ImageInput]]:
    # the optional ``bench`` extra (scikit-image): absent, mypy can't find it; installed, it
    # ships py.typed, so the ignore is then unused (hence ``unused-ignore`` as well)
    import skimage.data

    for name in SKIMAGE_SAMPLES:
        yield name, getattr(skimage.data, name)()


def pydicom_images() -> Iterator[tuple[str, ImageInput]]:
    from pydicom.data import get_testdata_files

    for path in sorted(get_testdata_files("*.dcm")):
        yield Path(path).name, Path(path)


def text_pages(count: int = 12) -> Iterator[tuple[str, ImageInput]]:
    rng = np.random.default_rng(0)
    words = [
        "patient",
        "chest",
        "radiograph",
        "report",
        "findings",
        "impression",
        "lungs",
        "clear",
        "no",
        "acute",
    ]
    font = ImageFont.load_default(size=18)
    for i in range(count):
        page = Image.new("L", (600, 800), 255 if i % 2 else 230)
        draw = ImageDraw.Draw(page)
        for line in range(30):
            text = " ".join(rng.choice(words, 6))
            draw.text((30, 20 + 25 * line), text, fill=0, font=font)
        yield f"text_page_{i}", page


def synthetic(size: int = 400) -> Iterator[tuple[str, ImageInput]]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size)
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    for seed in range(4):
        yield f"uniform_noise_{seed}", rng.integers(0, 256, (size, size), dtype=np.uint8)
        gauss = rng.normal(128, 20 + 15 * seed, (size, size)).clip(0, 255).astype(np.uint8)
        yield f"gaussian_noise_{seed}", gauss
    yield "horizontal_gradient", np.tile(ramp, (size, 1)).astype(np.uint8)
    yield "vertical_gradient", np.tile(ramp[:, None], (1, size)).astype(np.uint8)
    yield "radial_gradient", (255 * radius / radius.max()).astype(np.uint8)
    for cells in (4, 16, 64):
        board = ((yy // (size // cells) + xx // (size // cells)) % 2 * 255).astype(np.uint8)
        yield f"checkerboard_{cells}", board
    for value in (0, 128, 255):
        yield f"blank_{value}", np.full((size, size), value, dtype=np.uint8)


def transformed_xrays(paths: list[Path]) -> dict[str, list[tuple[str, ImageInput]]]:
    families: dict[str, list[tuple[str, ImageInput]]] = {
        "X-ray rotated 90°": [],
        "X-ray inverted": [],
        "X-ray top-left corner (1/3 x 1/3)": [],
    }
    for path in paths:
        pixels = np.asarray(load_image(path))
        height, width = pixels.shape
        families["X-ray rotated 90°"].append((path.name, np.ascontiguousarray(np.rot90(pixels))))
        families["X-ray inverted"].append((path.name, 255 - pixels))
        corner = np.ascontiguousarray(pixels[: height // 3, : width // 3])
        families["X-ray top-left corner (1/3 x 1/3)"].append((path.name, corner))
    return families


def scope_and_logits(
    model: XrayClassifier, pixels: torch.Tensor, intensity: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scope descriptors (what the stored score reads) and the class logits, one pass."""
    both = score_batches(
        lambda x: torch.cat([part.float() for part in model.features_and_scope(x)], dim=1),
        model,
        pixels,
        intensity,
        64,
    )
    width = model.backbone.num_features
    pooled, scope = torch.from_numpy(both[:, :width]), torch.from_numpy(both[:, width:])
    with torch.no_grad():
        return scope, model.backbone.get_classifier()(pooled)


def stored_ood(predictor: Predictor) -> OodModel:
    """The run's OOD model (``main`` refuses a run without one)."""
    if predictor.ood is None:
        raise SystemExit(
            f"{predictor.run_dir or 'this run'} has no OOD model; run `pneumolab fit-ood` first"
        )
    return predictor.ood


def content_scores(predictor: Predictor, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """Higher = more out of distribution, for each candidate score."""
    model = predictor.require_model("the OOD benchmark")
    scope, logits = scope_and_logits(model, pixels, predictor.intensity)
    mahalanobis = stored_ood(predictor).scorer
    if mahalanobis is None:  # an ensemble's OOD model (its members score)
        raise SystemExit(f"{predictor.run_dir or 'this run'}: its OOD model has no scorer")
    if logits.shape[1] == 1:  # binary: the logits of (NORMAL, PNEUMONIA) are (0, z)
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    with torch.no_grad():
        return {
            "mahalanobis": mahalanobis(scope).numpy(),
            "energy": (-torch.logsumexp(logits, dim=1)).numpy(),
            "1 - max probability": (1 - torch.softmax(logits, dim=1).max(dim=1).values).numpy(),
        }


def prepare_all(
    predictor: Predictor, items: list[tuple[str, ImageInput]]
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Pixels, whether a sanity/header check flagged each, and the names of what could be read."""
    pixels, flagged, names = [], [], []
    for name, image in items:
        try:
            prepared, checks = predictor.prepare(image)
        except ImageLoadError:
            continue  # e.g. a multi-frame or compressed DICOM: refused by name, never scored
        pixels.append(torch.from_numpy(prepared))
        flagged.append(bool(checks.reasons))
        names.append(name)
    return torch.stack(pixels), np.array(flagged), names


def gate_flagged(predictor: Predictor, pixels: torch.Tensor) -> float:
    """Share of uint8 ``(N, 1, S, S)`` images the gate puts out of scope: the image checks
    (contrast, polarity) or the stored OOD threshold."""
    size = pixels.shape[-1]
    checked = np.array([bool(image_sanity(size, size, p[0].numpy()).reasons) for p in pixels])
    threshold = stored_ood(predictor).threshold
    return float(np.mean(checked | (predictor.scorer(pixels).ood > threshold)))


def perturbed_validation(predictor: Predictor, val_paths: list[Path]) -> dict[str, float]:
    """Share of validation images the gate flags under each acquisition-like perturbation of
    ``pneumolab evaluate --robustness`` (in scope by intent: a proxy for the shifted official
    test split)."""
    pixels = torch.stack([predictor.preprocess(p) for p in val_paths])
    return {
        name: gate_flagged(predictor, perturb(pixels)) for name, perturb in PERTURBATIONS.items()
    }


def shifted_validation(predictor: Predictor, val_paths: list[Path]) -> dict[str, float]:
    """Share of validation images the gate flags under each scenario of the shift protocol
    (:mod:`pneumolab.evaluation.shift`, draw 0): realistic acquisition shifts, in scope by
    intent, and the closest proxy here for another site's pediatric chest X-rays."""
    pixels = torch.stack([predictor.preprocess(p) for p in val_paths])
    return {
        name: gate_flagged(predictor, apply_shift(pixels, shift, 0))
        for name, shift in SCENARIOS.items()
    }


def latency(predictor: Predictor, image: Path, repeats: int = 30) -> dict[str, float]:
    """Median ms of one image through ``Predictor.predict`` with and without the gate, and of a
    32-image batch through the network alone vs network + OOD score (interleaved runs, so a
    busy machine slows both alike)."""
    model = predictor.require_model("latency")
    plain, gated = torch_scorer(model, predictor.intensity), predictor.scorer
    batch = torch.stack([predictor.preprocess(image)] * 32)
    size = predictor.image_size

    def ungated_predict() -> None:  # what predict did before the gate: decode, resize, score
        pixels = resize_square(load_image(image, size_hint=predictor.image_size), size)
        plain(torch.from_numpy(pixels.copy())[None, None])

    timings: dict[str, list[float]] = {}
    jobs = {
        "predict, one image, no gate": ungated_predict,
        "predict, one image, gate": lambda: predictor.predict(image),
        "network, batch of 32": lambda: plain(batch),
        "network + OOD score, batch of 32": lambda: gated(batch),
    }
    for job in jobs.values():
        job()  # warm-up
    for _ in range(repeats):
        for name, job in jobs.items():
            started = time.perf_counter()
            job()
            timings.setdefault(name, []).append(1000 * (time.perf_counter() - started))
    return {name: float(np.median(values)) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--xrays", type=int, default=100, help="validation X-rays to transform")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--latency", action="store_true", help="also time the gate's cost")
    args = parser.parse_args()
    predictor = Predictor.from_run(args.run_dir)
    if predictor.ood is None:
        raise SystemExit(f"{args.run_dir} has no OOD model; run `pneumolab fit-ood` first")
    val_paths = [s.path for s in RunDir(args.run_dir).read_split(args.data.resolve(), "val")]
    picks = np.linspace(0, len(val_paths) - 1, args.xrays).round().astype(int)
    in_distribution: dict[str, list[tuple[str, ImageInput]]] = {
        "validation split": [(p.name, p) for p in val_paths],
        "official val/": [(p.name, p) for p in expand_paths([args.data / "val"])],
    }
    fullres = SHARED / "chest_xray_fullres_sample"
    if fullres.is_dir():
        in_distribution["full-resolution originals"] = [
            (p.name, p) for p in expand_paths([fullres])
        ]
    ood = {
        "scikit-image photos": list(skimage_photos()),
        "pydicom test images": list(pydicom_images()),
        "rendered text pages": list(text_pages()),
        "synthetic noise/gradients/blank": list(synthetic()),
        **transformed_xrays([val_paths[i] for i in np.unique(picks)]),
    }
    results = evaluate_families(predictor, in_distribution, ood)
    print_tables(results)
    results["perturbed_validation_flagged"] = perturbed_validation(predictor, val_paths)
    print("validation flagged under perturbations:")
    print(json.dumps(results["perturbed_validation_flagged"], indent=1))
    results["shifted_validation_flagged"] = shifted_validation(predictor, val_paths)
    print("validation flagged under the shift protocol's scenarios:")
    print(json.dumps(results["shifted_validation_flagged"], indent=1))
    if args.latency:
        results["latency_ms"] = latency(predictor, val_paths[0])
        print("median ms:", json.dumps(results["latency_ms"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def evaluate_families(
    predictor: Predictor,
    in_distribution: dict[str, list[tuple[str, ImageInput]]],
    ood: dict[str, list[tuple[str, ImageInput]]],
) -> dict[str, dict]:
    scored = {}
    for family, items in {**in_distribution, **ood}.items():
        pixels, flagged, names = prepare_all(predictor, items)
        scored[family] = (content_scores(predictor, pixels), flagged, len(names))
    val_scores = scored["validation split"][0]
    thresholds = {m: validation_threshold(s) for m, s in val_scores.items()}
    thresholds["mahalanobis"] = stored_ood(predictor).threshold  # the stored one (same rule)
    id_all = {m: np.concatenate([scored[f][0][m] for f in in_distribution]) for m in thresholds}
    results: dict[str, dict] = {"thresholds": thresholds, "families": {}}
    for family, (scores, flagged, n) in scored.items():
        row: dict[str, float | int | bool] = {"n": n, "ood": family in ood}
        for method, values in scores.items():
            row[f"{method} flagged"] = float(np.mean(values > thresholds[method]))
            if family in ood:
                labels = np.r_[np.zeros(len(id_all[method])), np.ones(len(values))]
                row[f"{method} AUROC"] = float(roc_auc_score(labels, np.r_[id_all[method], values]))
        gate = flagged | (scores["mahalanobis"] > thresholds["mahalanobis"])
        row["gate flagged"] = float(np.mean(gate))
        results["families"][family] = row
    ood_rows = [r for r in results["families"].values() if r["ood"]]
    total = sum(r["n"] for r in ood_rows)
    results["ood_overall"] = {
        key: sum(r[key] * r["n"] for r in ood_rows) / total
        for key in ood_rows[0]
        if key not in ("n", "ood")
    } | {"n": total}
    return results


def print_tables(results: dict) -> None:
    methods = list(results["thresholds"])
    print("thresholds (99th percentile of validation):", results["thresholds"])
    header = ["family", "n", *(f"{m} AUROC" for m in methods)]
    header += [*(f"{m} flagged" for m in methods), "gate flagged"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    rows = {**results["families"], "**all OOD**": results["ood_overall"]}
    for family, row in rows.items():
        cells = [family, str(row["n"])]
        for key in header[2:]:
            value = row.get(key)
            cells.append("—" if value is None else f"{value:.3f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
