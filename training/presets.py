"""Batch transforms, in the spirit of torchvision's references/classification/presets.py.

They take a whole uint8 batch (B, 1, H, W) and return the normalised float batch the model sees:
``(pixel / 255 - mean) / std``. Augmentation is vectorised over the batch (one affine_grid +
grid_sample, tensor masks for erasing) because on 2 CPU cores a per-sample Python pipeline costs more
than the training step itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Mean/std of FER2013 Training pixels / 255 (measured: 0.5077, 0.2550), rounded: stored in the model
# file, so serving normalises identically.
DEFAULT_MEAN = 0.508
DEFAULT_STD = 0.255


class EvalPreset:
    """uint8 -> normalised float32; no augmentation."""

    def __init__(self, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD) -> None:
        self.mean, self.std = mean, std

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std


class TrainPreset(EvalPreset):
    """Random affine (shift, scale, rotation, horizontal flip), brightness/contrast, random erasing."""

    def __init__(
        self,
        mean: float = DEFAULT_MEAN,
        std: float = DEFAULT_STD,
        hflip: float = 0.5,
        shift: float = 0.1,
        scale: float = 0.1,
        rotate: float = 10.0,
        brightness: float = 0.2,
        contrast: float = 0.2,
        erase: float = 0.25,
    ) -> None:
        super().__init__(mean, std)
        self.hflip, self.shift, self.scale, self.rotate = hflip, shift, scale, rotate
        self.brightness, self.contrast, self.erase = brightness, contrast, erase

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = images.shape[0]
        x = images.float() / 255.0
        g = generator

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(b, generator=g) * (hi - lo) + lo

        if self.shift or self.scale or self.rotate or self.hflip:
            angle = uniform(-self.rotate, self.rotate) * (math.pi / 180.0)
            # affine_grid maps output coords to input coords: zooming in by s means sampling 1/s.
            inv_scale = 1.0 / uniform(1.0 - self.scale, 1.0 + self.scale)
            flip = torch.where(torch.rand(b, generator=g) < self.hflip, -1.0, 1.0)
            cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
            theta = torch.stack(
                [
                    torch.stack([cos * flip, -sin, uniform(-self.shift, self.shift) * 2], 1),
                    torch.stack([sin * flip, cos, uniform(-self.shift, self.shift) * 2], 1),
                ],
                1,
            )
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            # border padding: a shifted face gets its edge pixels repeated, not a black frame that
            # never occurs in real detector crops.
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

        if self.brightness or self.contrast:
            c = uniform(1.0 - self.contrast, 1.0 + self.contrast).view(b, 1, 1, 1)
            br = uniform(-self.brightness, self.brightness).view(b, 1, 1, 1) * 0.5
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * c + mean + br).clamp_(0.0, 1.0)

        x = (x - self.mean) / self.std

        if self.erase:
            h, w = x.shape[-2:]
            # One rectangle per erased image, 2-20% of the area, aspect 0.3-3.3 (RandomErasing defaults).
            area = uniform(0.02, 0.2) * h * w
            aspect = torch.exp(uniform(math.log(0.3), math.log(3.3)))
            eh = (area * aspect).sqrt().clamp(1, h)
            ew = (area / aspect).sqrt().clamp(1, w)
            top = torch.rand(b, generator=g) * (h - eh)
            left = torch.rand(b, generator=g) * (w - ew)
            rows = torch.arange(h).view(1, h, 1)
            cols = torch.arange(w).view(1, 1, w)
            inside = (
                (rows >= top.view(b, 1, 1))
                & (rows < (top + eh).view(b, 1, 1))
                & (cols >= left.view(b, 1, 1))
                & (cols < (left + ew).view(b, 1, 1))
            )
            chosen = (torch.rand(b, generator=g) < self.erase).view(b, 1, 1)
            noise = torch.randn(x.shape, generator=g)
            x = torch.where((inside & chosen).unsqueeze(1), noise, x)
        return x
