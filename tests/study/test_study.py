"""`pneumolab study` and `pneumolab compare` end to end on a tiny synthetic dataset."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from conftest import copy_run, write_synthetic_dataset
from pneumolab.cli import main
from pneumolab.errors import ConfigError, OutputError
from pneumolab.evaluation.shift import SCENARIOS
from pneumolab.run import RunDir, read_predictions
from pneumolab.study.config import load_study
from pneumolab.study.runner import run_study

pytestmark = pytest.mark.slow  # trains its own models

TINY = {"image_size": 32, "batch_size": 8, "num_workers": 0, "epochs": 1, "pretrained": False}


def _study_file(path, models, ensembles=()):
    study = {"defaults": TINY, "models": models, "ensembles": list(ensembles)}
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    data = write_synthetic_dataset(root / "data")
    config = _study_file(
        root / "study.yaml",
        [
            {"name": "small", "model": "pneumolab_cnn_small"},
            {"name": "separable", "model": "pneumolab_cnn_separable", "lr": 0.003},
            {"name": "vgg", "model": "vgg19", "pretrained": True},  # no weights offline
        ],
        [{"name": "pair", "members": ["small", "separable"]}],
    )
    code = main(["study", str(config), "--data", str(data), "--out", str(root / "out")])
    return root, data, config, code


def test_study_writes_table_chart_confusions_samples_and_best(study):
    root, _, _, code = study
    out = root / "out"
    assert code == 1  # vgg19 could not be trained (reported, the others went on)
    with (out / "results.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"small", "separable", "pair", "vgg"}
    assert rows["vgg"]["status"].startswith("not run: no local weights for 'vgg19'")
    for name in ("small", "separable", "pair"):
        row = rows[name]
        assert row["status"] == "ok"
        for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
            assert 0 <= float(row[key]) <= 1
        assert float(row["cpu_ms_per_image"]) > 0  # measured (timing itself: test_speed.py)
        assert int(row["parameters"]) > 0 and float(row["train_seconds"]) >= 0
        assert (out / "confusion" / f"{name}.png").stat().st_size > 1000
    assert rows["pair"]["strategy"].startswith("ensemble")
    markdown = (out / "results.md").read_text()
    assert "| small |" in markdown and "not run:" in markdown
    assert (out / "results.png").stat().st_size > 1000
    assert (out / "samples.png").stat().st_size > 1000
    best = out / "best"
    assert best.is_symlink() and (best / "meta.json").is_file()
    chosen = max(
        (r for r in rows.values() if r["status"] == "ok"),
        key=lambda r: (float(r["roc_auc"]), float(r["specificity"])),
    )
    assert best.resolve() == (out / "runs" / chosen["name"]).resolve()
    selection = (out / "selection.md").read_text()
    assert f"`best` is **{chosen['name']}**, selected on validation by `roc_auc`" in selection
    for other in {"small", "separable", "pair"} - {chosen["name"]}:
        assert f"| {other} | " in selection  # its paired AUC difference and interval


def test_best_is_a_run_that_evaluate_and_predict_accept(study, capsys):
    root, data, _, _ = study
    best = root / "out" / "best"
    assert main(["evaluate", str(best), "--data", str(data), "--split", "val", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] > 0
    image = next((data / "train" / "NORMAL").iterdir())
    assert main(["predict", str(best), str(image), "--json"]) == 0


def test_resumed_study_does_not_retrain_finished_models(study):
    root, data, config, _ = study
    weights = root / "out" / "runs" / "small" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert main(["study", str(config), "--data", str(data), "--out", str(root / "out")]) == 1
    assert weights.stat().st_mtime_ns == stamp  # (1: vgg19 still has no weights offline)


def test_a_study_resumes_from_its_own_copy_and_rebuilds_an_ensemble_whose_member_changed(
    study, tmp_path, capsys
):
    root, data, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, symlinks=True)  # mtimes kept: the ensemble is current
    pair_meta = out / "runs" / "pair" / "meta.json"
    command = ["study", str(out / "study.yaml"), "--data", str(data), "--out", str(out)]
    stamp = pair_meta.stat().st_mtime_ns
    assert main(command) == 1  # (vgg19 has no weights offline)
    assert pair_meta.stat().st_mtime_ns == stamp
    as_written = (out / "study.yaml").read_text()  # its members in another order: one mean
    reordered = yaml.safe_load(as_written)
    reordered["ensembles"][0]["members"].reverse()
    (out / "study.yaml").write_text(yaml.safe_dump(reordered))
    assert main(command) == 1
    assert pair_meta.stat().st_mtime_ns == stamp  # not built again: its folder (audits) kept
    (out / "study.yaml").write_text(as_written)
    member = out / "runs" / "small" / "model.safetensors"
    later = pair_meta.stat().st_mtime + 10
    os.utime(member, (later, later))  # newer, the same weights (copied without their times)
    (out / "runs" / "pair" / "test_evaluations.jsonl").write_text("{}\n")  # a look at test
    assert main(command) == 1
    assert pair_meta.stat().st_mtime_ns == stamp  # not rebuilt: its test log was deleted
    assert (out / "runs" / "pair" / "test_evaluations.jsonl").is_file()
    weights = load_file(member)  # "small" retrained after the ensemble was built
    save_file({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}, member)
    capsys.readouterr()
    assert main(command) == 1
    assert pair_meta.stat().st_mtime_ns != stamp
    assert "pair: its members changed since it was built: built again" in capsys.readouterr().err
    assert [m.root.name for m in RunDir(out / "runs" / "pair").member_runs()] == [
        "small",
        "separable",
    ]
    config = out / "runs" / "separable" / "config.yaml"
    config.write_text(config.read_text() + "a_setting_of_the_future: 1\n")
    capsys.readouterr()
    assert main(command) == 2  # a saved setting this version does not know: named, no traceback
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "separable/config.yaml: invalid training config" in err and "a_setting_of_the_future" in err
    )


def test_seeds_of_one_split_and_a_run_trained_before_split_seed_existed(study, tmp_path):
    root, data, _, _ = study
    study_file = tmp_path / "seeds.yaml"
    models = [
        {"name": "small", "model": "pneumolab_cnn_small"},
        {"name": "small_seed3", "model": "pneumolab_cnn_small", "seed": 3},
    ]
    study_file.write_text(yaml.safe_dump({"defaults": TINY | {"split_seed": 0}, "models": models}))
    configs = load_study(study_file).train_configs()
    assert configs["small_seed3"].seed == 3 and configs["small_seed3"].data_seed == 0
    # "small" was trained with split_seed unset (= its seed, 0): the same split, so reused
    shutil.copytree(root / "out" / "runs" / "small", tmp_path / "out" / "runs" / "small")
    weights = tmp_path / "out" / "runs" / "small" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    models = models[:1]
    study_file.write_text(yaml.safe_dump({"defaults": TINY | {"split_seed": 0}, "models": models}))
    assert (
        main(["study", str(study_file), "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    )
    assert weights.stat().st_mtime_ns == stamp


def test_changed_settings_of_a_finished_model_are_refused(study, tmp_path, capsys):
    root, data, _, _ = study
    changed = _study_file(
        tmp_path / "changed.yaml", [{"name": "small", "model": "pneumolab_cnn_small", "lr": 0.01}]
    )
    assert main(["study", str(changed), "--data", str(data), "--out", str(root / "out")]) == 2
    assert "trained with other settings (lr)" in capsys.readouterr().err


def test_a_refused_study_leaves_its_copy_as_it_was(study, tmp_path, capsys):
    root, data, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, symlinks=True)
    before = (out / "study.yaml").read_text()
    changed = _study_file(
        tmp_path / "changed.yaml", [{"name": "small", "model": "pneumolab_cnn_small", "lr": 0.01}]
    )
    assert main(["study", str(changed), "--data", str(data), "--out", str(out)]) == 2
    assert (out / "study.yaml").read_text() == before


def test_a_model_and_an_ensemble_never_take_each_others_folder(study, tmp_path, capsys):
    root, data, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, symlinks=True)
    models = [{"name": "small", "model": "pneumolab_cnn_small"}]
    as_model = _study_file(
        tmp_path / "m.yaml",
        [*models, {"name": "pair", "model": "pneumolab_cnn_small", "lr": 0.003}],
    )
    assert main(["study", str(as_model), "--data", str(data), "--out", str(out)]) == 2
    assert "runs/pair: holds an ensemble" in " ".join(capsys.readouterr().err.split())
    separable = {"name": "separable", "model": "pneumolab_cnn_separable", "lr": 0.003}
    as_ensemble = _study_file(
        tmp_path / "e.yaml",
        [*models, separable | {"name": "other"}],
        [{"name": "separable", "members": ["small", "other"]}],
    )
    assert main(["study", str(as_ensemble), "--data", str(data), "--out", str(out)]) == 2
    assert "runs/separable: holds a trained model" in " ".join(capsys.readouterr().err.split())
    assert (out / "runs" / "separable" / "model.safetensors").is_file()  # never deleted


def test_command_line_settings_are_recorded_in_the_copy_and_run_environment_ignored(
    study, tmp_path
):
    root, data, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out" / "runs" / "small", out / "runs" / "small")
    one = _study_file(tmp_path / "one.yaml", [{"name": "small", "model": "pneumolab_cnn_small"}])
    weights = out / "runs" / "small" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    flags = ["--num-workers", "1", "--tracking", "tensorboard", "--target-sensitivity", "0.95"]
    assert main(["study", str(one), "--data", str(data), "--out", str(out), *flags]) == 0
    assert weights.stat().st_mtime_ns == stamp  # how a run is carried out changes no network
    copy = yaml.safe_load((out / "study.yaml").read_text())
    assert copy["overrides"] == {
        "num_workers": 1,
        "tracking": "tensorboard",
        "target_sensitivity": 0.95,
    }
    assert main(["study", str(out / "study.yaml"), "--data", str(data), "--out", str(out)]) == 0


def test_models_validated_on_different_splits_are_refused(study, tmp_path, capsys):
    root, data, _, _ = study
    out = tmp_path / "out"
    for name in ("small", "separable"):
        shutil.copytree(root / "out" / "runs" / name, out / "runs" / name)
    split = out / "runs" / "separable" / "split.csv"
    rows = split.read_text().splitlines()
    split.write_text("\n".join([rows[0], *rows[:0:-1]]) + "\n")  # another order: another file
    models = [
        {"name": "small", "model": "pneumolab_cnn_small"},
        {"name": "separable", "model": "pneumolab_cnn_separable", "lr": 0.003},
    ]
    assert (
        main(
            [
                "study",
                str(_study_file(tmp_path / "s.yaml", models)),
                "--data",
                str(data),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "must be validated on one split" in " ".join(capsys.readouterr().err.split())


def test_a_study_that_could_run_nothing_leaves_no_earlier_choice(study, tmp_path):
    root, data, _, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, symlinks=True)
    assert (out / "best").is_symlink()
    nothing = _study_file(
        tmp_path / "n.yaml", [{"name": "vgg", "model": "vgg19", "pretrained": True}]
    )
    assert main(["study", str(nothing), "--data", str(data), "--out", str(out)]) == 1
    assert not (out / "best").exists() and not (out / "selection.md").exists()


def test_compare_builds_the_same_table_from_runs(study, tmp_path, capsys):
    root, data, _, _ = study
    capsys.readouterr()
    runs = [str(root / "out" / "runs" / name) for name in ("small", "separable")]
    out = tmp_path / "cmp"
    args = ["compare", *runs, "--data", str(data), "--split", "val", "--out", str(out)]
    assert main([*args, "--robustness", "--shift"]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["small", "separable"]
    assert all(0 <= float(r["worst_roc_auc"]) <= 1 for r in rows)
    assert all(0 <= float(r["shift_roc_auc"]) <= 1 for r in rows)
    for run in runs:  # every image under every scenario and draw, for paired comparisons
        with (Path(run) / "eval" / "val" / "shift_predictions.csv").open() as f:
            shifted = list(csv.DictReader(f))
        n_val = len(read_predictions(Path(run) / "eval" / "val" / "predictions.csv"))
        assert len(shifted) == n_val * len(SCENARIOS) * 3
    margins = (out / "margins.md").read_text()  # the leader of each criterion against the other
    assert "## `roc_auc`: **" in margins and "## `shift_roc_auc`: **" in margins
    assert margins.count("| small |") + margins.count("| separable |") == 2
    table = (out / "results.md").read_text()
    assert "worst AUC / specificity (perturbed)" in table
    assert "AUC / sensitivity / specificity (compound shift)" in table
    assert all(0 <= float(r["shift_sensitivity"]) <= 1 for r in rows)
    printed = capsys.readouterr().out
    assert "worst AUC" in printed and "shift AUC" in printed and "shift spec." in printed
    assert "shift sens." in printed
    assert (out / "results.png").is_file()
    assert (out / "confusion" / "separable.png").is_file()


def test_a_compare_of_runs_validated_on_other_splits_says_so_in_its_table(study, tmp_path):
    """Only the console said it: results.md ranked models scored on other images, no note."""
    root, data, _, _ = study
    runs = [
        shutil.copytree(root / "out" / "runs" / n, tmp_path / n) for n in ("small", "separable")
    ]
    split = runs[1] / "split.csv"
    rows = split.read_text().splitlines()
    split.write_text("\n".join([rows[0], *rows[:0:-1]]) + "\n")  # another order: another file
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--data", str(data), "--out", str(out)]) == 0
    table = " ".join((out / "results.md").read_text().split())
    assert "**Caution: the runs were validated on different splits" in table


def test_a_second_compare_into_one_folder_is_refused(study, tmp_path, capsys):
    """Two compares into one --out mixed their files, the later table silently replacing the
    earlier."""
    from pneumolab.outputs import working_in

    root, data, _, _ = study
    out = tmp_path / "cmp"
    args = ["compare", str(root / "out" / "runs" / "small"), "--data", str(data), "--out", str(out)]
    with working_in(out, "comparing"):
        assert main(args) == 2
    assert "another process is comparing in it" in capsys.readouterr().err


def test_a_compare_stopped_while_writing_leaves_nothing_that_blocks_its_rerun(
    study, tmp_path, monkeypatch
):
    """Killed after results.csv and results.md, a compare refused its own rerun without
    --overwrite (results.csv: already exists), its chart and margins missing."""
    from pneumolab.evaluation import comparison

    root, data, _, _ = study
    runs = [str(root / "out" / "runs" / name) for name in ("small", "separable")]
    out = tmp_path / "cmp"
    args = ["compare", *runs, "--data", str(data), "--split", "val", "--out", str(out)]

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(comparison, "model_bars_figure", stopped)
        assert main(args) == 130
    assert not (out / "results.csv").exists() and not (out / "results.md").exists()
    assert main(args) == 0
    assert {"results.csv", "results.md", "results.png", "margins.md"} <= {
        p.name for p in out.iterdir()
    }


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"name": "a", "split_seed": 3}], "split_seed can only be set in 'defaults'"),
        ([{"name": "a"}, {"name": "b", "seed": 3}], "seed 3 would move the validation split"),
        ([{"name": "a"}, {"name": "a"}], "used twice"),
        ([{"name": "a"}, {"name": "b"}], "'a' and 'b' have the same settings; they would train"),
        # unfreeze_stages is read by strategy partial only: one network, trained twice
        ([{"name": "a"}, {"name": "b", "unfreeze_stages": 3}], "'a' and 'b' have the same"),
        ([{"name": None}], r"'name' \(None as YAML reads it\) must be text"),
        # the launcher's second process re-ran the study and trained b twice, concurrently
        ([{"name": "a", "devices": 2}, {"name": "b", "lr": 0.01}], "'b' trains on 1 process"),
        ([{"name": True}], r"'name' \(True as YAML reads it\) must be text"),
        ([{"model": "resnet18"}], "needs a 'name'"),
        ([{"name": "okmodel\n"}], "needs a 'name'"),  # it made a folder whose name ends in \n
        ([{"name": "a", "epochs": 0}], "epochs"),
        # a null trained the built-in default network, not the one of 'defaults'
        ([{"name": "a", "model": None}], r"\(a\): invalid training config \(model: Input should"),
    ],
)
def test_invalid_study_files_are_clear_errors(tmp_path, models, message):
    path = _study_file(tmp_path / "s.yaml", models)
    with pytest.raises(ConfigError, match=message):
        load_study(path).train_configs()
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: .*{message}"):
        run_study(path, tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("block", ["defaults", "overrides"])
def test_an_unknown_setting_of_the_shared_blocks_is_named_in_its_block(tmp_path, block):
    """It was blamed on the first model: models[0] (a): invalid training config (bogus: ...)."""
    path = tmp_path / "s.yaml"
    study = {"defaults": dict(TINY), "models": [{"name": "a"}]}
    study[block] = study.get(block, {}) | {"epohcs": 2}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=rf"^'{block}': unknown .*epohcs \(did you mean epochs"):
        load_study(path).train_configs()


@pytest.mark.parametrize(
    ("ensembles", "message"),
    [
        ([{"name": "e", "members": ["a", "a"]}], "'e': a member is listed twice"),
        ([{"name": "e", "members": ["a", "b"]}] * 2, "'e': a model or ensemble has this name"),
        ([{"name": "a", "members": ["a", "b"]}], "'a': a model or ensemble has this name"),
        ([{"name": "e", "members": ["a", "c"]}], "'e': its members choose their thresholds"),
    ],
)
def test_invalid_ensembles_are_clear_errors(tmp_path, ensembles, message):
    models = [{"name": "a"}, {"name": "b", "lr": 0.01}, {"name": "c", "target_sensitivity": 0.9}]
    path = _study_file(tmp_path / "s.yaml", models, ensembles)
    with pytest.raises(ConfigError, match=message):
        load_study(path).train_configs()


def test_a_flag_no_model_of_the_study_reads_is_refused(tmp_path, capsys):
    """It was recorded in the study's copy as applied, while every run trained without it."""
    models = [{"name": "a", "model": "pneumolab_cnn_small"}, {"name": "b", "swa_epochs": 1, "epochs": 2,
              "monitor": "last", "model": "pneumolab_cnn_small", "lr": 0.01}]  # fmt: skip
    path = _study_file(tmp_path / "s.yaml", models)
    out, data = tmp_path / "out", tmp_path / "data"
    command = ["study", str(path), "--data", str(data), "--out", str(out)]
    assert main([*command, "--early-stopping-patience", "9", "--unfreeze-stages", "4"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "these flags would be ignored: --unfreeze-stages with --strategy finetune" in err
    assert "--early-stopping-patience with --monitor last" in err and not out.exists()
    # read by one model (b averages weights): not refused here; it fails on the missing data
    assert main([*command, "--swa-lr", "0.5"]) == 2
    assert "would be ignored" not in capsys.readouterr().err


def test_a_run_directory_is_not_a_study_folder(tiny_run, tmp_path):
    run = copy_run(tiny_run[0], tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    path = _study_file(tmp_path / "s.yaml", [{"name": "a"}])
    with pytest.raises(OutputError, match="is a run directory"):
        run_study(path, tiny_run[1], run)
    assert sorted(p.name for p in run.iterdir()) == before


def test_models_made_equal_by_a_command_line_flag_are_refused(tmp_path):
    models = [{"name": "seed0"}, {"name": "seed100", "seed": 100}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"split_seed": 0}, "models": models}))
    assert len(load_study(path).train_configs({"epochs": 2, "seed": None})) == 2
    with pytest.raises(ConfigError, match="'seed0' and 'seed100' have the same settings: --seed"):
        load_study(path).train_configs({"seed": 1})
    with pytest.raises(
        ConfigError, match=r"settings: --seed \(a command-line flag"
    ):  # not --epochs
        load_study(path).train_configs({"seed": 1, "epochs": 2})


