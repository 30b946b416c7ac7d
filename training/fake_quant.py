"""Quantisation-aware fine-tuning of activations (``--fake-quant``).

The classifier serves an int8 copy of the model (``python -m training export --quantize int8``): every
convolution's output, and so every residual stream, is rounded to one of 256 levels per tensor. A model
whose top two classes are often close (distilled students are) then changes its top class on more faces
than the parity bar allows. Fine-tuning with the same rounding simulated in the forward pass (a straight-
through estimator passes the gradient) teaches the weights to keep decisions clear of that rounding.

The rounded tensors are where the int8 graph rounds them: each BatchNorm's output (the folded
convolution's output) and each residual block's output. A BatchNorm followed by a ReLU is rounded on
[0, max], as the fused convolution + ReLU is in the int8 graph; the others on [min, max]. Ranges follow
the batches' minimum and maximum with a moving average, as a calibrator would see them. Only training
forwards are rounded: evaluation, selection and the exported model stay float32.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models import BasicBlock, ResNetFER

LEVELS = 256
#: Moving-average weight of each batch's minimum and maximum.
RANGE_MOMENTUM = 0.01


class ActivationRange:
    """The moving [min, max] of one tensor, and the rounding to ``LEVELS`` levels over it."""

    def __init__(self, nonnegative: bool) -> None:
        self.nonnegative = nonnegative
        self.low: float | None = None
        self.high = 0.0

    def observe(self, x: torch.Tensor) -> None:
        low = 0.0 if self.nonnegative else min(float(x.detach().min()), 0.0)
        high = max(float(x.detach().max()), 0.0)
        if self.low is None:
            self.low, self.high = low, high
        else:
            self.low += RANGE_MOMENTUM * (low - self.low)
            self.high += RANGE_MOMENTUM * (high - self.high)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        assert self.low is not None
        scale = max((self.high - self.low) / (LEVELS - 1), 1e-8)
        zero_point = int(round(-self.low / scale))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, LEVELS - 1)

    def __call__(self, module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        self.observe(output)
        return self.round(output)


def rounded_modules(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """``(module, followed by a ReLU)`` for every output the int8 graph rounds (see the module docstring)."""
    if not isinstance(model, ResNetFER):
        raise ValueError(f"--fake-quant knows resnet_fer's layout, not {type(model).__name__}")
    found: list[tuple[nn.Module, bool]] = [(model.stem[1], True)]
    for block in model.modules():
        if isinstance(block, BasicBlock):
            found += [(block.bn1, True), (block.bn2, False), (block, True)]
            if isinstance(block.shortcut, nn.Sequential):
                found.append((block.shortcut[1], False))
    return found


def add_activation_fake_quant(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Round ``model``'s activations as int8 serving does, in training forwards only; the handles remove it."""
    return [
        module.register_forward_hook(ActivationRange(nonnegative)) for module, nonnegative in rounded_modules(model)
    ]
