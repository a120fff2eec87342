"""A Predictor in other processes: pickled as the call that loads it."""

from __future__ import annotations

import pickle

import pytest
from PIL import Image

from pneumolab.errors import ImageLoadError
from pneumolab.inference.predictor import Predictor


def test_a_loaded_predictor_pickles_as_its_loading_call(tiny_run):
    """Sent to a worker process (joblib, multiprocessing), a Predictor failed to pickle on its
    scoring closures; it now travels as the call that loads it, with the same options."""
    run_dir, data = tiny_run
    image = next((data / "train" / "NORMAL").iterdir())
    predictor = Predictor.from_run(run_dir, tta=True, scope_verdict=False, max_pixels=90_000)
    copy = pickle.loads(pickle.dumps(predictor))
    assert copy is not predictor and copy.tta and not copy.scope_verdict
    assert copy.max_pixels == 90_000
    assert copy.threshold == predictor.threshold
    assert copy.predict(image).probability == predictor.predict(image).probability
    built = Predictor(predictor.model, predictor.meta)  # not from a run folder
    with pytest.raises(TypeError, match="only a Predictor loaded with"):
        pickle.dumps(built)


def test_max_pixels_refuses_larger_files_from_their_header(tiny_run, tmp_path):
    """A file over the predictor's ``max_pixels`` is refused by name; one at it is read."""
    run_dir, data = tiny_run
    image = next((data / "train" / "NORMAL").iterdir())
    width, height = Image.open(image).size
    at_limit = Predictor.from_run(run_dir, max_pixels=width * height)
    assert 0 <= at_limit.predict(image).probability <= 1
    below = Predictor.from_run(run_dir, max_pixels=width * height - 1)
    with pytest.raises(ImageLoadError, match=f"{image.name}: {width}x{height} pixels is over"):
        below.predict(image)