def test_an_unknown_model_or_weights_path_is_refused_before_any_training(tmp_path):
    """Found only at its turn, after the models before it had trained."""
    data = write_synthetic_dataset(tmp_path / "data", per_class=2)
    good = {"name": "good", "model": "pneumolab_cnn_small"}
    for typo, problem in [
        (
            {"name": "typo", "model": "mobilenetv2_10"},
            r"model typo: unknown model 'mobilenetv2_10'",
        ),
        (
            {"name": "w", "model": "mobilenetv2_100", "pretrained": True, "weights": "gone"},
            r"model w: gone: weights file or folder not found",
        ),
        (  # found only when its turn came to train
            {"name": "deep", "model": "pneumolab_cnn_small", "strategy": "partial",
             "unfreeze_stages": 40},
            r"model deep: unfreeze_stages=40, but the model has \d+ stages",
        ),
        (
            {"name": "vit", "model": "vit_tiny_patch16_224", "image_size": 64},
            r"model vit: vit_tiny_patch16_224 cannot take 64 x 64 px images",
        ),
    ]:  # fmt: skip
        study_file = _study_file(tmp_path / "s.yaml", [good, typo])
        with pytest.raises(ConfigError, match=problem):
            run_study(study_file, data, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_a_distillation_teacher_is_checked_before_any_training(tiny_run, tmp_path):
    """A teacher was read only when its student's turn came, after the models before it."""
    from conftest import TINY_TRAINING
    from pneumolab.config import TrainConfig
    from pneumolab.study.runner import _check_outputs

    run_dir, _ = tiny_run
    study, plain = tmp_path / "study", TrainConfig(**TINY_TRAINING)
    taught = TrainConfig(**TINY_TRAINING, teacher=str(study / "runs" / "teacher"))
    with pytest.raises(ConfigError, match="model student: its teacher is the study's model "
                       "teacher, listed after it: list teacher first"):  # fmt: skip
        _check_outputs(study, {"student": taught, "teacher": plain}, [])
    _check_outputs(study, {"teacher": plain, "student": taught}, [])  # trained before it
    other = "clahe" if plain.intensity != "clahe" else "none"
    unlike_first = TrainConfig(**(TINY_TRAINING | {"intensity": other}))
    with pytest.raises(ConfigError, match="model student: its teacher, the study's model teacher, "
                       f"normalises intensity with '{other}'"):  # fmt: skip
        _check_outputs(study, {"teacher": unlike_first, "student": taught}, [])  # once it trained
    with pytest.raises(ConfigError, match=r"model teacher: .*a model cannot teach itself"):
        _check_outputs(study, {"teacher": taught}, [])
    gone = TrainConfig(**TINY_TRAINING, teacher=str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"model student: .*gone: run directory not found"):
        _check_outputs(study, {"a": plain, "student": gone}, [])
    unlike = TrainConfig(**(TINY_TRAINING | {"intensity": other}), teacher=str(run_dir))
    with pytest.raises(ConfigError, match=f"model student: teacher .* the student with '{other}'"):
        _check_outputs(study, {"student": unlike}, [])
    _check_outputs(study, {"student": TrainConfig(**TINY_TRAINING, teacher=str(run_dir))}, [])


def test_a_finished_model_needs_no_starting_weights(tmp_path):
    from conftest import TINY_TRAINING, write_backbone_weights
    from pneumolab.config import TrainConfig
    from pneumolab.pipeline.train import train
    from pneumolab.study.runner import _check_outputs

    data = write_synthetic_dataset(tmp_path / "data", per_class=8)
    weights = write_backbone_weights(tmp_path / "w.safetensors", 0)
    config = TrainConfig(epochs=1, **(TINY_TRAINING | {"pretrained": True, "weights": weights}))
    train(data, tmp_path / "study" / "runs" / "m", config)
    Path(weights).unlink()  # the study is re-run to compare again: it reuses the finished model
    _check_outputs(tmp_path / "study", {"m": config}, [])
    with pytest.raises(ConfigError, match=r"model new: .*w\.safetensors: weights file or folder"):
        _check_outputs(tmp_path / "study", {"m": config, "new": config}, [])


def test_a_weights_path_spelled_from_another_folder_is_the_same_setting(tmp_path, monkeypatch):
    """Stored as typed, a relative path was compared against the new working folder."""
    from conftest import TINY_TRAINING, write_backbone_weights
    from pneumolab.config import TrainConfig
    from pneumolab.pipeline.train import train
    from pneumolab.study.runner import _check_outputs

    data = write_synthetic_dataset(tmp_path / "data", per_class=8)
    (tmp_path / "wk").mkdir()
    write_backbone_weights(tmp_path / "wk" / "w.safetensors", 0)
    settings = TINY_TRAINING | {"pretrained": True, "epochs": 1}
    monkeypatch.chdir(tmp_path / "wk")
    train(data, tmp_path / "study" / "runs" / "m", TrainConfig(weights="w.safetensors", **settings))
    monkeypatch.chdir(tmp_path)
    _check_outputs(
        tmp_path / "study", {"m": TrainConfig(weights="wk/w.safetensors", **settings)}, []
    )


def test_a_folder_that_is_not_a_study_is_refused(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", per_class=2)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "results.md").write_text("someone's notes")
    study_file = _study_file(tmp_path / "s.yaml", [{"name": "a", "model": "pneumolab_cnn_small"}])
    with pytest.raises(OutputError, match=r"notes: holds results\.md and is not a study's folder"):
        run_study(study_file, data, out)
    assert (out / "results.md").read_text() == "someone's notes"


def test_another_rank_does_not_list_the_folder_rank_0_has_not_made_yet(tmp_path, monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    data = write_synthetic_dataset(tmp_path / "data", per_class=2)  # too few: fails fast
    study_file = _study_file(tmp_path / "s.yaml", [{"name": "a", "model": "pneumolab_cnn_small"}])
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # a DDP rank before the process group
    result = run_study(study_file, data, tmp_path / "new")  # FileNotFoundError listing it
    assert list(result.failed) == ["a"] and not (tmp_path / "new").exists()


def test_shipped_study_files_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    paths = sorted(
        [*(root / "configs").glob("study-*.yaml"), *root.glob("benchmarks/study-*.yaml")]
    )
    assert len(paths) >= 4  # the sdist has configs/, not benchmarks/
    for path in paths:
        study = load_study(path)
        assert len(study.train_configs()) >= 2, path.name


@pytest.mark.parametrize(
    ("select_by", "needs"),
    [("worst_roc_auc", "robustness"), ("shift_roc_auc", "shift"), ("shift_specificity", "shift")],
)
def test_selection_by_a_score_needs_that_score(tmp_path, select_by, needs):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "a"}], "select_by": select_by}))
    with pytest.raises(ConfigError, match=f"{select_by} needs {needs}: true"):
        load_study(path)
    path.write_text(
        yaml.safe_dump({"models": [{"name": "a"}], "select_by": select_by, needs: True})
    )
    assert load_study(path).select_by == select_by


