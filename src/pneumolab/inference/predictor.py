"""Load a trained run and predict on paths, PIL images or arrays.

PyTorch is imported only by the torch backend, TTA and :meth:`Predictor.preprocess`: an ONNX
predictor decodes, preprocesses and scores with PIL, NumPy and onnxruntime alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image

from pneumolab.choices import BACKENDS, BackendName
from pneumolab.data.imageio import (
    array_to_image,
    is_dicom_file,
    load_image,
    resize_square,
    source_size,
    to_grayscale,
    upright,
)
from pneumolab.data.layout import image_files
from pneumolab.errors import ImageLoadError, ModelError, RunDirError, brief
from pneumolab.inference.decoding import decoded_batches
from pneumolab.inference.prediction import Prediction, gated_prediction
from pneumolab.inference.score_cache import ScoreCache
from pneumolab.inference.scores import Scorer, at_size, mean_scores, torch_scorer, with_tta
from pneumolab.run import RunDir
from pneumolab.run_meta import RunMeta
from pneumolab.scope.checks import ScopeChecks, image_sanity
from pneumolab.scope.ood import LEGACY_METHODS, OodModel

if TYPE_CHECKING:
    import torch

    from pneumolab.models.classifier import XrayClassifier

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray
Pixels: TypeAlias = "np.ndarray | torch.Tensor"
"""uint8 ``(N, 1, S, S)`` pixels: a NumPy array or a CPU tensor."""
Backend: TypeAlias = "Callable[[Pixels], np.ndarray]"
"""Scores uint8 ``(N, 1, S, S)`` pixels, intensity normalisation included: probabilities ``(N,)``."""


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """ModelError for a device this machine does not have (torch's own error speaks of
    drivers), or a name torch does not know."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ModelError(f"device {device!r}: not a device name torch knows ({exc})") from None
    index = torch.device(device).index or 0
    if kind == "cuda" and index >= torch.cuda.device_count():
        found = torch.cuda.device_count()
        raise ModelError(
            f"device {device!r}: {found or 'no'} CUDA GPU(s) available here; use device='cpu'"
            + (f" or one of cuda:0..{found - 1}" if found else "")
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r}: no Apple GPU (MPS) here; use device='cpu'")


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


def load_network(run: RunDir, meta: RunMeta) -> XrayClassifier:
    """The trained PyTorch network of single-model run ``run`` (its ``meta``), on the CPU; a
    RunDirError when the weights file is unreadable or does not fit the architecture."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pneumolab.models.registry import create_classifier

    subtypes = meta.subtype_names or []
    model = create_classifier(
        meta.model,
        pretrained=False,
        num_classes=len(subtypes) or 1,
        border_fade=meta.preprocessing.border_fade or 0.0,
    )
    try:
        state = load_file(run.weights)
    except (OSError, SafetensorError) as exc:
        raise RunDirError(
            f"{run.weights}: unreadable weights file ({exc}); restore it or train the run again"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunDirError(
            f"{run.weights}: weights do not match model '{meta.model}' ({brief(str(exc))})"
        ) from None
    return model


def expand_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files as given, plus the images inside any folder
    (:func:`~pneumolab.data.layout.image_files`: at any depth, sorted).

    A missing path, or a folder without images, stays in the list as it is, so that reading it
    fails with an error naming it while the other paths still run.
    """
    found: list[Path] = []
    for path in map(Path, [paths] if isinstance(paths, str | Path) else paths):
        found += (image_files(path) if path.is_dir() else []) or [path]
    return found


def file_header_checks(path: str | Path) -> ScopeChecks:
    """The scope checks a file's header allows before any pixel work: a DICOM's tags (other
    formats: none)."""
    if not is_dicom_file(Path(path)):
        return ScopeChecks()
    from pneumolab.scope.dicom_header import dicom_file_checks  # pydicom when needed

    return dicom_file_checks(path)


def _tensor_as_array(image: Any) -> Any:
    """A tensor as NumPy can take it: detached (``requires_grad``), on the CPU, bfloat16 as
    float32 (NumPy has no bfloat16); anything else as it is."""
    if not hasattr(image, "detach"):
        return image
    tensor = image.detach().cpu()
    return tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor


