"""predict --engine ray on a local Ray started by the test (2 CPUs): the probabilities and scope
verdicts of the single-process path, a corrupt file reported by name, resume (of a file the
single-process path began) without duplicates, a foreign file refused untouched, options out of
range refused."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import sys

import pytest
from PIL import Image

from conftest import write_synthetic_dataset
from pneumolab.cli import main
from pneumolab.errors import ConfigError, DataLayoutError, OutputError
from pneumolab.inference.batch import predict_to_file, producer_of
from pneumolab.inference.inputs import expand_paths
from pneumolab.inference.prediction import OUT_OF_SCOPE_LABEL
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.ray_engine import (
    RayOptions,
    decode_batch,
    import_ray,
    predict_with_ray,
)
from pneumolab.inference.results_file import FIELDS, NotAResultsFile
from pneumolab.inference.results_table import read_results

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None,
    reason="Ray Data not installed (pip install 'pneumolab[distributed]')",
)
TWO_WORKERS = RayOptions(num_workers=2, cpus_per_worker=0.5, batch_size=8)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """30 X-rays, a constant gray image (out of scope) and one corrupt file."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("ray") / "d", per_class=15)
    (root / "train" / "NORMAL" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.new("L", (64, 64), 128).save(root / "train" / "NORMAL" / "constant.png")
    return expand_paths([root / "train"])


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(tiny_run[0])


def _single_process(predictor, files):
    results = predictor.predict_paths(files, TWO_WORKERS.batch_size)
    return {str(f.resolve()): r for f, r in zip(files, results, strict=True)}


@pytest.mark.slow
@needs_ray
def test_same_probabilities_as_the_single_process_path(local_ray, predictor, images, tmp_path):
    out = tmp_path / "results.parquet"
    summary = predict_with_ray(predictor, images, out, TWO_WORKERS)
    assert (summary.written, summary.failed, summary.already_done) == (32, 1, 0)
    rows = read_results(out)
    assert sorted(r.source for r in rows) == sorted(str(f.resolve()) for f in images)
    assert {r.producer for r in rows} == {producer_of(predictor)}
    single = _single_process(predictor, images)
    scored = [r.record() for r in rows if not r.error]
    assert len(scored) == 31
    assert max(abs(r["probability"] - single[r["source"]].probability) for r in scored) <= 1e-6
    for row in scored:  # the scope verdict, as the single-process path gives it
        expected = single[row["source"]].to_dict()
        assert row["label"] == expected["label"]
        assert row["in_scope"] == expected["in_scope"]
        assert (row["reasons"], row["warnings"]) == (expected["reasons"], expected["warnings"])
        assert row["ood_threshold"] == expected["ood_threshold"]
        if expected["ood_score"] is None:
            assert row["ood_score"] is None
        else:
            # float32 Mahalanobis distances of other batch compositions: a few ulps apart
            assert row["ood_score"] == pytest.approx(expected["ood_score"], rel=1e-5)
    assert any(r["ood_score"] is not None for r in scored)  # the tiny run has an OOD model
    (constant,) = [r for r in scored if r["source"].endswith("constant.png")]
    assert not constant["in_scope"] and constant["label"] == OUT_OF_SCOPE_LABEL
    assert "constant image" in constant["reasons"][0]
    (failed,) = [r for r in rows if r.error]
    assert failed.source.endswith("corrupt.png") and "corrupt.png" in failed.error
    assert failed.probability is None
    assert not out.with_name("results.parquet.parts").exists()


@pytest.mark.slow
@needs_ray
def test_resume_skips_what_is_done_and_writes_no_duplicates(local_ray, predictor, images, tmp_path):
    out = tmp_path / "results.csv"
    predict_to_file(predictor, images[:10], out, progress=False)  # the single-process path
    parts = out.with_name("results.csv.parts")
    parts.mkdir()
    (parts / "torn.parquet").write_bytes(b"PAR1 cut short by a kill")
    summary = predict_with_ray(predictor, images, out, TWO_WORKERS)
    assert summary.already_done == 10
    assert summary.written == 22  # the 21 others and the corrupt file, retried
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == FIELDS  # the columns of the single-process CSV
        rows = list(reader)
    assert len(rows) == len({r["source"] for r in rows}) == 32
    (constant,) = [r for r in rows if r["source"].endswith("constant.png")]
    assert constant["in_scope"] == "false" and constant["reasons"].startswith("constant image")
    again = predict_with_ray(predictor, images, out, TWO_WORKERS)
    assert (again.written, again.already_done) == (1, 31)  # only the corrupt file is retried
    assert len(read_results(out)) == 32


@needs_ray
def test_a_file_that_is_not_a_results_file_is_refused_untouched(predictor, images, tmp_path):
    out = tmp_path / "notes.csv"
    out.write_text("my notes\n")
    with pytest.raises(NotAResultsFile, match=r"notes\.csv"):
        predict_with_ray(predictor, images, out, TWO_WORKERS)
    assert out.read_text() == "my notes\n"


@needs_ray
def test_a_results_file_another_job_is_writing_is_refused_before_ray_starts(
    predictor, images, tmp_path
):
    from filelock import FileLock

    out = tmp_path / "r.parquet"
    refused = pytest.raises(OutputError, match=r"r\.parquet: another process is writing it")
    with FileLock(f"{out}.lock"), refused:  # another job holds the lock
        predict_with_ray(predictor, images, out, TWO_WORKERS)
    assert not out.exists() and not out.with_name("r.parquet.parts").exists()


@needs_ray
def test_a_name_that_is_not_utf8_is_refused_by_name_before_ray_starts(predictor, images, tmp_path):
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    shutil.copy(images[0], odd)
    with pytest.raises(
        DataLayoutError, match=r"caf\\xe9\.png: file name is not UTF-8.*local engine"
    ):
        predict_with_ray(predictor, [images[0], odd], tmp_path / "r.parquet", TWO_WORKERS)
    assert not (tmp_path / "r.parquet").exists()


@pytest.mark.slow
@needs_ray
def test_cli_with_a_manifest(local_ray, tiny_run, images, tmp_path, capsys):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "".join(f"{f}\n" for f in images[:5]))
    out = tmp_path / "r.parquet"
    command = ["predict", str(tiny_run[0]), "--manifest", str(manifest), "--engine", "ray"]
    assert main([*command, "--out", str(out), "--num-workers", "1"]) == 0
    assert len(read_results(out)) == 5
    assert main(command) == 2  # the ray engine needs --out
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
@needs_ray
def test_a_listed_image_the_workers_cannot_read_names_its_manifest_line(
    local_ray, tiny_run, images, tmp_path
):
    """The workers' error row named the image only, not where the manifest lists it."""
    corrupt = next(f for f in images if f.name == "corrupt.png")
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path\n{images[0]}\n{corrupt}\n")
    out = tmp_path / "r.csv"
    command = ["predict", str(tiny_run[0]), "--manifest", str(manifest), "--engine", "ray"]
    assert main([*command, "--out", str(out), "--num-workers", "1"]) == 1
    errors = {row.source: row.error for row in read_results(out)}
    assert errors[str(images[0])] == ""
    assert errors[str(corrupt)].startswith(f"{manifest}:3: {corrupt}: ")


