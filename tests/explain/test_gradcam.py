"""Grad-CAM: a map in [0, 1] for every model family, a clear error without convolutions, the CLI."""

from __future__ import annotations

import importlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from conftest import by_size, fixed_threshold_meta, write_run, xray_like
from mean_reader import mean_reader
from pneumolab.cli import main
from pneumolab.errors import ModelError, OutputError
from pneumolab.explain.gradcam import (
    FIGURE_PIXELS,
    TALLEST_FIGURE,
    explain_image,
    explain_paths,
    find_target_layer,
    gradcam,
    gradcam_maps,
    layer_named,
    overlay_png,
)
from pneumolab.inference.predictor import Predictor
from pneumolab.models.classifier import XrayClassifier
from pneumolab.models.registry import create_classifier
from pneumolab.run import RunDir

FAMILIES = {
    "pneumolab_cnn_small": "features",
    "pneumolab_cnn_medium": "features",
    "pneumolab_cnn_separable": "features",
    "mobilenetv2_100": "conv_head",
    "tf_efficientnet_lite0": "conv_head",
    "legacy_xception": "conv4",
    "resnet18": "layer4",
    "densenet121": "features",
    "vgg19": "features",  # not pre_logits: its 7x7 convolution leaves a 1x1 map
    "convnext_nano": "stages",
}


@pytest.mark.parametrize("name", by_size(FAMILIES))
def test_map_shape_and_range_for_every_family(name):
    # seed 1: no family's untrained net has an all-negative map here (legitimately all zero)
    torch.manual_seed(1)
    model = create_classifier(name, pretrained=False)
    size = 96 if name == "legacy_xception" else 64  # xception needs at least 71 px
    layer = find_target_layer(model, size)
    assert layer is model.backbone.get_submodule(FAMILIES[name])
    pixels = torch.randint(0, 256, (1, 1, size, size), dtype=torch.uint8)
    heat = gradcam(model, pixels, "equalize", layer)
    assert heat.shape == (size, size) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    # min-max scaled: the hottest place is 1
    assert heat.max() == pytest.approx(1.0, abs=1e-5)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