def prepare_image(image: ImageInput, image_size: int) -> tuple[np.ndarray, ScopeChecks]:
    """Any supported input to uint8 ``(1, S, S)`` NumPy pixels (``S = image_size``), exactly as
    in training, and the checks that need no network: a DICOM file's header, the image's size
    and contrast. A function of its own so that decoding workers need no loaded model."""
    checks = ScopeChecks()
    if isinstance(image, str | Path):
        checks = file_header_checks(image)
        pil = load_image(image, size_hint=image_size)
    elif isinstance(image, Image.Image):  # EXIF orientation applied, as to files
        pil = to_grayscale(upright(image, "image"))
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):  # a tensor too
        pil = array_to_image(np.asarray(_tensor_as_array(image)))
    else:
        raise TypeError(
            f"an image is a path, a PIL image or an array, not {type(image).__name__}; "
            "for many files use predict_paths()"
        )
    pixels = resize_square(pil, image_size)
    checks += image_sanity(*source_size(pil), pixels)  # a JPEG's own, not its reduced decode
    return np.array(pixels)[None], checks  # writable, for torch


def run_ood_model(run: RunDir, warn: bool = True) -> OodModel | None:
    """The run's OOD model (the input-scope gate's content check); None where it has none, or
    one of an older pneumolab that scored pooled features (with a warning saying how to refit,
    unless ``warn`` is false: a refit is under way)."""
    ood = OodModel.load(run.ood) if run.ood.is_file() else None
    if ood is not None and ood.method in LEGACY_METHODS:
        if not warn:
            return None
        log.warning(
            "%s: OOD model of an older pneumolab (pooled features), not used; refit it with "
            "`pneumolab fit-ood %s --data DATA_DIR`",
            run.ood,
            run.root,
        )
        return None
    return ood


