"""``python -m training served-crops``: every face of a split as the served pipeline crops it.

FER2013's faces are framed by the data set's own face finder; the classifier is served crops from
YuNet's landmarks (``detector.align``), which frame each face a little differently (docs/model.md,
"Faces in frames"). A model that has also trained on served crops is not surprised by them. Each face
is placed in a frame as ``pipeline-eval`` places it (a random side in 64-240 px, a random roll in
+-``--max-roll`` degrees) and goes through the default detector (:func:`detector.pipeline.build_extractor`);
the crop of the face it finds there is kept. Faces the detector misses keep no crop.

Output: one ``.npz`` with ``crops`` uint8 (N, 48, 48), ``found`` bool (N,), the split, the data file's
sha256 and the detector settings; ``python -m training --served-crops FILE`` trains on it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.cli_support import emit, load_split, log, run_subcommand, subcommand_parser
from training.data import DataError
from training.pipeline_eval import Condition, crop_placed_face, place_face

FORMAT = "emostream-served-crops/1"


def served_crops(
    images: np.ndarray, extractor: Any, seed: int = 0, max_roll: float = 30.0, every: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """``images`` uint8 (N, 48, 48) as the extractor crops them from frames: crops (N, size, size) and
    which faces it found (crops of missed faces are zeros)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    crops = np.zeros((n, extractor.crop_size, extractor.crop_size), dtype=np.uint8)
    found = np.zeros(n, dtype=bool)
    started = time.perf_counter()
    for i in range(n):
        condition = Condition("served", roll=float(rng.uniform(0.0, max_roll)))
        frame, placed = place_face(images[i], condition, rng)
        crop = crop_placed_face(extractor, frame, placed)
        if crop is not None:
            crops[i] = crop
            found[i] = True
        if every and (i + 1) % every == 0:
            rate = (i + 1) / (time.perf_counter() - started)
            log(f"served-crops: {i + 1}/{n} faces, {found[: i + 1].mean():.1%} found, {rate:.1f} faces/s")
    return crops, found


def load_served_crops(path: str | Path, split: str, rows: int, data_sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """``crops`` and ``found`` of a served-crops file, refused unless it was made from the same data split."""
    try:
        with np.load(path) as archive:
            meta = json.loads(str(archive["meta"]))
            crops, found = archive["crops"], archive["found"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is not a served-crops file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("split") != split or len(found) != rows:
        raise DataError(f"{path} holds {len(found)} {meta.get('split')} faces; the {split} split has {rows}")
    if data_sha256 and meta.get("data_sha256") and meta["data_sha256"] != data_sha256:
        raise DataError(f"{path} was made from another data file (sha256 {meta['data_sha256'][:12]}...)")
    return crops, found


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser(
        "served-crops", "Crop every face of a split as the served detector does, for training.", data=True
    )
    p.add_argument("--split", default="Training", help="the split to crop (training uses Training)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--max-roll", type=float, default=30.0, help="faces are rolled by up to this many degrees")
    p.add_argument("--limit", type=int, default=0, help="only the first N faces (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    from detector.pipeline import build_extractor
    from detector.settings import DetectorSettings

    data, split = load_split(args)
    images = data.splits[split].images[:, 0].numpy()
    if args.limit:
        images = images[: args.limit]
    # min_face 24: the smallest placed face is 64 px; the served default (40 px) is about 720p frames.
    settings = DetectorSettings(min_face=24)
    log(f"served-crops: {len(images)} {split} faces through the default detector ({settings.backend}, align)")
    crops, found = served_crops(images, build_extractor(settings), args.seed, args.max_roll)
    meta = {
        "format": FORMAT,
        "split": split,
        "rows": len(images),
        "data_sha256": data.sha256,
        "max_roll": args.max_roll,
        "seed": args.seed,
        "detector": settings.model_dump(mode="json"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, crops=crops, found=found, meta=np.array(json.dumps(meta)))
    return {**meta, "found": int(found.sum()), "found_share": float(found.mean()), "out": str(out)}


def cli(argv: Sequence[str] | None = None) -> int:
    def action(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        emit(result)
        return result

    return run_subcommand(lambda a: get_args_parser().parse_args(a), action, argv)
