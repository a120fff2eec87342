"""Batch inference at archive scale on Ray Data (``predict --engine ray``).

Ray Data streams the list of images through parallel tasks that decode and resize them (the
same preprocessing as the single-process path) into a pool of model-replica actors: each actor
loads the run once and scores batches with the chosen backend (PyTorch or ONNX Runtime).
Finished blocks are written as Parquet part files into ``OUT.parts/`` as they come (every node
of the cluster is first checked to see that folder: :mod:`~pneumolab.inference.ray_nodes`), so
a killed job keeps what it finished; at the end the parts and the earlier rows are merged into
``OUT`` (Parquet, CSV or JSON lines, one row per image, written atomically) and the parts
removed.
Re-running the same command skips the images already scored and retries the failed ones.

Ray is optional: ``pip install 'pneumolab[distributed]'``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.choices import BackendName
from pneumolab.data.imageio import DEFAULT_MAX_PIXELS
from pneumolab.data.layout import check_utf8_name
from pneumolab.errors import ConfigError, ImageLoadError, OutputError, printable
from pneumolab.inference.batch import (
    BatchSummary,
    RetriedSources,
    check_not_an_input,
    producer_of,
    result_row,
    result_sources,
)
from pneumolab.inference.decoding import attempt
from pneumolab.inference.inputs import prepare_image
from pneumolab.inference.manifest import ManifestImages
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.ray_nodes import check_every_node_sees
from pneumolab.inference.results_file import ResultRow, check_producer, resumable_rows
from pneumolab.inference.results_table import (
    arrow_schema,
    merge,
    read_parts,
    read_results,
    table_format,
    write_results,
)
from pneumolab.inference.torch_scoring import default_device
from pneumolab.outputs import results_file, writing_alone
from pneumolab.scope.checks import ScopeChecks

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'pneumolab[distributed]'"


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a clear error saying how to install it."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            f"--engine ray needs Ray Data and pyarrow ({exc.name} is not installed); "
            f"install them with: {INSTALL_HINT}"
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: ``address`` of a running Ray cluster (``auto``: the one
    ``ray start`` started here; None: a local Ray, or the one already initialised),
    ``num_workers`` model replicas of ``cpus_per_worker`` CPUs (``gpus_per_worker`` GPUs)
    each, and images per scored batch."""

    address: str | None = None
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.batch_size < 1:
            raise ValueError(
                "RayOptions: num_workers and batch_size must be at least 1, "
                f"got {self.num_workers} and {self.batch_size}"
            )
        if not (self.cpus_per_worker >= 0 and self.gpus_per_worker >= 0):
            raise ValueError(
                "RayOptions: cpus_per_worker and gpus_per_worker must be >= 0, "
                f"got {self.cpus_per_worker} and {self.gpus_per_worker}"
            )


def decode_batch(
    batch: dict[str, np.ndarray], image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, np.ndarray]:
    """Ray task: each ``source`` prepared as the single-process path does
    (:func:`~pneumolab.inference.inputs.prepare_image`: uint8 ``(S, S)`` pixels and the
    scope checks, carried as JSON); an unreadable file, or one over ``max_pixels``, gets blank
    pixels and its error. ``chunk`` is passed through."""
    sources = batch["source"]
    pixels = np.zeros((len(sources), image_size, image_size), dtype=np.uint8)
    checks = np.full(len(sources), "", dtype=object)
    errors = np.full(len(sources), "", dtype=object)
    for i, source in enumerate(sources):
        outcome = attempt(lambda path: prepare_image(path, image_size, max_pixels), Path(source))
        if isinstance(outcome, ImageLoadError):
            errors[i] = str(outcome)
            continue
        prepared, found = outcome
        pixels[i] = prepared[0]
        checks[i] = json.dumps({"reasons": found.reasons, "warnings": found.warnings})
    return {
        "source": sources,
        "chunk": batch["chunk"],
        "pixels": pixels,
        "checks": checks,
        "error": errors,
    }


def _scope_checks(encoded: str) -> ScopeChecks:
    """The checks :func:`decode_batch` carried as JSON."""
    found = json.loads(encoded)
    return ScopeChecks(tuple(found["reasons"]), tuple(found["warnings"]))


def decoding_task_resources() -> dict[str, float]:
    """What each decoding task asks for: one CPU. Given as a function (``ray_remote_args_fn``)
    so that Ray Data does not fuse decoding into the replicas: decoding then scales over every
    free CPU of the cluster while the replicas only score."""
    return {"num_cpus": 1}


