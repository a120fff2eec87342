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
    for nonsense in (0, -1):  # every file was then refused: "over the limit of -1 pixels"
        with pytest.raises(ValueError, match=f"at least 1\\), not {nonsense}"):
            Predictor.from_run(run_dir, max_pixels=nonsense)


def test_an_image_in_memory_given_as_a_path_names_predict(tiny_run):
    """``predict_paths([array])`` failed in pathlib: "expected str, bytes or os.PathLike
    object, not ndarray"."""
    import numpy as np

    predictor = Predictor.from_run(tiny_run[0])
    with pytest.raises(TypeError, match=r"not ndarray; an image in memory .* Predictor.predict"):
        list(predictor.predict_paths([np.zeros((40, 40), np.uint8)]))


def test_weights_holding_nan_are_refused_by_name(tiny_run, tmp_path):
    """A corrupt weights file with a NaN bias scored every image NaN, a confident NORMAL."""
    from safetensors.torch import load_file, save_file

    from conftest import copy_run
    from pneumolab.errors import RunDirError

    run = copy_run(tiny_run[0], tmp_path / "run")
    state = load_file(run / "model.safetensors")
    name = next(n for n in state if n.endswith("bias"))
    state[name][...] = float("nan")
    save_file(state, run / "model.safetensors")
    with pytest.raises(RunDirError, match=rf"model\.safetensors: weights hold NaN .*\({name}"):
        Predictor.from_run(run)


def test_a_stored_threshold_that_is_not_a_number_is_refused(tiny_run, tmp_path):
    import json

    from conftest import copy_run
    from pneumolab.errors import RunDirError

    run = copy_run(tiny_run[0], tmp_path / "run")
    meta = json.loads((run / "meta.json").read_text())
    meta["threshold"] = float("nan")  # json.dumps writes NaN, as meta.json allows for metrics
    (run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match=r"meta\.json: .*\(threshold: Input should be a finite"):
        Predictor.from_run(run)
