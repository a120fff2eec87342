"""Load a trained run and predict on paths, PIL images or arrays.

PyTorch is imported only by the torch backend, TTA and :meth:`Predictor.preprocess`: an ONNX
predictor decodes, preprocesses and scores with PIL, NumPy and onnxruntime alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image

from pneumolab.choices import BACKENDS
from pneumolab.data.imageio import array_to_image, load_image, resize_square, to_grayscale
from pneumolab.data.layout import IMAGE_SUFFIXES
from pneumolab.errors import ImageLoadError, RunDirError
from pneumolab.inference.decoding import decoded_batches
from pneumolab.run import RunDir
from pneumolab.run_meta import RunMeta

if TYPE_CHECKING:
    import torch

    from pneumolab.models.classifier import XrayClassifier

ImageInput = str | Path | Image.Image | np.ndarray
Pixels: TypeAlias = "np.ndarray | torch.Tensor"
"""uint8 ``(N, 1, S, S)`` pixels: a NumPy array or a CPU tensor."""
Backend: TypeAlias = "Callable[[Pixels], np.ndarray]"
"""Scores uint8 ``(N, 1, S, S)`` pixels, intensity normalisation included: probabilities ``(N,)``."""


@dataclass(frozen=True)
class Prediction:
    """One image's result: probability of pneumonia and the label at the run's threshold."""

    source: str
    probability: float
    label: str
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def score_batches(
    score: Callable[[torch.Tensor], torch.Tensor],
    model: XrayClassifier,
    pixels: Pixels,
    intensity: str,
    batch_size: int,
) -> np.ndarray:
    """``score`` (a function of ``model``) on raw uint8 ``(N, 1, S, S)`` pixels, batch by batch,
    in eval mode: ``intensity`` normalisation first, then pixels / 255 on the model's device."""
    import torch

    from pneumolab.data.transforms import normalize_intensity

    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        scores = [
            score(normalize_intensity(chunk, intensity).to(device).float() / 255.0).cpu()
            for chunk in torch.as_tensor(pixels).split(batch_size)
        ]
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)


def predict_pixels(
    model: XrayClassifier, pixels: Pixels, intensity: str = "none", batch_size: int = 64
) -> np.ndarray:
    """Pneumonia probabilities for raw uint8 ``(N, 1, S, S)`` pixels, in fp32, batch by batch;
    ``intensity`` normalisation is applied first, as in training."""
    return score_batches(lambda x: model(x).sigmoid(), model, pixels, intensity, batch_size)


def predict_class_probabilities(
    model: XrayClassifier, pixels: Pixels, intensity: str = "none", batch_size: int = 64
) -> np.ndarray:
    """``(N, K)`` class probabilities (softmax) of a three-class model, like :func:`predict_pixels`."""
    return score_batches(
        lambda x: model.class_logits(x).softmax(dim=1), model, pixels, intensity, batch_size
    )


def with_tta(backend: Backend) -> Backend:
    """Average ``backend``'s probabilities over the test-time views of each image (TTA_VIEWS)."""
    import torch

    from pneumolab.data.transforms import TTA_VIEWS

    def viewed(view: Callable[[torch.Tensor], torch.Tensor]) -> Backend:
        return lambda pixels: backend(view(torch.as_tensor(pixels)))

    return mean_of([viewed(view) for view in TTA_VIEWS.values()])


def mean_of(backends: Sequence[Backend]) -> Backend:
    """The mean probability of several backends (an ensemble's members)."""

    def averaged(pixels: Pixels) -> np.ndarray:
        return np.mean([backend(pixels) for backend in backends], axis=0)

    return averaged


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, plus the images (by suffix, recursively, sorted) inside any folder."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise ImageLoadError(f"{path}: no such file or folder")
    return found


