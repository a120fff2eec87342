"""The study file: shared training settings, the models (each with its overrides), ensembles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pneumolab.choices import PAIRED_CRITERIA, ComparisonBackend, SelectBy
from pneumolab.config import (
    TrainConfig,
    flags_given,
    load_yaml,
    network_settings,
    resolve_config,
    unknown_settings,
)
from pneumolab.errors import ConfigError, validation_problems

SPLIT_SETTINGS = ("split_seed", "val_fraction", "max_train_images")
"""Set once in ``defaults``: every model of a study is validated on the same split (a model may
set its own ``seed`` when ``defaults`` fix ``split_seed``)."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class EnsembleEntry(BaseModel):
    """An ensemble of models of the study (mean probability, own threshold on validation)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    members: list[str] = Field(min_length=2)


class StudyConfig(BaseModel):
    """A parsed study file; ``models`` maps each model's name to its resolved TrainConfig."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    defaults: dict[str, Any] = Field(default_factory=dict)
    models: list[dict[str, Any]] = Field(min_length=1)
    ensembles: list[EnsembleEntry] = Field(default_factory=list)
    select_by: SelectBy = "roc_auc"
    robustness: bool = Field(
        default=False,
        description="also score every model under the perturbations (worst-case columns)",
    )
    shift: bool = Field(
        default=False,
        description="also score every model under the shift protocol (compound-shift columns)",
    )
    prefer_smaller: bool = Field(
        default=False,
        description="among the models validation cannot tell from the leader by select_by "
        "(paired 95% interval of the AUC difference includes 0), select the one with the "
        "fewest parameters (an ensemble counts its members'); select_by roc_auc or "
        "shift_roc_auc",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="settings applied to every model last, as command-line flags are (a study's "
        "copy, STUDY_DIR/study.yaml, records the flags it ran with here)",
    )
    backend: ComparisonBackend = Field(
        default="torch",
        description="what scores the comparison: onnx exports each network (verified against "
        "PyTorch) where model.onnx is missing, then scores with onnxruntime",
    )

    @model_validator(mode="after")
    def _scores_for_selection(self) -> StudyConfig:
        if self.select_by == "worst_roc_auc" and not self.robustness:
            raise ValueError("select_by: worst_roc_auc needs robustness: true")
        if self.select_by.startswith("shift_") and not self.shift:
            raise ValueError(f"select_by: {self.select_by} needs shift: true")
        if self.prefer_smaller and self.select_by not in PAIRED_CRITERIA:
            raise ValueError(
                f"prefer_smaller needs select_by roc_auc or shift_roc_auc, not {self.select_by} "
                "(only those have per-image scores to tell models apart)"
            )
        return self

    def train_configs(self, overrides: dict[str, Any] | None = None) -> dict[str, TrainConfig]:
        """Each model's TrainConfig: defaults < the model's entry < the file's ``overrides`` <
        ``overrides`` (CLI flags)."""
        configs: dict[str, TrainConfig] = {}
        entries: dict[str, dict[str, Any]] = {}
        for block in ("defaults", "overrides"):
            strangers = unknown_settings(list(getattr(self, block)))
            if strangers:
                raise ConfigError(f"'{block}': unknown training setting(s): {strangers}")
        given = self.overrides | flags_given(overrides)
        for index, entry in enumerate(self.models):
            entry = dict(entry)
            name = entry.pop("name", "")
            where = f"models[{index}]"
            if not isinstance(name, str):  # YAML reads `yes` as True, a blank as None
                raise ConfigError(
                    f"{where}: its 'name' ({name!r} as YAML reads it) must be text: quote it"
                )
            if not re.fullmatch(NAME_PATTERN, name):
                raise ConfigError(f"{where}: needs a 'name' of letters, digits, '.', '_' or '-'")
            if name in configs:
                raise ConfigError(f"{where}: the name '{name}' is used twice")
            fixed = sorted(set(entry) & set(SPLIT_SETTINGS))
            if fixed:
                raise ConfigError(
                    f"{where} ({name}): {', '.join(fixed)} can only be set in 'defaults' "
                    "(every model of a study uses the same validation split)"
                )
            try:
                configs[name] = resolve_config(
                    None, flags_given(overrides), self.defaults | entry | self.overrides
                )
                entries[name] = entry
            except ConfigError as exc:
                raise ConfigError(f"{where} ({name}): {exc}") from None
        first = next(iter(configs))
        for name, config in configs.items():
            if config.data_seed != configs[first].data_seed:
                raise ConfigError(
                    f"model '{name}': its seed {config.seed} would move the validation split "
                    f"away from '{first}''s; set split_seed in 'defaults' to keep one split"
                )
            processes = config.devices * config.num_nodes
            if processes != configs[first].devices * configs[first].num_nodes:
                raise ConfigError(  # each process runs the whole study, every model in turn
                    f"model '{name}' trains on {processes} process(es) (devices × num_nodes), "
                    f"'{first}' on another number; a launcher's processes each run the whole "
                    "study, so its models share one count: set devices and num_nodes in "
                    "'defaults'"
                )
        _refuse_twins(configs, entries, given)
        ensemble_names: set[str] = set()
        for ensemble in self.ensembles:
            unknown = [m for m in ensemble.members if m not in configs]
            if unknown:
                raise ConfigError(
                    f"ensemble '{ensemble.name}': unknown member(s) {', '.join(unknown)}"
                )
            if len(set(ensemble.members)) < len(ensemble.members):
                raise ConfigError(f"ensemble '{ensemble.name}': a member is listed twice")
            if len({configs[m].target_sensitivity for m in ensemble.members}) > 1:
                raise ConfigError(
                    f"ensemble '{ensemble.name}': its members choose their thresholds for "
                    "different target_sensitivity values; the ensemble needs one (set it in "
                    "'defaults')"
                )
            if ensemble.name in configs or ensemble.name in ensemble_names:
                raise ConfigError(
                    f"ensemble '{ensemble.name}': a model or ensemble has this name already"
                )
            ensemble_names.add(ensemble.name)
        return configs


def _refuse_twins(
    configs: dict[str, TrainConfig], entries: dict[str, dict[str, Any]], flags: dict[str, Any]
) -> None:
    """Refuse two models whose settings are equal: they would train one network twice (a seed
    flag on the command line, say, overriding the seeds that tell the study's models apart)."""
    first_with: dict[str, str] = {}
    for name, config in configs.items():
        settings = json.dumps(network_settings(config), sort_keys=True)
        if settings in first_with:
            twin = first_with[settings]
            culprits = sorted(f for f in flags if f in entries[twin] or f in entries[name])
            given = ", ".join(f"--{flag.replace('_', '-')}" for flag in culprits)
            why = (
                f": {given} (a command-line flag, or the file's overrides) replaces what their "
                "entries set"
                if given
                else ""
            )
            raise ConfigError(
                f"models '{twin}' and '{name}' have the same settings{why}; "
                "they would train the same network twice"
            )
        first_with[settings] = name


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file, with errors that name it."""
    try:
        return StudyConfig(**load_yaml(path))
    except ValidationError as exc:
        raise ConfigError(
            f"{path}: invalid study file ({validation_problems(exc, 'study')})"
        ) from None
