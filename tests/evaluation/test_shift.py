"""The shift protocol: scenarios change what equalisation cannot undo, deterministically per draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pneumolab.data.transforms import normalize_intensity
from pneumolab.evaluation.shift import (
    SCENARIOS,
    acquisition_batch,
    apply_shift,
    batch_breakdown,
    local_contrast,
    markers,
    reframe,
    shift_protocol,
)
from pneumolab.results import BatchFigures


@pytest.fixture
def pixels() -> torch.Tensor:
    """Eight smooth 64 px 'X-rays': a bright ellipse on a darker field."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    base = (60 + 140 * (xx**2 / 0.6 + yy**2 / 0.8 < 1).float()).to(torch.uint8)
    return torch.stack([base[None].clone() for _ in range(8)])


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_scenario_keeps_shape_and_dtype_and_changes_the_equalised_image(pixels, name):
    shifted = apply_shift(pixels, SCENARIOS[name], seed=0)
    assert shifted.shape == pixels.shape and shifted.dtype == torch.uint8
    changed = normalize_intensity(shifted, "equalize") != normalize_intensity(pixels, "equalize")
    assert changed.float().mean() > 0.01


def test_draws_are_reproducible_and_differ_between_seeds(pixels):
    first = apply_shift(pixels, SCENARIOS["compound"], seed=1)
    assert torch.equal(first, apply_shift(pixels, SCENARIOS["compound"], seed=1))
    assert not torch.equal(first, apply_shift(pixels, SCENARIOS["compound"], seed=2))
    # images of one draw get different parameters
    assert not torch.equal(first[0], first[1])


def test_reframe_adds_black_bands_and_markers_add_bright_blocks():
    flat = torch.full((1, 64, 64), 128, dtype=torch.uint8)
    banded = [reframe(flat.clone(), np.random.default_rng(s)) for s in range(20)]
    assert any((b == 0).float().mean() > 0.05 for b in banded)
    marked = markers(flat.clone(), np.random.default_rng(0))
    assert (marked >= 200).any() and (marked == 128).float().mean() > 0.8


def test_protocol_scores_every_scenario_per_draw():
    pixels = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    labels = np.array([0, 0, 0, 1, 1, 1])
    calls = []

    def score(batch: torch.Tensor) -> np.ndarray:
        calls.append(batch.clone())
        return batch.float().mean(dim=(1, 2, 3)).numpy() / 255.0

    results = shift_protocol(score, pixels, labels, threshold=0.5, draws=2)
    assert [r.scenario for r in results] == list(SCENARIOS)
    # scenario by scenario, draw by draw: the shifted pixels of that draw, never the clean ones
    expected = [apply_shift(pixels, shift, seed) for shift in SCENARIOS.values() for seed in (0, 1)]
    assert len(calls) == len(expected)
    for batch, shifted in zip(calls, expected, strict=True):
        assert torch.equal(batch, shifted) and not torch.equal(batch, pixels)
    summary = results[0].summary()
    assert summary.min_roc_auc <= summary.mean_roc_auc
    assert set(summary.model_dump()) == {
        f"{s}_{m}" for s in ("mean", "min") for m in ("roc_auc", "specificity", "sensitivity")
    }


def test_batch_breakdown_separates_the_normal_batches():
    names = ["IM-0001-0001.jpeg", "NORMAL2-IM-0002-0001.jpeg", "person1_virus_1.jpeg"] * 2
    batches = [acquisition_batch(n) for n in names]
    assert batches[:3] == ["IM", "NORMAL2", "person"]
    labels = np.array([0, 0, 1, 0, 0, 1])
    # IM normals score low, NORMAL2 normals score as high as pneumonia
    probs = np.array([0.1, 0.9, 0.8, 0.2, 0.95, 0.7])
    report = batch_breakdown(probs, labels, batches, threshold=0.5)
    assert report["IM"] == BatchFigures(n_normal=2, roc_auc=1.0, specificity=1.0)
    assert report["NORMAL2"].specificity == 0.0 and report["NORMAL2"].roc_auc < 0.5


def test_names_of_no_kaggle_scheme_are_no_batch_of_theirs():
    """Mendeley's ``NORMAL-N-K`` normals were filed in ``person``, the pneumonia batch."""
    assert acquisition_batch("NORMAL-1003233-0001.jpeg") == "other"
    assert acquisition_batch("scan.png") == "other"


def test_leave_batch_out_builds_one_tree_per_batch(tmp_path):
    """One shared ``OUT/data`` kept the first batch's tree: the second batch's run trained on
    every image it then scored as unseen (597 of 597)."""
    import importlib.util

    from PIL import Image

    from pneumolab.data.layout import scan_split

    script = Path(__file__).parents[2] / "benchmarks" / "leave_batch_out.py"
    if not script.is_file():
        pytest.skip("benchmarks/ is in the repository, not the sdist")
    spec = importlib.util.spec_from_file_location("leave_batch_out", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path / "data"
    names = {
        "NORMAL": ["IM-0001-0001.png", "NORMAL2-IM-0002-0001.png"],
        "PNEUMONIA": ["person1_virus_1.png"],
    }
    for label, files in names.items():
        (data / "train" / label).mkdir(parents=True)
        for name in files:
            Image.new("L", (8, 8), 100).save(data / "train" / label / name)
    out = tmp_path / "out"
    module.reduced_root(data, out, "NORMAL2")
    root, left_out = module.reduced_root(data, out, "IM")
    trained_on = {s.path.name for s in scan_split(root / "train")}
    assert [s.path.name for s in left_out] == ["IM-0001-0001.png"]
    assert "IM-0001-0001.png" not in trained_on and "NORMAL2-IM-0002-0001.png" in trained_on


def _marked_corners(image: torch.Tensor) -> list[str]:
    """The corners (quarters of each side) holding bright marker pixels."""
    side, quarter = image.shape[-1], image.shape[-1] // 4
    spans = {"top": slice(0, quarter), "bottom": slice(side - quarter, side)}
    spans |= {"left": spans["top"], "right": spans["bottom"]}
    return [
        f"{row}-{column}"
        for row in ("top", "bottom")
        for column in ("left", "right")
        if (image[0][spans[row], spans[column]] > 150).any()
    ]


@pytest.mark.parametrize("name", ["markers", "compound"])
def test_a_draw_gives_the_same_shift_at_every_image_size(name):
    """Models of different input sizes are compared on the same shifts (the markers' places
    once moved with the number of noise values drawn before them)."""
    for index in range(30):
        small, large = (
            SCENARIOS[name](
                torch.full((1, size, size), 60, dtype=torch.uint8),
                np.random.default_rng([0, index]),
            )
            for size in (160, 224)
        )
        assert _marked_corners(small) == _marked_corners(large), index


def test_the_local_contrast_field_spans_what_its_docstring_says():
    """Stated as gains in 0.7–1.3; bicubic upsampling overshoots that at a draw's extremes."""
    flat = torch.full((1, 64, 64), 100, dtype=torch.uint8)
    gains = np.stack(
        [local_contrast(flat, np.random.default_rng([0, i])).numpy() / 100 for i in range(300)]
    )
    low, high = np.percentile(gains, [1, 99])
    assert 0.68 <= low <= 0.70 and 1.30 <= high <= 1.32
    assert 0.55 <= gains.min() < 0.7 and 1.3 < gains.max() <= 1.45  # the overshoot, bounded
