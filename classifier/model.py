"""Serving the emotion model: load the model file, run batches on CUDA or CPU, return probabilities."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.runtimes import (
    Rescorer,
    check_runtime,
    near_tie_gap,
    near_tie_rescorer,
    one_torch_thread,
    rescore_near_ties,
    select_runtime,
)
from classifier.settings import SHIPPED_MODEL, ClassifierSettings
from emostream.cpu import cpu_info, thread_budget
from emostream.modelfile import forward_with_tta
from emostream.modelinfo import ModelFileError, ModelInfo, check_tta
from emostream.onnxmodel import is_onnx
from emostream.wire import EMOTIONS

log = logging.getLogger("classifier")


class ModelMismatchError(ModelFileError):
    """A valid model file that does not fit what the classifier serves; ``reason`` names the check
    (``class_names``, ``outputs``) for the live swap's refusal counter (classifier/swap.py)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(requested)


class EmotionModel:
    """Batched inference over uint8 grayscale crops.

    ``runtime`` (see classifier/runtimes.py): ``torch`` serves the ``.pt2`` -- CPU: channels-last, with
    bfloat16 autocast where the CPU has it in hardware (AMX, AVX-512 bf16); CUDA: pinned host memory,
    non-blocking copy, bfloat16 autocast. ``onnxruntime`` or ``openvino`` serves an ``.onnx`` file, or the
    int8 file beside the ``.pt2``, on the CPU with ``threads`` threads; ``auto`` times the candidates at start-up.
    Preprocessing (scale, normalise, resize if the crop size differs) is one vectorised op over the
    whole batch. ``tta="flip"`` averages each face's logits with its mirror image's (see emostream.modelfile).
    Serving an int8 file made from the ``.pt2``, the faces whose top two int8 logits are near ties go to the
    ``.pt2`` in float32 unless ``rescore_near_ties`` is False.
    ``path`` and ``version`` name the file that serves (an int8 file when that won), ``source`` the one given.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        device: str = "auto",
        bf16: bool | None = None,
        tta: str = "none",
        runtime: str = "torch",
        threads: int = 0,
        batch: int = 64,
        announce: bool = True,
        rescore_near_ties: bool = True,
    ) -> None:
        self.tta = check_tta(tta)  # before the model loads: a bad name fails at once
        check_runtime(runtime)
        self.source = Path(path) if path else SHIPPED_MODEL
        if is_onnx(self.source) and device == "auto":
            device = "cpu"  # the ONNX engines serve on the CPU
        self.device = pick_device(device)
        #: None: where bf16 runs in hardware (CUDA, AMX, AVX-512 bf16); emulated bf16 is slower than float32.
        use_bf16 = bf16 if bf16 is not None else self.device.type == "cuda" or cpu_info().native_bf16
        self.selection = select_runtime(self.source, runtime, self.device, use_bf16, threads, batch)
        self.runtime = self.selection.runtime
        #: An int8 file made from the ``.pt2`` hands its near ties (top two logits under this gap apart,
        #: where its rounding may change the top class) to the ``.pt2`` in float32; 0: none.
        self.near_tie_gap = near_tie_gap(self.runtime.info) if self.runtime.path != self.source else 0.0
        self._rescorer: Rescorer | None = None
        rescorer_note = ""
        if self.near_tie_gap > 0 and rescore_near_ties:
            self._rescorer, rescorer_note = near_tie_rescorer(self.source)
        self.bf16 = self.runtime.bf16
        self.path = self.runtime.path
        info = self.runtime.info
        self.info: ModelInfo = info
        if tuple(info.class_names) != EMOTIONS:
            # Events name every face's class from EMOTIONS: a model with other names, or another order,
            # would load and then have each of its events refused downstream.
            raise ModelMismatchError(
                f"{self.path}: the model's classes {list(info.class_names)} are not the event schema's "
                f"{list(EMOTIONS)} (in that order)",
                "class_names",
            )
        self.class_names = list(info.class_names)
        #: Fitted for the served recipe: flip's averaged logits have their own temperature.
        self.temperature = info.temperature_for(self.tta)
        #: First 12 hex digits of the served file's sha256: tells apart two models of the same arch.
        self.version = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        self._scale = 1.0 / (255.0 * info.std)
        self._shift = info.mean / info.std
        outputs = self.predict(np.zeros((1, *info.input_size), dtype=np.uint8)).shape[1]
        if outputs != len(self.class_names):
            names = len(self.class_names)
            raise ModelMismatchError(f"{self.path}: the model has {outputs} outputs for {names} class names", "outputs")
        # A live swap's candidate is not serving yet (and may be refused): its lines go to debug.
        level = logging.INFO if announce else logging.DEBUG
        log.log(
            level,
            "loaded %s (%s) on %s, bf16=%s, tta=%s, temperature %.3f%s",
            self.path.name,
            info.arch,
            self.device,
            self.bf16,
            tta,
            self.temperature,
            self._near_ties_note(rescorer_note),
        )
        log.log(level, "%s", self.selection.describe())

    @property
    def rescores_near_ties(self) -> bool:
        """Whether the faces an int8 file may misrank go to the ``.pt2`` in float32 (see ``near_tie_gap``)."""
        return self._rescorer is not None

    def _near_ties_note(self, rescorer_note: str) -> str:
        if self._rescorer is not None:
            why_not_openvino = f" ({rescorer_note})" if rescorer_note else ""
            return (
                f", near ties (top two logits under {self.near_tie_gap:g} apart) re-scored by {self.source.name} "
                f"in float32 on {self._rescorer.label}{why_not_openvino}"
            )
        if self.near_tie_gap > 0:
            return f", near ties (top two logits under {self.near_tie_gap:g} apart) kept as int8 ranks them"
        return ""

    def describe(self) -> str:
        """The log line naming what serves: ``serving FILE (version V, runtime R)``."""
        return f"serving {self.path} (version {self.version}, runtime {self.runtime.label})"

    @property
    def module(self) -> Any:
        """The torch module when torch serves (Grad-CAM, FLOP counts), else the ONNX engine's runtime."""
        return getattr(self.runtime, "module", self.runtime)

    def prepare(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 crops (N, H, W) as the model's float32 input (N, 1, H, W) on its device."""
        x = torch.from_numpy(np.ascontiguousarray(crops)).unsqueeze(1)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 batch (N, 1, H, W) as the model's input, on its device: scaled, normalised, resized to the
        model's input size if it differs."""
        x = x.float().mul_(self._scale).sub_(self._shift)
        if tuple(x.shape[-2:]) != tuple(self.info.input_size):
            x = torch.nn.functional.interpolate(x, size=self.info.input_size, mode="area")
        return x

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities from the served recipe's logits (its fitted temperature)."""
        return torch.softmax(logits.float() / self.temperature, dim=1)

    @torch.inference_mode()
    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, classes) as float32 for uint8 crops (N, H, W)."""
        if crops.shape[0] == 0:
            return np.empty((0, len(self.class_names)), dtype=np.float32)
        # Where an ONNX engine serves, torch only prepares the batch and the probabilities: on more than one
        # thread its OpenMP workers, spinning after each small op, take the CPU the engine's threads need.
        with one_torch_thread() if self.runtime.name != "torch" else contextlib.nullcontext():
            x = self.prepare(crops)
            logits = forward_with_tta(self.runtime, x, self.tta)  # the runtime applies bf16 autocast where it serves
            if self._rescorer is not None:
                rescorer = self._rescorer
                logits = rescore_near_ties(
                    logits, x, lambda near: forward_with_tta(rescorer, near, self.tta), self.near_tie_gap
                )
            return self.probabilities(logits).cpu().numpy()

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 32)) -> None:
        """Run a few batches so the first real frames do not pay one-off allocation costs."""
        h, w = self.info.input_size
        for n in batch_sizes:
            self.predict(np.zeros((n, h, w), dtype=np.uint8))


def serving_model(settings: ClassifierSettings, path: str | Path | None = None) -> EmotionModel:
    """The model ``python -m classifier`` serves from ``settings``; with ``path`` (a live swap's candidate,
    instead of ``settings.model``) the same device, precision, TTA and runtime choice, its log lines at debug."""
    return EmotionModel(
        path if path is not None else settings.model,
        device=settings.device,
        bf16=settings.bf16,
        tta=settings.tta,
        runtime=settings.runtime,
        # 0 (auto) resolved to the budget: the ONNX engines' own default is one thread per host core.
        threads=thread_budget(settings.threads),
        batch=settings.max_batch,
        announce=path is None,
        rescore_near_ties=settings.rescore_near_ties,
    )
