"""Score uint8 X-ray pixels with OpenVINO (``pip install openvino``), from a verified IR file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.errors import ModelError
from pneumolab.inference.onnx_backend import (
    OOD_OUTPUT_NAME,
    OUTPUT_NAME,
    ExportedBackend,
    import_runtime,
)

OPENVINO_FILE_NAME = "model.openvino.xml"
"""Where ``pneumolab export --format openvino`` writes the IR (weights beside it, ``.bin``)."""
METADATA_SECTION = "pneumolab"
"""The IR's runtime-info section that holds the ONNX file's metadata (the preprocessing contract)."""


def import_openvino() -> Any:
    """The ``openvino`` module (:func:`~pneumolab.inference.onnx_backend.import_runtime`)."""
    return import_runtime(
        "openvino",
        "the openvino backend needs OpenVINO",
        "pip install openvino (or pneumolab[openvino])",
    )


class OpenVinoBackend(ExportedBackend):
    """An OpenVINO CPU model compiled from an IR written by ``pneumolab export --format openvino``.

    OpenVINO chooses its CPU precision itself (bf16 on CPUs with AMX or AVX512-BF16, else fp32);
    the export's parity check ran with the same choice, on the machine that exported it.
    """

    def __init__(self, xml_file: str | Path) -> None:
        ov = import_openvino()
        self.file = Path(xml_file)
        if not self.file.is_file():
            raise ModelError(f"{self.file}: OpenVINO file not found")
        core = ov.Core()
        try:
            model = core.read_model(str(self.file))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelError(f"{self.file}: not a loadable OpenVINO model ({exc})") from None
        info = model.get_rt_info()  # an RTMap: `in` and [] work, .get does not
        section = info[METADATA_SECTION] if METADATA_SECTION in info else {}  # noqa: SIM401
        self._read_contract({key: section[key].astype(str) for key in section})
        self.compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # an infer request serves one call at a time
        self.outputs = [  # an output may have several names (ONNX's among them)
            output
            for name in (OUTPUT_NAME, OOD_OUTPUT_NAME)
            for output in self.compiled.outputs
            if name in output.get_names()
        ]
        if not self.outputs or OUTPUT_NAME not in self.outputs[0].get_names():
            raise ModelError(
                f"{self.file}: no '{OUTPUT_NAME}' output; write it with "
                "`pneumolab export RUN_DIR --format openvino`"
            )

    def _score(self, inputs: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            results = self.request.infer({0: inputs})
            return [results[output].copy() for output in self.outputs]
