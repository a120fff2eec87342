"""Model creation by name, and ImageNet weights from local files (offline)."""

from __future__ import annotations

import re
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import trained_like
from pneumolab.errors import ModelError
from pneumolab.models.registry import create_backbone, create_classifier, find_local_weights


def test_classifier_takes_grayscale_and_returns_one_logit_per_image():
    model = create_classifier("pneumolab_cnn_small")
    assert model(torch.rand(3, 1, 32, 32)).shape == (3,)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelError, match=r"unknown model 'mobilenetv2_10'.*mobilenetv2_100"):
        create_classifier("mobilenetv2_10")


def test_offline_hub_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PNEUMOLAB_WEIGHTS_DIR", raising=False)
    started = time.perf_counter()
    with pytest.raises(ModelError, match="--weights"):
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - started < 5


def test_a_weights_folder_without_the_models_file_is_named(monkeypatch, tmp_path):
    """Offline, "no local weights" did not say the folder given had been searched; online, the
    hub's weights came instead without a word."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "mobilenetv2_100_tv.safetensors").write_bytes(b"")  # another name: no match
    with pytest.raises(ModelError, match=f"in {tmp_path} \\(no resnet18.\\* or resnet18"):
        create_backbone("resnet18", pretrained=True, weights=tmp_path)


def test_custom_cnn_has_no_imagenet_weights():
    with pytest.raises(ModelError, match="no published ImageNet weights"):
        create_backbone("pneumolab_cnn_small", pretrained=True)


def test_weights_from_a_file_the_test_writes(tmp_path):
    source = create_backbone("resnet18", num_classes=1000)
    file = tmp_path / "resnet18.my_in1k.safetensors"
    save_file(trained_like(source.state_dict()), file)
    for location in (file, tmp_path):  # a file, or a folder searched by architecture name
        loaded = create_backbone("resnet18", pretrained=True, weights=location)
        assert torch.equal(loaded.conv1.weight, source.conv1.weight)
        assert loaded.fc.out_features == 1  # new head for the task


@pytest.mark.parametrize("num_classes", [1, 3])
def test_fresh_head_on_pretrained_weights_starts_as_head_init_says(tmp_path, num_classes):
    file = tmp_path / "mobilenetv2_100.my_in1k.safetensors"
    save_file(trained_like(create_backbone("mobilenetv2_100", num_classes=1000).state_dict()), file)
    zero = create_backbone("mobilenetv2_100", True, file, num_classes, head_init="zero")
    timm_init = create_backbone("mobilenetv2_100", True, file, num_classes, head_init="timm")
    assert not zero.get_classifier().weight.any() and not zero.get_classifier().bias.any()
    # timm's init of this family: U(-1/sqrt(classes), +1/sqrt(classes)), large on few logits
    assert timm_init.get_classifier().weight.abs().max() > 0.5 / num_classes**0.5
    assert torch.equal(zero.conv_stem.weight, timm_init.conv_stem.weight)
    fan_in = create_backbone("mobilenetv2_100", True, file, num_classes)  # the default
    bound = 1 / fan_in.get_classifier().in_features ** 0.5  # PyTorch's nn.Linear default
    assert 0.5 * bound < fan_in.get_classifier().weight.abs().max() <= bound
    assert 0 < fan_in.get_classifier().bias.abs().max() <= bound


def test_missing_weights_location_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        find_local_weights("resnet18", tmp_path / "nowhere")


def test_a_folder_with_several_files_for_one_network_is_refused_not_guessed(tmp_path):
    """The first file by name was taken (an all-zero import sorted before the real weights)
    with nothing logged or recorded."""
    for name in ("mobilenetv2_100.a_zeros.safetensors", "mobilenetv2_100.tv_in1k.safetensors"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "resnet18.tv_in1k.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"several weights files for mobilenetv2_100 \(mobilenet"):
        find_local_weights("mobilenetv2_100", tmp_path)
    assert find_local_weights("resnet18", tmp_path) == tmp_path / "resnet18.tv_in1k.safetensors"
    assert find_local_weights("mobilenetv2_100", tmp_path / "mobilenetv2_100.tv_in1k.safetensors")


def test_shared_mobilenetv2_weights_load_exactly():
    from conftest import SHARED_WEIGHTS

    file = SHARED_WEIGHTS / "mobilenetv2_100.tv_in1k.safetensors"
    if not file.is_file():
        pytest.skip(f"{file} not found")
    model = create_backbone("mobilenetv2_100", pretrained=True, weights=SHARED_WEIGHTS)
    expected = load_file(file)
    state = model.state_dict()
    body = [k for k in expected if not k.startswith("classifier.")]
    assert len(body) > 300
    assert all(torch.equal(state[k], expected[k]) for k in body)


@pytest.mark.slow
def test_vgg19_from_torchvision_weights_file(tmp_path):
    """No VGG19 weights are reachable here: a file in torchvision's layout, as users download it
    (vgg19-dcbb9e9d.pth), is written by the test and must load into timm's vgg19."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = torchvision.models.vgg19(weights=None)
    file = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(source.state_dict(), file)
    model = create_backbone("vgg19", pretrained=True, weights=file)
    assert torch.equal(model.features[0].weight, source.features[0].weight)
    assert torch.equal(model.features[34].weight, source.features[34].weight)
    # torchvision's first dense layer becomes timm's 7x7 convolution of the same weights
    assert torch.equal(model.pre_logits.fc1.weight.flatten(1), source.classifier[0].weight)
    assert model.get_classifier().out_features == 1


