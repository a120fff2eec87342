"""Saliency sanity: heat in a corner is flagged, heat on the chest is not; a real run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mean_reader import mean_reader
from pneumolab.explain import sanity
from pneumolab.explain.gradcam import GradCamMaps
from pneumolab.explain.sanity import heat_shares, region_masks, saliency_sanity
from pneumolab.inference.predictor import Predictor
from pneumolab.models.registry import create_classifier

SIZE = 40


def forced_heat(where: str) -> np.ndarray:
    heat = np.zeros((SIZE, SIZE), dtype=np.float32)
    if where == "corner":
        heat[:3, :3] = 1.0
    else:
        heat[15:25, 15:25] = 1.0
    return heat


def test_regions_partition_the_outer_band():
    masks = region_masks(SIZE)
    assert not (masks["border"] & masks["corners"]).any()
    assert not (masks["centre"] & (masks["border"] | masks["corners"])).any()
    assert masks["corners"].sum() == 4 * 4 * 4
    assert masks["centre"].sum() == 24 * 24
    assert sum(mask.sum() for mask in masks.values()) == SIZE * SIZE  # a partition
    assert not (masks["ring"] & (masks["centre"] | masks["border"] | masks["corners"])).any()
    assert set(heat_shares(np.zeros((SIZE, SIZE))).values()) == {0.0}


@pytest.mark.parametrize(("where", "flagged"), [("corner", True), ("centre", False)])
def test_forced_heat_is_flagged_only_in_the_corner(monkeypatch, where, flagged):
    heat = forced_heat(where)
    monkeypatch.setattr(sanity, "gradcam_maps", lambda *args: GradCamMaps(heat, heat))
    model = create_classifier("pneumolab_cnn_small", pretrained=False)
    pixels = torch.zeros((3, 1, SIZE, SIZE), dtype=torch.uint8)
    result = saliency_sanity(model, pixels, "none")
    assert result.flagged is flagged
    assert result.n == len(result.per_image) == 3
    if flagged:
        assert result.per_image[0]["corners"] == pytest.approx(1.0)
        assert result.fraction_flagged == 1.0
    else:
        assert result.median_centre_share == pytest.approx(1.0)
        assert result.mean_border_share == 0.0


def test_real_run_end_to_end(tiny_run):
    run_dir = tiny_run[0]
    predictor = Predictor.from_run(run_dir)
    size = predictor.image_size
    pixels = torch.randint(0, 256, (4, 1, size, size), generator=torch.Generator().manual_seed(0))
    result = saliency_sanity(predictor.model, pixels.to(torch.uint8), predictor.intensity)
    assert result.n == 4
    # the trained net's maps have heat (an empty map would give 0 in every region)
    totals = [sum(shares.values()) for shares in result.per_image]
    assert all(t == pytest.approx(1.0) for t in totals)  # the regions cover the map
    assert isinstance(result.flagged, bool)
    for key in (
        "mean_centre_share",
        "median_centre_share",
        "mean_border_share",
        "fraction_flagged",
    ):
        assert 0.0 <= getattr(result, key) <= 1.0
    assert set(result.per_image[0]) == {"centre", "border", "corners", "ring"}


def test_maps_without_heat_are_counted_apart_not_as_zero_shares():
    """An empty map (the pneumonia logit's, on an image called NORMAL) counted as 0 in every
    region: 17 of 64 such maps lowered a run's mean centre share from 0.40 to 0.29."""
    from pneumolab.explain.sanity import summarize_shares

    centre, corner = heat_shares(forced_heat("centre")), heat_shares(forced_heat("corner"))
    empty = heat_shares(np.zeros((SIZE, SIZE)))
    result = summarize_shares([centre, centre, corner, empty, empty, empty])
    assert (result.n, result.empty_maps) == (3, 3)
    assert result.mean_centre_share == pytest.approx(2 / 3)
    assert result.fraction_flagged == pytest.approx(1 / 3) and result.flagged
    assert len(result.per_image) == 6
    nothing = summarize_shares([empty])
    assert (nothing.n, nothing.empty_maps, nothing.flagged) == (0, 1, False)
    ring = np.zeros((SIZE, SIZE))
    ring[5:7, 15:25] = 1.0  # between the outer band and the centre box: heat, not an empty map
    assert summarize_shares([heat_shares(ring)]).n == 1


def test_shares_are_fractions_of_the_unscaled_map():
    """The shares were taken from grad-cam's display map, stretched per image from its minimum:
    a map warm everywhere (100) and hotter on a 10 x 10 centre block (200) gave the centre all
    of its heat (1.0), not the 0.40 of its sum that lies there."""
    image = np.full((SIZE, SIZE), 100, np.uint8)
    image[15:25, 15:25] = 200  # the mean reader's unscaled map is the image itself
    result = saliency_sanity(mean_reader(), torch.from_numpy(image)[None, None], "none")
    assert result.per_image[0] == pytest.approx(heat_shares(image.astype(float)), abs=1e-4)
    assert result.mean_centre_share == pytest.approx((576 * 100 + 100 * 100) / 170_000, abs=1e-4)
