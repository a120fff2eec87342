import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumolab.config import TrainConfig, load_yaml, resolve_config, save_config
from pneumolab.errors import ConfigError


def test_defaults_then_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 3\nimage_size: 128\nlr: 0.01\n")
    cfg = resolve_config(cfg_file, {"epochs": 7, "image_size": None, "seed": 5})
    assert cfg.epochs == 7  # flag beats YAML
    assert cfg.image_size == 128  # YAML kept where the flag is unset (None)
    assert cfg.lr == 0.01
    assert cfg.seed == 5
    assert cfg.batch_size == TrainConfig().batch_size  # default where neither sets it


def test_round_trip(tmp_path):
    cfg = resolve_config(None, {"model": "resnet18", "epochs": 2})
    save_config(cfg, tmp_path / "c.yaml")
    assert resolve_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epochs: 0\n", "epochs"),
        ("target_sensitivity: 0\n", r"target sensitivity must be in \(0, 1\], got 0.0"),
        ("target_sensitivity: .nan\n", "target_sensitivity: Input should be a finite number"),
        ("no_such_setting: 1\n", "no_such_setting"),
        ("epohcs: 1\n", r"unknown setting\(s\): epohcs \(did you mean epochs\?\)"),
        ("image-size: 96\n", r"image-size \(did you mean image_size\?\)"),
        ("- a\n- b\n", "mapping"),
        ("epochs: [\n", "invalid YAML"),
    ],
)
def test_bad_config_names_file_and_problem(tmp_path, text, match):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        resolve_config(cfg_file)
    assert "bad.yaml" in str(info.value)
    assert "\n" not in str(info.value)  # one line: the terminal shows a line feed as \x0a


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "nope.yaml")


def test_binary_config_file_names_file_and_problem(tmp_path):
    cfg_file = tmp_path / "model.safetensors"
    cfg_file.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"model\.safetensors: not a text file"):
        resolve_config(cfg_file)


def test_a_utf8_config_file_is_read_under_an_ascii_locale(tmp_path):
    """YAML is UTF-8; a comment with an accent was "not a text file" under LC_ALL=C."""
    cfg_file = tmp_path / "recipe.yaml"
    cfg_file.write_text("# r\u00e9sum\u00e9 of the recipe\nepochs: 3\n", encoding="utf-8")
    script = f"from pneumolab.config import load_yaml; print(load_yaml({str(cfg_file)!r}))"
    env = os.environ | {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "{'epochs': 3}", done.stderr[-2000:]


def test_default_yaml_documents_exactly_the_defaults():
    """configs/default.yaml lists every setting, and TrainConfig() is the recipe it describes."""
    path = Path(__file__).parents[1] / "configs" / "default.yaml"
    assert list(load_yaml(path)) == list(TrainConfig.model_fields)
    assert resolve_config(path) == TrainConfig()


def test_train_flags_cover_every_setting_and_default_to_the_recipe():
    from pneumolab.cli.config_flags import config_overrides
    from pneumolab.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "D", "--out", "R"])
    assert set(config_overrides(args)) == set(TrainConfig.model_fields)
    assert resolve_config(None, config_overrides(args)) == TrainConfig()
    given = [
        "train", "--data", "D", "--out", "R", "--strategy", "partial", "--unfreeze-stages", "3",
        "--backbone-lr-scale", "0.1", "--precision", "32", "--max-train-images", "40",
    ]  # fmt: skip
    config = resolve_config(None, config_overrides(parser.parse_args(given)))
    assert (config.strategy, config.unfreeze_stages, config.backbone_lr_scale) == (
        "partial",
        3,
        0.1,
    )
    assert (config.precision, config.max_train_images) == ("32", 40)


def test_flag_choices_come_from_the_config_types(capsys):
    from pneumolab.cli.parser import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "D", "--out", "R", "--strategy", "all"])
    assert "choose from 'finetune', 'frozen', 'partial'" in capsys.readouterr().err
    study = build_parser().parse_args(
        ["study", "s.yaml", "--data", "D", "--out", "O", "--lr", "0.5"]
    )
    assert study.lr == 0.5 and not hasattr(study, "model")


