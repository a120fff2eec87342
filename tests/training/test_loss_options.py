"""The training loss and its options: class weights, label smoothing, mixup, cutmix, EMA and SWA
of the weights."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import TINY_TRAINING
from pneumolab.config import TrainConfig
from pneumolab.errors import ConfigError
from pneumolab.models.registry import create_classifier
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir
from pneumolab.training.module import ClassifierModule


def _module(classes: int, **options) -> ClassifierModule:
    counts = [1, 3] if classes == 2 else [1, 2, 3]
    model = create_classifier("pneumolab_cnn_small", num_classes=1 if classes == 2 else classes)
    module = ClassifierModule(model, counts, **options)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    return module.eval()  # no dropout / batch statistics: the same logits twice


def _batch(classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=generator)
    targets = torch.arange(8) % classes
    return images, targets.float() if classes == 2 else targets


def test_without_options_the_loss_is_torchs_class_weighted_loss():
    module = _module(2)
    images, targets = _batch(2)
    weights = module.class_weights[targets.long()]
    expected = F.binary_cross_entropy_with_logits(module(images), targets, weight=weights)
    assert torch.allclose(module.training_step((images, targets), 0), expected)

    module = _module(3)
    images, targets = _batch(3)
    logits = module.model.class_logits(images)
    expected = F.cross_entropy(logits, targets, weight=module.class_weights)
    assert torch.allclose(module.training_step((images, targets), 0), expected)


def test_label_smoothing_trains_against_softened_targets():
    module = _module(2, label_smoothing=0.2)
    images, targets = _batch(2)
    weights = module.class_weights[targets.long()]
    softened = targets * 0.8 + 0.1
    expected = F.binary_cross_entropy_with_logits(module(images), softened, weight=weights)
    assert torch.allclose(module.training_step((images, targets), 0), expected)

    module = _module(3, label_smoothing=0.2)
    images, targets = _batch(3)
    logits = module.model.class_logits(images)
    soft = F.one_hot(targets, 3) * 0.8 + 0.2 / 3
    weights = module.class_weights[targets]
    per_image = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1)  # each image at its class weight
    expected = (weights * per_image).sum() / weights.sum()
    assert torch.allclose(module.training_step((images, targets), 0), expected)


def _mixed_batch(module: ClassifierModule, seed: int) -> tuple[torch.Tensor, ...]:
    """A batch, its targets and class weights, the partner order ``_mix`` draws, and its output."""
    images, targets = _batch(2)
    soft = F.one_hot(targets.long(), 2).float()
    weights = module.class_weights[targets.long()]
    torch.manual_seed(seed)
    order = torch.randperm(8)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return images, soft, weights, order, *module._mix(images, soft, weights)


def test_mixup_mixes_images_targets_and_weights_alike():
    module = _module(2, mixup_alpha=0.4)
    images, soft, weights, order, mixed_images, mixed_soft, mixed_weights = _mixed_batch(module, 3)
    np.random.seed(3)
    mix = float(np.random.beta(0.4, 0.4))
    assert 0 < mix < 1
    assert torch.allclose(mixed_images, mix * images + (1 - mix) * images[order])
    assert torch.allclose(mixed_soft, mix * soft + (1 - mix) * soft[order])
    assert torch.allclose(mixed_weights, mix * weights + (1 - mix) * weights[order])
    assert torch.allclose(mixed_soft.sum(dim=1), torch.ones(8))
    loss = module.training_step(_batch(2), 0)
    assert torch.isfinite(loss) and loss > 0


def test_cutmix_pastes_a_box_and_mixes_targets_and_weights_by_its_area():
    module = _module(2, cutmix_alpha=1.0)
    images, soft, weights, order, mixed_images, mixed_soft, mixed_weights = _mixed_batch(module, 5)
    pasted = (mixed_images != images).any(dim=(0, 1))  # pixels taken from the other images
    assert pasted.any() and not pasted.all()
    assert torch.equal(mixed_images[:, :, pasted], images[order][:, :, pasted])
    assert torch.equal(mixed_images[:, :, ~pasted], images[:, :, ~pasted])
    keep = 1 - pasted.float().mean()  # the share of each image it keeps
    assert torch.allclose(mixed_soft, keep * soft + (1 - keep) * soft[order])
    assert torch.allclose(mixed_weights, keep * weights + (1 - keep) * weights[order])


def test_swa_keeps_the_average_with_recomputed_batch_norm_statistics(synthetic_data, tmp_path):
    config = TrainConfig(**TINY_TRAINING, epochs=3, swa_epochs=2, swa_lr=0.01)
    run = RunDir(train(synthetic_data, tmp_path / "swa", config).root)
    history = run.history.read_text().splitlines()
    assert len(history) == 1 + 3 + 1  # header, the epochs, Lightning's batch-norm epoch
    last = torch.load(run.checkpoints / "best.ckpt", weights_only=False)
    assert last["epoch"] == 3  # the run kept the batch-norm epoch, which holds the average
    assert run.read_meta().best_epoch == 2  # the card said "Best epoch: 4" of a 3-epoch run
    saved = load_file(run.weights)
    state = {k.removeprefix("model."): v for k, v in last["state_dict"].items()}
    assert all(torch.equal(saved[k], state[k].to(saved[k].dtype)) for k in saved if k in state)


@pytest.mark.slow
def test_swa_without_batch_norm_keeps_the_average(synthetic_data, tmp_path):
    """Under ``frozen`` the trained head has no batch norm, so no extra epoch: the average
    reaches the module after the last checkpoint, and the run keeps it all the same."""
    from conftest import write_backbone_weights

    class FinalHead(L.Callback):
        def on_train_end(self, trainer, pl_module):
            self.weight = pl_module.state_dict()["model.classifier.weight"].clone()

    weights = write_backbone_weights(tmp_path / "backbone.safetensors", 0)
    settings = dict(pretrained=True, weights=weights, feature_cache=str(tmp_path / "cache"))
    config = TrainConfig(
        **(TINY_TRAINING | settings), strategy="frozen", epochs=3, swa_epochs=2, swa_lr=0.05
    )
    final = FinalHead()
    run = RunDir(train(synthetic_data, tmp_path / "swa", config, callbacks=[final]).root)
    last = torch.load(run.checkpoints / "best.ckpt", weights_only=False)["state_dict"]
    assert not torch.equal(final.weight, last["model.classifier.weight"])  # the average differs
    saved = load_file(run.weights)
    assert any(torch.equal(t, final.weight) for t in saved.values())


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (dict(monitor="val_auc"), "monitor: last"),
        (dict(ema_decay=0.9), "choose one"),
        (dict(epochs=2), "fewer than epochs"),
        (dict(swa_epochs=0, cutmix_alpha=1.0, strategy="frozen"), "needs images"),
        (dict(strategy="partial"), "frozen stages' statistics"),
    ],
)
def test_options_that_cannot_work_together_are_refused(settings, problem):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=problem):
        TrainConfig(**({"swa_epochs": 2} | settings))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (dict(pretrained=False), "needs pretrained weights"),
        (dict(strategy="frozen"), "strategy finetune or partial"),
        (dict(epochs=1), "leave an epoch to fine-tune"),
        (dict(epochs=3, swa_epochs=2), "leave an epoch to fine-tune"),
    ],
)
def test_head_epochs_that_cannot_work_are_refused(settings, problem):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=problem):
        TrainConfig(**({"head_epochs": 1} | settings))


def test_ema_training_saves_the_averaged_weights(synthetic_data, tmp_path):
    config = TrainConfig(**TINY_TRAINING, epochs=2, ema_decay=0.5)
    out = tmp_path / "ema"
    train(synthetic_data, out, config)
    run = RunDir(out)
    assert json.loads(run.meta.read_text())["model"] == "pneumolab_cnn_small"
    checkpoint = torch.load(run.checkpoints / "best.ckpt", weights_only=False)
    assert "current_model_state" in checkpoint  # Lightning's EMA callback kept both
    saved = load_file(run.weights)
    averaged = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    current = {k.removeprefix("model."): v for k, v in checkpoint["current_model_state"].items()}
    key = next(k for k in saved if k in averaged and saved[k].is_floating_point())
    assert torch.equal(saved[key], averaged[key].to(saved[key].dtype))
    assert not all(torch.equal(averaged[k], current[k]) for k in averaged if k in current)


@pytest.mark.parametrize("value", [-0.1, 0.5])
def test_label_smoothing_outside_its_range_is_refused(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TrainConfig(label_smoothing=value)


def test_mixup_under_frozen_is_refused_for_a_new_training_only(tmp_path):
    """It mixed the cached feature vectors, recorded as image mixup; runs trained so before
    still load (an ensemble, a resume and a teacher read their config.yaml)."""
    from pneumolab.config import check_new_training

    config = TrainConfig(strategy="frozen", pretrained=True, mixup_alpha=0.4)
    with pytest.raises(ConfigError, match="mixup_alpha needs images"):
        check_new_training(config)
    with pytest.raises(ConfigError, match="mixup_alpha needs images"):
        train(tmp_path / "data", tmp_path / "run", config)
    assert not (tmp_path / "run").exists()
    check_new_training(TrainConfig(strategy="frozen", pretrained=True))
