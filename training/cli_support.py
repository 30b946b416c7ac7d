"""Small pieces the ``python -m training`` subcommands share: data options, JSON output, logging.

Convention: a subcommand's result is ONE JSON object on stdout; progress and logs go to stderr, so
``python -m training evaluate ... > metrics.json`` is clean.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training.data import FLAT_SPLIT, LABEL_SOURCES, SPLITS, Fer2013, load_dataset, split_name


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        help="fer2013.csv(.gz), or an image folder <root>/<split>/<class>/*.png or <root>/<class>/*.png",
    )
    g.add_argument(
        "--labels",
        default="fer2013",
        choices=LABEL_SOURCES,
        help="fer2013: the CSV's emotion column; ferplus: FER+ majority vote (FER2013 CSV only)",
    )
    g.add_argument("--ferplus-csv", default=None, help="fer2013new.csv; None = the one next to --data")
    g.add_argument(
        "--strict",
        action="store_true",
        help="make a bad row/image an error naming it, instead of a counted and warned skip",
    )


def load_data(args: argparse.Namespace, splits: tuple[str, ...] | None = None) -> Fer2013:
    return load_dataset(args.data, labels=args.labels, ferplus_csv=args.ferplus_csv, splits=splits, strict=args.strict)


def canonical_split(name: str) -> str:
    """FER2013 split name for ``name`` (any case, or a folder alias such as ``test``); else unchanged."""
    if name.lower() == FLAT_SPLIT:
        return FLAT_SPLIT
    for split in SPLITS:
        if split.lower() == name.lower():
            return split
    return split_name(name) or name


def json_ready(obj: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN/inf to null (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return json_ready(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(json_ready(obj), indent=1, allow_nan=False)


def emit(result: dict[str, Any], out_file: Path | None = None) -> None:
    """Print ``result`` as the one JSON object on stdout; also write it to ``out_file``."""
    text = dumps(result)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
