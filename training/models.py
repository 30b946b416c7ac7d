"""Architectures for 48x48 grayscale emotion classification.

The default, ``resnet_fer``, is a ResNet (basic blocks, BatchNorm) sized for small faces: a cheap
3x3 stem at full 48x48 resolution, then residual stages at 24, 12 and 6 pixels. Unlike the ImageNet
stem (7x7 stride 2 + max-pool, which leaves 12x12 after two ops) it keeps fine detail around eyes and
mouth, and unlike a stride-1 ResNet18 it stays cheap enough to serve thousands of faces/s on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet v1, BN after each conv)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetFER(nn.Module):
    """Stem at input resolution, then one stride-2 stage per entry of ``widths``."""

    def __init__(
        self,
        num_classes: int = 7,
        stem: int = 32,
        widths: Sequence[int] = (64, 128, 256),
        depths: Sequence[int] = (2, 2, 2),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(True))
        layers: list[nn.Module] = []
        cin = stem
        for width, depth in zip(widths, depths, strict=True):
            for i in range(depth):
                layers.append(BasicBlock(cin, width, stride=2 if i == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, BasicBlock):
                # Zero-init the last BN of each block: every block starts as identity (Goyal et al.),
                # which trains a fresh ResNet faster and more stably.
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def _torchvision_resnet18(num_classes: int, dropout: float) -> nn.Module:
    """torchvision's ResNet18 with a 1-channel stem (ImageNet layout: 7x7/2 conv + max-pool)."""
    from training.torchvision_compat import import_torchvision

    tv = import_torchvision()
    model = tv.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, num_classes))
    return model


ARCHS: dict[str, Callable[[int, float], nn.Module]] = {
    # The shipped architecture. Its cost per training step and served faces/s, and resnet_fer_wide's
    # against it: docs/benchmarks.md, "Measurements behind defaults and constants".
    "resnet_fer": lambda n, d: ResNetFER(n, 24, (48, 96, 192), (2, 2, 2), d),
    # Wider channels, more parameters and compute than resnet_fer.
    "resnet_fer_wide": lambda n, d: ResNetFER(n, 32, (64, 128, 256), (2, 2, 2), d),
    "resnet_fer_tiny": lambda n, d: ResNetFER(n, 16, (32, 64, 128), (1, 1, 1), d),
    "resnet18": _torchvision_resnet18,
}


def build_model(arch: str, num_classes: int = 7, dropout: float = 0.3) -> nn.Module:
    """Instantiate an architecture by name (see ``ARCHS``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch](num_classes, dropout)
