"""A Predictor in other processes: pickled as the call that loads it."""

from __future__ import annotations

import pickle

import pytest

from pneumolab.inference.predictor import Predictor


def test_a_loaded_predictor_pickles_as_its_loading_call(tiny_run):
    """Sent to a worker process (joblib, multiprocessing), a Predictor failed to pickle on its
    scoring closures; it now travels as the call that loads it, with the same options."""
    run_dir, data = tiny_run
    image = next((data / "train" / "NORMAL").iterdir())
    predictor = Predictor.from_run(run_dir, tta=True, scope_verdict=False)
    copy = pickle.loads(pickle.dumps(predictor))
    assert copy is not predictor and copy.tta and not copy.scope_verdict
    assert copy.threshold == predictor.threshold
    assert copy.predict(image).probability == predictor.predict(image).probability
    built = Predictor(predictor.model, predictor.meta)  # not from a run folder
    with pytest.raises(TypeError, match="only a Predictor loaded with"):
        pickle.dumps(built)
