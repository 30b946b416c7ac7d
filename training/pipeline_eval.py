"""``python -m training pipeline-eval``: emotion accuracy along the served path, not on ready crops.

Each labelled FER2013 face is placed in a 640x480 frame under a controlled condition (head roll,
face size, light, blur, JPEG quality), and the frame goes through the real detector, alignment,
crop and classifier code (:class:`detector.pipeline.FaceExtractor`, :class:`classifier.model.EmotionModel`)
for each backend: ``haar``, ``yunet`` and ``yunet-align`` (YuNet with aligned crops). Per condition
and backend it reports the detection rate, the accuracy on the detected faces, the end-to-end
accuracy (a missed face counts as wrong) and both as a ratio to the model's direct accuracy on the
same 48x48 images. Tune on PublicTest; report PrivateTest. One JSON object on stdout; with
``--out``, also ``pipeline_eval.json``, ``pipeline_eval.md`` (the table), ``pipeline_eval.png`` and,
per condition and backend that missed any, ``missed_<condition>_<backend>.png``: a sheet of the
faces it did not find, each labelled with its index in the split (the JSON lists them as ``missed``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emostream.cpu import cpu_info
from emostream.jsonutil import json_ready
from training.cli_support import emit, load_split, log, subcommand_parser
from training.data import DataError

FRAME_SHAPE = (480, 640)
#: Faces of the roll and appearance conditions: the side of the FER2013 square in frame pixels,
#: drawn uniformly from this range (the issue's "faces >= 64 px").
DEFAULT_SIZES = (64, 240)


@dataclass(frozen=True)
class Condition:
    """How one face is placed: roll drawn from +-``roll`` degrees (sign at random, magnitude
    ``roll``), side drawn from ``sizes``, brightness gain, Gaussian blur sigma (as a fraction of the
    face side), JPEG quality (0 = none)."""

    name: str
    roll: float = 0.0
    sizes: tuple[int, int] = DEFAULT_SIZES
    gain: float = 1.0
    blur: float = 0.0
    jpeg: int = 0


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("upright"),
        Condition("roll15", roll=15.0),
        Condition("roll30", roll=30.0),
        Condition("size40", sizes=(40, 40)),
        Condition("size64", sizes=(64, 64)),
        Condition("size96", sizes=(96, 96)),
        Condition("size160", sizes=(160, 160)),
        Condition("size240", sizes=(240, 240)),
        Condition("dark", gain=0.35),
        Condition("bright", gain=1.8),
        Condition("blur", blur=0.02),
        Condition("jpeg20", jpeg=20),
    )
}
#: backend name -> the detector settings that differ from the defaults (``yunet-align``: the default
#: detector, YuNet with rolled passes and aligned crops).
BACKENDS: dict[str, dict[str, Any]] = {
    "haar": {"backend": "haar", "align": False, "roll_passes": ()},
    "yunet": {"backend": "yunet", "align": False, "roll_passes": ()},
    "yunet-align": {},
}


@dataclass(frozen=True)
class Placement:
    """Where a face went: its centre and side in frame pixels and its roll (degrees, clockwise)."""

    cx: float
    cy: float
    side: float
    roll: float


def background(rng: np.random.Generator) -> np.ndarray:
    """A textured grey BGR frame: smooth noise, so that detectors see no face and no flat field."""
    h, w = FRAME_SHAPE
    noise = rng.random((h // 8, w // 8)).astype(np.float32)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    gray = np.clip(70 + 110 * field, 0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def place_face(face: np.ndarray, condition: Condition, rng: np.random.Generator) -> tuple[np.ndarray, Placement]:
    """A frame with the 48x48 ``face`` scaled, rolled and lit as ``condition`` says, and where it is."""
    side = float(rng.uniform(*condition.sizes))
    roll = condition.roll * float(rng.choice([-1.0, 1.0])) if condition.roll else 0.0
    # The rolled square's bounding box must fit in the frame.
    reach = side * (abs(np.cos(np.radians(roll))) + abs(np.sin(np.radians(roll)))) / 2
    h, w = FRAME_SHAPE
    cx = float(rng.uniform(reach, w - reach))
    cy = float(rng.uniform(reach, h - reach))
    frame = background(rng)
    # face pixel (u, v) -> frame: scale by side/48 about the face centre, rotate by roll, move to (cx, cy).
    matrix = cv2.getRotationMatrix2D((24.0, 24.0), -roll, side / 48.0)
    matrix[:, 2] += np.array([cx - 24.0, cy - 24.0])
    warped = cv2.warpAffine(face, matrix, (w, h), flags=cv2.INTER_CUBIC)
    mask = cv2.warpAffine(np.ones((48, 48), np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    out = frame.astype(np.float32) * (1 - mask) + warped[..., None].astype(np.float32) * mask
    if condition.gain != 1.0:
        out = out * condition.gain
    out = np.clip(out, 0, 255).astype(np.uint8)
    if condition.blur:
        out = cv2.GaussianBlur(out, (0, 0), condition.blur * side)
    if condition.jpeg:
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, condition.jpeg])
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
        if decoded is None:
            raise RuntimeError(f"JPEG quality {condition.jpeg}: OpenCV could not encode and decode the frame")
        out = decoded
    return out, Placement(cx, cy, side, roll)


def crop_placed_face(extractor: Any, frame: np.ndarray, placed: Placement) -> np.ndarray | None:
    """The extractor's crop of the placed face in ``frame``, or None when it does not find that face.

    The frame is a camera's first, which runs every pass of the detector (on video, rolled passes run
    on one key frame in detector.roll_every: docs/video.md)."""
    detections, face_crops = extractor.extract(frame, camera="placed")
    extractor.forget("placed")
    hit = match_face(detections.boxes, detections.scores, placed)
    return None if hit is None else face_crops[hit]


def match_face(boxes: np.ndarray, scores: np.ndarray, placed: Placement) -> int | None:
    """Index of the most confident detection that is the placed face (its centre within a third of
    the face's side of the true centre, its size 0.3-1.5 of the side), or None."""
    if not len(boxes):
        return None
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    near = np.linalg.norm(centres - [placed.cx, placed.cy], axis=1) <= placed.side / 3
    size = np.maximum(boxes[:, 2], boxes[:, 3])
    ok = near & (size >= 0.3 * placed.side) & (size <= 1.5 * placed.side)
    if not ok.any():
        return None
    return int(np.flatnonzero(ok)[np.argmax(scores[ok])])


@dataclass
class Cell:
    """The figures of one condition x backend."""

    condition: str
    backend: str
    faces: int
    detected: int
    detection_rate: float
    accuracy_detected: float
    direct_accuracy_detected: float
    ratio_detected: float
    accuracy_end_to_end: float
    direct_accuracy: float
    ratio_end_to_end: float
    #: Index in the split (from its first face) of each face the backend did not find.
    missed: list[int] = field(default_factory=list)


def run_condition(
    images: np.ndarray,
    labels: np.ndarray,
    direct_pred: np.ndarray,
    condition: Condition,
    extractors: dict[str, Any],
    model: Any,
    seed: int,
) -> list[Cell]:
    """Every face under ``condition`` through every backend's extractor; one Cell per backend."""
    rng = np.random.default_rng([seed, list(CONDITIONS).index(condition.name)])
    n = len(images)
    crops: dict[str, list[np.ndarray]] = {b: [] for b in extractors}
    found: dict[str, np.ndarray] = {b: np.zeros(n, bool) for b in extractors}
    for i in range(n):
        frame, placed = place_face(images[i], condition, rng)
        for name, extractor in extractors.items():
            crop = crop_placed_face(extractor, frame, placed)
            if crop is not None:
                found[name][i] = True
                crops[name].append(crop)
    direct_ok = direct_pred == labels
    cells = []
    for name in extractors:
        mask = found[name]
        pred = np.full(n, -1)
        if mask.any():
            pred[mask] = model.predict(np.stack(crops[name])).argmax(1)
        correct = pred == labels
        detected = int(mask.sum())
        acc_det = float(correct[mask].mean()) if detected else float("nan")
        direct_det = float(direct_ok[mask].mean()) if detected else float("nan")
        cells.append(
            Cell(
                condition=condition.name,
                backend=name,
                faces=n,
                detected=detected,
                detection_rate=detected / n,
                accuracy_detected=acc_det,
                direct_accuracy_detected=direct_det,
                ratio_detected=acc_det / direct_det if detected and direct_det else float("nan"),
                accuracy_end_to_end=float(correct.mean()),
                direct_accuracy=float(direct_ok.mean()),
                ratio_end_to_end=float(correct.mean() / direct_ok.mean()) if direct_ok.any() else float("nan"),
                missed=[int(i) for i in np.flatnonzero(~mask)],
            )
        )
    return cells


def format_table(cells: Sequence[Cell]) -> str:
    lines = [
        "| condition | backend | detected | accuracy on detected (direct) | ratio | end to end | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.condition} | {c.backend} | {c.detection_rate:.1%} | {c.accuracy_detected:.1%} "
            f"({c.direct_accuracy_detected:.1%}) | {c.ratio_detected:.3f} | {c.accuracy_end_to_end:.1%} | "
            f"{c.ratio_end_to_end:.3f} |"
        )
    return "\n".join(lines)


#: The missed-faces sheet: tile side (the 48x48 face upscaled), tiles per row, faces shown at most.
SHEET_TILE, SHEET_COLUMNS, SHEET_MAX = 96, 10, 100


def missed_sheet(images: np.ndarray, missed: Sequence[int], path: Path) -> Path:
    """A PNG of the 48x48 ``images[missed]`` (the first SHEET_MAX), each with its index in a corner."""
    tiles = []
    for index in list(missed)[:SHEET_MAX]:
        tile = cv2.cvtColor(
            cv2.resize(images[index], (SHEET_TILE, SHEET_TILE), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR
        )
        cv2.putText(tile, str(index), (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, str(index), (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    blank = np.zeros((SHEET_TILE, SHEET_TILE, 3), np.uint8)
    tiles += [blank] * (-len(tiles) % SHEET_COLUMNS)
    rows = [np.hstack(tiles[i : i + SHEET_COLUMNS]) for i in range(0, len(tiles), SHEET_COLUMNS)]
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise OSError(f"cannot write {path}")
    return path


def plot(cells: Sequence[Cell], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(dict.fromkeys(c.condition for c in cells))
    backends = list(dict.fromkeys(c.backend for c in cells))
    by_key = {(c.condition, c.backend): c for c in cells}
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(conditions) * 0.9), 7), sharex=True)
    width = 0.8 / len(backends)
    x = np.arange(len(conditions))
    for j, backend in enumerate(backends):
        offset = x + (j - (len(backends) - 1) / 2) * width
        axes[0].bar(offset, [by_key[(c, backend)].detection_rate for c in conditions], width, label=backend)
        axes[1].bar(offset, [by_key[(c, backend)].ratio_end_to_end for c in conditions], width, label=backend)
    axes[0].set_ylabel("detection rate")
    axes[1].set_ylabel("end-to-end accuracy / direct")
    for ax in axes:
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(x, conditions, rotation=30)
    axes[0].legend(ncol=len(backends))
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser(
        "pipeline-eval",
        "Place labelled faces in frames and score the served detector + crop + classifier path.",
        data=True,
        model=True,
    )
    p.add_argument("--split", default="PublicTest", help="PublicTest to tune anything; PrivateTest to report")
    p.add_argument("--limit", type=int, default=400, help="faces per condition (the first N of the split)")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, of {', '.join(CONDITIONS)}")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    p.add_argument(
        "--min-face", type=int, default=24, help="the detectors' smallest face, px (the grid's smallest is 40)"
    )
    p.add_argument(
        "--score-threshold", type=float, default=None, help="YuNet's confidence threshold (default: the detector's)"
    )
    p.add_argument(
        "--confident-score",
        type=float,
        default=None,
        help="YuNet faces under this score need frontal landmarks (default: the detector's; at or below "
        "--score-threshold: no landmark check)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write pipeline_eval.json, .md and .png here")
    return p


def _choices(text: str, known: dict[str, Any], what: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"--{what}: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
    return names


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    from classifier.model import EmotionModel
    from detector.pipeline import build_extractor
    from detector.settings import DetectorSettings

    conditions = _choices(args.conditions, CONDITIONS, "conditions", parser)
    backends = _choices(args.backends, BACKENDS, "backends", parser)
    if args.limit < 1:
        parser.error(f"--limit {args.limit}: must be at least 1")
    data, split = load_split(args)
    images = data.splits[split].images[: args.limit, 0].numpy()
    labels = data.splits[split].labels[: args.limit].numpy()
    model = EmotionModel(args.model, device="cpu", bf16=cpu_info().native_bf16)
    direct_pred = model.predict(images).argmax(1)
    common: dict[str, Any] = {"min_face": args.min_face}
    if args.score_threshold is not None:
        common["score_threshold"] = args.score_threshold
    if args.confident_score is not None:
        common["confident_score"] = args.confident_score
    settings = {name: DetectorSettings(**common, **BACKENDS[name]) for name in backends}
    extractors = {name: build_extractor(s) for name, s in settings.items()}
    log(f"pipeline-eval: {len(images)} {split} faces x {len(conditions)} conditions x backends {backends}")
    cells: list[Cell] = []
    started = time.perf_counter()
    for k, name in enumerate(conditions):
        cells += run_condition(images, labels, direct_pred, CONDITIONS[name], extractors, model, args.seed)
        done = [c for c in cells if c.condition == name]
        log(
            f"[{k + 1}/{len(conditions)}] {name}: "
            + ", ".join(f"{c.backend} det {c.detection_rate:.1%} e2e {c.accuracy_end_to_end:.1%}" for c in done)
            + f" ({time.perf_counter() - started:.0f}s)"
        )
    result = {
        "split": split,
        "faces_per_condition": len(images),
        "model": str(model.path),
        "model_version": model.version,
        "direct_accuracy": float((direct_pred == labels).mean()),
        "min_face": args.min_face,
        "detectors": {name: s.model_dump(mode="json") for name, s in settings.items()},
        "seed": args.seed,
        "conditions": {n: asdict(CONDITIONS[n]) for n in conditions},
        "cells": [asdict(c) for c in cells],
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pipeline_eval.json").write_text(json.dumps(json_ready(result), indent=1))
        (out / "pipeline_eval.md").write_text(format_table(cells) + "\n")
        plot(cells, out / "pipeline_eval.png", f"{split}, {len(images)} faces per condition, {model.path.name}")
        sheets = [
            missed_sheet(images, c.missed, out / f"missed_{c.condition}_{c.backend}.png") for c in cells if c.missed
        ]
        log(f"wrote pipeline_eval.json, .md, .png and {len(sheets)} missed-face sheets in {out}")
    log(format_table(cells))
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        emit(main(args, parser))
    except DataError as exc:
        log(f"error: {exc}")
        return 1
    return 0