def test_prefer_smaller_needs_a_criterion_with_per_image_scores(tmp_path):
    path = tmp_path / "s.yaml"
    study = {"models": [{"name": "a"}], "select_by": "accuracy", "prefer_smaller": True}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="prefer_smaller needs select_by roc_auc or shift_roc"):
        load_study(path)
    path.write_text(yaml.safe_dump(study | {"select_by": "roc_auc"}))
    assert load_study(path).prefer_smaller


def test_prefer_smaller_selects_the_smallest_model_validation_cannot_tell_from_the_leader(
    study, tmp_path
):
    """The wiring (which model the rule picks: test_selection.py)."""
    root, data, config, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out" / "runs", out / "runs", ignore=shutil.ignore_patterns("vgg"))
    settings = yaml.safe_load(config.read_text())
    settings["models"] = [m for m in settings["models"] if m["name"] != "vgg"]
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(settings | {"prefer_smaller": True}))
    assert main(["study", str(smaller), "--data", str(data), "--out", str(out)]) == 0
    with (out / "results.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    leader = max(rows.values(), key=lambda r: (float(r["roc_auc"]), float(r["specificity"])))
    selection = (out / "selection.md").read_text()
    untold = [
        line.split(" | ")[0][2:] for line in selection.splitlines() if line.endswith("| no |")
    ]
    candidates = [leader["name"], *untold]
    expected = min(candidates, key=lambda name: int(rows[name]["parameters"]))
    assert (out / "best").resolve() == (out / "runs" / expected).resolve()
    assert f"`best` is **{expected}**" in selection
    assert "the leader on validation by `roc_auc`" in selection


@pytest.mark.parametrize(
    ("best", "intervals", "words", "sizes"),
    [
        (
            "a",
            [(0.01, 0.02)],
            "validation tells it from every other model, so `prefer_smaller",
            None,
        ),
        (
            "a",
            [(-0.01, 0.02)],
            "kept: of it and the 1 model(s) validation cannot tell from it, b recorded no",
            {"a": 5, "b": None},
        ),
        (
            "a",
            [(-0.01, 0.02)],
            "and, of it and the 1 model(s) validation cannot tell from it, the",
            None,
        ),
        (
            "b",
            [(-0.01, 0.02)],
            "the model with the fewest parameters among **a**, the leader",
            None,
        ),
        ("a", [], "the leader on validation by `roc_auc`, the study's only model", None),
        ("a", None, "kept: the margins between the models were not tested (other images)", None),
    ],
)
def test_the_reason_for_a_smaller_choice_fits_what_validation_told(best, intervals, words, sizes):
    """selection.md called a leader no model was close to 'the model with the fewest
    parameters among' itself, though it was the largest; and said validation told the leader
    from every other model where no margin was tested (None here) or there was no other."""
    from pneumolab.evaluation.bootstrap import PairedDifference
    from pneumolab.evaluation.selection import Margin, Margins
    from pneumolab.study.runner import _smaller_choice

    if intervals is None:
        margins = Margins("roc_auc", "a", untested="other images")
    else:
        differences = [PairedDifference(0.01, low, high, 1000, 1000, 24) for low, high in intervals]
        margins = Margins("roc_auc", "a", [Margin("b", d) for d in differences])
    assert words in _smaller_choice(best, margins, "roc_auc", sizes or {"a": 5, "b": 1})


def test_compare_refuses_a_run_given_twice_names_namesakes_and_leaves_no_stale_figure(
    study, tmp_path, capsys
):
    root, data, _, _ = study
    run = root / "out" / "runs" / "small"
    out = tmp_path / "cmp"
    common = ["--data", str(data), "--split", "val", "--out", str(out)]
    assert main(["compare", str(run), str(run / ".." / "small"), *common]) == 2
    assert "the same run is given twice" in capsys.readouterr().err
    namesake = tmp_path / "copy" / "small"
    shutil.copytree(run, namesake)
    assert main(["compare", str(run), str(namesake), *common]) == 0
    assert {p.name for p in (out / "confusion").iterdir()} == {"runs-small.png", "copy-small.png"}
    assert main(["compare", str(run), *common, "--overwrite"]) == 0
    assert [p.name for p in (out / "confusion").iterdir()] == ["small.png"]  # no stale figure

    mine = tmp_path / "mine" / "confusion" / "my_figure.png"  # a file compare did not write
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    assert main(["compare", str(run), *common[:-1], str(tmp_path / "mine")]) == 0
    assert mine.read_bytes() == b"mine"  # removed without --overwrite before

    copy = shutil.copytree(run, tmp_path / "exported" / "small")
    (copy / "model.onnx").unlink(missing_ok=True)
    fresh = [*common[:-1], str(tmp_path / "fresh")]
    twice = ["compare", str(copy), str(copy), *fresh, "--backend", "onnx", "--export"]
    assert main(twice) == 2 and "given twice" in capsys.readouterr().err
    assert not (copy / "model.onnx").exists()  # refused before the export wrote anything


TWIN_SETTING = {"label_smoothing": 0.01}  # another network, on paper: reused, never trained


def _twin_runs(study, dest: Path) -> Path:
    """The study's ``small`` run copied twice under ``dest/runs`` (``small``, ``twin``). Not the
    separable CNN: after its one epoch its features barely vary, its OOD whitening reaches 1e7,
    and onnxruntime's rounding moves its OOD scores by about 1%, so export rightly refuses it.
    The twin's saved config differs in ``TWIN_SETTING`` alone (a study refuses equal models),
    and its head's bias by 1e-3 (an ensemble refuses a copy of one network)."""
    from conftest import nudge_head_bias

    small = study[0] / "out" / "runs" / "small"
    for name in ("small", "twin"):
        shutil.copytree(small, dest / "runs" / name, ignore=shutil.ignore_patterns("eval"))
    twin_config = dest / "runs" / "twin" / "config.yaml"
    twin_config.write_text(yaml.safe_dump(yaml.safe_load(twin_config.read_text()) | TWIN_SETTING))
    nudge_head_bias(dest / "runs" / "twin")
    return dest / "runs"


def test_compare_and_evaluate_score_the_onnx_exports_and_refuse_a_missing_one(
    study, tmp_path, capsys
):
    from pneumolab.pipeline.ensemble import build_ensemble

    data = study[1]
    runs = _twin_runs(study, tmp_path)
    build_ensemble([runs / "small", runs / "twin"], runs / "pair")
    names = ("small", "pair")
    dirs = [str(runs / name) for name in names]

    def compare(out: str, *flags: str) -> int:
        args = ["compare", *dirs, "--data", str(data), "--split", "val", "--out", out]
        return main([*args, *flags])

    capsys.readouterr()
    assert compare(str(tmp_path / "refused"), "--backend", "onnx") == 2
    assert "no ONNX export" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists() and not (runs / "small" / "eval").exists()
    assert compare(str(tmp_path / "torch")) == 0
    assert compare(str(tmp_path / "onnx"), "--backend", "onnx", "--export") == 0
    printed = capsys.readouterr().err
    assert all((runs / name / "model.onnx").is_file() for name in ("small", "twin"))
    assert printed.count("was missing: exported (--export)") == 2
    tables = {}
    for backend in ("torch", "onnx"):
        with (tmp_path / backend / "results.csv").open() as f:
            tables[backend] = {r["name"]: r for r in csv.DictReader(f)}
        assert f"with the {backend} backend" in (tmp_path / backend / "results.md").read_text()
    for name in names:
        torch_row, onnx_row = tables["torch"][name], tables["onnx"][name]
        assert (torch_row["backend"], onnx_row["backend"]) == ("torch", "onnx")
        assert float(onnx_row["roc_auc"]) == pytest.approx(float(torch_row["roc_auc"]), abs=1e-3)
    command = ["evaluate", dirs[1], "--data", str(data), "--json", "--backend", "onnx"]
    assert main(command) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["backend"] == "onnx"
    assert metrics["roc_auc"] == pytest.approx(float(tables["onnx"]["pair"]["roc_auc"]))


def test_a_study_with_backend_onnx_exports_its_networks_and_compares_their_exports(study, tmp_path):
    data = study[1]
    out = tmp_path / "out"
    _twin_runs(study, out)  # trained already: reused, not retrained
    models = [{"name": "small", "model": "pneumolab_cnn_small"}]
    models.append({"name": "twin", "model": "pneumolab_cnn_small"} | TWIN_SETTING)
    onnx_study = _study_file(
        tmp_path / "onnx.yaml", models, [{"name": "pair", "members": ["small", "twin"]}]
    )
    onnx_study.write_text(onnx_study.read_text() + "backend: onnx\n")
    assert main(["study", str(onnx_study), "--data", str(data), "--out", str(out)]) == 0
    with (out / "results.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"small", "twin", "pair"}
    assert {r["backend"] for r in rows.values()} == {"onnx"}
    assert all((out / "runs" / name / "model.onnx").is_file() for name in ("small", "twin"))
    assert not (out / "runs" / "pair" / "model.onnx").exists()  # an ensemble scores its members


def test_a_model_that_fails_before_training_is_skipped_on_every_rank(tmp_path):
    """Rank 0 alone prepared the split: a model whose data check failed there was skipped on
    rank 0 while the other ranks trained it, against rank 0 training the next model."""
    import subprocess
    import sys

    data = write_synthetic_dataset(tmp_path / "data")
    no_subtype = next((data / "train" / "PNEUMONIA").glob("*virus*"))
    no_subtype.rename(no_subtype.with_name("person99_99.png"))
    config = _study_file(
        tmp_path / "study.yaml",
        [
            {"name": "three", "model": "pneumolab_cnn_small", "task": "three_class"},
            {"name": "binary", "model": "pneumolab_cnn_small"},
        ],
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = os.environ | {"PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    worker = Path(__file__).with_name("ddp_study.py")
    done = subprocess.run(
        [sys.executable, worker, config, data, tmp_path / "out"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed: ['three']; best: binary" in done.stdout
    assert RunDir(tmp_path / "out" / "runs" / "binary").read_meta().distributed.processes == 2


def test_an_unexpected_failure_of_one_model_leaves_the_others_to_run(tmp_path, monkeypatch):
    """An exception that was not a PneumolabError (a network's own assertion, a bug) stopped
    the whole study with a traceback: later models never trained, no table was written."""
    from pneumolab.config import TrainConfig
    from pneumolab.study import runner

    trained = []

    def train_or_reuse(name, config, data_dir, run):
        if name == "a":
            raise AssertionError("Input height (32) doesn't match model (224).")
        trained.append(name)

    monkeypatch.setattr(runner, "_train_or_reuse", train_or_reuse)
    configs = {name: TrainConfig() for name in ("a", "b")}
    finished, failed = runner._train_models(configs, tmp_path, tmp_path / "study")
    assert trained == ["b"] and list(finished) == ["b"]
    assert failed == {
        "a": "unexpected AssertionError: Input height (32) doesn't match model (224)."
    }
