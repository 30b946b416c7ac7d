"""``python -m training framing``: where YuNet finds the five landmarks in FER2013's own images.

The served crop is framed from the landmarks so that a face lands where FER2013 put its faces
(``detector.align.FER2013_TEMPLATE``). This command measures that framing: each Training image is
scaled up (a 48x48 face is smaller than YuNet's smallest anchors), padded with its edge pixels so the
face does not touch the frame's border, and detected; the landmarks of the face nearest the centre are
taken back to fractions of the image side, averaged over the faces found and mirror-symmetrised
(training flips faces, so a template that leans either way would be half wrong). It prints the template
as ``detector/align.py`` holds it; ``--out`` also writes it as JSON and a picture.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detector.align import MIRRORED_LANDMARKS
from training.cli_support import emit, load_split, log, run_subcommand, subcommand_parser
from training.data import DataError


def image_landmarks(image: np.ndarray, detector: Any, upscale: int = 4, pad: float = 0.25) -> np.ndarray | None:
    """The five landmarks (5, 2) of the face nearest the centre of the square uint8 ``image``, as
    fractions of its side, or None when the detector finds no face there. ``pad``: the edge added on
    each side, as a fraction of the scaled-up side."""
    side = image.shape[0]
    big = cv2.resize(image, (side * upscale, side * upscale), interpolation=cv2.INTER_CUBIC)
    edge = round(side * upscale * pad)
    canvas = cv2.copyMakeBorder(big, edge, edge, edge, edge, cv2.BORDER_REPLICATE)
    found = detector.detect(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    if not len(found) or found.landmarks is None:
        return None
    centre = canvas.shape[0] / 2
    centres = found.boxes[:, :2] + found.boxes[:, 2:] / 2
    nearest = int(np.argmin(np.linalg.norm(centres - centre, axis=1)))
    if np.linalg.norm(centres[nearest] - centre) > side * upscale / 4:
        return None
    # Canvas pixel centres back to fractions of the image side: (p - edge + 0.5) / (side * upscale).
    return (found.landmarks[nearest].astype(np.float64) - edge + 0.5) / (side * upscale)


def mirror_symmetric(template: np.ndarray) -> np.ndarray:
    """The mean of ``template`` (5, 2 fractions) and its mirror image (x -> 1 - x, left and right swapped)."""
    mirrored = template[list(MIRRORED_LANDMARKS)].copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    return (template + mirrored) / 2


def measure_template(
    images: np.ndarray, detector: Any, upscale: int = 4, pad: float = 0.25, every: int = 500
) -> tuple[np.ndarray, int]:
    """The mirror-symmetrised mean landmarks (5, 2) over ``images`` (N, side, side) and how many had a face."""
    points = []
    started = time.perf_counter()
    for i, image in enumerate(images):
        landmarks = image_landmarks(image, detector, upscale, pad)
        if landmarks is not None:
            points.append(landmarks)
        if every and (i + 1) % every == 0:
            rate = (i + 1) / (time.perf_counter() - started)
            log(f"framing: {i + 1}/{len(images)} images, {len(points)} faces found, {rate:.0f} images/s")
    if not points:
        raise DataError("YuNet found no face in any of the images: no template to measure")
    return mirror_symmetric(np.mean(points, axis=0)), len(points)


def plot(template: np.ndarray, images: np.ndarray, path: Path) -> None:
    """The template's five points over the mean of ``images``, beside the template now shipped."""
    from detector.align import FER2013_TEMPLATE, LANDMARKS

    size = 384
    mean = cv2.resize(images.mean(0).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    canvas = cv2.cvtColor(mean, cv2.COLOR_GRAY2BGR)
    for points, colour in ((FER2013_TEMPLATE, (255, 160, 0)), (template, (0, 0, 255))):
        for x, y in points * size:
            cv2.circle(canvas, (round(x), round(y)), 5, colour, 2)
    cv2.putText(canvas, "measured (red), shipped (blue)", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1)
    for name, (x, y) in zip(LANDMARKS, template * size, strict=True):
        cv2.putText(canvas, name, (round(x) + 6, round(y) - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas)


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser("framing", "Measure where YuNet finds the five landmarks in FER2013's images.", data=True)
    p.add_argument("--split", default="Training", help="the split to measure (the template comes from Training)")
    p.add_argument("--limit", type=int, default=3000, help="the first N images of the split (0 = all)")
    p.add_argument("--upscale", type=int, default=4, help="scale each image up by this factor before detection")
    # A quarter: the template shipped in detector/align.py comes back within 0.003 of the side with it;
    # the padding moves the points by up to about 0.015 (docs/model.md).
    p.add_argument("--pad", type=float, default=0.25, help="edge added on each side, a fraction of the scaled side")
    p.add_argument(
        "--score-threshold", type=float, default=0.7, help="YuNet's confidence threshold for the faces averaged"
    )
    p.add_argument("--out", default=None, help="also write framing.json and framing.png in this folder")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    from detector.backends import YUNET_MODEL, YuNetDetector
    from detector.settings import DetectorSettings

    if args.upscale < 1 or not 0 <= args.pad <= 2:
        raise DataError(f"--upscale {args.upscale} must be at least 1 and --pad {args.pad} in [0, 2]")
    data, split = load_split(args)
    images = data.splits[split].images[:, 0].numpy()
    if args.limit:
        images = images[: args.limit]
    runtime = DetectorSettings().runtime
    detector = YuNetDetector(YUNET_MODEL, score_threshold=args.score_threshold, runtime=runtime, threads=1)
    log(f"framing: YuNet on {len(images)} {split} images, {args.upscale}x, threshold {args.score_threshold}")
    template, found = measure_template(images, detector, args.upscale, args.pad)
    result = {
        "split": split,
        "images": len(images),
        "faces_found": found,
        "upscale": args.upscale,
        "pad": args.pad,
        "score_threshold": args.score_threshold,
        "data_sha256": data.sha256,
        "template": np.round(template, 4).tolist(),
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "framing.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(template, images, out / "framing.png")
        log(f"wrote framing.json and framing.png in {out}")
    log("FER2013_TEMPLATE = np.array([" + ", ".join(f"[{x:.4f}, {y:.4f}]" for x, y in template) + "])")
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    def action(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        emit(result)
        return result

    return run_subcommand(lambda a: get_args_parser().parse_args(a), action, argv)
