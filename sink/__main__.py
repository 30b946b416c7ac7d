"""``python -m sink``: the event sink process (ZeroMQ PUB + JSON Lines)."""

from __future__ import annotations

import argparse
import sys

from emostream.runtime import add_common_args, start_process
from emostream.settings_cli import SettingsParser
from sink.service import SinkService
from sink.settings import SinkSettings


def build_parser() -> argparse.ArgumentParser:
    parser = SettingsParser(prog="python -m sink", description=__doc__, settings=SinkSettings)
    parser.add_argument("--pull", required=True, help="endpoint to bind for events from the classifier")
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = start_process("sink", args)
    SinkService(args.pull, args.settings, keys=args.curve_keys).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