def test_the_word_none_switches_off_an_optional_number_the_config_file_set(tmp_path, capsys):
    """``--ema-decay none`` and ``--split-seed none``: a flag could set these numbers but not
    undo a config file's value (an unset flag is None, which overrides nothing)."""
    from pneumolab.cli.config_flags import config_overrides
    from pneumolab.cli.parser import build_parser

    config_file = tmp_path / "c.yaml"
    config_file.write_text("ema_decay: 0.99\nsplit_seed: 3\nmax_train_images: 40\n")
    base = ["train", "--data", "D", "--out", "R"]
    kept = resolve_config(config_file, config_overrides(build_parser().parse_args(base)))
    assert (kept.ema_decay, kept.split_seed, kept.max_train_images) == (0.99, 3, 40)
    undo = ["--ema-decay", "none", "--split-seed", "None", "--max-train-images", "NONE"]
    flags = config_overrides(build_parser().parse_args(base + undo))
    config = resolve_config(config_file, flags)
    assert (config.ema_decay, config.split_seed, config.max_train_images) == (None, None, None)
    assert config.data_seed == config.seed
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--ema-decay", "off"])
    assert "invalid float or none value: 'off'" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["1", "null", "on", "2.5"])
def test_a_setting_name_that_yaml_reads_as_no_text_is_a_clear_error(tmp_path, key):
    """``1: 2`` or ``on: 1`` in a config file: TrainConfig(**values) raised a TypeError
    (a traceback on the command line), also inside a study's model list."""
    flat = tmp_path / "flat.yaml"
    flat.write_text(f"epochs: 2\n{key}: 3\n")
    with pytest.raises(ConfigError, match=r"flat\.yaml: setting names are text"):
        resolve_config(flat)
    nested = tmp_path / "study.yaml"
    nested.write_text(f"models:\n  - name: a\n    {key}: 3\n")
    with pytest.raises(ConfigError, match=r"study\.yaml: setting names are text"):
        load_yaml(nested)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    """PyYAML kept the last: a second `models:` block replaced the first without a word."""
    path = tmp_path / "study.yaml"
    path.write_text("models:\n  a:\n    model: x\nepochs: 1\nepochs: 2\n")
    with pytest.raises(
        ConfigError, match=r"study\.yaml: invalid YAML \('epochs' is given twice.*line 5"
    ):
        load_yaml(path)


