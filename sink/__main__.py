"""``python -m sink``: the event sink process (ZeroMQ PUB + JSON Lines)."""

from __future__ import annotations

import argparse
import sys

from emostream.runtime import add_common_args, start_process
from sink.service import SinkService


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sink", description=__doc__)
    parser.add_argument("--pull", required=True, help="endpoint to bind for events from the classifier")
    parser.add_argument("--publish", required=True, help="endpoint to bind the public PUB socket on")
    parser.add_argument("--jsonl", default=None, help="append every event to this JSON Lines file")
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = start_process("sink", args)
    SinkService(args.pull, args.publish, args.jsonl, keys=args.curve_keys).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
