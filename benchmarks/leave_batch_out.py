"""Leave one acquisition batch of normal images out of training, then score the model on it.

    python benchmarks/leave_batch_out.py --data DATA --out DIR --name NAME [--batch NORMAL2] \
        [--weights WEIGHTS] [KEY=VALUE ...]

The normal training images come in two batches (file names ``IM-`` and ``NORMAL2-``); the
official test split was collected apart from both. This builds ``DIR/data-BATCH`` (symbolic links, no
copies: ``train/`` without the ``--batch`` normals, the other splits as they are), trains the
default recipe with ``KEY=VALUE`` overrides into ``DIR/NAME`` (validation carved from the reduced
train), and scores the left-out normals against the run's validation pneumonia images: ROC AUC
and specificity at the run's stored threshold, beside the clean validation figures. Prints a
markdown row and writes ``DIR/NAME/left_out.json``. Nothing here looks at the test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from pneumolab.config import TrainConfig
from pneumolab.data.dataset import decode_samples
from pneumolab.data.layout import Sample, find_splits, scan_split
from pneumolab.evaluation.metrics import binary_metrics
from pneumolab.evaluation.shift import acquisition_batch
from pneumolab.inference.predictor import Predictor
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir


def reduced_root(data: Path, out: Path, batch: str) -> tuple[Path, list[Sample]]:
    """``out/data-<batch>``: ``data`` without ``batch``'s normal training images; and those
    images. One folder per batch: one shared ``out/data`` kept the first batch's tree, so a
    second batch's run trained on the images it then scored as unseen."""
    root = out / f"data-{batch}"
    splits = find_splits(data)
    train_samples = scan_split(splits["train"])
    left_out = [
        s for s in train_samples if s.label == 0 and acquisition_batch(s.path.name) == batch
    ]
    if not left_out:
        raise SystemExit(f"{splits['train']}: no normal images of batch {batch}")
    if not root.exists():
        for name, folder in splits.items():
            if name != "train":
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).symlink_to(folder.resolve(), target_is_directory=True)
        left_out_paths = {s.path for s in left_out}
        kept = [s for s in train_samples if s.path not in left_out_paths]
        for sample in kept:
            link = root / "train" / sample.path.parent.name / sample.path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(sample.path.resolve())
    trained_on = {s.path.name for s in scan_split(root / "train")}
    if any(s.path.name in trained_on for s in left_out):
        raise SystemExit(f"{root}: holds images of batch {batch}; remove the folder and rerun")
    return root, left_out


def score(run_dir: Path, root: Path, left_out: list[Sample]) -> dict[str, float]:
    """Clean validation figures, and the left-out normals against validation pneumonia."""
    predictor = Predictor.from_run(run_dir)
    val = RunDir(run_dir).read_split(root, "val")
    pneumonia = [s for s in val if s.label == 1]
    figures: dict[str, float] = {}
    for what, samples in (("val", val), ("left_out", left_out + pneumonia)):
        decoded = decode_samples(samples, predictor.image_size)
        labels = np.array([s.label for s in decoded.samples])
        metrics = binary_metrics(labels, predictor.backend(decoded.pixels), predictor.threshold)
        figures[f"{what}_roc_auc"] = metrics.roc_auc
        figures[f"{what}_specificity"] = metrics.specificity
    figures["left_out_normals"] = len(left_out)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the run's folder under --out")
    parser.add_argument("--batch", default="NORMAL2", choices=["NORMAL2", "IM"])
    parser.add_argument("--weights", help="local ImageNet weights (file or folder)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    config = TrainConfig(**settings, weights=args.weights)
    root, left_out = reduced_root(args.data, args.out, args.batch)
    run_dir = args.out / args.name
    if not RunDir(run_dir).is_complete():
        train(root, run_dir, config)
    figures = score(run_dir, root, left_out)
    (run_dir / "left_out.json").write_text(json.dumps(figures, indent=1))
    print("| run | val AUC | val spec | left-out batch AUC | left-out spec |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.name} | {figures['val_roc_auc']:.4f} | {figures['val_specificity']:.3f} | "
        f"{figures['left_out_roc_auc']:.4f} | {figures['left_out_specificity']:.3f} |"
    )


if __name__ == "__main__":
    main()
