"""Run an emostream model file on uint8 images, the way the classifier serves it but in float32.

Shared by ``evaluate``, ``calibrate``, ``gradcam`` and ``export``: the model file is loaded with
:func:`emostream.modelfile.load_model` (torch alone, no model class), and images are normalised with
the mean/std stored in the file, so the numbers are those of the file, not of the training code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emostream.modelfile import forward_with_tta, load_model
from emostream.modelinfo import INFO_FILE, ModelFileError, ModelInfo
from emostream.onnxmodel import is_onnx


def shipped_model_path() -> Path:
    """The model the classifier serves by default (classifier/models/emotion.pt2)."""
    from classifier.settings import SHIPPED_MODEL

    return SHIPPED_MODEL


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def preprocess(images: torch.Tensor | np.ndarray, info: ModelInfo) -> torch.Tensor:
    """uint8 (N, H, W) or (N, 1, H, W) -> float32 (N, 1, h, w) = ``(pixel / 255 - mean) / std``.

    Resized (area) to the model's input size when it differs, as classifier.model does.
    """
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected uint8 images (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    x = (x.float() / 255.0 - info.mean) / info.std
    if tuple(x.shape[-2:]) != tuple(info.input_size):
        x = F.interpolate(x, size=tuple(info.input_size), mode="area")
    return x


@torch.inference_mode()
def predict_logits(
    module: torch.nn.Module,
    info: ModelInfo,
    images: torch.Tensor | np.ndarray,
    batch_size: int = 256,
    tta: str = "none",
) -> np.ndarray:
    """Raw logits (N, classes) in float32 (no autocast: the reference numbers), under test-time
    augmentation ``tta`` as the classifier serves it (:func:`emostream.modelfile.forward_with_tta`)."""
    n = len(images)
    out = [
        forward_with_tta(module, preprocess(images[i : i + batch_size], info), tta).float()
        for i in range(0, n, batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(info.class_names)), np.float32)


def load(path: str | Path | None = None) -> tuple[Any, ModelInfo, Path]:
    """``load_model`` of ``path`` (default: the shipped model) -> (module, info, path); an exported
    ``.onnx`` file is a clear error (``evaluate`` loads those itself, on the engine it is asked for)."""
    path = Path(path) if path else shipped_model_path()
    if is_onnx(path):
        raise ModelFileError(f"{path} is an ONNX export; this command needs the .pt2 model file it was exported from")
    module, info = load_model(path)
    # No .eval(): the exported graph is already the eval-mode graph (and refuses train/eval switches).
    return module, info, path


def rewrite_model_info(src: str | Path, info: ModelInfo, dst: str | Path) -> Path:
    """Write ``src``'s exported program to ``dst`` with a new ``emostream.json``; weights untouched.

    Why not save_model: re-exporting would retrace the graph; here the loaded program is saved as is,
    and the weights are compared with the source after writing (a mismatch is an error). Written to a
    temporary file and renamed, so ``dst`` may be ``src`` and is never left half-written.
    """
    src, dst = Path(src), Path(dst)
    program = torch.export.load(src, extra_files={INFO_FILE: ""})
    tmp = dst.with_name(dst.stem + ".tmp.pt2")  # torch.export.save insists on the .pt2 suffix
    torch.export.save(program, tmp, extra_files={INFO_FILE: info.to_json()})
    written = torch.export.load(tmp, extra_files={INFO_FILE: ""})
    before, after = program.state_dict, written.state_dict
    if before.keys() != after.keys() or any(not torch.equal(before[k], after[k]) for k in before):
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"rewriting {src} changed its weights; {dst} left unchanged")
    os.replace(tmp, dst)
    return dst
