"""Transfer strategies on every model family: one training step each, the right parameters move."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY_TRAINING, by_size, write_backbone_weights, write_synthetic_dataset
from pneumolab.config import TrainConfig
from pneumolab.errors import ConfigError
from pneumolab.models.catalog import STUDY_MODELS
from pneumolab.models.registry import create_classifier, zero_head
from pneumolab.pipeline.train import train
from pneumolab.training.distributed import lightning_strategy
from pneumolab.training.module import ClassifierModule
from pneumolab.training.strategies import (
    apply_strategy,
    head_parameters,
    optimizer_groups,
    stage_parameter_groups,
    train_unfrozen_batch_norms,
)
from pneumolab.training.train import build_model


def _one_step(model: torch.nn.Module) -> list[bool]:
    """One SGD step on tiny inputs; which parameters changed."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0])
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    return [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]


# frozen / partial are generic over timm's group_matcher: checked on one model per kind of layout
LAYOUTS = ["pneumolab_cnn_small", "mobilenetv2_100", "legacy_xception", "resnet18", "convnext_nano"]


@pytest.fixture(scope="module", params=by_size(LAYOUTS))
def family_model(request):
    torch.manual_seed(0)
    return create_classifier(request.param)


@pytest.mark.parametrize("name", by_size(STUDY_MODELS))
def test_every_family_finetunes_one_step(name):
    torch.manual_seed(0)
    model = create_classifier(name)
    apply_strategy(model.backbone, "finetune")
    head = {id(p) for p in head_parameters(model.backbone)}
    assert all(p.requires_grad for p in model.parameters())
    changed = _one_step(model)
    # backbone and head both move (some layers, e.g. after zero-initialised norms, may not yet)
    assert any(m for p, m in zip(model.parameters(), changed, strict=True) if id(p) in head)
    assert any(m for p, m in zip(model.parameters(), changed, strict=True) if id(p) not in head)


def test_frozen_trains_the_head_only(family_model):
    model = copy.deepcopy(family_model)
    apply_strategy(model.backbone, "frozen")
    head = {id(p) for p in head_parameters(model.backbone)}
    changed = _one_step(model)
    for parameter, moved in zip(model.parameters(), changed, strict=True):
        assert moved == (id(parameter) in head)


def test_partial_trains_the_last_stage_and_the_head(family_model):
    model = copy.deepcopy(family_model)
    apply_strategy(model.backbone, "partial", unfreeze_stages=1)
    stages = stage_parameter_groups(model.backbone)
    trainable = {id(p) for p in [*head_parameters(model.backbone), *stages[-1]]}
    assert {id(p) for p in model.parameters() if p.requires_grad} == trainable
    changed = _one_step(model)
    assert not any(
        m for p, m in zip(model.parameters(), changed, strict=True) if id(p) not in trainable
    )
    assert any(changed)


