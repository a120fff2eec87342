"""Knowledge distillation: the teacher's probabilities join the training targets; the teacher is
checked before anything is written, stays frozen and out of the student's files, and the run
records which teacher it learnt from."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from conftest import TINY_TRAINING, copy_run
from pneumolab.config import TrainConfig
from pneumolab.errors import ConfigError, RunDirError
from pneumolab.models.registry import create_classifier
from pneumolab.pipeline.ensemble import build_ensemble
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir
from pneumolab.run_meta import TeacherRecord
from pneumolab.training.distill import Teacher
from pneumolab.training.module import ClassifierModule


def _teacher(image_size: int) -> Teacher:
    torch.manual_seed(1)
    model = create_classifier("pneumolab_cnn_small", num_classes=1)
    record = TeacherRecord(
        run="t", model="pneumolab_cnn_small", image_size=image_size, weights_sha256="0"
    )
    return Teacher(model, image_size, record)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    return images, (torch.arange(8) % 2).float()


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_the_target_mixes_label_and_teacher_probability_by_distill_weight(weight):
    torch.manual_seed(0)
    student = create_classifier("pneumolab_cnn_small", num_classes=1)
    teacher = _teacher(image_size=32)
    module = ClassifierModule(student, [1, 3], teacher=teacher, distill_weight=weight).eval()
    module.log = lambda *args, **kwargs: None  # no trainer attached
    images, labels = _batch()
    taught = torch.sigmoid(teacher.model(images))
    target = (1 - weight) * labels + weight * taught
    weights = module.class_weights[labels.long()]
    expected = F.binary_cross_entropy_with_logits(student(images), target, weight=weights)
    assert torch.allclose(module.training_step((images, labels), 0), expected)
    module.train()  # the student trains; the teacher stays frozen, in eval mode
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_the_teacher_scores_the_students_view_at_its_own_size():
    teacher = _teacher(image_size=48)
    images, _ = _batch()
    resized = F.interpolate(images, size=(48, 48), mode="bilinear", antialias=True)
    expected = torch.sigmoid(teacher.model(resized))
    assert torch.allclose(teacher.probabilities(images), expected)


def test_distillation_records_its_teacher_and_keeps_the_teacher_out_of_the_run(
    tiny_run, synthetic_data, tmp_path, caplog
):
    teacher_dir, _ = tiny_run
    teacher_bytes = (teacher_dir / "model.safetensors").read_bytes()
    config = TrainConfig(**TINY_TRAINING, epochs=1, teacher=str(teacher_dir), distill_weight=0.5)
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        run = RunDir(train(synthetic_data, tmp_path / "student", config).root)
    assert "validation images" not in caplog.text  # the teacher's split: it saw none of them
    recorded = json.loads(run.meta.read_text())["teacher"]
    assert recorded == {
        "run": str(teacher_dir),
        "model": "pneumolab_cnn_small",
        "image_size": 32,
        "weights_sha256": hashlib.sha256(teacher_bytes).hexdigest(),
    }
    assert (teacher_dir / "model.safetensors").read_bytes() == teacher_bytes
    checkpoint = torch.load(run.checkpoints / "best.ckpt", weights_only=False)
    assert not any("teacher" in key for key in checkpoint["state_dict"])


def test_a_teacher_that_trained_on_the_students_validation_images_is_reported(
    tiny_run, synthetic_data, tmp_path, caplog
):
    config = TrainConfig(**TINY_TRAINING, epochs=1, teacher=str(tiny_run[0]), split_seed=1)
    with caplog.at_level(logging.WARNING, logger="pneumolab"):
        train(synthetic_data, tmp_path / "student", config)
    assert "of the student's" in caplog.text and "(--split-seed 0)" in caplog.text


def test_a_run_without_teacher_records_none(tiny_run):
    assert json.loads(RunDir(tiny_run[0]).meta.read_text())["teacher"] is None


def test_a_missing_teacher_fails_before_the_run_directory_exists(synthetic_data, tmp_path):
    config = TrainConfig(**TINY_TRAINING, teacher=str(tmp_path / "no-such-run"))
    with pytest.raises(RunDirError, match="no-such-run"):
        train(synthetic_data, tmp_path / "student", config)
    assert not (tmp_path / "student").exists()


def test_a_teacher_with_other_intensity_normalisation_is_refused(tiny_run):
    config = TrainConfig(**TINY_TRAINING, teacher=str(tiny_run[0]), intensity="none")
    with pytest.raises(ConfigError, match="--intensity clahe"):
        Teacher.from_run(tiny_run[0], config)


def test_an_ensemble_cannot_teach(tiny_run, tmp_path):
    from conftest import nudge_head_bias

    member = copy_run(tiny_run[0], tmp_path / "member")
    nudge_head_bias(member)  # another network: an ensemble refuses a copy of one
    ensemble = build_ensemble([tiny_run[0], member], tmp_path / "ensemble")
    config = TrainConfig(**TINY_TRAINING, teacher=str(ensemble.root))
    with pytest.raises(RunDirError, match="an ensemble"):
        Teacher.from_run(ensemble.root, config)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (dict(strategy="frozen"), "teacher needs images"),
        (dict(task="three_class"), "needs task binary"),
        (dict(distill_weight=1.5), "distill_weight"),
    ],
)
def test_settings_distillation_cannot_work_with_are_refused(settings, problem):
    with pytest.raises(ValidationError, match=problem):
        TrainConfig(teacher="runs/teacher", **settings)