def test_models_command_lists_the_study_lineup(capsys):
    from pneumolab.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in (
        "pneumolab_cnn_small",
        "vgg19",
        "legacy_xception",
        "mobilenetv2_100",
        "densenet121",
    ):
        assert name in out


def test_a_weights_file_of_another_network_is_refused_not_left_unused(tmp_path):
    save_file({"foo": torch.zeros(3)}, tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match=r"junk\.safetensors: gave no weights to \d+ of the"):
        create_backbone("mobilenetv2_100", pretrained=True, weights=tmp_path / "junk.safetensors")


def test_a_weights_file_without_batch_norm_statistics_is_refused(tmp_path):
    """Batch norms start constant (weight 1, mean 0, variance 1), which the check of randomly
    initialised tensors passes over: a file without them trained on without a word."""
    torch.manual_seed(3)
    full = trained_like(create_backbone("pneumolab_cnn_small").state_dict())
    save_file(full, tmp_path / "pneumolab_cnn_small.full.safetensors")
    create_backbone("pneumolab_cnn_small", pretrained=True, weights=tmp_path)
    partial = {k: v for k, v in full.items() if not k.endswith("running_var")}  # one of two
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(ModelError, match=r"partial\.safetensors: gave no statistics to \d+ of"):
        create_backbone(
            "pneumolab_cnn_small", pretrained=True, weights=tmp_path / "partial.safetensors"
        )


def test_pneumolabs_own_cnns_load_a_local_weights_file(tmp_path):
    torch.manual_seed(5)
    stored = create_backbone("pneumolab_cnn_small").state_dict()
    save_file(trained_like(stored), tmp_path / "pneumolab_cnn_small.mine.safetensors")
    model = create_backbone("pneumolab_cnn_small", pretrained=True, weights=tmp_path)
    assert torch.equal(model.state_dict()["features.0.0.weight"], stored["features.0.0.weight"])


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("resnet18.bogus", "timm has no tag like that; its tags: resnet18.a1_in1k"),
        ("coatnet_0_224", "has no published ImageNet weights"),
    ],
)
def test_names_without_weights_to_load_say_so(name, problem):
    with pytest.raises(ModelError, match=re.escape(problem)):
        create_backbone(name, pretrained=True)


def test_the_catalog_does_not_credit_a_given_file_to_every_model(tmp_path):
    """`models --weights mobilenet.safetensors vgg19` listed the MobileNet file as vgg19's."""
    from pneumolab.models.catalog import weights_source

    given = tmp_path / "mobilenetv2_100.tv_in1k.safetensors"
    given.write_bytes(b"")
    assert weights_source("vgg19", given).endswith("(given; training checks that it fits)")
    assert weights_source("mobilenetv2_100", tmp_path) == f"local file {given}"  # by its name