class Predictor:
    """A trained pneumolab model with its preprocessing and decision threshold.

    >>> predictor = Predictor.from_run("runs/demo")       # doctest: +SKIP
    >>> predictor.predict("xray.jpeg").probability         # doctest: +SKIP
    """

    def __init__(
        self, model: XrayClassifier | None, meta: RunMeta, backend: Backend | None = None
    ) -> None:
        """``backend`` (e.g. an ONNX session) scores instead of the PyTorch ``model``, which may
        then be None; both take the same preprocessed uint8 pixels."""
        if backend is None:
            if model is None:
                raise ValueError("Predictor needs a model or a backend")
            backend = partial(predict_pixels, model, intensity=meta.intensity)
        self.run_dir: Path | None = None
        self.tta = False
        self.model = model.eval() if model is not None else None
        self.meta = meta
        self.image_size = meta.image_size
        self.threshold = meta.threshold
        self.intensity = meta.intensity
        self.class_names = tuple(meta.class_names)
        self.backend = backend

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        device: str = "cpu",
        backend: str = "torch",
        onnx_file: str | Path | None = None,
        tta: bool = False,
    ) -> Predictor:
        """Load the best weights and metadata of a finished run.

        ``backend="onnx"`` scores with onnxruntime (``device`` unused) from ``onnx_file``,
        by default ``RUN_DIR/model.onnx``, written by ``pneumolab export`` (loading never
        writes; a missing file is a RunDirError that says so); ``"onnx-int8"``
        (``RUN_DIR/model.int8.onnx``) and ``"openvino"`` (``RUN_DIR/model.openvino.xml``) load
        files that ``pneumolab export --format`` wrote after a parity check against fp32
        (``onnx_file`` overrides the path).
        ``tta`` averages each image's score over fixed test-time views (the stored threshold
        was chosen without them).
        """
        predictor = cls._load(run_dir, device, backend, onnx_file)
        predictor.run_dir = Path(run_dir)
        if tta:
            predictor.backend, predictor.tta = with_tta(predictor.backend), True
        return predictor

    @classmethod
    def _load(
        cls, run_dir: str | Path, device: str, backend: str, onnx_file: str | Path | None
    ) -> Predictor:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
        run = RunDir(Path(run_dir))
        meta = run.read_meta()
        if meta.is_ensemble:
            members = [cls._load(m.root, device, backend, None) for m in run.member_runs()]
            return cls(None, meta, mean_of([m.backend for m in members]))
        if backend != "torch":
            from pneumolab.inference.onnx_backend import run_exported_backend  # only when asked

            return cls(None, meta, run_exported_backend(run.root, backend, onnx_file))
        from safetensors.torch import load_file

        from pneumolab.models.registry import create_classifier

        subtypes = meta.subtype_names or []
        model = create_classifier(meta.model, pretrained=False, num_classes=len(subtypes) or 1)
        try:
            model.load_state_dict(load_file(run.weights))
        except RuntimeError as exc:
            raise RunDirError(
                f"{run.weights}: weights do not match model '{meta.model}' ({exc})"
            ) from None
        return cls(model.to(device), meta)

    def require_model(self, purpose: str) -> XrayClassifier:
        """The PyTorch model; a clear error for an ensemble or an ONNX-only predictor."""
        if self.model is None:
            what = "an ensemble" if self.meta.is_ensemble else "loaded without its PyTorch model"
            raise RunDirError(
                f"{self.run_dir or 'this run'} is {what}: {purpose} needs a single PyTorch "
                "model; use one of the ensemble's member runs (its meta.json lists them)"
            )
        return self.model

    def preprocess_array(self, image: ImageInput) -> np.ndarray:
        """Any supported input to uint8 ``(1, S, S)`` NumPy pixels, exactly as in training."""
        if isinstance(image, str | Path):
            pil = load_image(image, size_hint=self.image_size)
        elif isinstance(image, Image.Image):
            pil = to_grayscale(image)
        else:
            pil = array_to_image(image)
        return np.array(resize_square(pil, self.image_size))[None]  # writable, for torch

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """:meth:`preprocess_array` as a tensor (for the PyTorch model, e.g. Grad-CAM)."""
        import torch

        return torch.from_numpy(self.preprocess_array(image))

    def _result(self, source: str, probability: float) -> Prediction:
        label = self.class_names[int(probability >= self.threshold)]
        return Prediction(source, float(probability), label, self.threshold)

    def predict(self, image: ImageInput) -> Prediction:
        """Predict one image (path, PIL image or array)."""
        probability = self.backend(self.preprocess_array(image)[None])[0]
        source = str(image) if isinstance(image, str | Path) else type(image).__name__
        return self._result(source, probability)

    def predict_paths(
        self, paths: Sequence[str | Path], batch_size: int = 32, workers: int | None = None
    ) -> Iterator[Prediction | ImageLoadError]:
        """Predict files (folders expanded) in batches; unreadable files yield their error instead.

        Files are decoded on ``workers`` threads (default: one per core) while the previous
        batch is scored (:func:`~pneumolab.inference.decoding.decoded_batches`).
        """
        files = expand_paths(paths)
        for batch in decoded_batches(files, self.preprocess_array, batch_size, workers):
            decoded = [pixels for _, pixels in batch if isinstance(pixels, np.ndarray)]
            probs = iter(self.backend(np.stack(decoded)) if decoded else [])
            for path, pixels in batch:
                yield (
                    pixels
                    if isinstance(pixels, ImageLoadError)
                    else self._result(str(path), next(probs))
                )