class ModelReplica:
    """Ray actor: one run loaded once (``Predictor.from_run`` arguments); scores decoded
    batches into result rows (an Arrow table of the results-file columns)."""

    def __init__(self, run_dir: str, backend: BackendName, tta: bool, scope_verdict: bool) -> None:
        self.predictor = Predictor.from_run(  # on the worker's GPU where Ray gave it one
            run_dir, device=default_device(), backend=backend, tta=tta, scope_verdict=scope_verdict
        )
        self.producer = producer_of(self.predictor)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        """Score whole chunks: the readable images of each chunk in one scorer call, the batch
        the single-process path makes of the same files (so the scores are the same); rows are
        built as in the single-process path (scope verdict and producer included)."""
        import pyarrow as pa

        count = len(batch["source"])
        probs, ood = np.full(count, np.nan), np.full(count, np.nan)
        classes: np.ndarray | None = None  # a three-class network's, where its scorer gives them
        readable = batch["error"] == ""
        for chunk in np.unique(batch["chunk"]):
            scored = np.flatnonzero(readable & (batch["chunk"] == chunk))
            if len(scored):
                scores = self.predictor.scorer(batch["pixels"][scored][:, None])
                probs[scored], ood[scored] = scores.probability, scores.ood
                if scores.class_probs is not None:
                    if classes is None:
                        classes = np.full((count, scores.class_probs.shape[1]), np.nan)
                    classes[scored] = scores.class_probs
        rows = []
        for i, (source, error) in enumerate(zip(batch["source"], batch["error"], strict=True)):
            if error:
                rows.append(ResultRow(source, None, None, self.producer, error))
                continue
            checks = _scope_checks(batch["checks"][i])
            prediction = self.predictor.result_for(
                source, probs[i], ood[i], checks, None, None if classes is None else classes[i]
            )
            rows.append(result_row(Path(source), prediction, self.producer))
        return pa.Table.from_pylist([row.record() for row in rows], schema=arrow_schema())


CONNECT_SECONDS = 10.0
"""How long a cluster address may take to accept a connection before it is called unreachable."""


def check_reachable(address: str | None) -> None:
    """ConfigError where ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) accepts no
    connection within :data:`CONNECT_SECONDS`: ``ray.init`` retried such an address without
    end. ``auto``, ``local`` and None (a local Ray) are Ray's to find."""
    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_SECONDS).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: cannot reach a Ray cluster there ({exc.strerror or exc}); "
            "start its head with `ray start --head`, or leave --address out for a local Ray"
        ) from None


def gpu_slots(node_gpus: list[float], per_worker: float) -> int:
    """How many workers of ``per_worker`` GPUs the nodes' GPUs can place: Ray puts a fraction
    of a GPU on one GPU (``floor(1 / share)`` workers each) and whole GPUs on one node."""
    if per_worker <= 0:
        return 0
    if per_worker < 1:
        return sum(math.floor(gpus) * math.floor(1 / per_worker + 1e-9) for gpus in node_gpus)
    return sum(math.floor(gpus / per_worker + 1e-9) for gpus in node_gpus)


