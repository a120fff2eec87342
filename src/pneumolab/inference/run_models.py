"""What a run directory holds to predict with: its trained network and its OOD model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pneumolab.errors import RunDirError, brief
from pneumolab.run import RunDir, ood_digest
from pneumolab.run_meta import RunMeta
from pneumolab.scope.ood import LEGACY_METHODS, OodModel

if TYPE_CHECKING:
    from pneumolab.models.classifier import XrayClassifier

log = logging.getLogger(__name__)


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
    broken = [name for name, tensor in state.items() if not tensor.isfinite().all()]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise RunDirError(
            f"{run.weights}: weights hold NaN or infinite values ({broken[0]}{more}); the "
            "file is corrupt: restore it or train the run again"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunDirError(
            f"{run.weights}: weights do not match model '{meta.model}' ({brief(str(exc))})"
        ) from None
    return model


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


MEMBER_GATES = "member_gates"
"""An ensemble's OOD provenance key: its members' OOD model digests, comma-separated."""


def member_gates(members: list[RunDir]) -> str:
    """The digests of ``members``' OOD model files, as an ensemble's gate records them."""
    return ",".join(ood_digest(member.root) for member in members)


def gate_is_stale(ensemble: RunDir, ood: OodModel | None) -> bool:
    """Whether a member's OOD model was refitted since the ensemble's gate ``ood`` was fitted
    (its threshold belongs to the members' old scores); False for ensembles of before the
    members' models were recorded."""
    recorded = ood.provenance.get(MEMBER_GATES) if ood is not None else None
    return bool(recorded) and recorded != member_gates(ensemble.member_runs())


def check_member_gates(ensemble: RunDir, ood: OodModel | None) -> None:
    """RunDirError where :func:`gate_is_stale`."""
    if gate_is_stale(ensemble, ood):
        raise RunDirError(
            f"{ensemble.root}: a member's OOD model changed since the ensemble's was fitted (its "
            f"threshold belongs to the old scores); run `pneumolab fit-ood {ensemble.root} "
            "--data DATA_DIR` to fit it again"
        )
