"""Site audit: out-of-scope share and reasons, OOD and rate comparisons, verdict, written files."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from pneumolab.cli import main
from pneumolab.evaluation import audit as audit_module
from pneumolab.evaluation.audit import audit_folder, reason_kind
from pneumolab.outputs import working_in


@pytest.fixture
def run_dir(tiny_run) -> Path:
    return tiny_run[0]


def site(root: Path, data: Path, odd: bool) -> Path:
    """Training-like images, plus (``odd``) a CT slice, a black PNG, a broken file and an
    image whose name is not UTF-8."""
    root.mkdir()
    for path in sorted((data / "train").rglob("*.png"))[::2]:
        shutil.copy(path, root / path.name)
    if odd:
        shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct.dcm")
        Image.fromarray(np.zeros((100, 100), dtype=np.uint8)).save(root / "black.png")
        (root / "broken.png").write_bytes(b"not a png")
        shutil.copy(path, root / os.fsdecode(b"caf\xe9.png"))  # a name that is not UTF-8
    return root


def test_reason_kind_drops_the_particulars():
    assert reason_kind("image too small (1x1 px; at least 32 px)") == "image too small"
    assert reason_kind("DICOM Modality CT: not a radiograph") == "DICOM Modality CT"


def test_an_odd_site_is_flagged_with_its_reasons(run_dir, tiny_run, tmp_path):
    audit = audit_folder(run_dir, site(tmp_path / "site", tiny_run[1], odd=True))
    summary = audit.summary()
    assert summary.unreadable == 1 and summary.images == len(audit.records)
    reasons = summary.out_of_scope_reasons
    assert reasons["DICOM Modality CT"] == 1 and reasons["empty image"] == 1
    assert summary.out_of_scope_share is not None
    assert summary.out_of_scope_share >= 2 / len(audit.scored)
    assert audit.verdict.startswith("CAUTION")
    assert any("out of scope" in r for r in audit.verdict_reasons)
    assert summary.dicom_tags["Modality"] == {"CT": 1}
    assert summary.bit_depths[8] >= 1 and summary.bit_depths[16] == 1


def test_cli_writes_the_page_figure_and_tables(run_dir, tiny_run, tmp_path, capsys):
    folder = site(tmp_path / "site", tiny_run[1], odd=True)
    out = tmp_path / "out"
    assert main(["audit", str(run_dir), str(folder), "--out", str(out)]) == 1  # broken.png
    printed = capsys.readouterr()  # the verdict is the result (stdout), the page's path a note
    assert "CAUTION" in printed.out and "audit.html" in printed.err
    page = (out / "audit.html").read_text()
    assert "DICOM Modality CT" in page and "data:image/png;base64," in page
    assert (out / "audit.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "audit.json").read_text())["unreadable"] == 1
    assert b"broken.png" in (out / "images.csv").read_bytes()
    assert b"caf\xe9.png" in (out / "images.csv").read_bytes()


def test_images_csv_names_files_by_absolute_path(run_dir, tiny_run, tmp_path, monkeypatch):
    """Audited from inside the folder, a file named '=HYPERLINK(...).png' began a cell of
    images.csv, which a spreadsheet runs as a formula."""
    folder = site(tmp_path / "site", tiny_run[1], odd=False)
    shutil.copy(next(folder.rglob("*.png")), folder / '=HYPERLINK("x").png')
    monkeypatch.chdir(folder)
    assert main(["audit", str(run_dir), ".", "--out", str(tmp_path / "out")]) in (0, 1)
    with (tmp_path / "out" / "images.csv").open(newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert paths and all(Path(p).is_absolute() for p in paths)


def test_cli_keeps_an_earlier_audit_unless_asked(run_dir, tiny_run, tmp_path, capsys):
    folder = site(tmp_path / "site", tiny_run[1], odd=False)
    out = tmp_path / "out"
    assert main(["audit", str(run_dir), str(folder), "--out", str(out)]) == 0
    before = (out / "audit.json").read_text()
    (out / "audit.json").write_text("an earlier audit")
    assert main(["audit", str(run_dir), str(folder), "--out", str(out)]) == 2
    assert "audit.html: already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "audit.json").read_text() == "an earlier audit"
    assert main(["audit", str(run_dir), str(folder), "--out", str(out), "--overwrite"]) == 0
    assert (out / "audit.json").read_text() == before


def test_a_second_audit_on_a_busy_folder_is_refused_before_scoring(
    run_dir, tiny_run, tmp_path, capsys, monkeypatch
):
    """Two audits on one --out both finished: the later one's files replaced the other's."""
    folder, out = site(tmp_path / "site", tiny_run[1], odd=False), tmp_path / "out"
    missing_run = tmp_path / "no-run"
    assert main(["audit", str(missing_run), str(folder)]) == 2  # out: no-run/audit/site
    assert "run directory not found" in capsys.readouterr().err and not missing_run.exists()
    monkeypatch.setattr(audit_module, "Predictor", None)  # scoring would fail loudly
    with working_in(out, "auditing"):
        assert main(["audit", str(run_dir), str(folder), "--out", str(out)]) == 2
    assert "out: another process is auditing in it" in capsys.readouterr().err
    assert not out.exists()  # nothing written; the empty folder went with the first lock


def test_an_audit_stopped_while_writing_leaves_nothing_that_blocks_its_rerun(
    run_dir, tiny_run, tmp_path, monkeypatch
):
    """Stopped after its figure, an audit left audit.png, and the rerun refused it without
    --overwrite."""
    from pneumolab.reporting import audit_page

    folder = site(tmp_path / "site", tiny_run[1], odd=False)
    out = tmp_path / "out"

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(audit_page, "records_table", stopped)
        assert main(["audit", str(run_dir), str(folder), "--out", str(out)]) == 130
    assert not out.exists() or not list(out.iterdir())
    assert main(["audit", str(run_dir), str(folder), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(audit_page.AUDIT_FILES.values())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_audit_written_inside_its_folder_is_refused(run_dir, tiny_run, tmp_path, capsys):
    """Its rerun scored its own audit.png as one of the site's images (out of scope)."""
    folder = site(tmp_path / "site", tiny_run[1], odd=False)
    assert main(["audit", str(run_dir), str(folder), "--out", str(folder / "audit")]) == 2
    assert "an input folder of this command" in capsys.readouterr().err
    assert not (folder / "audit").exists()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p, "folder not found"),
        (lambda p: p.mkdir() or p, "no images"),
        (lambda p: p.write_bytes(b"x") and p, "not a folder"),
    ],
    ids=["missing", "empty", "a-file"],
)
def test_cli_refuses_a_folder_it_cannot_audit(run_dir, tmp_path, make, problem, capsys):
    folder = make(tmp_path / "site")
    assert main(["audit", str(run_dir), str(folder), "--out", str(tmp_path / "out")]) == 2
    assert f"{folder}: {problem}" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out").exists()


