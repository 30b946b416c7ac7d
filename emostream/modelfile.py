"""The emotion model file: a self-describing ``torch.export`` program (``.pt2``).

Training writes it (:func:`save_model`), the classifier reads it (:func:`load_model`) with torch
alone -- no model class, no torchvision. Besides the graph and weights it carries, as the extra file
``emostream.json``, a :class:`~emostream.modelinfo.ModelInfo`: class names, input size, normalisation, calibration
temperature (one per test-time augmentation), training-data hash and metrics.

Input contract: float32 tensor (N, 1, H, W) holding ``(pixel / 255 - mean) / std`` of grayscale
face crops; output: logits (N, len(class_names)). Calibrated probabilities are
``softmax(logits / info.temperature_for(tta))``. The batch dimension is dynamic.

``python -m training export`` writes the same model as ONNX (float32 or int8) with the same ModelInfo
(:mod:`emostream.onnxmodel`); :func:`load_model` loads either.

Test-time augmentation (:data:`emostream.modelinfo.TTA_MODES`, :func:`forward_with_tta`) is a way of serving a file, not
part of it: the classifier (``classifier.tta``) and ``python -m training evaluate --tta`` share it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emostream.modelinfo import INFO_FILE, ModelFileError, ModelInfo, check_tta
from emostream.onnxmodel import load_onnx_model

MAX_BATCH = 4096
#: How far ``multicrop`` shifts each copy, as a fraction of the face's side (:data:`emostream.modelinfo.TtaMode`).
MULTICROP_SHIFT = 1 / 16


def save_model(module: Any, info: ModelInfo, path: str | Path) -> Path:
    """Export ``module`` (eval mode, CPU, float32) with a dynamic batch dimension and ``info``."""
    import torch

    if not isinstance(module, torch.fx.GraphModule):  # a model file's graph, loaded, is eval-mode and refuses eval()
        module = module.eval()
    module = module.float().cpu()
    h, w = info.input_size
    example = torch.zeros(2, 1, h, w)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path, extra_files={INFO_FILE: info.to_json()})
    return path


@contextlib.contextmanager
def _torch_quiet() -> Iterator[None]:
    """No warnings or log lines from torch while a model file loads: for a file that is not a model,
    ``torch.export.load`` logs its own traceback (a dozen lines) before raising, and the error we raise
    says it in one line; for one that is, the messages are about torch's internals, not the user's file."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def load_model(path: str | Path, device: str = "cpu") -> tuple[Any, ModelInfo]:
    """Load a model file; returns ``(module, info)``. Raises ModelFileError for anything else.

    An ``.onnx`` file (``python -m training export``) loads as an :class:`emostream.onnxmodel.OnnxModule`
    on onnxruntime's CPU provider with torch's thread count, called like the torch module.
    """
    import torch

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        if device != "cpu":
            raise ModelFileError(f"{path}: an .onnx model file runs on the CPU (onnxruntime), not on {device}")
        return load_onnx_model(path, threads=torch.get_num_threads())
    program, info = load_program(path)
    return program.module().to(device), info


def load_program(path: str | Path) -> tuple[Any, ModelInfo]:
    """A ``.pt2`` model file's ``torch.export`` program and its info, for what compiles the program itself
    (OpenVINO's float re-scorer, classifier/runtimes.py); ModelFileError for anything else."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):  # a .pt2 is a zip archive: anything else never reaches torch
        raise ModelFileError(f"{path} is not an emostream model file (a .pt2 archive): it is not a zip archive")
    extra = {INFO_FILE: ""}
    try:
        with _torch_quiet():
            program = torch.export.load(path, extra_files=extra)
    except Exception as exc:  # torch raises many types for a file that is not a .pt2 archive
        raise ModelFileError(f"{path} is not an emostream model file: {exc}") from exc
    if not extra[INFO_FILE]:
        raise ModelFileError(f"{path} has no {INFO_FILE}: not an emostream model file")
    try:
        info = ModelInfo.from_json(extra[INFO_FILE])
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    return program, info


def tta_views(x: Any, tta: str) -> list[Any]:
    """The input batches whose logits ``tta`` averages (the first is ``x`` itself)."""
    import torch
    import torch.nn.functional as F

    if check_tta(tta) == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(-1)]
    h, w = x.shape[-2:]
    dy, dx = max(1, round(h * MULTICROP_SHIFT)), max(1, round(w * MULTICROP_SHIFT))
    padded = F.pad(x, (dx, dx, dy, dy), mode="replicate")
    views = [x]
    for oy, ox in ((0, 0), (0, 2 * dx), (2 * dy, 0), (2 * dy, 2 * dx)):  # the four diagonal shifts
        views.append(padded[..., oy : oy + h, ox : ox + w])
    views += [v.flip(-1) for v in views]
    return [torch.as_tensor(v) for v in views]


def forward_with_tta(module: Any, x: Any, tta: str = "none") -> Any:
    """Logits of ``module`` for the input batch ``x`` (N, 1, H, W) under test-time augmentation ``tta``.

    The views of :func:`tta_views` run as one batch (several passes where that exceeds
    :data:`MAX_BATCH`) and their float32 logits are averaged; the caller's autocast applies.
    """
    if check_tta(tta) == "none":
        return module(x)
    import torch

    views = tta_views(x, tta)
    n = x.shape[0]
    per_pass = max(1, MAX_BATCH // max(n, 1))
    logits = []
    for start in range(0, len(views), per_pass):
        out = module(torch.cat(views[start : start + per_pass])).float()
        logits.extend(out.split(n))
    return torch.stack(logits).mean(0)
