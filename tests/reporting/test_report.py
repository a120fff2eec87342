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
    from pneumolab.reporting.report import _heat_layer, _saliency_html

    predictor = Predictor.from_run(tiny_run[0])
    pixels = torch.zeros((3, 1, predictor.image_size, predictor.image_size), dtype=torch.uint8)
    text = _saliency_html(predictor, _heat_layer(predictor), pixels, np.zeros(3))
    assert text == "<p>Not computed: no image of the split was called pneumonia.</p>"


def test_the_border_occlusion_leaves_the_chest_as_the_model_sees_it(tmp_path):
    """The report blacked out the band on the raw pixels and the backend equalised afterwards:
    the model saw the chest's grey levels shifted too (28.9 levels on average, 20 NORMAL images
    at 160 px), and the AUC loss mixed that shift with the border's evidence."""
    import numpy as np
    import torch

    from conftest import fixed_threshold_meta, xray_like
    from pneumolab.inference.predictor import Predictor
    from pneumolab.models.registry import create_classifier
    from pneumolab.reporting.report import _occlusion_html

    torch.manual_seed(0)
    model = create_classifier("pneumolab_cnn_small", pretrained=False)
    predictor = Predictor(model, fixed_threshold_meta("pneumolab_cnn_small", 40, 0.5, "equalize"))
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(np.stack([xray_like(rng, 90, 30, (40, 40))[None] for _ in range(6)]))
    seen: list[torch.Tensor] = []  # what the first convolution is given, per pass
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    stem.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    text = _occlusion_html(predictor, pixels, np.array([0, 1] * 3))
    assert "<th>outer 4 px black</th>" in text
    clean, black = seen[0], seen[1]
    assert torch.equal(black[..., 4:-4, 4:-4], clean[..., 4:-4, 4:-4])
    assert not torch.equal(black, clean)


def test_an_ensembles_border_occlusion_says_why_it_is_not_computed():
    """Each member normalises, and so would occlude, its own input: no single image to black out."""
    import numpy as np
    import torch

    from conftest import fixed_threshold_meta
    from pneumolab.inference.predictor import Predictor
    from pneumolab.reporting.report import _occlusion_html

    meta = fixed_threshold_meta("pneumolab_cnn_small", 40, 0.5, "equalize")
    predictor = Predictor(None, meta, scorer=lambda pixels: None)
    pixels = torch.zeros((2, 1, 40, 40), dtype=torch.uint8)
    text = _occlusion_html(predictor, pixels, np.array([0, 1]))
    assert text == "<p>Not computed for an ensemble: run the report on each member run.</p>"


def _hand_made_run(root: Path, model: str, shades: dict[str, int]) -> tuple[Path, Path]:
    """A run of the registered timm ``model`` (tests/mean_reader.py) at 32 px, threshold 0.5,
    and a data folder whose test split holds four flat images of each class's shade."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    import mean_reader  # noqa: F401  (registers the models)
    from conftest import fixed_threshold_meta
    from pneumolab.models.registry import create_classifier

    for name, shade in shades.items():
        folder = root / "data" / "test" / name
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((40, 40), shade, np.uint8)).save(folder / f"{name}-{i}.png")
    torch.manual_seed(0)
    run = RunDir(root / "run")
    run.root.mkdir()
    state = create_classifier(model).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, run.weights)
    run.write_meta(fixed_threshold_meta(model, 32, 0.5))
    return run.root, root / "data"


def _report_of(run_dir: Path, data: Path, capsys) -> str:
    out = run_dir.parent / "report.html"
    command = ["report", str(run_dir), "--data", str(data), "--split", "test", "--out", str(out)]
    code = main(command)
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    return out.read_text()


def test_a_network_with_no_map_larger_than_1x1_still_gets_its_report(tmp_path, capsys):
    """find_target_layer's refusal (every map 1x1: nothing to locate) stopped the whole report,
    exit 2, nothing written."""
    shades = {"NORMAL": 200, "PNEUMONIA": 200}  # all called pneumonia: 4 false positives
    run_dir, data = _hand_made_run(tmp_path, "pneumolab_test_one_cell", shades)
    page = " ".join(_report_of(run_dir, data, capsys).split())
    why = (
        "this network has no feature map that Grad-CAM can show: layer &#x27;backbone.features"
        "&#x27;: its feature map is 1x1 at 32 px"
    )
    assert f"no heat maps: {why}" in page  # the error gallery, its X-rays without maps
    assert page.count('<figure class="thumb">') == 4 + 2 * 3  # 4 false positives, 3 samples each
    saliency = page.split('<h2 id="saliency">Saliency sanity check</h2>')[1]
    assert saliency.startswith(f"<p>Not computed: {why}")


def test_an_evenly_spread_map_is_not_captioned_empty(tmp_path, capsys):
    """The mean reader's map of a flat image is one positive number everywhere: stretched per
    image it is all zero, and the gallery captioned it "(empty heat map)"."""
    shades = {"NORMAL": 200, "PNEUMONIA": 60}  # every image called the other class
    run_dir, data = _hand_made_run(tmp_path, "pneumolab_test_mean_reader", shades)
    page = _report_of(run_dir, data, capsys)
    assert "empty heat map" not in page and "heat map empty" not in page
    for towards in ("NORMAL", "PNEUMONIA"):  # false negatives, false positives
        spread = f"heat spread evenly: every region raised the evidence for {towards} alike"
        assert page.count(spread) == 2 * 4  # each of 4 maps: caption and alt text


def test_each_gallery_image_is_decoded_once_for_its_thumbnail_only(tmp_path, monkeypatch):
    """The error galleries decoded each image twice: again for its Grad-CAM (the evaluation
    held its pixels already), then for its thumbnail; an image in both galleries (an error and
    a sample X-ray) had its thumbnail decoded twice as well. The heat maps are drawn from the
    evaluation's pixels now, and each thumbnail is decoded once."""
    from collections import Counter

    from conftest import write_run, write_synthetic_dataset
    from pneumolab.inference.predictor import Predictor
    from pneumolab.reporting import report
    from pneumolab.reporting.report import build_report

    data = write_synthetic_dataset(tmp_path / "data", per_class=6)
    images = sorted((data / "train").rglob("*.png"))
    run = write_run(tmp_path / "run", images)
    run.split.write_text(  # every other label flipped: errors on both sides
        "path,label,patient,subset\n"
        + "".join(
            f"{p.relative_to(data).as_posix()},{int('PNEUMONIA' in p.parts) ^ (i % 2)},{p.stem},val\n"
            for i, p in enumerate(images)
        )
    )
    thumbnails: Counter[str] = Counter()
    prepared: list[object] = []
    load_image, prepare = report.load_image, Predictor.prepare
    monkeypatch.setattr(
        report, "load_image", lambda path, **kw: thumbnails.update([path]) or load_image(path, **kw)
    )
    monkeypatch.setattr(
        Predictor, "prepare", lambda self, image: prepared.append(image) or prepare(self, image)
    )
    text = build_report(run.root, data, "val", out_file=tmp_path / "report.html").read_text()
    shown = re.findall(r"<figcaption>([^<:]+\.png)", text)
    assert re.search(r"False negatives \([1-9]", text)
    assert re.search(r"False positives \([1-9]", text)
    assert len(shown) > len(set(shown))  # an image in both galleries
    assert prepared == []
    assert sorted(Path(p).name for p in thumbnails) == sorted(set(shown))
    assert set(thumbnails.values()) == {1}