class DenseBackbone(nn.Sequential):
    """A backbone of dense layers only, with timm's ``forward_features`` (its whole pass)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def test_model_without_convolutions_is_refused():
    backbone = DenseBackbone(nn.Flatten(), nn.Linear(3 * 16 * 16, 1))
    model = XrayClassifier(backbone, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ModelError, match="no convolutional layer"):
        find_target_layer(model, 16)


def test_a_transformer_whose_one_convolution_is_its_stem_is_refused():
    model = create_classifier("vit_tiny_patch16_224")
    with pytest.raises(ModelError, match="its only convolution is the input stem"):
        find_target_layer(model, 224)


def test_overlay_png_is_rgb_at_the_image_size():
    gray = np.tile(np.arange(80, dtype=np.uint8), (50, 1))
    heat = np.zeros((16, 16), dtype=np.float32)
    cold = Image.open(io.BytesIO(overlay_png(gray, heat)))
    assert cold.format == "PNG" and cold.mode == "RGB" and cold.size == (80, 50)
    assert np.array_equal(np.asarray(cold), np.repeat(gray[..., None], 3, axis=-1))  # no heat
    heat[4:12, 4:12] = 1.0
    hot = np.asarray(Image.open(io.BytesIO(overlay_png(Image.fromarray(gray), heat))))
    assert not np.array_equal(hot[25], np.asarray(cold)[25])


def untrained_run(
    tmp_path: Path, calls_normal: bool = False, name: str = "pneumolab_cnn_small"
) -> RunDir:
    """A run of an untrained CNN ``name`` at 32 px (Grad-CAM needs only its layers); with
    ``calls_normal``, a head of negative weights and bias makes every feature count for NORMAL."""
    torch.manual_seed(0)
    model = create_classifier(name, pretrained=False)
    if calls_normal:
        head = model.backbone.get_classifier()
        with torch.no_grad():
            head.weight.copy_(-head.weight.abs())
            head.bias.fill_(-1.0)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run.weights)
    run.write_meta(fixed_threshold_meta(name, 32, 0.5))
    return run


def test_an_image_called_normal_is_explained_by_the_evidence_for_normal(tmp_path):
    """Every image got the pneumonia logit's map: Grad-CAM keeps only what raised the score,
    so an image called NORMAL (a false negative too) showed as a bare X-ray."""
    run = untrained_run(tmp_path, calls_normal=True)
    predictor = Predictor.from_run(run.root)
    model = predictor.require_model("Grad-CAM")
    layer = find_target_layer(model, 32)
    image = np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8)
    explained = explain_image(predictor, layer, image)
    result = explained.prediction  # a noise image: OUT_OF_SCOPE, scored NORMAL
    assert result.probability < result.threshold and explained.towards == "NORMAL"
    assert explained.heat.max() == pytest.approx(1.0)
    assert "evidence for NORMAL" in explained.caption
    pixels = torch.from_numpy(predictor.preprocess(image).numpy())[None]
    pneumonia = gradcam(model, pixels, predictor.intensity, layer)  # what it showed
    assert not pneumonia.any()
    model.train()
    gradcam(model, pixels, predictor.intensity, layer, "NORMAL")
    assert model.training  # grad-cam switched it to eval; a caller mid-training kept that


def test_cli_writes_one_png_per_image(tmp_path, capsys):
    run = untrained_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    not_utf8 = os.fsdecode(b"caf\xe9.png")  # its name goes into the figure's title
    for name, shape in (("a.png", (60, 80)), ("b.jpeg", (100, 70)), (not_utf8, (50, 50))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(images / name)
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["explain", str(run.root), str(images), "--out", str(out)]) == 1
    assert "broken.png" in capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a.png", "b.png", not_utf8]
    for path in out.iterdir():
        assert Image.open(path).format == "PNG"
    # --out the image folder itself, or inside it: --overwrite replaced the X-rays with their
    # heat maps, and each rerun explained the previous run's figures
    before = (images / "a.png").read_bytes()
    for inside in (images, images / "heat"):
        command = ["explain", str(run.root), str(images), "--out", str(inside), "--overwrite"]
        assert main(command) == 2
        assert ", an input" in capsys.readouterr().err
    assert (images / "a.png").read_bytes() == before and not (images / "heat").exists()
    command = ["explain", str(run.root), str(images / "a.png"), "--out", str(images), "--overwrite"]
    assert main(command) == 2  # the files themselves given: their folder is refused
    assert "images: holds a.png, an image to explain" in capsys.readouterr().err
    assert (images / "a.png").read_bytes() == before


def test_a_three_class_runs_titles_carry_the_subtype_and_class_probabilities(tmp_path, monkeypatch):
    """A three-class run's figures were titled with P(pneumonia) and the label only: the
    subtype that ``predict`` gives was missing. A binary run's titles are unchanged."""
    rng = np.random.default_rng(2)
    images = []
    for i in range(8):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(xray_like(rng, 40 + 20 * i, 10 + 3 * i, (48, 40))).save(images[-1])
    gradcam_module = importlib.import_module("pneumolab.explain.gradcam")
    titles: dict[str, str] = {}  # by image name
    monkeypatch.setattr(
        gradcam_module, "_figure", lambda image, heat, t, out, _: titles.update({out.stem: t})
    )
    for task in ("three_class", "binary"):
        run = write_run(tmp_path / task, images, task=task)  # half called PNEUMONIA
        predictions = list(Predictor.from_run(run.root).predict_paths(images))
        titles.clear()
        list(explain_paths(run.root, images, tmp_path / f"{task}-out"))
        assert len(titles) == len(images)
        for result in predictions:
            title = titles[Path(result.source).stem]
            subtype = [line for line in title.splitlines() if "subtype" in line]
            if task == "binary":
                assert subtype == [] and "P(viral)" not in title
                continue
            assert subtype == [
                f"P(normal) = {result.p_normal:.3f}, P(bacterial) = {result.p_bacterial:.3f}, "
                f"P(viral) = {result.p_viral:.3f} → subtype {result.subtype or 'none'}"
            ]
        if task == "three_class":
            assert {r.subtype for r in predictions} > {None}  # called and not called


def test_a_png_another_process_wrote_meanwhile_is_kept(tmp_path, monkeypatch):
    run = untrained_run(tmp_path)
    image, out = tmp_path / "a.png", tmp_path / "out"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(image)
    gradcam_module = importlib.import_module("pneumolab.explain.gradcam")  # not the function
    draw = gradcam_module._figure

    def another_process_first(*args):
        (out / "a.png").write_bytes(b"theirs")
        draw(*args)

    monkeypatch.setattr(gradcam_module, "_figure", another_process_first)
    (outcome,) = explain_paths(run.root, [image], out)
    assert isinstance(outcome, OutputError) and "a.png: written by another process" in str(outcome)
    assert (out / "a.png").read_bytes() == b"theirs"


