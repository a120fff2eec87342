"""The scope gate's descriptor comes from the same forward pass as the classifier's features."""

import torch

from pneumolab.models.registry import create_classifier
from pneumolab.models.scored import ScoredModel


def test_timm_backbones_describe_inputs_by_their_stage_at_one_sixteenth() -> None:
    model = create_classifier("mobilenetv2_100", pretrained=False, num_classes=1).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        pooled, scope = model.features_and_scope(x)
        assert torch.allclose(pooled, model.features(x), atol=1e-5)
    assert model.backbone.feature_info[model.scope_stage]["reduction"] == 16
    assert scope.shape == (2, 96)  # MobileNetV2's blocks.4


def test_the_scope_descriptor_alone_stops_early_and_matches_the_full_pass() -> None:
    model = create_classifier("mobilenetv2_100", pretrained=False, num_classes=1).eval()
    reached: list[str] = []
    last_block = model.backbone.blocks[-1]
    last_block.register_forward_hook(lambda *_: reached.append("last block"))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        alone = model.scope_features(x)
        assert reached == []  # blocks.5 and blocks.6 (1/32) never ran
        full = model.features_and_scope(x)[1]
    assert reached == ["last block"]
    assert torch.allclose(alone, full, atol=1e-6)


def test_backbones_without_stages_fall_back_to_the_pooled_features() -> None:
    model = create_classifier("pneumolab_cnn_small", pretrained=False, num_classes=1).eval()
    assert model.scope_stage is None
    with torch.no_grad():
        x = torch.rand(2, 1, 32, 32)
        pooled, scope = model.features_and_scope(x)
        assert torch.equal(model.scope_features(x), scope)
    assert torch.equal(pooled, scope)


def test_scored_model_reads_the_scope_descriptor() -> None:
    model = create_classifier("mobilenetv2_100", pretrained=False, num_classes=1).eval()
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            seen.append(features)
            return features.sum(dim=1)

    with torch.no_grad():
        probability, score = ScoredModel(model, Recorder())(torch.rand(3, 1, 64, 64))
    assert probability.shape == score.shape == (3,)
    assert seen[0].shape == (3, 96)
