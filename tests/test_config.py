import pytest

from pneumolab.config import TrainConfig, resolve_config, save_config
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
        ("no_such_setting: 1\n", "no_such_setting"),
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


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "nope.yaml")
