"""Importing another port's ImageNet weights into timm's layout (matched in order, shapes checked)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pneumolab.errors import ModelError, OutputError
from pneumolab.models.registry import create_backbone, find_local_weights
from pneumolab.models.weights_import import import_weights

MODEL = "pneumolab_cnn_small"


def _port(tmp_path, rename=lambda name: "_" + name.replace(".", "_")) -> tuple[dict, object]:
    """A state dict of MODEL under another port's names, saved as a .pth file."""
    torch.manual_seed(1)
    original = create_backbone(MODEL).state_dict()
    port = {rename(name): tensor.clone() for name, tensor in original.items()}
    path = tmp_path / "port.pth"
    torch.save(port, path)
    return original, path


def test_imported_weights_load_offline_under_timms_names(tmp_path):
    original, path = _port(tmp_path)
    written = import_weights(path, MODEL, tmp_path / "weights", tag="port")
    assert written.name == f"{MODEL}.port.safetensors"
    assert find_local_weights(MODEL, tmp_path / "weights") == written
    stored = load_file(written)
    assert sorted(stored) == sorted(original)
    for name, tensor in original.items():
        torch.testing.assert_close(stored[name], tensor)
    with pytest.raises(OutputError, match="already exists"):
        import_weights(path, MODEL, tmp_path / "weights", tag="port")


def test_another_architecture_is_refused_and_nothing_is_written(tmp_path):
    original, _ = _port(tmp_path)
    shorter = dict(list(original.items())[:-1])
    torch.save(shorter, tmp_path / "short.pth")
    with pytest.raises(ModelError, match=r"short.pth: \d+ tensors, timm's"):
        import_weights(tmp_path / "short.pth", MODEL, tmp_path / "weights", tag="x")
    swapped = dict(original)
    first = next(iter(swapped))
    swapped[first] = swapped[first].transpose(0, 1)
    torch.save(swapped, tmp_path / "swapped.pth")
    with pytest.raises(ModelError, match=f"swapped.pth: tensor '{first}'.*does not match"):
        import_weights(tmp_path / "swapped.pth", MODEL, tmp_path / "weights", tag="x")
    kinds = list(original)  # two tensors of one shape, another kind: a batch norm's, swapped
    mean = next(k for k in kinds if k.endswith("running_mean"))
    var = mean.replace("running_mean", "running_var")
    order = [var if k == mean else mean if k == var else k for k in kinds]
    torch.save({k: original[k] for k in order}, tmp_path / "kinds.pth")
    with pytest.raises(ModelError, match=r"kinds.pth: tensor '.*running_var'.*does not match"):
        import_weights(tmp_path / "kinds.pth", MODEL, tmp_path / "weights", tag="x")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.pth: not a PyTorch state-dict file") as error:
        import_weights(tmp_path / "junk.pth", MODEL, tmp_path / "weights", tag="x")
    assert len(str(error.value)) < 500  # torch's essay on weights_only, cut short
    (tmp_path / "port.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="keeps no tensor order"):
        import_weights(tmp_path / "port.safetensors", MODEL, tmp_path / "weights", tag="x")
    assert not (tmp_path / "weights").exists()


@pytest.mark.parametrize("tag", ["x/../../escaped", "a/b", "", "spa ce"])
def test_a_tag_that_is_not_one_file_name_part_is_refused(tmp_path, tag):
    _, path = _port(tmp_path)
    with pytest.raises(OutputError, match="a tag is part of one file name"):
        import_weights(path, MODEL, tmp_path / "weights", tag=tag)
    assert (
        not (tmp_path / "weights").exists()
        and not (tmp_path.parent / "escaped.safetensors").exists()
    )
