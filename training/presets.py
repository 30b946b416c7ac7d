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
#: The layouts a batch (and the model's weights) can train in, by their ``--memory-format`` names.
MEMORY_FORMATS = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}


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


class MixupCutmix:
    """Batch-level mixup (Zhang et al.) or CutMix (Yun et al.), as torchvision's v2.MixUp/CutMix.

    Each call picks one of the enabled methods at random (like the reference recipe's
    ``RandomChoice``), draws one ``lam ~ Beta(alpha, alpha)`` for the batch and pairs every image with
    the batch rolled by one. Returns the mixed images and soft targets ``lam * onehot(y) + (1 - lam) *
    onehot(y_rolled)``; for CutMix ``lam`` is the exact pixel share left after clipping the box.
    ``prob`` is the chance that a batch is mixed at all; an unmixed batch gets one-hot targets.
    """

    def __init__(
        self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup and cutmix alphas must be >= 0")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mix probability {prob} is not in [0, 1]")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha, self.prob = mixup_alpha, cutmix_alpha, prob

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Class indices (N,), or target distributions (N, classes) that are mixed the same way.
        target = labels.to(images.dtype) if labels.ndim == 2 else F.one_hot(labels, self.num_classes).to(images.dtype)
        g = generator
        if not self.enabled or float(torch.rand((), generator=g)) >= self.prob:
            return images, target
        methods = [(name, a) for name, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a > 0]
        name, alpha = methods[int(torch.randint(len(methods), (), generator=g))]
        lam = _beta_sample(alpha, g)
        partner_images, partner_target = images.roll(1, 0), target.roll(1, 0)
        if name == "mixup":
            mixed = images * lam + partner_images * (1.0 - lam)
        else:
            h, w = images.shape[-2:]
            cut_h, cut_w = int(h * math.sqrt(1.0 - lam)), int(w * math.sqrt(1.0 - lam))
            cy, cx = int(torch.randint(h, (), generator=g)), int(torch.randint(w, (), generator=g))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            mixed = images.clone()
            mixed[..., y0:y1, x0:x1] = partner_images[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        return mixed, target * lam + partner_target * (1.0 - lam)


def _beta_sample(alpha: float, generator: torch.Generator | None) -> float:
    """Beta(alpha, alpha) by inverse CDF of a uniform drawn from ``generator``: reproducible on resume
    (torch's Beta/Gamma samplers take no generator)."""
    from scipy.special import betaincinv

    return float(betaincinv(alpha, alpha, float(torch.rand((), generator=generator, dtype=torch.float64))))