def test_without_ray_the_engine_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(ConfigError, match=r"pip install 'pneumolab\[distributed\]'"):
        import_ray()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_workers": 0}, "num_workers and batch_size must be at least 1, got 0 and 32"),
        ({"batch_size": 0}, "num_workers and batch_size must be at least 1, got 1 and 0"),
        ({"cpus_per_worker": -1.0}, "must be >= 0, got -1.0 and 0.0"),
        ({"gpus_per_worker": float("nan")}, "must be >= 0, got 1.0 and nan"),
    ],
)
def test_options_out_of_range_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RayOptions(**options)


@needs_ray
def test_rows_the_workers_did_not_write_here_are_an_error_not_a_silent_gap(
    predictor, images, tmp_path, monkeypatch
):
    """Workers whose part files went elsewhere (a relative --out, once) left a header-only file
    and exit code 0; now the command says so and keeps what it has."""
    from pneumolab.inference import ray_engine

    monkeypatch.setattr(ray_engine, "_connect", lambda ray, options: None)
    monkeypatch.setattr(ray_engine, "check_every_node_sees", lambda *args: None)
    monkeypatch.setattr(ray_engine, "_score", lambda *args: None)  # wrote nowhere we look
    out = tmp_path / "rows.csv"
    with pytest.raises(OutputError, match=r"images scored have no row there"):
        predict_with_ray(predictor, images[:3], out, RayOptions())
    assert not out.exists()


