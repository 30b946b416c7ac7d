"""Quantisation-aware fine-tuning (``python -m training ... --qat``) for the int8 serving recipe.

The int8 file (:mod:`training.export`) rounds every convolution's weights but the first to a per-channel
symmetric grid of 64 steps a side (onnxruntime's int8 with ``reduce_range``: the fast kernel on CPUs
without VNNI) and the activations between them to 256 uint8 steps per tensor. Trained in float32 alone,
the network has never seen that rounding, and near-tied faces change class in int8. ``attach`` makes the
model's forward round the same tensors the same way while training (fake quantisation; gradients pass
the rounding unchanged, the straight-through estimator), so training moves the weights to where the
rounding costs least. The weights themselves stay float32: the model file and its state dict are
unchanged in form, ``detach`` restores the plain modules, and the int8 file is made from the result by
the usual export.

Rounded, as in the exported graph: the weights of every ``Conv2d`` but the first (the recipe keeps the
convolution reading the input in float32; BatchNorm folds into a convolution's output channels, which
commutes with a per-channel grid, so the unfolded weights are rounded), the inputs of those
convolutions, and the output of every ``BatchNorm2d`` but the first's (the two inputs of each residual
sum). Activation ranges follow a moving average of each batch's min and max while training and hold
still in eval mode; they are buffers, kept in checkpoints (:func:`float_state` drops them).
"""

from __future__ import annotations

import torch
from torch import nn

#: onnxruntime's int8 weights with reduce_range, symmetric: integers in [-64, 64], scale max|w| / 64.
WEIGHT_STEPS = 64
#: uint8 activations: 256 levels over a range that holds 0 (the zero point is exact).
ACTIVATION_LEVELS = 255
#: Weight of each new batch in the moving min/max (torch.ao's MovingAverageMinMaxObserver uses 0.01).
RANGE_MOMENTUM = 0.01


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    return x + (rounded - x).detach()


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, ...) on the per-output-channel symmetric grid of :data:`WEIGHT_STEPS` steps a side."""
    absmax = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    scale = (absmax / WEIGHT_STEPS).view(-1, *([1] * (weight.ndim - 1)))
    rounded = torch.clamp(torch.round(weight / scale), -WEIGHT_STEPS, WEIGHT_STEPS) * scale
    return _straight_through(weight, rounded)


def fake_quant_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x`` on the uint8 grid over [low, high] widened to hold 0, values outside clamped to its ends."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low <= 0:
        return x
    scale = (high - low) / ACTIVATION_LEVELS
    zero_point = round(-low / scale)
    q = torch.clamp(torch.round(x.detach() / scale) + zero_point, 0, ACTIVATION_LEVELS)
    return _straight_through(x, (q - zero_point) * scale)


#: The buffer of each rounding module's activation range, (2,) low and high; NaN before the first batch.
RANGE = "range"


def _init_range(module: nn.Module) -> None:
    # Persistent: checkpoints keep the ranges, so a resumed run and the weight average go on from them.
    module.register_buffer(RANGE, torch.full((2,), float("nan")))


def _observe_and_round(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Update ``module``'s moving min/max of ``x`` while training (frozen in eval mode); ``x`` rounded to it."""
    observed = module.get_buffer(RANGE)
    if module.training:
        seen = torch.stack([x.detach().min(), x.detach().max()]).float()
        if torch.isnan(observed).any():
            observed.copy_(seen)
        else:
            observed.lerp_(seen, RANGE_MOMENTUM)
    if torch.isnan(observed).any():  # never trained: nothing to round to yet
        return x
    low, high = observed.tolist()
    return fake_quant_activation(x, low, high)


class QatConv2d(nn.Conv2d):
    """A Conv2d that rounds its input and its weights as the int8 file does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(_observe_and_round(self, x), fake_quant_weight(self.weight), self.bias)


class QatBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose output (a folded convolution's output in the int8 file) is rounded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _observe_and_round(self, super().forward(x))


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QatConv2d, nn.BatchNorm2d: QatBatchNorm2d}
_PLAIN = {qat: plain for plain, qat in _SWAPS.items()}


def attach(model: nn.Module) -> int:
    """Round ``model``'s weights and activations as the int8 file does (see the module docstring), in place;
    returns how many modules now round. The first Conv2d and the first BatchNorm2d stay as they are."""
    firsts: set[type[nn.Module]] = set()
    swapped = 0
    for module in model.modules():
        plain = type(module)
        if plain not in _SWAPS:
            continue
        if plain not in firsts:
            firsts.add(plain)
            continue
        module.__class__ = _SWAPS[plain]
        _init_range(module)
        swapped += 1
    if not swapped:
        raise ValueError(f"{type(model).__name__} has no second Conv2d or BatchNorm2d to train for int8")
    return swapped


def detach(model: nn.Module) -> None:
    """Plain modules again (the weights as trained), so the model exports and serves in float32."""
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            del module._buffers[RANGE]
            module.__class__ = plain


def float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of an attached model without its activation ranges: what the plain model loads."""
    return {key: value for key, value in state.items() if key.rsplit(".", 1)[-1] != RANGE}
