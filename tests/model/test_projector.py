"""The published MultiMeditron projector (`projector_type: mlp3x_gelu`): 3 linear layers with GELU between,
in -> in -> out -> out, weights N(0, 0.02) and zero biases; checked against hand-computed values."""
from __future__ import annotations

import math

import torch
from torch import nn

from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.projector import build_projector


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_mlp3x_gelu_shapes_and_hand_computed_output():
    projector = build_projector("mlp3x_gelu", 3, 2)
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 3), (3, 2), (2, 2)]
    assert sum(isinstance(m, nn.GELU) for m in projector) == 2
    with torch.no_grad():
        for layer in linears:
            layer.weight.fill_(1.0)
            layer.bias.zero_()
        # x = (1, 0, 0): layer 1 -> (1, 1, 1) -> gelu(1); layer 2 -> 3 gelu(1) each -> gelu; layer 3 sums the two.
        out = projector(torch.tensor([[1.0, 0.0, 0.0]]))
    g1 = _gelu(1.0)
    expected = 2 * _gelu(3 * g1)
    torch.testing.assert_close(out, torch.tensor([[expected, expected]]), atol=1e-6, rtol=1e-6)


def test_mlp3x_gelu_init_is_normal_002_with_zero_bias():
    torch.manual_seed(0)
    projector = build_projector("mlp3x_gelu", 256, 128)
    for layer in (m for m in projector if isinstance(m, nn.Linear)):
        assert abs(layer.weight.std().item() - 0.02) < 0.001 and abs(layer.weight.mean().item()) < 0.001
        assert torch.count_nonzero(layer.bias) == 0


def test_negative_generalist_index_counts_from_the_end():
    experts = [{"id": "timm:vit_small_patch16_224", "tiny": True}] * 3
    assert MultiMeditronConfig(experts=experts, fusion="avg", generalist_index=-1).generalist_index == 2
    assert MultiMeditronConfig(experts=experts, fusion="avg", generalist_index=-3).generalist_index == 0
    try:
        MultiMeditronConfig(experts=experts, fusion="avg", generalist_index=-4)
    except ValueError as error:
        assert "generalist_index: -4 is outside the 3 experts" in str(error)
    else:
        raise AssertionError("-4 of 3 experts was accepted")