def test_merge_keys_may_be_overridden_and_odd_keys_are_named(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("base: &b {epochs: 1, lr: 0.1}\nmodel:\n  <<: *b\n  epochs: 2\n")
    assert load_yaml(path)["model"] == {"epochs": 2, "lr": 0.1}
    path.write_text("? [a, b]\n: 1\n")  # a list as a key
    with pytest.raises(ConfigError, match=r"study\.yaml: invalid YAML \(.*unhashable key"):
        load_yaml(path)


def test_an_empty_weights_or_teacher_path_is_no_path():
    """``--teacher ''`` turned distillation off but config.yaml recorded the working folder as
    the teacher (and ``--weights ''`` as the weights)."""
    config = TrainConfig(teacher="", weights="  ")
    assert config.teacher is None and config.weights is None


def test_weights_are_not_recorded_for_a_network_trained_from_scratch():
    """A study's --weights reaches its from-scratch models too: config.yaml recorded a file the
    training never read."""
    from pneumolab.config import TrainConfig

    assert TrainConfig(pretrained=False, weights="/w/file.safetensors").weights is None
    assert TrainConfig(weights="/w/file.safetensors").weights == "/w/file.safetensors"


def test_settings_the_combination_never_reads_are_recorded_as_their_defaults():
    """A from-scratch run recorded `backbone_lr_scale: 0.1`, `unfreeze_stages: 5`... that it
    never applied, and two such runs passed a study's "same network twice" check."""
    from pneumolab.config import inert_settings

    given = {"pretrained": False, "backbone_lr_scale": 0.1, "unfreeze_stages": 5}
    config = TrainConfig(**given, head_init="zero", swa_lr=0.5, distill_weight=0.9)
    assert config == TrainConfig(pretrained=False)
    assert set(inert_settings(config)) >= {"backbone_lr_scale", "unfreeze_stages", "swa_lr"}
    frozen = TrainConfig(strategy="frozen", augmentation="standard", augment_strength=2.5)
    assert frozen == TrainConfig(strategy="frozen")
    partial = TrainConfig(strategy="partial", unfreeze_stages=3, monitor="val_auc")
    assert partial.unfreeze_stages == 3 and "unfreeze_stages" not in inert_settings(partial)


def test_precision_written_as_a_number_in_yaml_is_its_name(tmp_path):
    """YAML reads `precision: 32` as the number 32, which was refused by a message listing '32'."""
    path = tmp_path / "c.yaml"
    path.write_text("precision: 32\n")
    assert resolve_config(path).precision == "32"
    path.write_text("precision: true\n")
    with pytest.raises(ConfigError, match="precision"):
        resolve_config(path)


def test_settings_by_name_read_a_null_as_a_config_file_does():
    """A null in a mapping (or a study's model entry) was dropped as an unset flag: the model
    trained the built-in default network, where a config file refuses it."""
    with pytest.raises(ConfigError, match="model: Input should be a valid string"):
        resolve_config(settings={"model": None})
    assert resolve_config(settings={"ema_decay": None}).ema_decay is None
    assert resolve_config(None, {"epochs": None}, {"epochs": 9}).epochs == 9  # unset flag


def test_a_setting_name_that_is_not_text_in_a_mapping_is_a_clear_error():
    """`pneumolab.train(data, out, {None: 2})` ended in AttributeError."""
    for key in (None, 1):
        with pytest.raises(ConfigError, match=f"setting names are text, got {key!r}"):
            resolve_config(settings={key: 2})


def test_a_setting_changed_after_the_config_is_built_is_checked_when_training_starts(tmp_path):
    """``config.epochs = 0`` was taken; training failed in torch's loader, leaving a run folder
    that refused the retry. Settings are checked together when training starts (checked one by
    one as they are set, their order mattered: ``swa_lr`` set before ``swa_epochs`` was reset as
    unused), and nothing is written first."""
    from pneumolab import train

    config = TrainConfig(epochs=2)
    config.epochs = 0
    with pytest.raises(ConfigError, match=r"invalid training config \(epochs: "):
        train(tmp_path / "data", tmp_path / "run", config)
    assert not (tmp_path / "run" / "config.yaml").exists()
    config = TrainConfig(pretrained=False)
    config.strategy = "frozen"
    with pytest.raises(ConfigError, match="strategy 'frozen' needs pretrained weights"):
        train(tmp_path / "data", tmp_path / "run", config)
    config = TrainConfig()
    config.swa_lr, config.swa_epochs = 0.5, 2
    assert config.swa_lr == 0.5  # not reset while SWA was still off


def test_a_folder_given_as_the_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        resolve_config(tmp_path)


def test_a_bad_value_given_as_a_flag_is_not_blamed_on_the_config_file(tmp_path):
    """``--config FILE --epochs 0`` said "FILE: invalid training config (epochs: ...)"; the
    file held ``epochs: 1``."""
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 1\npretrained: false\n")
    with pytest.raises(ConfigError) as flagged:
        resolve_config(config, {"epochs": 0, "lr": 0.01})
    assert str(flagged.value).startswith("invalid training config (epochs:")
    assert str(flagged.value).endswith("(given as --epochs)")
    with pytest.raises(ConfigError, match=r"^.*recipe\.yaml: .*frozen.* \(with --strategy\)$"):
        resolve_config(config, {"strategy": "frozen"})  # the file's and the flag's together
    config.write_text("epochs: 0\n")
    with pytest.raises(
        ConfigError, match=r"recipe\.yaml: invalid training config \(epochs: [^)]*\)$"
    ):
        resolve_config(config, {"lr": 0.01})


def test_a_bad_value_given_as_a_setting_over_a_file_is_not_blamed_on_the_file(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 1\n")
    with pytest.raises(ConfigError) as given:
        resolve_config(config, settings={"epochs": 0})
    assert str(given.value).startswith("invalid training config (epochs:")
    assert str(given.value).endswith("(given as settings['epochs'])")


def test_a_study_flag_that_fails_is_named_over_the_model_entry():
    """``study s.yaml --epochs 0`` said "s.yaml: models[0] (a): invalid training config
    (epochs: ...)", as for a file holding epochs: 0 (its entry held epochs: 1)."""
    with pytest.raises(ConfigError, match=r"\(epochs: [^)]*\) \(given as --epochs\)$"):
        resolve_config(None, {"epochs": 0}, {"epochs": 1})
    with pytest.raises(ConfigError, match=r"\(epochs: [^)]*\)$"):
        resolve_config(None, None, {"epochs": 0})
