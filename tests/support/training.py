"""Tiny synthetic training data (FER2013 CSV rows, image folders), a fast recipe and the ``python -m
training`` CLI, shared by the training tests.

Synthetic data: class k is a noisy background whose brightness rises with k plus a white 16x16 square
in cell k of a 3x3 grid, so a tiny CNN learns it in two epochs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from emostream.wire import EMOTIONS
from support import REPO

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


PER_CLASS = {"Training": 40, "PublicTest": 14, "PrivateTest": 14}


def write_csv(path: Path, rows: list[tuple[object, str, str]], gz: bool = False) -> Path:
    text = "emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def synthetic_rows(seed: int = 0) -> list[tuple[object, str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for usage, n in PER_CLASS.items():
        for i in range(n * len(EMOTIONS)):
            label = i % len(EMOTIONS)
            rows.append((label, " ".join(map(str, synthetic_image(label, rng).ravel())), usage))
    return rows


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )


FOLDER_SPLIT_NAMES = {"Training": "train", "PublicTest": "Val", "PrivateTest": "TEST"}  # aliases, any case


# ---------------------------------------------------------------------------------------------
# Synthetic data and helpers
# ---------------------------------------------------------------------------------------------


def synthetic_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images uint8 (N, 48, 48), labels (N,)), classes interleaved."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in PER_CLASS.items():
        labels = np.arange(n * len(EMOTIONS)) % len(EMOTIONS)
        out[split] = (np.stack([synthetic_image(int(k), rng) for k in labels]), labels)
    return out


def csv_text(rows: list[tuple[object, str, str]]) -> str:
    return "emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)


def pixels(image: np.ndarray) -> str:
    return " ".join(map(str, image.ravel()))


def write_splits_csv(splits: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """``splits`` as a gzipped FER2013 CSV at ``path``."""
    rows = [
        (int(label), pixels(image), split)
        for split, (images, labels) in splits.items()
        for image, label in zip(images, labels, strict=True)
    ]
    with gzip.open(path, "wt") as fh:
        fh.write(csv_text(rows))
    return path


def write_folder(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], with_splits: bool = True) -> Path:
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            # Mixed-case class folders: names are matched case-insensitively.
            name = EMOTIONS[label].upper() if i % 2 else EMOTIONS[label].capitalize()
            folder = root / FOLDER_SPLIT_NAMES[split] / name if with_splits else root / EMOTIONS[label]
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"{split}_{i:04d}.png"), image)
    return root


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    """The same CLI entry point in this process (cheaper than a subprocess): (status, stdout JSON, stderr)."""
    from training.__main__ import main

    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    return status, (json.loads(captured.out) if status == 0 else {}), captured.err
