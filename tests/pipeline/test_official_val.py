"""The dataset's own val/ folder is only reported: a bad one never fails a run after training."""

from __future__ import annotations

import shutil

from conftest import TINY_TRAINING, held_only, write_synthetic_dataset
from pneumolab.config import TrainConfig
from pneumolab.data.layout import scan_split
from pneumolab.models.registry import create_classifier
from pneumolab.pipeline.train import official_val_scores


def test_a_val_folder_without_both_classes_is_named_and_left_unscored(tmp_path, caplog):
    root = write_synthetic_dataset(tmp_path / "data", per_class=2)
    (root / "val" / "NORMAL").mkdir(parents=True)  # its PNEUMONIA folder missing
    for image in (root / "train" / "NORMAL").iterdir():
        shutil.copy(image, root / "val" / "NORMAL" / image.name)
    config = TrainConfig(**TINY_TRAINING)
    model = create_classifier(config.model, pretrained=False)
    assert official_val_scores(model, root, config) is None
    assert "val/ folder is not scored" in caplog.text and "['PNEUMONIA']" in caplog.text
    (root / "val" / "PNEUMONIA").mkdir()
    shutil.copy(next((root / "train" / "PNEUMONIA").iterdir()), root / "val" / "PNEUMONIA")
    labels, probabilities = official_val_scores(model, root, config)
    assert labels.tolist() == [0, 0, 1] and probabilities.shape == (3,)


def test_a_folder_that_is_not_a_class_is_named_once(tmp_path, caplog, monkeypatch):
    from pneumolab.data import layout
    from pneumolab.once import Once

    monkeypatch.setattr(layout, "_TOLD_LEFT_OUT", Once())
    steps = held_only(layout._TOLD_LEFT_OUT)
    root = write_synthetic_dataset(tmp_path / "data", per_class=2)
    (root / "train" / "COVID").mkdir()
    (root / "train" / ".ipynb_checkpoints").mkdir()
    for _ in range(2):  # a study scans each split once per model
        assert len(scan_split(root / "train")) == 4
    assert caplog.text.count("folder(s) COVID left out: not one of the classes") == 1
    assert ".ipynb" not in caplog.text
    assert steps == ["check", "claim", "check"]
