"""Border suppression (``border_fade``): the mask, the model that applies it, and a run that
carries it through meta.json, prediction, the model card and ONNX export."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import train_tiny_run
from pneumolab.config import TrainConfig
from pneumolab.inference.predictor import Predictor
from pneumolab.models.classifier import border_fade_mask
from pneumolab.models.registry import create_classifier
from pneumolab.run import RunDir
from pneumolab.serving.export import export_onnx


@settings(max_examples=50)
@given(st.integers(32, 300), st.integers(32, 300), st.floats(0.05, 0.45))
def test_the_mask_fades_the_edges_and_keeps_the_centre(height, width, fade):
    mask = border_fade_mask(height, width, fade)
    assert mask.shape == (height, width)
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert float(mask[height // 2, width // 2]) == pytest.approx(1.0)
    assert float(mask[0, width // 2]) < 0.25 and float(mask[height // 2, 0]) < 0.25
    torch.testing.assert_close(mask, mask.flip(0))  # symmetric
    torch.testing.assert_close(mask, mask.flip(1))
    row = mask[height // 2, : width // 2]
    assert bool((row[1:] >= row[:-1]).all())  # rises towards the centre


def test_the_model_sees_the_faded_image():
    torch.manual_seed(0)
    plain = create_classifier("pneumolab_cnn_small").eval()
    faded = create_classifier("pneumolab_cnn_small", border_fade=0.2).eval()
    faded.load_state_dict(plain.state_dict())
    pixels = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(faded(pixels), plain(pixels * border_fade_mask(40, 40, 0.2)))
        border_only = pixels.clone()
        border_only[..., 0, :] = 1 - border_only[..., 0, :]  # change only the outer row
        assert not torch.allclose(plain(border_only), plain(pixels))
        moved = (faded(border_only) - faded(pixels)).abs().max()
        assert moved < 0.1 * (plain(border_only) - plain(pixels)).abs().max()


def test_a_fade_of_half_the_side_or_more_is_refused():
    with pytest.raises(ValueError, match="border_fade"):
        create_classifier("pneumolab_cnn_small", border_fade=0.5)
    with pytest.raises(ValueError, match="border_fade"):
        TrainConfig(border_fade=0.5)


def test_a_run_keeps_its_border_fade_through_prediction_and_export(tmp_path):
    run = train_tiny_run(tmp_path, border_fade=0.1)
    assert RunDir(run).read_meta().preprocessing.border_fade == 0.1
    predictor = Predictor.from_run(run)
    assert predictor.model.border_fade == 0.1
    assert "outer 10% of each side fades to black" in (run / "MODEL_CARD.md").read_text()

    report = export_onnx(run, tmp_path / "m.onnx")  # the ONNX graph fades the border too
    assert report.max_abs_diff <= 1e-5 and report.labels_identical
