"""Grad-CAM heatmaps for emostream model files, and ``python -m training gradcam``.

Grad-CAM (Selvaraju et al. 2017): for class c and the activations A (C, h, w) of the last
convolutional block, weight each channel by the spatial mean of d logit_c / dA, sum, ReLU, upsample
bilinearly to the input size and scale each map to [0, 1] by its maximum (an all-zero map stays 0).

Why it works on the shipped file: a model file is a ``torch.export`` program, and
``load_model(...)`` gives its ``.module()``, an ``torch.fx.GraphModule`` of aten ops. We run that graph
with a :class:`torch.fx.Interpreter` that keeps the output of one node -- by default the last node
producing a 4-D (N, C, h, w) tensor with h*w > 1, i.e. the output of the last conv block before global
pooling -- and differentiate the class logit with respect to it with ``torch.autograd.grad``. Nothing
has to be stored at export time, no model class is needed, and any architecture with a conv trunk
works; ``layer=`` picks another node by its graph name. A plain ``nn.Module`` is traced with
``torch.fx.symbolic_trace`` first.

``python -m training gradcam --model M --images IMG... [--class NAME] [--faces MODE] --out DIR`` writes,
per explained face, ``<stem>.gradcam_<class>.png`` (``<stem>.face<i>.gradcam_<class>.png`` for the
faces found in a photo: the face and the heatmap overlay side by side), plus ``gradcam.npz`` (heatmaps,
classes) and ``gradcam.json`` (also printed on stdout).

Which pixels a heatmap explains (``--faces``): the model sees 48x48 face crops, so a larger image (a
photo) goes through the served detector first (``detector.pipeline.build_extractor``, YuNet by
default) and each face it finds is explained on the crop the pipeline would classify; ``auto`` (the
default) falls back to the whole image, squashed to the model's input, when no face is found, and says
so; ``detect`` makes that an error; ``whole`` never detects. An image no larger than the model's input
is taken as a face crop.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emostream.modelfile import load_model
from emostream.modelinfo import ModelFileError, ModelInfo
from emostream.wire import EMOTIONS
from training.cli_support import emit, log, run_subcommand, subcommand_parser
from training.data import class_index as class_index_of
from training.inference import load, preprocess
from training.presets import DEFAULT_MEAN, DEFAULT_STD

BATCH = 64
#: --faces: detect faces in images larger than the model's input and fall back to the whole image
#: (auto), detect or fail (detect), or always take the whole image (whole).
FACE_MODES = ("auto", "detect", "whole")
Crops = np.ndarray | torch.Tensor  # uint8 face crops (N, H, W), or one (H, W)
ClassIndex = int | Sequence[int] | None  # one class for all crops, one per crop, or None = the predicted one


@dataclass
class GradCAMResult:
    heatmaps: np.ndarray  # float32 (N, H, W) in [0, 1], H, W = model input size
    class_index: np.ndarray  # int64 (N,): the class each heatmap explains
    probabilities: np.ndarray  # float32 (N, classes): softmax(logits / temperature)
    layer: str  # graph node whose activations were used
    activation_shape: tuple[int, ...]  # (C, h, w) of that node


class _ActivationRecorder(torch.fx.Interpreter):
    """Runs a GraphModule and keeps the output of node ``layer`` (or of the last 4-D spatial node)."""

    def __init__(self, module: torch.fx.GraphModule, layer: str | None) -> None:
        super().__init__(module)
        self.layer = layer
        # Not ``name``: torch.fx.Interpreter has its own (a str).
        self.found: str | None = None
        self.activation: torch.Tensor | None = None
        self.spatial_nodes: list[str] = []

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor) and result.dim() == 4 and result.shape[-1] * result.shape[-2] > 1:
            self.spatial_nodes.append(n.name)
            if self.layer is None or n.name == self.layer:
                self.found, self.activation = n.name, result
        return result


def _as_graph_module(module: nn.Module) -> torch.fx.GraphModule:
    if isinstance(module, torch.fx.GraphModule):
        return module
    return torch.fx.symbolic_trace(module)


def _unpack_model(model: Any, info: ModelInfo | None) -> tuple[nn.Module, ModelInfo]:
    """Accept a path, (module, info) as load_model returns, an object with .module/.info
    (classifier.model.EmotionModel), or a bare module (then ``info`` or default normalisation)."""
    if isinstance(model, str | Path):
        return load_model(model)
    if isinstance(model, tuple) and len(model) == 2:
        return model[0], info or model[1]
    if hasattr(model, "module") and hasattr(model, "info"):
        return model.module, info or model.info
    if isinstance(model, nn.Module):
        if info is None:
            info = ModelInfo(arch="module", class_names=[], mean=DEFAULT_MEAN, std=DEFAULT_STD)
        return model, info
    raise TypeError(f"cannot compute Grad-CAM for a {type(model).__name__}")


def gradcam_details(
    model: Any,
    crops: Crops,
    class_index: ClassIndex = None,
    *,
    info: ModelInfo | None = None,
    layer: str | None = None,
) -> GradCAMResult:
    """Grad-CAM of uint8 face crops (N, H, W) for ``class_index`` (one for all, one per crop, or
    None = each crop's predicted class). See the module docstring for ``model``/``layer``."""
    module, info = _unpack_model(model, info)
    graph = _as_graph_module(module)
    crops_t = torch.as_tensor(np.asarray(crops)) if not isinstance(crops, torch.Tensor) else crops
    if crops_t.dim() == 2:
        crops_t = crops_t.unsqueeze(0)
    n = len(crops_t)
    if class_index is None or isinstance(class_index, int | np.integer):
        wanted = None if class_index is None else np.full(n, int(class_index))
    else:
        wanted = np.asarray(class_index, dtype=np.int64)
        if wanted.shape != (n,):
            raise ValueError(f"class_index has {wanted.size} entries for {n} crops")
    maps, classes, probs = [], [], []
    name = ""
    act_shape: tuple[int, ...] = ()
    # Serving code may call this inside inference_mode; autograd needs both switched back on.
    with torch.inference_mode(False), torch.enable_grad():
        for start in range(0, n, BATCH):
            x = preprocess(crops_t[start : start + BATCH], info).clone().requires_grad_(True)
            recorder = _ActivationRecorder(graph, layer)
            out = recorder.run(x)
            logits = out[0] if isinstance(out, tuple | list) else out
            if recorder.activation is None:
                hint = f"; 4-D nodes: {recorder.spatial_nodes[-8:]}" if recorder.spatial_nodes else ""
                what = f"node {layer!r} with a 4-D spatial output" if layer else "a 4-D spatial activation"
                raise ValueError(f"the model graph has no {what}{hint}")
            num_classes = logits.shape[1]
            target = (
                logits.argmax(1)
                if wanted is None
                else torch.as_tensor(wanted[start : start + BATCH], dtype=torch.int64)
            )
            if int(target.min()) < 0 or int(target.max()) >= num_classes:
                raise ValueError(f"class index out of range 0..{num_classes - 1}")
            score = logits.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, recorder.activation)
            activation = recorder.activation.detach()
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=tuple(info.input_size), mode="bilinear", align_corners=False)[:, 0]
            peak = cam.amax(dim=(1, 2), keepdim=True)
            cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
            maps.append(cam.clamp_(0, 1).float())
            classes.append(target)
            probs.append(torch.softmax(logits.detach().float() / info.temperature, dim=1))
            name, act_shape = recorder.found or "", tuple(activation.shape[1:])
    empty_hw = (0, *info.input_size)
    return GradCAMResult(
        heatmaps=torch.cat(maps).numpy() if maps else np.zeros(empty_hw, np.float32),
        class_index=torch.cat(classes).numpy() if classes else np.zeros(0, np.int64),
        probabilities=torch.cat(probs).numpy() if probs else np.zeros((0, len(info.class_names)), np.float32),
        layer=name,
        activation_shape=act_shape,
    )


