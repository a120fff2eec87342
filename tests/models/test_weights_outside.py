"""The weights file outside pneumolab: docs/run-directory.md's plain-timm recipe, followed as
written, scores as pneumolab does."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import pneumolab.models.custom  # noqa: F401  (registers the tiny CNN with timm)
from conftest import train_tiny_run
from pneumolab.inference.predictor import Predictor

pytestmark = pytest.mark.slow  # trains its own model


def test_plain_timm_with_the_documented_preprocessing_gives_the_same_probability(tmp_path):
    run = train_tiny_run(tmp_path, intensity="clahe")
    meta = json.loads((run / "meta.json").read_text())
    state = load_file(run / "model.safetensors")
    assert set(state) - {k for k in state if k.startswith("backbone.")} == {"mean", "std"}
    net = timm.create_model(meta["model"], num_classes=1, in_chans=3)
    net.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    )
    net.eval()
    size, prep = meta["image_size"], meta["preprocessing"]
    mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    predictor = Predictor.from_run(run)
    images = sorted((tmp_path / "data" / "train").rglob("*.png"))[:6]
    for path in images:
        gray = Image.open(path).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(clahe.apply(np.asarray(gray))).float() / 255
        x = pixels.view(1, 1, size, size).repeat(1, 3, 1, 1)
        with torch.no_grad():
            probability = torch.sigmoid(net((x - mean) / std)).item()
        assert probability == pytest.approx(predictor.predict(path).probability, abs=1e-5)
