"""Streaming predictions to a file: one row per image, errors recorded, resumable."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest

from pneumolab.errors import ConfigError, OutputError
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


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_job_over_other_images_keeps_the_earlier_failures(predictor, images, tmp_path, suffix):
    """Resuming dropped every failed row, also of images the new job did not score: a file
    fed one folder a day lost the record of each earlier unreadable image."""
    from conftest import write_synthetic_dataset

    folder, _ = images
    other = write_synthetic_dataset(tmp_path / "other", per_class=1) / "train"
    out = tmp_path / f"results{suffix}"
    predict_to_file(predictor, [folder], out, progress=False)
    summary = predict_to_file(predictor, [other], out, progress=False)
    assert (summary.written, summary.already_done, summary.failed) == (2, 0, 0)
    rows = _read(out)
    assert len(rows) == 13 and sum("broken.png" in r["error"] for r in rows) == 1
    summary = predict_to_file(predictor, [folder], out, progress=False)  # retried: listed once
    assert (summary.written, summary.already_done, summary.failed) == (1, 10, 1)
    rows = _read(out)
    assert len(rows) == 13 and len({r["source"] for r in rows}) == 13


def test_a_full_disk_names_the_file_and_keeps_the_rows(predictor, images, tmp_path, monkeypatch):
    """The error was "[Errno 28] No space left on device", naming no file."""
    import errno

    from pneumolab.inference import batch

    folder, _ = images
    out, encode, calls = tmp_path / "results.csv", batch.encode, []

    def disk_full_at_the_fifth_row(*args):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return encode(*args)

    monkeypatch.setattr(batch, "encode", disk_full_at_the_fifth_row)
    message = r"results\.csv: No space left on device; the rows written so far are kept"
    with pytest.raises(OutputError, match=message):
        predict_to_file(predictor, [folder], out, batch_size=3, progress=False)
    assert len(_read(out)) == 4
    monkeypatch.setattr(batch, "encode", encode)
    assert predict_to_file(predictor, [folder], out, progress=False).already_done == 4
    assert len(_read(out)) == 11


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
    with pytest.raises(ConfigError, match=r"\.csv or \.jsonl$"):
        predict_to_file(predictor, [images[0]], tmp_path / "out.txt", progress=False)
    # Parquet is the Ray engine's: said so (it was refused as any other name)
    with pytest.raises(ConfigError, match=r"\.csv or \.jsonl; \.parquet with --engine ray$"):
        predict_to_file(predictor, [images[0]], tmp_path / "out.parquet", progress=False)


def _read(out):
    if out.suffix == ".csv":
        with out.open(newline="") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_relative_and_absolute_paths_are_one_image(predictor, images, tmp_path, monkeypatch):
    folder = images[0]
    out = tmp_path / "results.csv"
    predict_to_file(predictor, [folder], out, progress=False)
    monkeypatch.chdir(folder.parent)
    summary = predict_to_file(predictor, ["train", str(folder)], out, progress=False)
    assert summary.already_done == 10 and summary.written == 1  # only the broken one retried
    rows = _read(out)
    assert len(rows) == 11 and len({r["source"] for r in rows}) == 11


def test_the_manifest_is_never_the_results_file(predictor, images, tmp_path, capsys):
    """`--manifest m.csv --out m.csv --overwrite` replaced the list of images with results."""
    from pneumolab.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in sorted(images[0].rglob("*.png"))[:2]))
    before = manifest.read_text()
    command = ["--manifest", str(manifest), "--out", str(manifest), "--overwrite"]
    assert main(["predict", str(predictor.run_dir), *command]) == 2
    assert "an input of this command" in capsys.readouterr().err
    assert manifest.read_text() == before


def test_each_symlink_is_a_row_under_its_own_name(predictor, images, tmp_path):
    """An archive's accession names linking into a content store: the rows were merged into one,
    under the store's name."""
    store = next(images[0].rglob("*.png"))
    folder = tmp_path / "accessions"
    folder.mkdir()
    for name in ("ACC1001.png", "ACC2002.png"):
        (folder / name).symlink_to(store)
    out = tmp_path / "results.csv"
    assert predict_to_file(predictor, [folder], out, progress=False).written == 2
    rows = _read(out)
    assert sorted(r["source"] for r in rows) == [
        str(folder / "ACC1001.png"),
        str(folder / "ACC2002.png"),
    ]
    assert rows[0]["probability"] == rows[1]["probability"] != ""
    # folders are resolved, as results files of before were keyed: '..' after a linked folder
    # leads where the file system says (a lexical abspath read another file, or none)
    (tmp_path / "archive" / "2024").mkdir(parents=True)
    shutil.copy(store, tmp_path / "archive" / "2024" / "a.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "current").symlink_to(tmp_path / "archive" / "2024")
    given = tmp_path / "data" / "current" / ".." / "2024" / "a.png"
    out = tmp_path / "dotdot.csv"
    assert predict_to_file(predictor, [given], out, progress=False).failed == 0
    assert [r["source"] for r in _read(out)] == [str(tmp_path / "archive" / "2024" / "a.png")]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"tta": True}, "tta"),
        ({"threshold": 0.123}, "threshold"),
        ({"backend_name": "onnx"}, "backend"),
        ({"model_version": "0.1+0123456789ab"}, "model_version"),
    ],
)
def test_another_producer_is_refused_untouched(predictor, images, tmp_path, change, named):
    out = tmp_path / "results.jsonl"
    predict_to_file(predictor, images[1][:3], out, progress=False)
    before = out.read_bytes()
    other = copy.copy(predictor)
    vars(other).update(change)
    with pytest.raises(OutputError, match=named) as raised:
        predict_to_file(other, [images[0]], out, progress=False)
    assert str(out) in str(raised.value)
    assert out.read_bytes() == before
    summary = predict_to_file(other, images[1][:2], out, progress=False, overwrite=True)
    assert summary.written == 2 and len(_read(out)) == 2


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("other.csv", b"id,value\n1,2\n3,4"),  # no trailing newline: its last line must survive
        ("other.csv", b"\x89PNG\r\n\x1a\n\x00\x00binary"),
        ("notes.jsonl", b'{"source": "a.png"}\nthis line is not JSON\n'),
        ("notes.jsonl", b"[1, 2]\n"),
    ],
)
def test_a_file_that_is_not_a_results_file_is_refused_untouched(
    predictor, images, tmp_path, name, content
):
    out = tmp_path / name
    out.write_bytes(content)
    with pytest.raises(OutputError, match="not a pneumolab results file") as raised:
        predict_to_file(predictor, [images[0]], out, progress=False)
    assert str(out) in str(raised.value)
    assert out.read_bytes() == content


