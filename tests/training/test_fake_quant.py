"""training/fake_quant.py: activations rounded as the int8 graph rounds them, in training forwards only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.fake_quant import LEVELS, ActivationRange, add_activation_fake_quant, rounded_modules
from training.models import BasicBlock, ResNetFER, build_model


def test_a_range_rounds_to_its_levels_and_a_nonnegative_range_clamps_at_zero() -> None:
    x = torch.linspace(-1.0, 3.0, 1001)
    signed = ActivationRange(nonnegative=False)
    signed.observe(x)
    rounded = signed.round(x)
    step = 4.0 / (LEVELS - 1)
    assert rounded.unique().numel() <= LEVELS and rounded.unique().numel() > LEVELS - 10
    assert (rounded - x).abs().max() <= step / 2 + 1e-5
    positive = ActivationRange(nonnegative=True)
    positive.observe(x)
    clamped = positive.round(x)
    assert clamped.min() == 0 and (clamped[x <= 0] == 0).all()  # a fused ReLU's output: nothing below zero
    assert (clamped[x > 0] - x[x > 0]).abs().max() <= 3.0 / (LEVELS - 1) / 2 + 1e-5


def test_a_range_follows_its_batches_by_a_moving_average() -> None:
    r = ActivationRange(nonnegative=False)
    r.observe(torch.tensor([-1.0, 1.0]))
    r.observe(torch.tensor([-3.0, 11.0]))
    assert r.low is not None and -1.0 > r.low > -3.0 and 1.0 < r.high < 11.0


def test_training_forwards_are_rounded_and_evaluation_is_not() -> None:
    torch.manual_seed(0)
    model = build_model("resnet_fer", 7, 0.0).train()
    assert isinstance(model, ResNetFER)
    x = torch.randn(8, 1, 48, 48)
    plain_train = model(x)  # training mode: BatchNorm uses the batch's statistics, so forwards repeat exactly
    handles = add_activation_fake_quant(model)
    rounded_train = model(x)
    assert not torch.allclose(rounded_train, plain_train, atol=1e-6)
    assert (rounded_train - plain_train).abs().max() < 0.5 * plain_train.abs().max()  # rounding, not another net
    rounded_train.sum().backward()  # the straight-through gradient reaches the first layer
    stem_conv = model.stem[0]
    assert isinstance(stem_conv, nn.Conv2d)
    assert stem_conv.weight.grad is not None and stem_conv.weight.grad.abs().sum() > 0
    model.eval()
    hooked_eval = model(x)
    for handle in handles:
        handle.remove()
    assert torch.equal(hooked_eval, model(x))  # evaluation, selection and export see float32
    assert torch.equal(model.train()(x), plain_train)


def test_the_rounded_outputs_are_the_int8_graphs() -> None:
    model = build_model("resnet_fer", 7, 0.0)
    assert isinstance(model, ResNetFER)
    found = rounded_modules(model)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    shortcuts = [b for b in blocks if isinstance(b.shortcut, nn.Sequential)]
    assert len(found) == 1 + 3 * len(blocks) + len(shortcuts)
    relu_after = {id(m) for m, nonnegative in found if nonnegative}
    assert id(model.stem[1]) in relu_after and all(id(b.bn1) in relu_after and id(b) in relu_after for b in blocks)
    assert all(id(b.bn2) not in relu_after for b in blocks)


def test_other_architectures_are_refused() -> None:
    with pytest.raises(ValueError, match="resnet_fer"):
        rounded_modules(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
