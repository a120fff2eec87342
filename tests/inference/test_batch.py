"""Streaming predictions to a file: one row per image, errors recorded, resumable."""

from __future__ import annotations

import copy
import csv
import json

import pytest

from pneumolab.errors import ConfigError
from pneumolab.inference.batch import predict_to_file
from pneumolab.inference.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(tiny_run[0])


@pytest.fixture
def images(predictor, tmp_path):
    from conftest import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "d", per_class=5)
    files = sorted((data / "train").rglob("*.png"))
    (data / "train" / "NORMAL" / "broken.png").write_text("not an image")
    return data / "train", files


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_one_row_per_image_and_errors_recorded(predictor, images, tmp_path, suffix):
    folder, files = images
    out = tmp_path / f"results{suffix}"
    summary = predict_to_file(predictor, [folder], out, batch_size=3, progress=False)
    assert (summary.written, summary.failed, summary.already_done) == (11, 1, 0)
    rows = _read(out)
    assert len(rows) == 11
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and "broken.png" in errors[0]["error"]
    assert {r["source"] for r in rows if not r["error"]} == {str(f) for f in files}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rerun_resumes_and_retries_failures(predictor, images, tmp_path, suffix):
    folder, files = images
    out = tmp_path / f"results{suffix}"
    predict_to_file(predictor, files[:4], out, progress=False)
    with out.open("a") as f:
        f.write("half a line cut by a kill")  # an interrupted write
    summary = predict_to_file(predictor, [folder], out, progress=False)
    assert summary.already_done == 4
    assert summary.written == 7  # 6 new images + the broken one
    rows = _read(out)
    assert len(rows) == 11
    assert len({r["source"] for r in rows}) == 11


def test_rows_of_finished_batches_survive_an_interruption(predictor, images, tmp_path):
    folder, _ = images
    interrupted, calls = copy.copy(predictor), []

    def third_batch_interrupts(pixels):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return predictor.scorer(pixels)

    interrupted.scorer = third_batch_interrupts
    out = tmp_path / "results.csv"
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(interrupted, [folder], out, batch_size=3, progress=False)
    assert len(_read(out)) == 6  # the two scored batches, nothing torn


def test_unknown_output_format(predictor, images, tmp_path):
    with pytest.raises(ConfigError, match=r"\.csv or \.jsonl"):
        predict_to_file(predictor, [images[0]], tmp_path / "out.txt", progress=False)


def _read(out):
    if out.suffix == ".csv":
        with out.open(newline="") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in out.read_text().splitlines()]