def test_outputs_that_cannot_be_results_files(predictor, images, tmp_path):
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        predict_to_file(predictor, [images[0]], tmp_path / "folder.csv", progress=False)
    run_file = predictor.run_dir / "val_predictions.csv"
    before = run_file.read_bytes()
    with pytest.raises(OutputError, match="belongs to the run"):
        predict_to_file(predictor, [images[0]], run_file, progress=False, overwrite=True)
    assert run_file.read_bytes() == before


def test_missing_paths_and_empty_folders_are_rows_not_aborts(predictor, images, tmp_path):
    files = images[1]
    (tmp_path / "y.jpeg").mkdir()
    out = tmp_path / "results.csv"
    given = [files[0], tmp_path / "missing.jpeg", tmp_path / "y.jpeg", files[1]]
    summary = predict_to_file(predictor, given, out, progress=False)
    assert (summary.written, summary.failed) == (4, 2)
    errors = {r["source"]: r["error"] for r in _read(out) if r["error"]}
    assert "file not found" in errors[str(tmp_path / "missing.jpeg")]
    assert "folder without images" in errors[str(tmp_path / "y.jpeg")]


def test_rows_labelled_with_and_without_keep_label_never_share_a_file(predictor, tmp_path):
    from PIL import Image

    blank = [tmp_path / f"blank{i}.png" for i in range(2)]
    for path in blank:
        Image.new("L", (64, 64), 0).save(path)  # out of scope: an empty image
    out = tmp_path / "results.csv"
    predict_to_file(predictor, blank[:1], out, progress=False)
    assert _read(out)[0]["label"] == "OUT_OF_SCOPE"
    before = out.read_bytes()
    keep = copy.copy(predictor)
    keep.scope_verdict = False
    with pytest.raises(OutputError, match=r"labelled OUT_OF_SCOPE, but this command labels"):
        predict_to_file(keep, blank, out, progress=False)
    assert out.read_bytes() == before
    predict_to_file(predictor, blank, out, progress=False)  # the same setting resumes
    assert [r["label"] for r in _read(out)] == ["OUT_OF_SCOPE"] * 2


