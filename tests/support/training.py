"""Tiny synthetic training data and a fast recipe, shared by the training tests."""

from __future__ import annotations

import numpy as np

# Small and fast: no augmentation (the synthetic classes are position patterns a flip would mix up),
# the tiny architecture, a constant learning rate.
FAST_FLAGS = [
    "--arch",
    "resnet_fer_tiny",
    "--batch-size",
    "32",
    "--lr",
    "0.01",
    "--lr-scheduler",
    "none",
    "--hflip",
    "0",
    "--shift",
    "0",
    "--scale",
    "0",
    "--rotate",
    "0",
    "--brightness",
    "0",
    "--contrast",
    "0",
    "--erase",
    "0",
    "--label-smoothing",
    "0",
    "--no-progress",
    "--workers",
    "1",
]


def synthetic_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """Class k: background brightness rising with k plus a white 16x16 square in grid cell k."""
    img = rng.integers(0, 40, size=(48, 48)) + 25 * label
    r, c = divmod(label, 3)
    img[r * 16 : r * 16 + 16, c * 16 : c * 16 + 16] = 255
    return img.clip(0, 255).astype(np.uint8)