def _connect(ray: Any, options: RayOptions) -> None:
    """Join the cluster at ``options.address`` (or start a local Ray) unless already joined;
    check that the replicas leave a CPU for the decoding tasks and find the GPUs they ask for
    (else the job would wait for them without end)."""
    if not ray.is_initialized():
        check_reachable(options.address)
        ray.init(address=options.address, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    node_gpus = [node["Resources"].get("GPU", 0) for node in ray.nodes() if node.get("Alive")]
    if cpus - options.cpus_per_worker * options.num_workers < 1:
        raise ConfigError(
            f"{options.num_workers} worker(s) of {options.cpus_per_worker:g} CPU leave less "
            f"than one of the cluster's {cpus:g} CPUs for decoding; use fewer workers or a "
            "smaller --cpus-per-worker"
        )
    slots = gpu_slots(node_gpus, options.gpus_per_worker)
    if options.gpus_per_worker and slots < options.num_workers:
        raise ConfigError(
            f"{options.num_workers} worker(s) of {options.gpus_per_worker:g} GPU: the cluster's "
            f"GPUs ({', '.join(f'{g:g}' for g in node_gpus) or 'none'} per node) hold {slots} "
            "(the others would wait for one without end); use fewer workers, a smaller "
            "--gpus-per-worker, or leave it out to score on CPUs"
        )


def _chunks(todo: list[str], batch_size: int) -> list[Any]:
    """``todo`` as Arrow tables of ``batch_size`` rows (one Ray block each), in order: the
    chunks the single-process path scores together."""
    import pyarrow as pa

    starts = range(0, len(todo), batch_size)
    parts = [todo[start : start + batch_size] for start in starts]
    return [
        pa.table({"source": part, "chunk": [start] * len(part)})
        for start, part in zip(starts, parts, strict=True)
    ]


def _pipeline(ray: Any, predictor: Predictor, run_dir: Path, todo: list[str], o: RayOptions) -> Any:
    """The Ray Data pipeline over ``todo`` (lazy: nothing runs until it is written), every
    replica loading ``run_dir`` (absolute: workers start in other folders). Blocks are whole
    chunks of ``batch_size`` images and stay whole: ``batch_size=None``, but for replicas on
    GPUs, for which Ray requires a batch size (the chunk's; Ray may then split or join chunks,
    which changes no image's score: the network scores each image alone, in eval mode)."""
    dataset = ray.data.from_arrow(_chunks(todo, o.batch_size))
    decoded = dataset.map_batches(
        decode_batch,
        fn_kwargs={"image_size": predictor.image_size, "max_pixels": predictor.max_pixels},
        batch_size=None,
        ray_remote_args_fn=decoding_task_resources,
    )
    return decoded.map_batches(
        ModelReplica,
        fn_constructor_kwargs={
            "run_dir": str(run_dir),
            "backend": predictor.backend_name,
            "tta": predictor.tta,
            "scope_verdict": predictor.scope_verdict,
        },
        concurrency=o.num_workers,
        num_cpus=o.cpus_per_worker,
        num_gpus=o.gpus_per_worker,
        batch_size=o.batch_size if o.gpus_per_worker else None,
    )


def _score(
    ray: Any, predictor: Predictor, run_dir: Path, todo: list[str], parts: Path, o: RayOptions
) -> None:
    """Run :func:`_pipeline` over ``todo`` into Parquet part files in ``parts``."""
    _pipeline(ray, predictor, run_dir, todo, o).write_parquet(str(parts))


def predict_with_ray(
    predictor: Predictor,
    paths: str | Path | Sequence[str | Path],
    out: str | Path,
    options: RayOptions,
    overwrite: bool = False,
    manifest: ManifestImages | None = None,
) -> BatchSummary:
    """Score every image under ``paths`` (folders expanded, as
    :func:`~pneumolab.inference.batch.predict_to_file` does) with ``predictor``'s run, backend
    and TTA on Ray into ``out``, a results
    file like :func:`~pneumolab.inference.batch.predict_to_file`'s (or Parquet with the same
    columns). Resumable: images already scored there are skipped, failed ones retried; a file
    written with other settings, or not a results file, is refused untouched unless
    ``overwrite``. ``manifest``: as :func:`~pneumolab.inference.batch.predict_to_file` takes it
    (its images' errors say where it lists them; a warning on those not found, once ``out`` is
    accepted)."""
    ray = import_ray()
    out = results_file(out, overwrite).absolute()  # the workers write its parts elsewhere
    table_format(out)
    if predictor.run_dir is None:
        raise ConfigError("the ray engine loads the run in every worker: pass a run directory")
    with writing_alone(out):
        return _score_into(
            ray, predictor, predictor.run_dir, paths, out, options, overwrite, manifest
        )


def _score_into(
    ray: Any,
    predictor: Predictor,
    run_dir: Path,
    paths: str | Path | Sequence[str | Path],
    out: Path,
    options: RayOptions,
    overwrite: bool,
    manifest: ManifestImages | None,
) -> BatchSummary:
    """:func:`predict_with_ray`'s work once ``out`` is held: resume, score on Ray, merge."""
    producer = producer_of(predictor)
    parts = out.with_name(out.name + ".parts")
    sources = [str(source) for source in result_sources(paths)]
    check_not_an_input(out, sources)
    for source in sources:  # before Ray starts: Arrow carries names as UTF-8 strings
        check_utf8_name(source, "; or score with the local engine (the default), which keeps it")
    if overwrite:  # emptied now, as the local engine does: a rerun without it then resumes
        shutil.rmtree(parts, ignore_errors=True)
        earlier: list[ResultRow] = []
        write_results(out, earlier)
    else:
        earlier = merge(read_results(out, producer) + read_parts(parts))
        check_producer(earlier, producer, parts)
    done = {row.source for row in earlier if not row.error}
    todo = [source for source in sources if source not in done]
    if todo:
        _connect(ray, options)
        check_every_node_sees(ray, parts, out)
        if manifest is not None:
            manifest.warn_missing()
        _score(ray, predictor, run_dir.resolve(), todo, parts, options)
    fresh = read_parts(parts)
    if manifest is not None:  # the workers' error rows, after where the manifest lists each
        fresh = [
            replace(r, error=manifest.noted(r.source, r.error)) if r.error else r for r in fresh
        ]
    wanted = set(todo)
    missing = wanted - {row.source for row in fresh}
    if missing:  # never a results file that silently lacks rows: the parts are kept
        raise OutputError(
            f"{parts}: {len(missing)} of the {len(todo)} images scored have no row there (first: "
            f"{printable(min(missing))}); the workers failed, or wrote elsewhere (--out must "
            "be on storage every node sees: the workers write its parts folder; the nodes of "
            "the cluster were checked before scoring, but not one that joined it later); then "
            "run the command again to resume"
        )
    # the earlier error rows of what this job listed again: a folder then unlisted included
    retried = RetriedSources(sources, paths)
    write_results(out, merge(resumable_rows(earlier, retried) + fresh))
    shutil.rmtree(parts, ignore_errors=True)
    failed = sum(1 for row in merge(fresh) if row.error and row.source in wanted)
    return BatchSummary(written=len(todo), already_done=len(sources) - len(todo), failed=failed)