def test_decoding_tasks_keep_the_predictors_pixel_limit(tmp_path):
    """The Ray decoding task refuses an image over the ``max_pixels`` it is given (the
    predictor's, ``--max-megapixels``) by name, as the single-process path does."""
    import numpy as np

    Image.new("L", (100, 100), 90).save(tmp_path / "big.png")
    Image.new("L", (20, 20), 90).save(tmp_path / "small.png")
    sources = np.array([str(tmp_path / "big.png"), str(tmp_path / "small.png")], dtype=object)
    batch = {"source": sources, "chunk": np.zeros(2, dtype=int)}
    decoded = decode_batch(batch, image_size=32, max_pixels=5_000)
    assert "big.png: 100x100 pixels is over the limit of 5,000" in decoded["error"][0]
    assert decoded["error"][1] == ""
    assert decode_batch(batch, image_size=32)["error"].tolist() == ["", ""]


@needs_ray
def test_gpus_the_cluster_lacks_are_refused_at_once(local_ray):
    """On a machine without a GPU, --gpus-per-worker 1 waited for one without end."""
    from pneumolab.inference.ray_engine import _connect

    options = RayOptions(num_workers=1, cpus_per_worker=0.5, gpus_per_worker=1, batch_size=8)
    with pytest.raises(ConfigError, match=r"1 worker\(s\) of 1 GPU: the cluster's GPUs \(0 per"):
        _connect(local_ray, options)
    _connect(local_ray, RayOptions(num_workers=1, cpus_per_worker=0.5, batch_size=8))


@pytest.mark.parametrize(
    ("node_gpus", "per_worker", "slots"),
    [
        ([2], 0.6, 2),  # 0.6 + 0.6 does not fit on one GPU: 3 workers passed a total of 1.8
        ([2], 0.25, 8),
        ([1, 1], 2, 0),  # two GPUs, but on two nodes
        ([4, 1], 2, 2),
        ([0], 0.5, 0),
        ([2], 0, 0),
    ],
)
def test_gpu_slots_place_workers_as_ray_does(node_gpus, per_worker, slots):
    from pneumolab.inference.ray_engine import gpu_slots

    assert gpu_slots(node_gpus, per_worker) == slots


@needs_ray
def test_replicas_on_gpus_get_a_batch_size(local_ray, predictor, images):
    """Ray refuses GPU replicas without a batch size (``You must provide `batch_size` to
    `map_batches` when requesting GPUs``): every --gpus-per-worker run stopped there."""
    from pneumolab.inference.ray_engine import _pipeline

    options = RayOptions(num_workers=1, gpus_per_worker=0.25, batch_size=8)
    todo = [str(path) for path in images]
    assert _pipeline(local_ray, predictor, predictor.run_dir, todo, options) is not None


