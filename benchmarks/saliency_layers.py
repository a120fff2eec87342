"""Is the saliency flag an artefact of a coarse Grad-CAM map? Run the sanity check at several
depths of the network.

    python benchmarks/saliency_layers.py RUN_DIR --data DATA_DIR [--images 64]

For the default target layer (the last convolutional map) and for the last module at each of the
backbone's coarser reductions (timm ``feature_info``: stride 32, 16, 8), prints the Grad-CAM map
size and the saliency sanity summary (mean centre share, border and corner shares, fraction of
images flagged, maps without heat counted apart) on evenly spaced PNEUMONIA validation images
(the pneumonia logit's map of a NORMAL image is often empty).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pneumolab.data.dataset import decode_samples
from pneumolab.explain.gradcam import find_target_layer
from pneumolab.explain.sanity import saliency_sanity
from pneumolab.inference.predictor import Predictor
from pneumolab.run import RunDir


def _map_size(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Height and width of ``layer``'s output for input ``x``."""
    shapes = []
    handle = layer.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape[-2:]))
    with torch.inference_mode():
        model(x)
    handle.remove()
    return int(shapes[0][0]), int(shapes[0][1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    predictor = Predictor.from_run(args.run_dir)
    model = predictor.require_model("the saliency check")
    samples = [s for s in RunDir(args.run_dir).read_split(args.data, "val") if s.label == 1]
    picks = np.linspace(0, len(samples) - 1, min(args.images, len(samples)), dtype=int)
    pixels = decode_samples([samples[i] for i in picks], predictor.image_size).pixels
    backbone = model.backbone
    modules = dict(backbone.named_modules())
    layers = {"default (last conv map)": find_target_layer(model, predictor.image_size)}
    for info in reversed(getattr(backbone, "feature_info", [])[-3:]):
        layers[f"{info['module']} (stride {info['reduction']})"] = modules[info["module"]]
    print(
        f"{args.run_dir}: {len(pixels)} PNEUMONIA validation images at {predictor.image_size} px\n"
    )
    print(
        "| layer | map | maps with heat (empty) | centre share | border share | corner share "
        "| flagged images | flag |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, layer in layers.items():
        result = saliency_sanity(model, pixels, predictor.intensity, layer)
        height, width = _map_size(model, layer, pixels[:1].float() / 255.0)
        print(
            f"| {name} | {height}x{width} | {result.n} ({result.empty_maps}) | "
            f"{result.mean_centre_share:.3f} | "
            f"{result.mean_border_share:.3f} | {result.mean_corner_share:.3f} | "
            f"{result.fraction_flagged:.2f} | {result.flagged} |"
        )


if __name__ == "__main__":
    main()
