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

Rounded, as in the exported graph of a ``resnet_fer`` network (its QuantizeLinear nodes): the weights of
every convolution but the stem's (the recipe keeps the convolution reading the input in float32;
BatchNorm folds into a convolution's output channels, which commutes with a per-channel grid, so the
unfolded weights are rounded); the stem's output; in each residual block the first convolution's output
after its ReLU, the second's output and the shortcut's (the two terms of the sum), and the block's
output after its ReLU (the graph folds each ReLU into the rounding that follows it). Activation ranges
follow a moving average of each batch's min and max while training and hold still in eval mode; they
are buffers, kept in checkpoints (:func:`float_state` drops them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from training.models import BasicBlock, ResNetFER

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


#: The activation ranges' buffer names start with this (``float_state`` drops them).
RANGE = "qat_range"
_OUT = f"{RANGE}_out"
_MID = f"{RANGE}_mid"
_MAIN = f"{RANGE}_main"
_SHORTCUT = f"{RANGE}_shortcut"


def _add_range(module: nn.Module, name: str) -> None:
    # Persistent: checkpoints keep the ranges, so a resumed run and the weight average go on from them.
    module.register_buffer(name, torch.full((2,), float("nan")))


def _observe_and_round(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to ``module``'s range ``name``, a moving min/max of ``x`` while training, frozen in eval mode."""
    if not getattr(module, "rounding", True):
        return x
    observed = module.get_buffer(name)
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
    """A Conv2d whose weights are rounded as the int8 file's are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quant_weight(self.weight) if getattr(self, "rounding", True) else self.weight
        return self._conv_forward(x, weight, self.bias)


class QatStem(nn.Sequential):
    """The stem (float32 in the int8 file) with its output rounded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _observe_and_round(self, _OUT, super().forward(x))


class QatBasicBlock(BasicBlock):
    """A residual block rounding the tensors the int8 file rounds (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _observe_and_round(self, _MID, self.relu(self.bn1(self.conv1(x))))
        out = _observe_and_round(self, _MAIN, self.bn2(self.conv2(out)))
        shortcut = (
            x if isinstance(self.shortcut, nn.Identity) else _observe_and_round(self, _SHORTCUT, self.shortcut(x))
        )
        return _observe_and_round(self, _OUT, self.relu(out + shortcut))


def attach(model: nn.Module) -> int:
    """Round ``model``'s weights and activations as the int8 file does (see the module docstring), in place;
    returns how many modules now round. Only ``resnet_fer`` networks: the rounding follows their graph."""
    if not isinstance(model, ResNetFER):
        raise ValueError(f"--qat follows the int8 graph of resnet_fer networks, not of {type(model).__name__}")
    model.stem.__class__ = QatStem
    _add_range(model.stem, _OUT)
    swapped = 1
    for block in model.layers:
        block.__class__ = QatBasicBlock
        names = (_MID, _MAIN, _OUT) if isinstance(block.shortcut, nn.Identity) else (_MID, _MAIN, _SHORTCUT, _OUT)
        for name in names:
            _add_range(block, name)
        convs = [m for m in block.modules() if type(m) is nn.Conv2d]
        for conv in convs:
            conv.__class__ = QatConv2d
        swapped += 1 + len(convs)
    return swapped


@contextlib.contextmanager
def unrounded(model: nn.Module) -> Iterator[None]:
    """Within: ``model`` runs as the plain float32 network (no rounding, no range updates)."""
    modules = [m for m in model.modules() if isinstance(m, QatConv2d | QatStem | QatBasicBlock)]
    for module in modules:
        setattr(module, "rounding", False)  # noqa: B010 (an attribute nn.Module does not declare)
    try:
        yield
    finally:
        for module in modules:
            setattr(module, "rounding", True)  # noqa: B010


def consistency_loss(rounded_logits: torch.Tensor, float_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(float) || softmax(rounded)), batch mean, gradients into both: the same weights learn to
    give the same answer with and without the int8 file's rounding."""
    return F.kl_div(
        F.log_softmax(rounded_logits.float(), 1),
        F.log_softmax(float_logits.float(), 1),
        reduction="batchmean",
        log_target=True,
    )


def detach(model: nn.Module) -> None:
    """Plain modules again (the weights as trained), so the model exports and serves in float32."""
    for module in model.modules():
        plain = {QatStem: nn.Sequential, QatBasicBlock: BasicBlock, QatConv2d: nn.Conv2d}.get(type(module))
        if plain is None:
            continue
        for name in [n for n in module._buffers if n.startswith(RANGE)]:
            del module._buffers[name]
        module.__class__ = plain


def float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of an attached model without its activation ranges: what the plain model loads."""
    return {key: value for key, value in state.items() if not key.rsplit(".", 1)[-1].startswith(RANGE)}