def test_backbone_learns_slower_than_the_head():
    model = create_classifier("resnet18")
    apply_strategy(model.backbone, "finetune")
    head, body = optimizer_groups(model.backbone, lr=1e-3, backbone_lr_scale=0.1)
    assert head["lr"] == pytest.approx(1e-3) and body["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.backbone.fc.parameters()}
    total = len(head["params"]) + len(body["params"])
    assert total == len(list(model.parameters()))


def test_too_many_stages_and_unknown_strategy_are_clear_errors():
    model = create_classifier("pneumolab_cnn_small")
    with pytest.raises(ConfigError, match=r"but the model has \d+ stages"):
        apply_strategy(model.backbone, "partial", unfreeze_stages=9)
    with pytest.raises(ConfigError, match="unknown strategy"):
        apply_strategy(model.backbone, "thaw")


def test_frozen_batch_norm_keeps_its_statistics_in_training():
    from torch.nn.modules.batchnorm import _BatchNorm

    from pneumolab.training.module import ClassifierModule

    model = create_classifier("pneumolab_cnn_small")
    apply_strategy(model.backbone, "partial", unfreeze_stages=2)
    module = ClassifierModule(model, [1, 3])
    module.train()
    module.on_train_epoch_start()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    frozen = [m for m in norms if not any(p.requires_grad for p in m.parameters())]
    assert frozen and all(not m.training for m in frozen)
    trainable = [m for m in norms if all(m is not f for f in frozen)]
    assert trainable and all(m.training for m in trainable)


class _Recorder(L.Callback):
    """The head's learning rate at every training step; the weights and buffers after the
    first epoch."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.after_first_epoch: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.after_first_epoch:
            self.after_first_epoch = copy.deepcopy(pl_module.model.state_dict())


@pytest.mark.parametrize("head_init", ["zero", "fan_in", "timm"])
def test_the_fresh_head_on_pretrained_weights_starts_as_configured(tmp_path, head_init):
    weights = write_backbone_weights(tmp_path / "pneumolab_cnn_small.safetensors", seed=0)
    settings = {"pretrained": True, "weights": weights, "head_init": head_init}
    config = TrainConfig(**(TINY_TRAINING | settings))
    torch.manual_seed(0)
    head = build_model(config).model.backbone.get_classifier()
    assert bool(head.weight.any()) == (head_init != "zero")

    def direct(init):
        torch.manual_seed(0)
        model = create_classifier(config.model, pretrained=True, weights=weights, head_init=init)
        return model.backbone.get_classifier()

    # the very head that init gives under the same seed, and none of the others' heads
    for init in ("zero", "fan_in", "timm"):
        same = torch.equal(head.weight, direct(init).weight)
        assert same == (init == head_init), init
    assert torch.equal(head.bias, direct(head_init).bias)


def test_a_zero_head_learns_first_then_passes_gradients_to_the_body():
    torch.manual_seed(0)
    model = create_classifier("pneumolab_cnn_small")
    zero_head(model.backbone)
    head_weight = model.backbone.get_classifier().weight
    is_head = [p is head_weight for p in model.parameters()]
    first = _one_step(model)
    assert first[is_head.index(True)]
    # through a zero head the body's gradient is 0 (the bias too: balanced labels at logit 0)
    assert not any(moved for moved, head in zip(first, is_head, strict=True) if not head)
    assert all(_one_step(model)[: is_head.index(True)])


def test_head_epochs_train_the_head_alone_then_the_backbone():
    torch.manual_seed(0)
    model = create_classifier("pneumolab_cnn_small")
    apply_strategy(model.backbone, "finetune")
    groups = optimizer_groups(model.backbone, lr=1e-2, backbone_lr_scale=1.0)
    head = {id(p) for p in head_parameters(model.backbone)}
    head_names = {name for name, p in model.named_parameters() if id(p) in head}
    before = copy.deepcopy(model.state_dict())
    images, labels = torch.rand(32, 1, 32, 32), torch.tensor([0, 1] * 16)
    recorder = _Recorder()
    L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    ).fit(
        ClassifierModule(model, [16, 16], param_groups=groups, head_epochs=1),
        DataLoader(TensorDataset(images, labels), batch_size=4),  # 8 steps per epoch
        DataLoader(TensorDataset(images, labels, torch.arange(32)), batch_size=8),
    )

    def moved(after: dict[str, torch.Tensor]) -> dict[str, bool]:
        return {name: not torch.equal(before[name], after[name]) for name in before}

    head_epoch, both = moved(recorder.after_first_epoch), moved(model.state_dict())
    assert all(head_epoch[name] for name in head_names)
    # the head epoch keeps the backbone's weights and batch-norm statistics; fine-tuning moves them
    assert not any(head_epoch[name] for name in before if name not in head_names)
    assert any(both[name] for name in before if name not in head_names)
    assert all(p.requires_grad for p in model.parameters())  # trainable again after fit
    # each phase has its own one-cycle schedule: fine-tuning warms up anew from a low rate
    for cycle in recorder.rates[:8], recorder.rates[8:]:
        assert cycle[0] < 1e-3 and max(cycle) == pytest.approx(1e-2, rel=0.1)


def test_head_epochs_on_several_processes_tell_ddp_of_unused_parameters():
    assert lightning_strategy("auto", 1, head_epochs=1) == "auto"
    assert lightning_strategy("ddp", 4, head_epochs=0) == "ddp"
    assert lightning_strategy("auto", 2, head_epochs=1) == "ddp_find_unused_parameters_true"
    spawn = lightning_strategy("ddp_spawn", 2, head_epochs=1)
    assert spawn == "ddp_spawn_find_unused_parameters_true"


def test_frozen_batch_norms_keep_their_statistics():
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2))
    model[0].requires_grad_(False)
    model.eval()
    train_unfrozen_batch_norms(model)
    assert [m.training for m in model] == [False, True]
    before = model[0].running_mean.clone()
    model(torch.randn(4, 2, 3, 3) + 5)
    assert torch.equal(model[0].running_mean, before)
    assert not torch.equal(model[1].running_mean, torch.zeros(2))


def test_lp_ft_keeps_a_fine_tuned_epoch_and_early_stopping_waits_for_one(tmp_path):
    """With a monitor, a saturated validation AUC over the head epochs stopped the run and kept
    a head-only epoch: a "finetune" run whose backbone was the pretrained file, unchanged."""
    weights = write_backbone_weights(tmp_path / "pneumolab_cnn_small.safetensors", seed=0)
    settings = {"pretrained": True, "weights": weights, "monitor": "val_auc"}
    config = TrainConfig(
        **(TINY_TRAINING | settings), epochs=3, head_epochs=2, early_stopping_patience=1
    )
    run = train(write_synthetic_dataset(tmp_path / "data"), tmp_path / "run", config)
    assert len(run.history.read_text().splitlines()) == 1 + 3  # header, then every epoch
    assert run.read_meta().best_epoch == 2  # the fine-tuning epoch, 0-based