class Predictor:
    """A trained pneumolab model with its preprocessing, decision threshold and scope gate.

    >>> predictor = Predictor.from_run("runs/demo")       # doctest: +SKIP
    >>> predictor.predict("xray.jpeg").probability         # doctest: +SKIP
    """

    def __init__(
        self,
        model: XrayClassifier | None,
        meta: RunMeta,
        scorer: Scorer | None = None,
        ood: OodModel | None = None,
        scope_verdict: bool = True,
    ) -> None:
        """``scorer`` (e.g. an ONNX session) scores instead of the PyTorch ``model``, which may
        then be None; both take the same preprocessed uint8 pixels. ``ood``: the run's OOD model
        (its threshold; with a PyTorch model also its scorer). ``scope_verdict``: out-of-scope
        inputs get the ``OUT_OF_SCOPE`` label (else their class label, flagged all the same)."""
        self.backend_name = "torch" if scorer is None else "custom"
        self.run_dir: Path | None = None
        self.meta = meta
        if scorer is None:
            if model is None:
                raise ValueError("Predictor needs a model or a scorer")
            module = ood.scorer if ood else None
            device = next(model.parameters()).device
            scorer = torch_scorer(model, self.intensity, module.to(device) if module else None)
        self.tta = False
        self.model = model.eval() if model is not None else None
        self.image_size = meta.image_size
        self.threshold = meta.threshold
        self.class_names = tuple(meta.class_names)
        self.ood = ood
        self.scope_verdict = scope_verdict
        self.scorer = scorer

    def __repr__(self) -> str:
        run = self.run_dir.name if self.run_dir else None
        return (
            f"Predictor(run={run!r}, model={self.meta.model!r}, backend={self.backend_name!r}, "
            f"image_size={self.image_size}, threshold={self.threshold:.4f}, tta={self.tta})"
        )

    @property
    def intensity(self) -> str:
        """The intensity normalisation of the run's input (RunDirError where meta.json records
        none: an ensemble whose members normalise differently, each scoring its own input)."""
        if self.meta.intensity is None:
            raise RunDirError(
                f"{self.run_dir or 'this run'}: no single intensity normalisation (an ensemble "
                "whose members normalise intensity differently)"
            )
        return self.meta.intensity

    @cached_property
    def model_version(self) -> str:
        """``<pneumolab version>+<weights digest>`` of the run (``unknown`` when not from a run)."""
        return RunDir(self.run_dir).model_version() if self.run_dir else "unknown"

    @property
    def backend(self) -> Backend:
        """Probabilities only (what evaluation and robustness need)."""
        return lambda pixels: self.scorer(pixels).probability

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        device: str = "cpu",
        backend: BackendName = "torch",
        onnx_file: str | Path | None = None,
        tta: bool = False,
        scope_verdict: bool = True,
        cache: ScoreCache | None = None,
    ) -> Predictor:
        """Load the kept weights, metadata and OOD model of a finished run.

        ``backend="onnx"`` scores with onnxruntime (``device`` unused) from ``onnx_file``,
        by default ``RUN_DIR/model.onnx``, written by ``pneumolab export`` (loading never
        writes; a missing file is a RunDirError that says so); ``"onnx-int8"``
        (``RUN_DIR/model.int8.onnx``) and ``"openvino"`` (``RUN_DIR/model.openvino.xml``) load
        files that ``pneumolab export --format`` wrote after a parity check against fp32
        (``onnx_file`` overrides the path).
        ``tta`` averages each image's scores over fixed test-time views and decides at the run's
        TTA threshold (chosen on validation scores averaged over the same views; a run without
        one keeps its plain threshold, with a warning). ``scope_verdict``: see :class:`Predictor`.
        ``cache``: every network (an ensemble's members each) answers pixels it has scored
        before from this :class:`~pneumolab.inference.score_cache.ScoreCache`.
        """
        if backend == "torch":  # the exported backends run without PyTorch, device unused
            check_device(device)
        predictor = cls._load(run_dir, device, backend, onnx_file, cache)
        predictor.run_dir = Path(run_dir)
        predictor.scope_verdict = scope_verdict
        predictor.backend_name, predictor.tta = backend, tta
        if predictor.ood is None:
            log.warning(
                "%s has no OOD model (ood.safetensors): only the sanity and DICOM checks gate "
                "inputs; fit one with `pneumolab fit-ood %s --data DATA_DIR`",
                run_dir,
                run_dir,
            )
        if tta:
            predictor.scorer, predictor.tta = with_tta(predictor.scorer), True
            if predictor.meta.tta_threshold is None:
                log.warning(
                    "%s has no TTA threshold (trained before pneumolab stored one): TTA scores "
                    "are judged at the threshold chosen without TTA",
                    run_dir,
                )
            else:
                predictor.threshold = predictor.meta.tta_threshold
        return predictor

    @classmethod
    def _load(
        cls,
        run_dir: str | Path,
        device: str,
        backend: BackendName,
        onnx_file: str | Path | None,
        cache: ScoreCache | None = None,
    ) -> Predictor:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
        run = RunDir(Path(run_dir))
        meta = run.read_meta()
        ood = run_ood_model(run)
        if meta.is_ensemble:
            if onnx_file is not None:
                raise ValueError(
                    f"{run.root}: an ensemble scores each member's own exported file; "
                    "onnx_file names a single model's"
                )
            members = [cls._load(m.root, device, backend, None, cache) for m in run.member_runs()]
            scorers = [at_size(m.scorer, m.image_size) for m in members]
            return cls(None, meta, mean_scores(scorers), ood)
        if backend != "torch":
            from pneumolab.inference.onnx_backend import run_exported_backend  # only when asked

            scorer = run_exported_backend(run.root, backend, onnx_file)
            return cls(None, meta, cls._cached(scorer, cache, run.root, backend, onnx_file), ood)
        predictor = cls(load_network(run, meta).to(device), meta, ood=ood)
        predictor.scorer = cls._cached(predictor.scorer, cache, run.root, backend, device)
        return predictor

    @staticmethod
    def _cached(
        scorer: Scorer, cache: ScoreCache | None, root: Path, *how: str | Path | None
    ) -> Scorer:
        """``scorer`` through ``cache`` (if any), keyed by run folder and how it scores."""
        if cache is None:
            return scorer
        return cache.wrap(scorer, "|".join(map(str, (root.resolve(), *how))))

    def require_model(self, purpose: str) -> XrayClassifier:
        """The PyTorch model; a clear error for an ensemble or an ONNX-only predictor."""
        run = self.run_dir or "this run"
        if self.model is None and self.meta.is_ensemble:
            raise RunDirError(
                f"{run} is an ensemble: {purpose} needs a single PyTorch model; use one of its "
                f"member runs ({', '.join(self.meta.members)}, relative to it)"
            )
        if self.model is None:
            raise RunDirError(
                f"{run} is loaded without its PyTorch model (backend {self.backend_name}): "
                f"{purpose} needs it; load the run with the torch backend"
            )
        return self.model

    def prepare(self, image: ImageInput) -> tuple[np.ndarray, ScopeChecks]:
        """Any supported input to uint8 ``(1, S, S)`` NumPy pixels, exactly as in training, and
        the checks that need no network (:func:`prepare_image` at this run's size)."""
        return prepare_image(image, self.image_size)

    def preprocess_array(self, image: ImageInput) -> np.ndarray:
        """Any supported input to uint8 ``(1, S, S)`` NumPy pixels, exactly as in training."""
        return self.prepare(image)[0]

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """:meth:`preprocess_array` as a tensor (for the PyTorch model, e.g. Grad-CAM)."""
        import torch

        return torch.from_numpy(self.preprocess_array(image))

    def result_for(
        self,
        source: str,
        probability: float,
        ood_score: float,
        checks: ScopeChecks,
        scope_verdict: bool | None = None,
    ) -> Prediction:
        """The prediction for ``source`` from its scores and scope checks (the scope gate's
        verdict folded in); every path that scores images builds its rows here."""
        return gated_prediction(
            source,
            probability,
            self.threshold,
            self.class_names,
            checks,
            ood_score=float(ood_score),
            ood_threshold=self.ood.threshold if self.ood else None,
            scope_verdict=self.scope_verdict if scope_verdict is None else scope_verdict,
        )

    def predict(
        self,
        image: ImageInput,
        header_checks: ScopeChecks | None = None,
        scope_verdict: bool | None = None,
    ) -> Prediction:
        """Predict one image (path, PIL image or array). ``header_checks``: a DICOM header's
        checks for an image decoded elsewhere (a path's are made here). ``scope_verdict``
        overrides the predictor's setting for this image."""
        return self.predict_with_pixels(image, header_checks, scope_verdict)[0]

    def predict_with_pixels(
        self,
        image: ImageInput,
        header_checks: ScopeChecks | None = None,
        scope_verdict: bool | None = None,
    ) -> tuple[Prediction, np.ndarray]:
        """:meth:`predict`, and the uint8 ``(1, S, S)`` pixels the network saw (a heat map
        reads the same ones: the image is decoded and resized once)."""
        if isinstance(image, str | Path) and Path(image).is_dir():
            raise ImageLoadError(
                f"{image}: is a folder; predict() takes one image (predict_paths() and "
                "`pneumolab predict` take folders)"
            )
        pixels, checks = self.prepare(image)
        scores = self.scorer(pixels[None])
        source = str(image) if isinstance(image, str | Path) else type(image).__name__
        checks = (header_checks or ScopeChecks()) + checks
        result = self.result_for(
            source, scores.probability[0], scores.ood[0], checks, scope_verdict
        )
        return result, pixels

    def predict_paths(
        self,
        paths: str | Path | Sequence[str | Path],
        batch_size: int = 32,
        workers: int | None = None,
    ) -> Iterator[Prediction | ImageLoadError]:
        """Predict files (folders expanded) in batches; unreadable files yield their error instead.

        Files are decoded on ``workers`` threads (default: one per core) while the previous
        batch is scored (:func:`~pneumolab.inference.decoding.decoded_batches`).
        """
        return (outcome for _, outcome, _ in self.score_paths(paths, batch_size, workers))

    def score_paths(
        self,
        paths: str | Path | Sequence[str | Path],
        batch_size: int = 32,
        workers: int | None = None,
    ) -> Iterator[tuple[Path, Prediction | ImageLoadError, np.ndarray | None]]:
        """Like :meth:`predict_paths`, with each file's path and model-input pixels (None when
        unreadable), for callers that also describe the images (the site audit)."""
        files = expand_paths(paths)
        for batch in decoded_batches(files, self.prepare, batch_size, workers):
            prepared = [item for _, item in batch if not isinstance(item, ImageLoadError)]
            if prepared:
                scores = self.scorer(np.stack([pixels for pixels, _ in prepared]))
            index = 0
            for path, item in batch:
                if isinstance(item, ImageLoadError):
                    yield path, item, None
                    continue
                pixels, checks = item
                probability, ood = scores.probability[index], scores.ood[index]
                index += 1
                yield path, self.result_for(str(path), probability, ood, checks), pixels


def load_run(run_dir: str | Path, device: str = "cpu", **options: Any) -> Predictor:
    """Load a finished run directory as a :class:`Predictor` (``options``: those of
    :meth:`Predictor.from_run`, such as ``backend="onnx"``, ``tta`` or ``scope_verdict``)."""
    return Predictor.from_run(run_dir, device=device, **options)