def gradcam(model: Any, crops_uint8: Crops, class_index: ClassIndex = None, **options: Any) -> np.ndarray:
    """Grad-CAM heatmaps float32 (N, 48, 48) in [0, 1] for uint8 crops (N, H, W); ``options`` are
    :func:`gradcam_details`'s keywords (``info``, ``layer``)."""
    return gradcam_details(model, crops_uint8, class_index, **options).heatmaps


def overlay(crop: np.ndarray, heatmap: np.ndarray, scale: int = 4, alpha: float = 0.45) -> np.ndarray:
    """BGR uint8 image: the crop and the crop with the JET-coloured heatmap blended in, side by side."""
    import cv2

    h, w = heatmap.shape
    face = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA) if crop.shape != heatmap.shape else crop
    size = (w * scale, h * scale)
    face_bgr = cv2.cvtColor(cv2.resize(face, size, interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)
    heat = cv2.resize((heatmap * 255).astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    blended = cv2.addWeighted(face_bgr, 1 - alpha, colour, alpha, 0)
    return np.concatenate([face_bgr, blended], axis=1)


class FaceFinder:
    """The crops to explain in one image file, per ``--faces`` mode (see the module docstring)."""

    def __init__(self, side: int, mode: str) -> None:
        self.side = side
        self.mode = mode
        self._extractor: Any = None  # the served detector, built at the first photo

    def extractor(self) -> Any:
        if self._extractor is None:
            from detector.pipeline import build_extractor
            from detector.settings import DetectorSettings

            self.settings = DetectorSettings(crop_size=self.side)
            self._extractor = build_extractor(self.settings)
        return self._extractor

    def crops(self, name: str) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """(uint8 grayscale crop (side, side), what it is) for every face to explain in ``name``."""
        import cv2

        try:
            buffer = np.fromfile(name, dtype=np.uint8)
        except OSError as exc:
            raise ValueError(f"cannot read image {name}: {exc.strerror or exc}") from None
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
        if image is None:
            raise ValueError(f"cannot read image {name}: not an image OpenCV decodes")
        height, width = image.shape[:2]
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        whole = cv2.resize(gray, (self.side, self.side), interpolation=cv2.INTER_AREA)
        small = height <= self.side and width <= self.side
        if self.mode == "whole" or (self.mode == "auto" and small):
            resized = "" if (height, width) == (self.side, self.side) else f", resized from {width}x{height}"
            return [(whole, {"face": None, "crop": f"the whole image as a face crop{resized}"})]
        found, face_crops = self.extractor().extract(image)
        if len(face_crops):
            return [
                (
                    face_crops[i],
                    {
                        "face": i,
                        "box": [int(v) for v in found.boxes[i]],
                        "detector_score": round(float(found.scores[i]), 4),
                        "crop": f"face found by {self.settings.backend}, cropped as the pipeline crops it",
                    },
                )
                for i in range(len(face_crops))
            ]
        detector = f"{self.settings.backend}, faces of {self.settings.min_face} px or more"
        if self.mode == "detect":
            raise ValueError(f"{name}: no face found ({detector}); --faces whole explains the whole image")
        why = f"the whole image squashed from {width}x{height} to {self.side}x{self.side}: no face found ({detector})"
        return [(whole, {"face": None, "crop": why})]


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser(
        "gradcam",
        "Grad-CAM heatmaps over face images for a model file (overlay PNGs + gradcam.npz/json).",
        model=True,
    )
    p.add_argument(
        "--images", nargs="+", required=True, help="face crops or photos with faces (grayscale or colour, any size)"
    )
    p.add_argument(
        "--class", dest="class_name", default=None, help="class to explain (name, any case); None = the predicted class"
    )
    p.add_argument("--layer", default=None, help="graph node to explain; None = the last 4-D activation")
    p.add_argument(
        "--faces",
        choices=FACE_MODES,
        default="auto",
        help="images larger than the model's input: explain each face the served detector finds (auto: the "
        "whole image, squashed, when it finds none; detect: an error then), or the whole image (whole)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scale", type=int, default=4, help="upscaling of the overlay PNGs")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    module, info, model_path = load(args.model)
    target = None
    if args.class_name is not None:
        names = [c.lower() for c in info.class_names]
        key = args.class_name.strip().lower()
        alias = class_index_of(key)  # FER+ spellings such as "happiness" too
        if key in names:
            target = names.index(key)
        elif alias is not None and EMOTIONS[alias] in names:
            target = names.index(EMOTIONS[alias])
        else:
            raise ValueError(f"unknown class {args.class_name!r}; the model has {list(info.class_names)}")
    side = info.input_size[0]
    crops: list[np.ndarray] = []
    sources: list[dict[str, Any]] = []
    faces = FaceFinder(side, args.faces)
    for name in args.images:
        for crop, about in faces.crops(name):
            crops.append(crop)
            sources.append({"image": str(name), **about})
    result = gradcam_details((module, info), np.stack(crops), target, info=info, layer=args.layer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import cv2

    items = []
    for i, source in enumerate(sources):
        cls = int(result.class_index[i])
        face = "" if source["face"] is None else f".face{source['face']}"
        png = out / f"{Path(source['image']).stem}{face}.gradcam_{info.class_names[cls]}.png"
        if not cv2.imwrite(str(png), overlay(crops[i], result.heatmaps[i], args.scale)):
            raise OSError(f"cannot write {png}")
        peak = np.unravel_index(int(result.heatmaps[i].argmax()), result.heatmaps[i].shape)
        predicted = info.class_names[int(result.probabilities[i].argmax())]
        items.append(
            {
                **source,
                "overlay": png.name,
                "class": info.class_names[cls],
                "predicted": predicted,
                "probabilities": dict(zip(info.class_names, result.probabilities[i].tolist(), strict=True)),
                "peak_row_col": [int(peak[0]), int(peak[1])],
            }
        )
        where = "" if source["face"] is None else f" face {source['face']} at {source['box']}"
        log(f"{source['image']}{where}: {source['crop']}; predicted {predicted}, explained {info.class_names[cls]}")
    np.savez_compressed(
        out / "gradcam.npz",
        heatmaps=result.heatmaps,
        class_index=result.class_index,
        images=np.asarray([source["image"] for source in sources]),
        faces=np.asarray([-1 if source["face"] is None else source["face"] for source in sources]),
    )
    summary = {
        "model": str(model_path),
        "layer": result.layer,
        "activation_shape": list(result.activation_shape),
        "images": items,
        "files": [item["overlay"] for item in items] + ["gradcam.npz", "gradcam.json"],
    }
    emit(summary, out / "gradcam.json")
    log(f"Grad-CAM on node {result.layer} {result.activation_shape}: wrote {len(items)} overlay(s) in {out}")
    return summary


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(get_args_parser().parse_args, run, argv, errors=(ModelFileError, ValueError, OSError))
