"""Quantisation-aware training (training/qat.py): the rounding is onnxruntime's int8 recipe, it trains, and
the model comes back plain."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization.quant_utils import quantize_data
from torch import nn

from training import qat
from training.models import build_model


def test_weights_round_per_output_channel_exactly_as_onnxruntimes_int8_with_reduce_range() -> None:
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7).view(-1, 1, 1, 1)
    rounded = qat.fake_quant_weight(weight)
    for channel in range(6):
        zero_point, scale, q = quantize_data(weight[channel].flatten().numpy(), onnx.TensorProto.INT8, True, True)
        expected = (q.astype(np.float32) - zero_point) * scale
        np.testing.assert_allclose(rounded[channel].flatten().numpy(), expected, rtol=0, atol=1e-6)
        assert len(np.unique(q)) <= 2 * qat.WEIGHT_STEPS + 1


def test_activations_round_to_onnxruntimes_uint8_grid_over_a_range_widened_to_hold_zero() -> None:
    x = torch.linspace(-3.0, 9.0, 1001)
    low, high = 0.5, 8.0  # a range without 0: widened to [0, 8]
    rounded = qat.fake_quant_activation(x, low, high)
    zero_point, scale, q = quantize_data(
        x.numpy(), onnx.TensorProto.UINT8, False, rmin_override=np.float32(low), rmax_override=np.float32(high)
    )
    np.testing.assert_allclose(rounded.numpy(), (q.astype(np.float32) - zero_point) * scale, rtol=0, atol=1e-5)
    assert rounded.min() == 0.0 and rounded.max() == pytest.approx(8.0)  # clamped to the range's ends
    assert float(qat.fake_quant_activation(torch.zeros(3), -1.0, 2.0).abs().max()) == 0.0  # 0 is exact


def test_gradients_pass_the_rounding_unchanged() -> None:
    weight = torch.randn(3, 2, 3, 3, requires_grad=True)
    qat.fake_quant_weight(weight).sum().backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.ones_like(weight))
    x = torch.randn(10, requires_grad=True)
    qat.fake_quant_activation(x, -1.0, 1.0).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones_like(x))


def test_attach_rounds_what_the_int8_graph_rounds_learns_ranges_in_training_and_detach_gives_the_plain_model_back() -> (
    None
):
    torch.manual_seed(0)
    model = build_model("resnet_fer_tiny", 7, 0.0)
    plain_keys = set(model.state_dict())
    x = torch.randn(8, 1, 48, 48)
    rounded = qat.attach(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert type(convs[0]) is nn.Conv2d and all(type(m) is qat.QatConv2d for m in convs[1:])  # the stem's stays
    assert type(model.stem) is qat.QatStem and all(type(b) is qat.QatBasicBlock for b in model.layers)
    assert rounded == 1 + len(model.layers) + len(convs) - 1
    ranges = [n for n, _ in model.named_buffers() if n.rsplit(".", 1)[-1].startswith(qat.RANGE)]
    # Per block: after the first ReLU, the second convolution, the shortcut where it has one, the output.
    with_shortcut = sum(not isinstance(b.shortcut, nn.Identity) for b in model.layers)
    assert len(ranges) == 1 + 3 * len(model.layers) + with_shortcut
    with torch.no_grad():
        model.eval()
        unrounded = model(x)  # no range seen yet: only the weights round
        model.train()
        model(x)  # a training batch sets every range
        model.eval()
        seen = {n: b.clone() for n, b in model.named_buffers() if n in ranges}
        assert not any(torch.isnan(r).any() for r in seen.values())
        after = model(x)
        model(x * 100)  # eval mode: the ranges hold still
    assert all(torch.equal(b, seen[n]) for n, b in model.named_buffers() if n in seen)
    assert not torch.equal(after, unrounded) and torch.allclose(after, unrounded, atol=0.5)
    state = model.state_dict()
    assert set(state) == plain_keys | set(ranges)  # checkpoints keep the ranges, ...
    qat.detach(model)
    assert set(qat.float_state(state)) == plain_keys == set(model.state_dict())  # ... the model file does not
    assert not any(type(m) in (qat.QatConv2d, qat.QatStem, qat.QatBasicBlock) for m in model.modules())
    fresh = build_model("resnet_fer_tiny", 7, 0.0).eval()
    fresh.load_state_dict(qat.float_state(state))
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))  # plain float32 again (the batch moved BatchNorm's statistics)


def test_only_resnet_fer_networks_are_rounded() -> None:
    with pytest.raises(ValueError, match="int8 graph of resnet_fer networks, not of Sequential"):
        qat.attach(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))


def test_unrounded_runs_the_plain_network_and_leaves_the_ranges_alone() -> None:
    torch.manual_seed(0)
    model = build_model("resnet_fer_tiny", 7, 0.0)
    qat.attach(model)
    x = torch.randn(4, 1, 48, 48)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    plain = build_model("resnet_fer_tiny", 7, 0.0).eval()
    plain.load_state_dict(qat.float_state(model.state_dict()))
    ranges = {n: b.clone() for n, b in model.named_buffers() if qat.RANGE in n}
    with torch.no_grad(), qat.unrounded(model):
        assert torch.equal(model(x), plain(x))
        model.train()
        model(x * 10)
        model.eval()
    assert all(torch.equal(b, ranges[n]) for n, b in model.named_buffers() if n in ranges)
    with torch.no_grad():
        assert not torch.equal(model(x), plain(x))  # rounding again after the block


def test_consistency_loss_is_the_kl_divergence_of_the_rounded_from_the_float_softmax() -> None:
    rounded = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    plain = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    p, q = plain.softmax(1), rounded.softmax(1)
    by_hand = float((p * (p.log() - q.log())).sum() / 2)
    assert float(qat.consistency_loss(rounded, plain)) == pytest.approx(by_hand, rel=1e-6)
    assert float(qat.consistency_loss(plain, plain)) == pytest.approx(0.0, abs=1e-7)