def test_cli_gives_no_verdict_where_nothing_could_be_read(run_dir, tmp_path, capsys):
    folder = tmp_path / "site"
    folder.mkdir()
    for name in ("a.png", "b.jpeg"):
        (folder / name).write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["audit", str(run_dir), str(folder), "--out", str(out)]) == 1
    printed = " ".join(capsys.readouterr().out.split())
    assert "NO VERDICT: none of the images could be read" in printed
    assert "— out of scope; predicted pneumonia — of those in scope (validation" in printed
    summary = json.loads((out / "audit.json").read_text(), parse_constant=pytest.fail)
    assert summary["out_of_scope_share"] is None and summary["predicted_pneumonia_rate"] is None


def test_no_image_in_scope_leaves_the_pneumonia_rate_out(run_dir, tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    for index in range(3):  # uniform images: out of scope, every one
        Image.fromarray(np.full((100, 100), 40 * index, dtype=np.uint8)).save(
            folder / f"{index}.png"
        )
    audit = audit_folder(run_dir, folder)
    assert audit.summary().out_of_scope_share == 1.0
    assert audit.pneumonia_rate is None
    assert audit.verdict.startswith("DO NOT USE")
    assert not any("predicted-pneumonia rate" in r for r in audit.verdict_reasons)


def test_the_ood_histogram_draws_every_out_of_scope_score_right_of_its_threshold():
    """A score far beyond the rest (a noise image's 1122 against validation's ~80) is drawn in
    the histogram's last bin; that bin lay left of the threshold (190) when the axis ended at
    1.2 x the 99th percentile, showing an out-of-scope image on the in-scope side."""
    from pneumolab.reporting.audit_page import _ood_axis_end

    scores = np.r_[np.random.default_rng(0).normal(80, 15, 300), 1122.0]
    assert _ood_axis_end(scores, 190.6) > 190.6
    assert _ood_axis_end(scores, None) == pytest.approx(np.quantile(scores, 0.99) * 1.2)


def _site(records: list) -> audit_module.SiteAudit:
    """A judged audit of ``records`` against a validation set they match (OOD ~ 80, 60%
    pneumonia predicted at 0.5)."""
    val = np.random.default_rng(0).normal(80, 10, 500)
    audit = audit_module.SiteAudit("run", "site", records, val, 200.0, 0.6)
    audit_module.judge(audit)
    return audit


def _readable(i: int, warnings: tuple[str, ...] = ()) -> audit_module.ImageRecord:
    rng = np.random.default_rng(i)
    return audit_module.ImageRecord(
        f"{i}.png", probability=float(i % 5 < 3), in_scope=True,
        label="PNEUMONIA" if i % 5 < 3 else "NORMAL",
        ood_score=float(rng.normal(80, 10)), warnings=list(warnings),
    )  # fmt: skip


def test_a_site_of_adults_or_of_mostly_unreadable_files_is_not_called_ok():
    """Both were 'OK: no shift detected': the verdict looked only at the readable images'
    scope reasons and scores, not at the scope warnings (an adult's age) or at the share of
    files that could not be read."""
    assert _site([_readable(i) for i in range(100)]).verdict.startswith("OK")
    adult = "patient age 45.0 years: an adult outside the intended use (the model ...)"
    adults = _site([_readable(i, (adult.replace("45.0", f"{40 + i}.0"),)) for i in range(100)])
    assert adults.verdict.startswith("CAUTION")
    assert adults.verdict_reasons == [
        "100% of the images carry scope warnings (outside the children the model was trained "
        "on): patient age N years: an adult outside the intended use (100)"
    ]
    broken = [audit_module.ImageRecord(f"b{i}.jpeg", error="truncated") for i in range(60)]
    unreadable = _site([_readable(i) for i in range(100)] + broken)
    assert unreadable.verdict.startswith("CAUTION")
    assert unreadable.verdict_reasons[0].startswith("38% of the files could not be read")


def test_a_run_without_an_ood_model_is_never_called_ok():
    """Without the OOD model the content check was skipped, yet the verdict said "OK: no shift
    detected" (25 photographs among 6 X-rays passed so)."""
    records = [_readable(i) for i in range(100)]
    audit = audit_module.SiteAudit("run", "site", records, np.zeros(0), None, 0.6)
    audit_module.judge(audit)
    assert audit.verdict.startswith("CAUTION")
    assert audit.verdict_reasons == [
        "the run has no current OOD model: image content was not compared with the training X-rays "
        "(`pneumolab fit-ood run --data DATA_DIR` fits one)"
    ]


@pytest.mark.parametrize(
    ("mode", "bits"), [("1", 1), ("L", 8), ("CMYK", 8), ("YCbCr", 8), ("I;16B", 16), ("F", 32)]
)
def test_bit_depth_of_every_pillow_mode(mode, bits):
    """CMYK JPEGs were counted under a bit depth "null" (a table of 9 modes)."""
    assert audit_module.bits_per_sample(mode) == bits


def test_the_page_names_flagged_images_by_their_place_in_the_folder(run_dir, tmp_path):
    """PACS exports repeat names like IM-0001 in every study folder: the page named the file
    alone, pointing at either study's image."""
    from pneumolab.reporting.audit_page import write_audit

    for study in ("studyA", "studyB"):
        (tmp_path / "site" / study).mkdir(parents=True)
        Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "site" / study / "IM.png")
    audit = audit_folder(run_dir, tmp_path / "site")
    page = (write_audit(audit, tmp_path / "out")["html"]).read_text()
    assert f"<th>studyA{os.sep}IM.png</th>" in page and f"<th>studyB{os.sep}IM.png</th>" in page


