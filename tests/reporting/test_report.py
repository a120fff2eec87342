"""The HTML report: every section, only embedded PNGs that decode, and it renders in Chromium."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import copy_run
from pneumolab.cli import main
from pneumolab.run import RunDir

SECTIONS = (
    "metrics",
    "curves",
    "confusion",
    "calibration",
    "decision",
    "scores",
    "errors",
    "samples",
    "saliency",
    "occlusion",
)


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory) -> Path:
    """A report of (a copy of) the shared tiny run on its validation split, through the CLI."""
    root = tmp_path_factory.mktemp("report")
    run_dir = copy_run(tiny_run[0], root / "run")
    out = root / "report.html"
    assert main(["report", str(run_dir), "--data", str(tiny_run[1]), "--out", str(out)]) == 0
    return out


def test_report_is_self_contained(report):
    text = report.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in text
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(sources) == text.count("<img") > 0
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG"
        image.verify()
    assert "http://" not in text and "https://" not in text
    assert "not a medical device" in text
    # the error galleries say which class each map shows; the saliency check counts empty maps
    assert "the evidence for NORMAL on a false negative" in text
    assert "<th>empty_maps</th>" in text
    assert "<th>only the outer 3 px kept</th>" in text  # 10% of the tiny run's 32 px
    # the calibration maps' validation ECE is not passed off as what transfers
    assert "were fitted on these same images: their ECE here is in-sample" in text
    assert "raised ECE from 0.026 (raw) to 0.143 (the Platt fit of before 2026-12-07" in text
    # a validation report's figures at its own threshold are in-sample, and it says so
    assert "chosen on these same images: the figures at them are in-sample" in text


def test_report_refreshes_model_card_with_intervals(report):
    card = (RunDir(report.parent / "run").root / "MODEL_CARD.md").read_text()
    assert "95% CI: percentile bootstrap over patients" in card


def test_a_report_on_another_split_leaves_the_card_alone(tiny_run, tmp_path, capsys):
    """A test-split report rewrote the card from eval/val/metrics.json: a stale file's figures,
    or none ("without confidence intervals") right after a validation report had given them."""
    run_dir = copy_run(tiny_run[0], tmp_path / "run")
    card = run_dir / "MODEL_CARD.md"
    card.write_text("the card of a validation report\n")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):  # a test split: the training images again, for a report
        (data / split).symlink_to(tiny_run[1] / "train", target_is_directory=True)
    args = ["report", str(run_dir), "--data", str(data), "--split", "test"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "test.html")]) == 0
    assert card.read_text() == "the card of a validation report\n"
    assert "figures at them are in-sample" not in (tmp_path / "test.html").read_text()
    assert "MODEL_CARD.md" not in capsys.readouterr().err  # it said it had written the card


def test_report_renders_in_chromium(report, chromium):
    from playwright.sync_api import expect

    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(width > 0 for width in widths)
    for section in SECTIONS:
        expect(page.locator(f"h2#{section}")).to_be_visible()


def test_report_leaves_an_earlier_robustness_evaluation_as_it_is(tiny_run, tmp_path):
    from pneumolab.evaluation.evaluate import evaluate
    from pneumolab.reporting.report import build_report

    run_dir, data = copy_run(tiny_run[0], tmp_path / "run"), tiny_run[1]
    evaluate(run_dir, data, "val", robustness=True, device="cpu")
    written = RunDir(run_dir).eval_dir("val") / "metrics.json"
    before = written.read_bytes()
    assert b'"robustness"' in before
    build_report(run_dir, data, "val", out_file=tmp_path / "report.html")
    assert written.read_bytes() == before  # the report computed its metrics in memory
    assert "95% CI" in (run_dir / "MODEL_CARD.md").read_text()


def test_unreadable_images_are_named_in_the_report_and_the_comparison(tiny_run, tmp_path):
    """An image that could not be read dropped out of every figure with only a log line: the
    report names it, and compare's table gives each run's n."""
    import shutil

    run_dir = copy_run(tiny_run[0], tmp_path / "run")
    data = Path(shutil.copytree(tiny_run[1], tmp_path / "data"))
    broken = data / sorted(RunDir(run_dir).split_paths("val"))[0]
    broken.write_bytes(b"not an image")
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--data", str(data), "--out", str(out)]) == 0
    text = out.read_text()
    assert '<p class="warn">1 image(s) of the split could not be read' in text  # styled
    assert broken.name in text
    compare = ["compare", str(run_dir), "--data", str(data), "--split", "val"]
    assert main([*compare, "--out", str(tmp_path / "cmp")]) == 0
    n = len(RunDir(run_dir).split_paths("val")) - 1
    assert f"| 32 | {n} |" in (tmp_path / "cmp" / "results.md").read_text()  # size, n


def test_a_saliency_check_of_no_map_says_so(tiny_run):
    """With no image called pneumonia the report said 'Not flagged: the heat mostly lies inside
    the image' beside n = 0."""
    import numpy as np
    import torch

    from pneumolab.inference.predictor import Predictor
    from pneumolab.reporting.report import _saliency_html

    predictor = Predictor.from_run(tiny_run[0])
    pixels = torch.zeros((3, 1, predictor.image_size, predictor.image_size), dtype=torch.uint8)
    text = _saliency_html(predictor, pixels, np.zeros(3))
    assert text == "<p>Not computed: no image of the split was called pneumonia.</p>"