def test_an_unexpected_error_becomes_the_row_of_its_file(predictor, images, tmp_path, caplog):
    files = images[1]
    odd = copy.copy(predictor)

    def prepare(image):
        if str(image).endswith(files[0].name):
            raise TypeError("a decoder's own error type")
        return predictor.prepare(image)

    odd.prepare = prepare
    out = tmp_path / "results.csv"
    summary = predict_to_file(odd, files[:3], out, progress=False)
    assert (summary.written, summary.failed) == (3, 1)
    error = _read(out)[0]["error"]
    assert str(files[0]) in error and "TypeError: a decoder's own error type" in error
    assert f"{files[0]}: unexpected error while reading it" in caplog.text


def test_a_single_path_is_one_path_not_its_characters(predictor, images, tmp_path):
    out = tmp_path / "results.csv"
    assert predict_to_file(predictor, str(images[1][0]), out, progress=False).written == 1


def test_a_results_file_another_process_is_writing_is_refused_untouched(
    predictor, images, tmp_path
):
    import subprocess
    import sys

    folder, files = images
    out = tmp_path / "results.csv"
    predict_to_file(predictor, files[:2], out, progress=False)
    before = out.read_bytes()
    holder = subprocess.Popen(  # another predict job, mid-way: it holds the file's lock
        [
            sys.executable,
            "-c",
            f"from filelock import FileLock; l = FileLock({str(out)!r} + '.lock');"
            " l.acquire(); print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputError, match=r"results\.csv: another process is writing it"):
            predict_to_file(predictor, [folder], out, progress=False)
        assert out.read_bytes() == before
    finally:
        holder.communicate("\n")
    assert predict_to_file(predictor, [folder], out, progress=False).already_done == 2


def test_the_progress_bar_stays_off_stdout(predictor, images, tmp_path, capsys):
    predict_to_file(predictor, images[1][:2], tmp_path / "r.csv", progress=True)
    assert capsys.readouterr().out == ""  # stdout is the data's: a pipe reads it


def test_a_lock_file_that_cannot_be_made_is_not_called_held(predictor, images, tmp_path):
    out = Path("/proc/results.csv")  # a folder where no file can be made
    with pytest.raises(OutputError, match=r"results\.csv: cannot make its lock file"):
        predict_to_file(predictor, images[1][:1], out, progress=False)


def test_a_link_as_out_is_written_through_and_one_to_nowhere_is_refused(
    predictor, images, tmp_path
):
    """Resuming through a link replaced the link by a copy (the real file kept its old rows),
    two spellings of one file took two locks, and a link to nowhere (an unmounted share) was
    replaced by a local file without --overwrite."""
    from filelock import FileLock

    folder, files = images
    real = tmp_path / "real" / "results.csv"
    real.parent.mkdir()
    predict_to_file(predictor, files[:2], real, progress=False)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    summary = predict_to_file(predictor, [folder], link, progress=False)
    assert (summary.already_done, summary.written) == (2, 9)
    assert link.is_symlink() and len(_read(real)) == 11
    with FileLock(f"{real}.lock"), pytest.raises(OutputError, match="another process is writing"):
        predict_to_file(predictor, [folder], link, progress=False)  # the real file's lock
    nowhere = tmp_path / "nowhere.csv"
    nowhere.symlink_to(tmp_path / "unmounted" / "results.csv")
    with pytest.raises(OutputError, match="which does not exist; pass --overwrite"):
        predict_to_file(predictor, [folder], nowhere, progress=False)
    assert nowhere.is_symlink()


def test_an_image_given_as_out_is_never_overwritten(predictor, images, tmp_path):
    """Images are known by their content whatever their names: an X-ray named scan.csv given
    as both input and --out (with --overwrite) was replaced by the results."""
    _, files = images
    scan = tmp_path / "scan.csv"
    shutil.copy(files[0], scan)
    before = scan.read_bytes()
    for given in ([scan], [tmp_path]):
        with pytest.raises(OutputError, match="is one of the images to predict"):
            predict_to_file(predictor, given, scan, overwrite=True, progress=False)
    assert scan.read_bytes() == before


def test_a_folder_that_gains_files_meanwhile_never_shifts_rows(
    predictor, images, tmp_path, monkeypatch
):
    """An empty folder stays in the list as itself; the rows were paired by position with a
    second expansion of the list, so a file dropped into it while the results file was read
    gave every later image its neighbour's score."""
    import pneumolab.inference.batch as batch

    files = images[1]
    drop = tmp_path / "incoming"
    drop.mkdir()
    write_rows = batch.write_text_rows

    def write_then_drop(*args, **kwargs):
        write_rows(*args, **kwargs)
        shutil.copyfile(files[-1], drop / "late.png")  # after the listing, before the scoring

    monkeypatch.setattr(batch, "write_text_rows", write_then_drop)
    out = tmp_path / "results.csv"
    predict_to_file(predictor, [drop, *files[:4]], out, batch_size=2, progress=False)
    rows = {r["source"]: r for r in _read(out)}
    assert "a folder without images" in rows[str(drop)]["error"]
    for file in files[:4]:
        alone = predictor.predict(file).probability
        assert float(rows[str(file)]["probability"]) == pytest.approx(alone, abs=1e-6)


def test_an_image_given_twice_is_answered_once_on_stdout(tiny_run, images, capsys):
    """``predict x.png DIR/`` printed x.png's line twice (with --out it was one row)."""
    import json

    from pneumolab.cli import main

    folder, files = images
    assert main(["predict", str(tiny_run[0]), str(files[0]), str(folder), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sources = [line["source"] for line in lines if not line["error"]]
    assert sources.count(str(files[0])) == 1 and len(sources) == len(files)
    assert [line["source"] for line in lines if line["error"]] == [
        str(folder / "NORMAL" / "broken.png")
    ]
    # other spellings of one file (as --out counts them): once, under the first
    again = [files[0].parent / ".." / files[0].parent.name / files[0].name, files[0].absolute()]
    assert main(["predict", str(tiny_run[0]), str(files[0]), *map(str, again), "--json"]) == 0
    assert [json.loads(line)["source"] for line in capsys.readouterr().out.splitlines()] == [
        str(files[0])
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_folder_unlisted_then_listed_loses_its_error_row(predictor, images, tmp_path, suffix):
    """An empty inbox's "folder without images" row stayed beside the images it later held."""
    inbox, out = tmp_path / "inbox", tmp_path / f"results{suffix}"
    inbox.mkdir()
    assert predict_to_file(predictor, [inbox], out, progress=False).failed == 1
    shutil.copy(images[1][0], inbox / images[1][0].name)
    summary = predict_to_file(predictor, [inbox], out, progress=False)
    assert (summary.written, summary.failed) == (1, 0)
    rows = _read(out)
    assert [r["source"] for r in rows] == [str(inbox / images[1][0].name)]
    assert not rows[0]["error"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_output_that_is_not_a_number_is_an_error_row_a_rerun_retries(
    predictor, images, tmp_path, suffix
):
    """A NaN was written as a probability: the job said nothing failed, JSONL held a bare NaN,
    and the next run refused the file as not a results file."""
    import numpy as np

    from pneumolab.inference.prediction import NOT_A_NUMBER
    from pneumolab.inference.scores import Scores

    broken = copy.copy(predictor)
    scorer = predictor.scorer

    def nan_scorer(pixels):
        scores = scorer(pixels)
        return Scores(np.full_like(scores.probability, np.nan), scores.ood)

    broken.scorer = nan_scorer
    out = tmp_path / f"results{suffix}"
    summary = predict_to_file(broken, images[1][:2], out, progress=False)
    assert (summary.written, summary.failed) == (2, 2)
    assert [r["error"] for r in _read(out)] == [NOT_A_NUMBER] * 2
    summary = predict_to_file(predictor, images[1][:2], out, progress=False)  # retried
    assert (summary.written, summary.failed) == (2, 0)


def test_a_linked_folder_unlisted_then_listed_loses_its_error_row(predictor, images, tmp_path):
    """Rows name a linked folder by its own name; the roots were compared resolved."""
    real, link, out = tmp_path / "real", tmp_path / "link", tmp_path / "results.csv"
    real.mkdir()
    link.symlink_to(real)
    assert predict_to_file(predictor, [link], out, progress=False).failed == 1
    shutil.copy(images[1][0], real / "x.png")
    predict_to_file(predictor, [link], out, progress=False)
    assert [r["source"] for r in _read(out)] == [str(real / "x.png")]  # its folder resolved


def test_an_earlier_row_of_a_folder_that_cannot_be_looked_at_is_kept(monkeypatch):
    """A stat refused (EACCES, a stale mount) on another folder's row refused the whole job."""
    from pneumolab.inference.batch import RetriedSources

    def refused(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", refused)
    assert "/elsewhere/bad.jpeg" not in RetriedSources(["/here/a.png"], ["/here"])
    assert "/here/a.png" in RetriedSources(["/here/a.png"], ["/here"])


def test_an_output_that_is_not_a_number_fails_without_out_too(
    predictor, images, monkeypatch, capsys
):
    """Without --out it exited 0 and printed `nan`; with it, an error row and exit code 1."""
    import numpy as np

    from pneumolab.cli import main
    from pneumolab.inference.scores import Scores

    broken = copy.copy(predictor)
    scorer = predictor.scorer
    broken.scorer = lambda pixels: Scores(np.full(len(pixels), np.nan), scorer(pixels).ood)
    monkeypatch.setattr(Predictor, "from_run", lambda *args, **kwargs: broken)
    assert main(["predict", "run", str(images[1][0])]) == 1
    printed = capsys.readouterr().out
    assert "nan" not in printed and "not a finite number" in printed


def test_every_json_line_has_the_keys_of_a_results_file_row(
    predictor, images, tmp_path, monkeypatch, capsys
):
    """A failed image's line held only ``source`` and ``error``, a prediction's no ``error``:
    a reader of the lines (``pandas.read_json(lines=True)``, a typed schema) met two shapes.
    Every line now has the keys of ``--out``'s JSON lines but the provenance, in their order."""
    import numpy as np

    from pneumolab.cli import main
    from pneumolab.inference.prediction import NOT_A_NUMBER
    from pneumolab.inference.results_file import FIELDS
    from pneumolab.inference.scores import Scores

    folder, files = images
    run = str(predictor.run_dir)
    assert main(["predict", run, str(tmp_path / "gone.png"), str(folder), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    keys = tuple(k for k in FIELDS if k not in ("model_version", "backend", "tta"))
    assert len(lines) == 12 and all(tuple(line) == keys for line in lines)
    failed = [line for line in lines if line["error"]]
    assert [line["source"] for line in failed] == [
        str(tmp_path / "gone.png"),
        str(folder / "NORMAL" / "broken.png"),
    ]
    assert all(f"{line['source']}: " in line["error"] for line in failed)
    scope = ("probability", "label", "in_scope", "ood_score", "ood_threshold", "reasons")
    assert [[line[k] for k in (*scope, "warnings")] for line in failed] == [[None] * 7] * 2
    assert all(line["threshold"] == predictor.threshold for line in lines)
    scored = [line for line in lines if not line["error"]]
    assert len(scored) == 10 and all(line["error"] == "" for line in scored)
    assert all(line["probability"] is not None and line["label"] for line in scored)
    # a score that is not a number: an error line, as its row in a results file
    broken = copy.copy(predictor)
    scorer = predictor.scorer
    broken.scorer = lambda pixels: Scores(np.full(len(pixels), np.nan), scorer(pixels).ood)
    monkeypatch.setattr(Predictor, "from_run", lambda *args, **kwargs: broken)
    assert main(["predict", run, str(files[0]), "--json"]) == 1
    (line,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert tuple(line) == keys and line["error"] == NOT_A_NUMBER
    assert line["probability"] is None and line["label"] is None
