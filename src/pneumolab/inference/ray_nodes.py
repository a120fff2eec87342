"""Whether every node of a Ray cluster sees the folder the workers write into (``OUT.parts``),
checked before anything is scored: one task pinned to each alive node looks for a probe file
the driver wrote there and writes a file of its own beside it."""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from pneumolab.errors import OutputError

log = logging.getLogger(__name__)

ANSWER_SECONDS = 60.0
"""How long the nodes have, all together, to answer; one that has not is named in a warning."""


def node_view(folder: str, probe: str) -> str:
    """Ray task, on one node: ``""`` where this node finds ``probe`` (the file the driver just
    wrote) in ``folder`` and can write a file there, else what it lacks."""
    here = Path(folder)
    if not (here / probe).is_file():
        return "does not see it"
    mine = here / f"{probe}.{uuid.uuid4().hex}"
    try:
        mine.write_bytes(b"")
        mine.unlink()
    except OSError as exc:
        return f"cannot write in it ({exc.strerror or exc})"
    return ""


def check_every_node_sees(ray: Any, parts: Path, out: Path) -> None:
    """OutputError naming ``out`` (``--out``) and the alive nodes of the joined cluster that do
    not see ``parts``, the folder its workers write (a node's own disk: its rows would stay
    there, and the job fail after scoring everything). Each node is asked by a task of no CPU
    pinned to it (``NodeAffinitySchedulingStrategy``); a node that does not answer within
    :data:`ANSWER_SECONDS`, or where the task fails, is named in a warning, with why, and the
    job goes on. Leaves
    ``parts`` as it found it."""
    made = not parts.exists()
    probe = parts / f".probe-{uuid.uuid4().hex}"
    try:
        parts.mkdir(exist_ok=True)
        probe.write_bytes(b"")
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write its parts folder {parts}: {exc}") from None
    try:
        views, unanswered = _ask_every_node(ray, str(parts), probe.name)
    finally:
        probe.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                parts.rmdir()
    if unanswered:
        log.warning(
            "%s: not known whether node(s) see it (%s); scoring goes on",
            parts,
            "; ".join(f"{node} {why}" for node, why in sorted(unanswered.items())),
        )
    blind = sorted(f"{node} {view}" for node, view in views.items() if view)
    if blind:
        raise OutputError(
            f"--out {out}: its parts folder {parts}, which the workers write and the driver "
            f"reads, is not shared by every node of the Ray cluster: {'; '.join(blind)}; put "
            "--out on storage every node sees (a shared filesystem); nothing was scored"
        )


def _ask_every_node(ray: Any, folder: str, probe: str) -> tuple[dict[str, str], dict[str, str]]:
    """Each alive node's :func:`node_view` of ``folder``, by its address and id; and apart,
    the nodes that gave none, with why: no answer within :data:`ANSWER_SECONDS`, or the task
    failed there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(node_view)
    asked = {
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(folder, probe): f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"
        for node in ray.nodes()
        if node.get("Alive")
    }
    if not asked:
        return {}, {}
    ready, late = ray.wait(list(asked), num_returns=len(asked), timeout=ANSWER_SECONDS)
    views: dict[str, str] = {}
    unanswered = {asked[ref]: f"did not answer within {ANSWER_SECONDS:g} s" for ref in late}
    for ref in ready:
        try:
            views[asked[ref]] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            unanswered[asked[ref]] = f"could not run the check ({type(exc).__name__})"
    for ref in late:
        ray.cancel(ref)
    return views, unanswered
