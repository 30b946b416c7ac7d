"""Small real model files for tests of model serving and live swaps: each a real ``torch.export`` program
in the model-file format, untrained, with one thing changed at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emostream.wire import EMOTIONS

#: The class a "happy" model file puts almost all its probability on, for every face.
FAVOURED = "happy"


def tiny_bn_net(seed: int = 0, width: int = 8) -> Any:
    """An untrained small CNN with a BatchNorm layer (convolution, BatchNorm, ReLU, pooling, linear), its
    weights drawn after ``torch.manual_seed(seed)``: the tiny model fixture's network and the weight-average
    tests' members."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, len(EMOTIONS)),
    )


def tiny_model_file(
    path: Path,
    seed: int = 0,
    class_names: list[str] | None = None,
    input_size: tuple[int, int] = (48, 48),
    favour: str | None = None,
    nan: bool = False,
) -> Path:
    """An untrained small CNN saved as a model file at ``path``.

    ``favour``: the last layer's bias for that class raised so far that every face gets it with a
    probability above 0.9 (tells its events apart from another model's at a glance); ``nan``: NaN
    weights in the last layer, so every score is NaN (a broken training run)."""
    import torch
    from torch import nn

    from emostream.modelfile import save_model
    from emostream.modelinfo import ModelInfo

    names = list(class_names or EMOTIONS)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, len(names)),
    )
    last = net[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        if favour is not None:
            last.bias[names.index(favour)] += 20.0
        if nan:
            last.weight.fill_(float("nan"))
    info = ModelInfo(arch=f"tiny-test-cnn-{seed}", class_names=names, input_size=input_size)
    return save_model(net, info, path)
