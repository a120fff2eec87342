"""Load a trained run and predict on paths, PIL images or arrays.

PyTorch is imported only by the torch backend, TTA and :meth:`Predictor.preprocess`: an ONNX
predictor decodes, preprocesses and scores with PIL, NumPy and onnxruntime alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from pneumolab.choices import BACKENDS, BackendName
from pneumolab.data.imageio import DEFAULT_MAX_PIXELS
from pneumolab.errors import ImageLoadError, RunDirError
from pneumolab.inference.decoding import decoded_batches
from pneumolab.inference.inputs import ImageInput, expand_paths, prepare_image
from pneumolab.inference.prediction import Prediction, gated_prediction
from pneumolab.inference.run_models import check_member_gates, load_network, run_ood_model
from pneumolab.inference.score_cache import ScoreCache
from pneumolab.inference.scores import Scorer, at_size, mean_scores, torch_scorer, with_tta
from pneumolab.inference.torch_scoring import Pixels, check_device
from pneumolab.once import Once
from pneumolab.run import RunDir
from pneumolab.run_meta import RunMeta
from pneumolab.scope.checks import ScopeChecks
from pneumolab.scope.ood import OodModel

if TYPE_CHECKING:
    import torch

    from pneumolab.models.classifier import XrayClassifier

log = logging.getLogger(__name__)

Backend: TypeAlias = "Callable[[Pixels], np.ndarray]"
"""Scores uint8 ``(N, 1, S, S)`` pixels, intensity normalisation included: probabilities ``(N,)``."""


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
        self.reload: Callable[[], Predictor] | None = None
        """How :meth:`from_run` loaded it, to load it again (pickling); None otherwise."""
        self.meta = meta
        if scorer is None:
            if model is None:
                raise ValueError("Predictor needs a model or a scorer")
            module = ood.scorer if ood else None
            device = next(model.parameters()).device
            scorer = torch_scorer(
                model,
                self.intensity,
                module.to(device) if module else None,
                classes=len(meta.subtype_names or ()),
            )
        self.tta = False
        self.max_pixels = DEFAULT_MAX_PIXELS
        """Largest image file decoded (width x height); larger ones are refused from their header."""
        self.model = model.eval() if model is not None else None
        self.image_size = meta.image_size
        self.threshold = meta.threshold
        self.class_names = tuple(meta.class_names)
        self.ood = ood
        self.scope_verdict = scope_verdict
        self.scorer = scorer
        self._no_subtypes_told = Once()
        """Whether :meth:`_tell_no_subtypes` has warned (predictions run on several threads)."""

    def __reduce__(self) -> tuple[Callable[[], Predictor], tuple[()]]:
        """Pickled as the call that loads it again (for worker processes: joblib,
        multiprocessing): the other process reads the run folder as :meth:`from_run` did here;
        the network, a score cache and attributes changed since loading do not travel."""
        if self.reload is None:
            raise TypeError(
                "only a Predictor loaded with Predictor.from_run / pneumolab.load_run can be "
                "pickled (it is loaded again from its run folder in the other process)"
            )
        return self.reload, ()

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
        """``<pneumolab version>+<weights digest, 12 hex>.<scope gate digest, 8 hex>`` of the
        run (:meth:`RunDir.model_version`; ``unknown`` when not from a run)."""
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
        max_pixels: int = DEFAULT_MAX_PIXELS,
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
        ``max_pixels``: image files larger than this (width x height) are refused from their
        header as possible decompression bombs (ValueError below 1: every file was refused).
        """
        if max_pixels < 1:
            raise ValueError(f"max_pixels is a number of pixels (at least 1), not {max_pixels}")
        if backend == "torch":  # the exported backends run without PyTorch, device unused
            check_device(device)
        predictor = cls._load(run_dir, device, backend, onnx_file, cache, tta)
        predictor.run_dir = Path(run_dir)
        predictor.reload = partial(
            cls.from_run,
            Path(run_dir).absolute(),
            device=device,
            backend=backend,
            onnx_file=None if onnx_file is None else Path(onnx_file).absolute(),
            tta=tta,
            scope_verdict=scope_verdict,
            max_pixels=max_pixels,
        )
        predictor.scope_verdict, predictor.max_pixels = scope_verdict, max_pixels
        predictor.backend_name, predictor.tta = backend, tta
        if predictor.ood is None:
            log.warning(
                "%s has no OOD model (ood.safetensors): only the sanity and DICOM checks gate "
                "inputs; fit one with `pneumolab fit-ood %s --data DATA_DIR`",
                run_dir,
                run_dir,
            )
        if tta:
            if not predictor.meta.is_ensemble:  # an ensemble's members take the views each
                predictor.scorer = with_tta(predictor.scorer)
            predictor.tta = True
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
        tta: bool = False,
    ) -> Predictor:
        """The run's predictor; an ensemble's members each at their own size, and with ``tta``
        each averaged over the test-time views at its own size, as their stored TTA scores
        (the ensemble's TTA threshold was chosen on) were: views of the ensemble's larger image
        moved a 160 px member's TTA scores by up to 0.136."""
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
            run.check_members()
            check_member_gates(run, ood)
            members = [cls._load(m.root, device, backend, None, cache) for m in run.member_runs()]
            scorers = [
                at_size(with_tta(m.scorer) if tta else m.scorer, m.image_size) for m in members
            ]
            return cls(None, meta, mean_scores(scorers), ood)
        if backend != "torch":
            from pneumolab.inference.exported import load_exported_backend  # only when asked

            scorer = load_exported_backend(run.root, backend, onnx_file)
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
        return prepare_image(image, self.image_size, self.max_pixels)

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
        class_probs: np.ndarray | None = None,
    ) -> Prediction:
        """The prediction for ``source`` from its scores (``class_probs``: a three-class
        network's, where its scorer gives them) and scope checks (the scope gate's verdict
        folded in); every path that scores images builds its rows here. A three-class run
        whose scorer gives no class probabilities says so with its first prediction
        (:meth:`_tell_no_subtypes`)."""
        if class_probs is None and self.meta.subtype_names:
            self._tell_no_subtypes()
        return gated_prediction(
            source,
            probability,
            self.threshold,
            self.class_names,
            checks,
            ood_score=float(ood_score),
            ood_threshold=self.ood.threshold if self.ood else None,
            scope_verdict=self.scope_verdict if scope_verdict is None else scope_verdict,
            class_probs=class_probs,
        )

    def _tell_no_subtypes(self) -> None:
        """Warn, once per predictor, that this three-class run's predictions leave their
        subtype and class probabilities empty, and why. Said where a prediction is made, not on
        loading: an evaluation with an exported backend loads the run so too, and says itself
        that its 3 x 3 matrix is not computed."""
        if not self._no_subtypes_told.first():
            return
        if self.backend_name in BACKENDS and self.backend_name != "torch":
            why = (
                f"the {self.backend_name} backend's exported model carries the pneumonia logit only"
            )
        else:  # a scorer given to Predictor
            why = "its scorer gives no class probabilities"
        log.warning(
            "%s is a three-class run, but its subtypes (BACTERIAL / VIRAL) are unavailable "
            "here: %s; predictions leave subtype, p_normal, p_bacterial and p_viral empty "
            "(the torch backend gives them)",
            self.run_dir or "this run",
            why,
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
            source,
            scores.probability[0],
            scores.ood[0],
            checks,
            scope_verdict,
            scores.class_probs_of(0),
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
        return self.score_files(expand_paths(paths), batch_size, workers)

    def score_files(
        self, files: Sequence[Path], batch_size: int = 32, workers: int | None = None
    ) -> Iterator[tuple[Path, Prediction | ImageLoadError, np.ndarray | None]]:
        """:meth:`score_paths` of exactly ``files``, in order, none expanded again (a folder is
        an error): a caller that listed a folder earlier gets a row for each file it listed,
        even where the folder has gained files since. TypeError for one path (a string would be
        read character by character)."""
        if isinstance(files, str | Path):
            raise TypeError("score_files takes a list of files; score_paths takes one path")
        for batch in decoded_batches(list(files), self.prepare, batch_size, workers):
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
                classes = scores.class_probs_of(index)
                index += 1
                result = self.result_for(str(path), probability, ood, checks, None, classes)
                yield path, result, pixels


def load_run(run_dir: str | Path, device: str = "cpu", **options: Any) -> Predictor:
    """Load a finished run directory as a :class:`Predictor` (``options``: those of
    :meth:`Predictor.from_run`, such as ``backend="onnx"``, ``tta`` or ``scope_verdict``)."""
    return Predictor.from_run(run_dir, device=device, **options)