def test_a_very_thin_image_makes_a_figure_of_bounded_height(tmp_path):
    run, thin, thinner = untrained_run(tmp_path), tmp_path / "thin.png", tmp_path / "thinner.png"
    Image.fromarray(np.full((200, 1), 128, np.uint8)).save(thin)  # 1 px wide, 200 px tall
    Image.fromarray(np.full((3000, 1), 128, np.uint8)).save(thinner)  # shrunk: 0 px wide
    figures = list(explain_paths(run.root, [thin, thinner], tmp_path / "out"))
    assert all(isinstance(figure, Path) for figure in figures), figures
    for figure in figures:
        width, height = Image.open(figure).size
        assert (
            width == FIGURE_PIXELS and height <= TALLEST_FIGURE * FIGURE_PIXELS + 30 * 6
        )  # up to 6 title lines (3, and the scope's reasons)


def test_files_of_one_name_are_told_apart_and_their_folder_is_no_out(tmp_path, monkeypatch):
    """Overlays of a/x.png and b/x.png were both titled "x.png"; `--out a --overwrite` replaced
    a's other X-ray, a/x-2.png... with a figure."""
    run = untrained_run(tmp_path)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / folder / "x.png")
    gradcam_module = importlib.import_module("pneumolab.explain.gradcam")
    titles: list[str] = []
    monkeypatch.setattr(gradcam_module, "_figure", lambda image, heat, t, *out: titles.append(t))
    images = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    list(explain_paths(run.root, images, tmp_path / "out"))
    for title, image in zip(titles, images, strict=True):  # the path, wrapped, never cut
        lines = title.splitlines()
        path_lines = lines[: next(i for i, t in enumerate(lines) if t.startswith("P(pneumonia)"))]
        assert "".join(path_lines) == str(image)
        wrapped = [line for line in lines if not line.startswith("P(pneumonia)")]
        assert all(len(line) <= 80 for line in wrapped)  # what the 600 px figure holds
    with pytest.raises(OutputError, match=r"a: holds x\.png, an image to explain"):
        list(explain_paths(run.root, images[:1], tmp_path / "a", overwrite=True))
    (tmp_path / "links").mkdir()  # a link to a/x.png: its real folder is a
    (tmp_path / "links" / "y.png").symlink_to(tmp_path / "a" / "x.png")
    with pytest.raises(OutputError, match=r"a: holds y\.png, an image to explain"):
        list(explain_paths(run.root, [tmp_path / "links"], tmp_path / "a", overwrite=True))


def test_a_folder_made_for_no_figure_is_removed_again(tmp_path, capsys):
    run, broken = untrained_run(tmp_path), tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["explain", str(run.root), str(broken), "--out", str(tmp_path / "out")]) == 1
    assert "broken.png" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_reports_a_missing_run(tmp_path: Path, capsys):
    assert main(["explain", str(tmp_path / "no-run"), "x.png", "--out", str(tmp_path)]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_gradcam_refuses_what_it_would_explain_wrongly(tmp_path):
    """A misspelt class gave the NORMAL map, a batch lost all but its first image, 0..1 floats
    were divided by 255 again, and Predictor.preprocess's (1, S, S) failed inside grad-cam."""
    predictor = Predictor.from_run(untrained_run(tmp_path).root)
    model = predictor.require_model("Grad-CAM")
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    pixels = predictor.preprocess(image)  # (1, S, S)
    heat = gradcam(model, pixels, predictor.intensity)
    assert np.array_equal(heat, gradcam(model, pixels[None], predictor.intensity))
    with pytest.raises(ValueError, match="'PNEUMONIA' or 'NORMAL', not 'PNEUMONIA '"):
        gradcam(model, pixels, predictor.intensity, towards="PNEUMONIA ")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"one image: .* not \(2, 1, 32, 32\)"):
        gradcam(model, torch.stack([pixels, pixels]), predictor.intensity)
    with pytest.raises(TypeError, match="uint8 pixels"):
        gradcam(model, pixels.float() / 255, predictor.intensity)
    with pytest.raises(TypeError, match=r"a torch tensor of uint8 pixels .* not ndarray"):
        gradcam(model, pixels.numpy(), predictor.intensity)  # type: ignore[arg-type]
    explained = explain_image(predictor, None, image)  # the layer found for it
    towards = explained.towards
    assert np.array_equal(
        explained.heat, gradcam(model, pixels, predictor.intensity, None, towards)
    )
    # a layer of another model, or its name as text, failed inside grad-cam (AttributeError)
    name, chosen = next(
        (n, m) for n, m in model.named_modules() if m is find_target_layer(model, 32)
    )
    assert np.array_equal(heat, gradcam(model, pixels, predictor.intensity, name))
    assert np.array_equal(heat, gradcam(model, pixels, predictor.intensity, chosen))
    with pytest.raises(ValueError, match="layer Conv2d: not a module of the model"):
        gradcam(model, pixels, predictor.intensity, torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ModelError, match="layer 'conv_head': not a layer of the model"):
        gradcam(model, pixels, predictor.intensity, "conv_head")