@needs_ray
def test_overwrite_interrupted_leaves_a_file_a_rerun_resumes(
    predictor, images, tmp_path, monkeypatch
):
    """--overwrite kept the old results file until the end: interrupted, a rerun without it was
    refused (the old rows came from another model), and a rerun with it started over."""
    import pneumolab.inference.ray_engine as engine
    from pneumolab.inference.results_file import Producer

    out = tmp_path / "r.csv"
    other = Producer("0.0.0+another", 0.5, "torch", False, True)
    from pneumolab.inference.results_file import ResultRow
    from pneumolab.inference.results_table import write_results

    write_results(out, [ResultRow(str(images[0]), 0.9, "PNEUMONIA", other, "")])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_connect", lambda ray, options: None)
    monkeypatch.setattr(engine, "check_every_node_sees", lambda *args: None)
    monkeypatch.setattr(engine, "_pipeline", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_with_ray(predictor, images, out, TWO_WORKERS, overwrite=True)
    assert read_results(out, producer_of(predictor)) == []  # what a rerun resumes from


def test_an_address_nothing_listens_at_is_refused_at_once():
    """``--address 127.0.0.1:1`` retried without end: only Ray's own "Failed to connect to
    GCS" lines, for minutes."""
    import socket

    from pneumolab.inference.ray_engine import check_reachable

    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:1: cannot reach a Ray cluster there"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(ConfigError, match="expected auto, HOST:PORT"):
        check_reachable("head-node")
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    for found_by_ray in (None, "auto", "local"):
        check_reachable(found_by_ray)


@needs_ray
def test_overwrite_never_empties_an_input_image(predictor, images, tmp_path):
    """With --overwrite, the results file was emptied before it was found to be one of the
    images: the X-ray was replaced by a CSV header, then the command refused."""
    xray = tmp_path / "scan.csv"
    shutil.copy(images[0], xray)
    before = xray.read_bytes()
    with pytest.raises(OutputError, match="is one of the images to predict"):
        predict_with_ray(predictor, [xray], xray, TWO_WORKERS, overwrite=True)
    assert xray.read_bytes() == before


@needs_ray
def test_out_every_node_sees_passes_and_leaves_the_parts_folder_as_it_was(local_ray, tmp_path):
    """One machine: the node sees the probe; no probe is left, nor a parts folder made for it,
    and a parts folder that was there (a killed job's) keeps its files."""
    from pneumolab.inference.ray_nodes import check_every_node_sees

    parts, out = tmp_path / "r.csv.parts", tmp_path / "r.csv"
    check_every_node_sees(local_ray, parts, out)
    assert list(tmp_path.iterdir()) == []
    parts.mkdir()
    (parts / "kept.parquet").write_bytes(b"PAR1")
    check_every_node_sees(local_ray, parts, out)
    assert [path.name for path in parts.iterdir()] == ["kept.parquet"]


def test_a_node_finds_the_probe_or_says_it_does_not(tmp_path):
    from pneumolab.inference.ray_nodes import node_view

    assert node_view(str(tmp_path), ".probe-1") == "does not see it"
    (tmp_path / ".probe-1").write_bytes(b"")
    assert node_view(str(tmp_path), ".probe-1") == ""
    assert [path.name for path in tmp_path.iterdir()] == [".probe-1"]  # its own file removed
    assert node_view(str(tmp_path / "elsewhere"), ".probe-1") == "does not see it"


@needs_ray
def test_out_a_node_does_not_see_is_refused_before_anything_is_scored(
    local_ray, predictor, images, tmp_path, monkeypatch
):
    """On a cluster of several machines an --out on the driver's own disk was found out only
    after every image was scored (the workers' parts went elsewhere); now the node that does
    not see it is named first. A node here stands for one with its own disk."""
    from pneumolab.inference import ray_engine, ray_nodes

    def own_disk(folder, probe):  # a closure: sent to the Ray worker by value
        return "does not see it"

    def scored(*args):
        raise AssertionError("scored before --out was checked")

    monkeypatch.setattr(ray_nodes, "node_view", own_disk)
    monkeypatch.setattr(ray_engine, "_score", scored)
    out = tmp_path / "r.parquet"
    (node,) = [n for n in local_ray.nodes() if n["Alive"]]
    refused = rf"--out {re.escape(str(out))}: its parts folder .*r\.parquet\.parts.* not shared by"
    with pytest.raises(OutputError, match=refused) as error:
        predict_with_ray(predictor, images[:3], out, TWO_WORKERS)
    assert f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]}) does not see it" in str(
        error.value
    )
    assert "nothing was scored" in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.parquet.lock"]


@needs_ray
def test_a_node_that_does_not_answer_is_named_and_the_job_goes_on(
    local_ray, tmp_path, monkeypatch, caplog
):
    from pneumolab.inference import ray_nodes

    def busy(folder, probe):
        import time

        time.sleep(30)
        return ""

    monkeypatch.setattr(ray_nodes, "node_view", busy)
    monkeypatch.setattr(ray_nodes, "ANSWER_SECONDS", 0.5)
    ray_nodes.check_every_node_sees(local_ray, tmp_path / "r.csv.parts", tmp_path / "r.csv")
    assert "did not answer within 0.5 s); scoring goes on" in caplog.text
    assert list(tmp_path.iterdir()) == []


@needs_ray
def test_a_node_where_the_check_fails_is_named_as_such_not_as_late(
    local_ray, tmp_path, monkeypatch, caplog
):
    """A task that failed on its node was reported as one that "did not say within 60 s"."""
    from pneumolab.inference import ray_nodes

    def broken(folder, probe):
        raise OSError("stale file handle")

    monkeypatch.setattr(ray_nodes, "node_view", broken)
    ray_nodes.check_every_node_sees(local_ray, tmp_path / "r.csv.parts", tmp_path / "r.csv")
    assert "could not run the check (RayTaskError" in caplog.text
    assert "did not answer" not in caplog.text and "scoring goes on" in caplog.text
