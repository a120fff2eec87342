"""On-disk cache of frozen-backbone features, one folder per (model, weights, image size,
preprocessing), one row per image file (keyed by its path, size and modification time).

A change of any key field lands in another folder, and an edited image file gets a new row, so
stale features are never reused. Rows are added as new images are seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pneumolab.data.layout import Sample
from pneumolab.files import write_text_atomically
from pneumolab.training.checkpoint_io import save_torch_atomically

log = logging.getLogger(__name__)

CACHE_ENV = "PNEUMOLAB_CACHE_DIR"
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$PNEUMOLAB_CACHE_DIR``, else ``~/.cache/pneumolab/features``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pneumolab" / "features")


def _entry(sample: Sample) -> str:
    stat = sample.path.stat()
    return f"{sample.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


@dataclass
class CacheLookup:
    """The cache's rows on disk, one entry per looked-up sample, and the samples it lacks."""

    entries: list[str]
    stored: torch.Tensor | None
    wanted: list[str]
    missing: list[int]


@dataclass
class CacheStats:
    """What one lookup did: rows reused from disk and rows computed now (by how many per
    training process, when several shared the work)."""

    key: str
    reused: int
    computed: int
    computed_per_rank: list[int] | None = None


class FeatureCache:
    """Features of one backbone configuration, described by ``key_fields`` (any JSON mapping)."""

    def __init__(self, root: str | Path, key_fields: dict[str, Any]) -> None:
        canonical = json.dumps({"format": FORMAT_VERSION, **key_fields}, sort_keys=True)
        self.key = hashlib.sha256(canonical.encode()).hexdigest()[:20]
        self.folder = Path(root) / self.key
        self.key_fields = key_fields
        self._file = self.folder / "features.pt"

    def with_fields(self, **fields: Any) -> FeatureCache:
        """The cache in the same folder whose key adds ``fields`` (what else shaped the features)."""
        return FeatureCache(self.folder.parent, self.key_fields | fields)

    def _load(self) -> tuple[list[str], torch.Tensor | None]:
        if not self._file.is_file():
            return [], None
        try:
            stored = torch.load(self._file, map_location="cpu", weights_only=True)
            return list(stored["entries"]), stored["features"]
        except Exception as exc:  # torn or foreign file: unpickling fails in many ways
            log.warning("%s: unreadable feature cache, recomputing (%s)", self._file, exc)
            return [], None

    def _save(self, entries: list[str], features: torch.Tensor) -> None:
        write_text_atomically(  # (its folder is made by the write)
            self.folder / "key.json", json.dumps(self.key_fields, indent=2) + "\n"
        )
        stored = {"entries": entries, "features": features}
        # atomic: an interrupted write never leaves a torn cache
        save_torch_atomically(stored, self._file)

    def lookup(self, samples: Sequence[Sample]) -> CacheLookup:
        """What the cache holds for ``samples`` and which of them it lacks."""
        entries, stored = self._load()
        wanted = [_entry(s) for s in samples]
        known = set(entries)
        missing = [i for i, entry in enumerate(wanted) if entry not in known]
        return CacheLookup(entries, stored, wanted, missing)

    def complete(
        self, found: CacheLookup, fresh: torch.Tensor | None
    ) -> tuple[torch.Tensor, CacheStats]:
        """Features ``(N, D)`` of the looked-up samples, given the ``fresh`` features of its
        ``missing`` ones (in that order), which are added to the cache on disk."""
        entries, stored = list(found.entries), found.stored
        if found.missing:
            if fresh is None or len(fresh) != len(found.missing):
                raise ValueError(f"expected features of {len(found.missing)} missing images")
            fresh = fresh.float().cpu()
            stored = fresh if stored is None else torch.cat([stored, fresh])
            entries += [found.wanted[i] for i in found.missing]
            self._save(entries, stored)
        row_of = {entry: row for row, entry in enumerate(entries)}
        rows = torch.tensor([row_of[entry] for entry in found.wanted], dtype=torch.long)
        selected = stored[rows] if len(rows) and stored is not None else torch.empty(0, 0)
        reused = len(found.wanted) - len(found.missing)
        return selected, CacheStats(self.key, reused, len(found.missing))
