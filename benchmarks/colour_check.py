"""The input-scope gate's colour check on in-scope and out-of-scope colour images.

    python benchmarks/colour_check.py --data ../shared/data/chest_xray [--run RUN_DIR] [--images 8]

Takes ``--images`` X-rays (half NORMAL, half PNEUMONIA) from ``DATA/val`` and writes each, under
a temporary folder, as what a site may send: gray stored as RGB JPEG or PNG, with coloured
annotations of a given area, under a colour cast, tinted, as a false-colour map, or with a
Grad-CAM-style heat map laid over part of the lungs or the whole image. Prints, per case, how
many are flagged as colour images and the recorded share of clearly coloured pixels (median,
range). With ``--run``, also the NORMAL X-rays' mean probability of pneumonia and how many of
them are called PNEUMONIA, to show what a flag protects against.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from pneumolab.data.colour import colour_share_of
from pneumolab.data.imageio import load_image
from pneumolab.inference.inputs import prepare_image
from pneumolab.inference.predictor import Predictor

SIZE = 160
Case = Callable[[np.ndarray], np.ndarray]


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.stack([gray] * 3, -1)


def _box(share: float) -> Case:
    """A solid red box covering ``share`` of the image, in its upper left."""

    def draw(gray: np.ndarray) -> np.ndarray:
        image = Image.fromarray(_gray_rgb(gray))
        side = int(np.sqrt(share * gray.size))
        ImageDraw.Draw(image).rectangle([4, 4, 4 + side - 1, 4 + side - 1], fill=(230, 30, 30))
        return np.asarray(image)

    return draw


def _gains(red: float, green: float, blue: float) -> Case:
    return lambda gray: np.clip(_gray_rgb(gray) * np.array([red, green, blue]), 0, 255)


def _tint(colour: tuple[float, float, float], strength: float) -> Case:
    """The gray blended towards ``gray x colour`` by ``strength``."""
    tinted = np.array(colour)
    return lambda gray: _gray_rgb(gray) * ((1 - strength) + strength * tinted)


def _colormap(name: str) -> Case:
    return lambda gray: colormaps[name](gray / 255.0)[..., :3] * 255


def _overlay(above: float | None) -> Case:
    """A jet heat map of a blob over the right lung blended at 50%: over the whole image, or only
    where the map is above ``above`` (a map drawn over its hot part only)."""

    def draw(gray: np.ndarray) -> np.ndarray:
        h, w = gray.shape
        yy, xx = np.mgrid[0:h, 0:w]
        cam = np.exp(-(((xx - 0.3 * w) / (0.15 * w)) ** 2 + ((yy - 0.55 * h) / (0.2 * h)) ** 2))
        alpha = 0.5 if above is None else 0.5 * (cam > above)[..., None]
        return (1 - alpha) * _gray_rgb(gray) + alpha * colormaps["jet"](cam)[..., :3] * 255

    return draw


CASES: dict[str, tuple[Case, str]] = {
    "gray as RGB JPEG q75": (_gray_rgb, "JPEG"),
    "gray as RGB PNG": (_gray_rgb, "PNG"),
    **{f"red box {p:.0%} of the image": (_box(p), "PNG") for p in (0.03, 0.08, 0.12)},
    **{f"colour cast {g}": (_gains(*g), "JPEG") for g in ((1.1, 1, 0.85), (1.2, 1, 0.75))},
    **{
        f"{name} tint {s:.0%}": (_tint(colour, s), "JPEG")
        for name, colour in (("magenta", (1, 0, 1)), ("sepia", (1, 0.8, 0.53)))
        for s in (0.2, 0.3, 0.5, 0.7, 1.0)
    },
    **{f"false colour {m}": (_colormap(m), "PNG") for m in ("jet", "viridis", "bone")},
    "heat map over the whole image": (_overlay(None), "PNG"),
    **{f"heat map where above {t}": (_overlay(t), "PNG") for t in (0.2, 0.4, 0.7)},
}


def _xrays(data: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """``count`` validation X-rays, half of them NORMAL, with their class."""
    half = {"NORMAL": count - count // 2, "PNEUMONIA": count // 2}
    return [
        (label, np.asarray(Image.open(path).convert("L")))
        for label, n in half.items()
        for path in sorted((data / "val" / label).glob("*.jpeg"))[:n]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", type=Path, help="also score every image with this run")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    predictor = Predictor.from_run(args.run) if args.run else None
    xrays = _xrays(args.data, args.images)
    normals = sum(label == "NORMAL" for label, _ in xrays)
    print(f"{len(xrays)} validation X-rays ({normals} NORMAL); colour share: median [min..max]\n")
    scored = "NORMAL: P(pneumonia) mean | NORMAL called PNEUMONIA |" if predictor else ""
    print("| case | flagged | colour share | " + scored)
    print("|---|---|---|" + ("---|---|" if predictor else ""))
    with tempfile.TemporaryDirectory() as folder:
        for name, (make, kind) in CASES.items():
            shares, flagged, probabilities = [], 0, []
            for i, (label, gray) in enumerate(xrays):
                path = Path(folder) / f"{i}.{kind.lower()}"
                Image.fromarray(np.clip(make(gray), 0, 255).astype(np.uint8)).save(path, kind)
                shares.append(colour_share_of(load_image(path, size_hint=SIZE, colour=True)))
                reasons = prepare_image(path, SIZE)[1].reasons
                flagged += any(reason.startswith("colour image") for reason in reasons)
                if predictor is not None and label == "NORMAL":
                    probabilities.append(predictor.predict(path).probability)
            row = f"| {name} | {flagged}/{len(xrays)} | {np.median(shares):.3f} "
            row += f"[{min(shares):.3f}..{max(shares):.3f}] |"
            if predictor is not None:
                called = sum(p >= predictor.threshold for p in probabilities)
                row += f" {np.mean(probabilities):.2f} | {called}/{normals} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
