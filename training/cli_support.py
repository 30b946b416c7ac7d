"""Small pieces the ``python -m training`` subcommands share: data options, JSON output, logging.

Convention: a subcommand's result is ONE JSON object on stdout; progress and logs go to stderr, so
``python -m training evaluate ... > metrics.json`` is clean.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emostream.jsonutil import json_ready
from emostream.modelinfo import ModelFileError
from training.data import FLAT_SPLIT, LABEL_SOURCES, SPLITS, DataError, Fer2013, load_dataset, split_name

DATA_HELP = "fer2013.csv(.gz), or an image folder <root>/<split>/<class>/*.png or <root>/<class>/*.png"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def subcommand_parser(
    name: str, description: str, *, data: bool | None = None, model: bool = False
) -> argparse.ArgumentParser:
    """The parser of ``python -m training NAME``; ``data``: add the data options (True: --data required,
    False: optional, None: none); ``model``: add --model."""
    parser = argparse.ArgumentParser(
        prog=f"python -m training {name}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if data is not None:
        add_data_arguments(parser, required=data)
    if model:
        parser.add_argument("--model", default=None, help="model file (.pt2); None = classifier/models/emotion.pt2")
    return parser


def add_data_arguments(
    parser: argparse.ArgumentParser, required: bool = True, data_help: str = DATA_HELP
) -> argparse._ArgumentGroup:
    """The ``data`` option group (--data, --labels, --ferplus-csv, --strict); returned for more options."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=required, help=data_help)
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
    return g


def load_data(args: argparse.Namespace, splits: tuple[str, ...] | None = None) -> Fer2013:
    return load_dataset(args.data, labels=args.labels, ferplus_csv=args.ferplus_csv, splits=splits, strict=args.strict)


def load_split(args: argparse.Namespace) -> tuple[Fer2013, str]:
    """The data file of ``args`` loaded with only the split ``args.split`` names, and that split's
    canonical name; a file without it is a :class:`DataError` that lists the splits it has."""
    split = canonical_split(args.split)
    data = load_data(args, splits=(split,))
    if split not in data.splits:
        raise DataError(f"{data.path} has no {split!r} split (it has {sorted(data.splits)})")
    return data, split


def canonical_split(name: str) -> str:
    """FER2013 split name for ``name`` (any case, or a folder alias such as ``test``); else unchanged."""
    if name.lower() == FLAT_SPLIT:
        return FLAT_SPLIT
    for split in SPLITS:
        if split.lower() == name.lower():
            return split
    return split_name(name) or name


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


def run_subcommand(
    parse: Callable[[Sequence[str] | None], argparse.Namespace],
    action: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None,
    errors: tuple[type[Exception], ...] = (DataError, ModelFileError),
    ok: Callable[[Any], bool] = lambda result: True,
) -> int:
    """A subcommand's ``cli``: parse ``argv``, run ``action``; an expected error is one stderr line and status 1
    (no traceback), as is a result that ``ok`` refuses."""
    args = parse(argv)
    try:
        result = action(args)
    except errors as exc:
        log(f"error: {exc}")
        return 1
    return 0 if ok(result) else 1
