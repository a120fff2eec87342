"""Load a run's verified export by backend name: ONNX fp32, ONNX INT8 or OpenVINO."""

from __future__ import annotations

from pathlib import Path

from pneumolab.choices import BackendName
from pneumolab.errors import ModelError
from pneumolab.inference.onnx_backend import (
    INT8_FILE_NAME,
    ExportedBackend,
    OnnxBackend,
    load_onnx_backend,
)
from pneumolab.inference.openvino_backend import OPENVINO_FILE_NAME, OpenVinoBackend


def load_exported_backend(
    run_dir: str | Path, backend: BackendName, file: str | Path | None = None
) -> ExportedBackend:
    """The run's ``onnx`` (see :func:`load_onnx_backend`), ``onnx-int8`` or ``openvino`` backend;
    the last two only from files that ``pneumolab export`` accepted after its parity check."""
    run_dir = Path(run_dir)
    if backend == "onnx":
        return load_onnx_backend(run_dir, file)
    default = {"onnx-int8": INT8_FILE_NAME, "openvino": OPENVINO_FILE_NAME}[backend]
    path = Path(file) if file else run_dir / default
    if not path.is_file():
        raise ModelError(
            f"{path}: not found; create it with `pneumolab export {run_dir} --format {backend}` "
            "(it is written only after a parity check against the fp32 model)"
        )
    loaded = OnnxBackend(path) if backend == "onnx-int8" else OpenVinoBackend(path)
    remake = f"pneumolab export {run_dir} --format {backend} --overwrite"
    if backend == "onnx-int8" and loaded.metadata.get("precision") != "int8":
        raise ModelError(  # an fp32 export written under the INT8 name would pass for one
            f"{path}: not an INT8 export (its metadata says precision "
            f"{loaded.metadata.get('precision', 'unset')}); create it with `{remake}`"
        )
    loaded.check_run(run_dir, remake)
    return loaded