def test_explain_takes_a_layer_by_name_and_lists_the_candidates_for_an_unknown_one(
    tmp_path, monkeypatch, capsys
):
    """explain always showed the last feature map: a user could not look at an earlier, finer
    one (the saliency check's stride-16 layer) without writing Python."""
    run, image = untrained_run(tmp_path), tmp_path / "a.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(image)
    gradcam_module = importlib.import_module("pneumolab.explain.gradcam")
    layers, titles = [], []
    explain = gradcam_module.explain_image

    def spy(predictor, layer, *args):
        layers.append(next(n for n, m in predictor.model.named_modules() if m is layer))
        return explain(predictor, layer, *args)

    monkeypatch.setattr(gradcam_module, "explain_image", spy)
    monkeypatch.setattr(gradcam_module, "_figure", lambda image, heat, t, *out: titles.append(t))
    command = ["explain", str(run.root), str(image), "--out", str(tmp_path / "maps")]
    assert main([*command, "--layer", "backbone.features.0"]) == 0
    assert "(layer backbone.features.0)" in " ".join(titles[0].split())  # wrapped
    assert main([*command, "--overwrite"]) == 0  # the default: the last map larger than 1x1
    assert layers == ["backbone.features.0", "backbone.features"] and "(layer" not in titles[1]
    capsys.readouterr()
    for wrong in ("backbone.features.O", "head"):  # a typo; a module without a feature map
        command = ["explain", str(run.root), str(image), "--out", str(tmp_path / "x")]
        assert main([*command, "--layer", wrong]) == 2
        err = " ".join(capsys.readouterr().err.split())  # unwrapped
        assert f"layer '{wrong}': not a layer of the model" in err and "Traceback" not in err
        assert "backbone.features (4x4), backbone.features.2.0 (8x8)" in err
        assert ("did you mean" in err) == (wrong != "head")
        assert not (tmp_path / "x").exists()


def test_overlay_png_takes_images_as_predict_does():
    """An RGB image (the dataset's JPEGs) failed to unpack; a 12-bit one wrapped modulo 256."""
    gray = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (50, 1))  # 0..255: no stretch

    def drawn(image: Image.Image | np.ndarray) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(overlay_png(image, None))))[..., 0]

    assert np.array_equal(drawn(Image.fromarray(gray).convert("RGB")), gray)
    twelve_bit = drawn(Image.fromarray(gray.astype(np.uint16) * 16))
    assert np.abs(twelve_bit.astype(int) - drawn(gray)).max() <= 1  # min..max, not modulo
    assert np.abs(drawn(gray / 255.0).astype(int) - gray).max() <= 1


def test_maps_and_predictions_from_several_threads_are_those_of_one_thread(tmp_path):
    """Grad-CAM hooks the model's layers: a map or a prediction running beside it in another
    thread mixed its activations into the map (maps off by up to 1.0, or torch errors)."""
    from concurrent.futures import ThreadPoolExecutor

    predictor = Predictor.from_run(untrained_run(tmp_path).root)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(6)]
    alone = [explain_image(predictor, None, image).heat for image in images]

    def explain_or_predict(i: int) -> np.ndarray | None:
        if i % 3 == 2:
            predictor.predict(images[i % 6])
            return None
        return explain_image(predictor, None, images[i % 6]).heat

    with ThreadPoolExecutor(4) as pool:
        beside = list(pool.map(explain_or_predict, range(120)))
    for i, heat in enumerate(beside):
        if heat is not None:
            assert np.array_equal(heat, alone[i % 6]), i