def test_sizes_are_upright_and_a_16_bit_colour_png_is_16_bit(run_dir, tmp_path):
    """An EXIF-turned JPEG was measured as stored (portrait for a landscape film), and a
    16-bit RGB PNG, which Pillow opens as 8-bit, was counted as 8-bit."""
    import cv2

    folder = tmp_path / "site"
    folder.mkdir()
    film = (np.indices((140, 445)).sum(axis=0) % 256).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90° clockwise to show
    Image.fromarray(film.T.copy()).save(folder / "turned.jpeg", exif=exif)
    cv2.imwrite(str(folder / "rgb16.png"), np.repeat(film[..., None], 3, 2).astype(np.uint16) * 257)
    Image.fromarray(film).convert("P").save(folder / "palette.png")
    records = {Path(r.path).name: r for r in audit_folder(run_dir, folder).records}
    turned = records["turned.jpeg"]
    assert (turned.width, turned.height) == (140, 445)[::-1] and turned.bit_depth == 8
    assert records["rgb16.png"].bit_depth == 16 and records["palette.png"].bit_depth == 8


def test_a_content_shift_names_the_figure_that_tripped_its_limit():
    """Scores spread unlike validation's but with fewer above its 95th percentile than expected
    read "4% score above validation's 95th OOD percentile (expected 5%)" as the evidence."""
    narrow = [_readable(i) for i in range(100)]
    for record in narrow:  # within validation's range, far narrower: KS large, few above p95
        record.ood_score = 80.0 + (record.ood_score - 80.0) / 10
    reason = next(r for r in _site(narrow).verdict_reasons if "unlike validation" in r)
    assert "their OOD scores are spread unlike validation's (KS distance" in reason
    assert reason.endswith("0% above validation's 95th percentile, 5% expected)")
    assert not reason.startswith("in-scope images look unlike validation: 0% score above")