@pytest.mark.slow  # an untrained VGG19 at 256 px: a few seconds
def test_vgg19_at_256_px_explains_its_features_not_its_head():
    """From 256 px timm's VGG head (``pre_logits``: fc6/fc7 as convolutions) outputs a 2x2
    map, which was chosen as the last map larger than 1x1: the map explained the head."""
    model = create_classifier("vgg19", pretrained=False)
    assert find_target_layer(model, 256) is model.backbone.features
    with pytest.raises(ModelError, match=r"'backbone\.pre_logits': not a layer of the model"):
        layer_named(model, "backbone.pre_logits", 256)


def test_the_raw_map_is_unscaled_and_the_shown_one_stretched_per_image():
    """The mean reader's unscaled map is its input image: the display map stretches it from
    its minimum to its maximum, the raw one keeps it (times one positive number)."""
    image = np.full((40, 40), 100, np.uint8)
    image[15:25, 15:25] = 200
    maps = gradcam_maps(mean_reader(), torch.from_numpy(image)[None, None], "none")
    assert maps.raw.shape == maps.stretched.shape == (40, 40)
    assert np.allclose(maps.raw / maps.raw[0, 0], image / 100.0, rtol=1e-4)
    assert np.allclose(maps.stretched, (image - 100.0) / 100.0, atol=1e-5)
    assert np.array_equal(
        maps.stretched, gradcam(mean_reader(), torch.from_numpy(image)[None, None], "none")
    )


def test_an_evenly_spread_map_is_captioned_as_such_not_as_empty():
    """A flat image gives the mean reader the same evidence everywhere: the raw map is one
    positive number, which the stretch takes to 0, and the caption said "heat map empty: no
    region raised the evidence"."""
    predictor = Predictor(mean_reader(), fixed_threshold_meta("pneumolab_cnn_small", 32, 0.5))
    flat = np.full((32, 32), 100, np.uint8)
    explained = explain_image(predictor, None, flat)
    raw = gradcam_maps(mean_reader(), torch.from_numpy(flat)[None, None], "none").raw
    assert explained.towards == "PNEUMONIA" and raw.min() > 0
    assert not explained.heat.any()  # nothing to draw...
    assert explained.caption == (  # ...but not empty
        "heat spread evenly: every region raised the evidence for PNEUMONIA alike, so none "
        "stands out"
    )
    normal = gradcam_maps(mean_reader(), torch.from_numpy(flat)[None, None], "none", None, "NORMAL")
    assert not normal.raw.any()  # every pixel lowers the evidence for NORMAL
    assert normal.blank("NORMAL") == "heat map empty: no region raised the evidence for NORMAL"
    flat[10:20, 10:20] = 200
    assert explain_image(predictor, None, flat).caption == (
        "heat: regions that raised the evidence for PNEUMONIA"
    )


def test_a_layer_with_a_1x1_map_is_refused_not_shown_empty(tmp_path, capsys):
    """A 1x1 map is one value per image: stretched per image it was all zero, and every image
    was captioned "heat map empty: no region raised the evidence"."""
    model, pixels = mean_reader(kernel=8), torch.full((1, 1, 8, 8), 100, dtype=torch.uint8)
    one_cell = r"layer '{}': its feature map is 1x1 at 8 px, one value per image"
    with pytest.raises(ModelError, match=one_cell.format("backbone.features") + ".*no layer"):
        find_target_layer(model, 8)  # the default choice: every map is 1x1
    with pytest.raises(ModelError, match=one_cell.format("backbone.features.1")):
        gradcam(model, pixels, "none", model.get_submodule("backbone.features.1"))
    run, image = untrained_run(tmp_path, name="pneumolab_cnn_separable"), tmp_path / "a.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(image)
    command = ["explain", str(run.root), str(image), "--out", str(tmp_path / "maps")]
    assert main([*command, "--layer", "backbone.features"]) == 2  # 1x1 at 32 px
    err = " ".join(capsys.readouterr().err.split())
    assert "layer 'backbone.features': its feature map is 1x1 at 32 px" in err
    assert "choose one of backbone.features.4.5 (2x2), backbone.features.3.5 (4x4)" in err
    assert "Traceback" not in err and not (tmp_path / "maps").exists()
    assert main(command) == 0  # the default: backbone.features.4.5, its last map larger than 1x1
