"""``python -m sink``: the event sink process (ZeroMQ PUB, JSON Lines, sink.outputs: MQTT, Redis, webhooks, Parquet)."""

from __future__ import annotations

import argparse
import sys

import zmq

from emostream.runtime import EXIT_FATAL, add_common_args, start_process
from emostream.settings_cli import SettingsParser
from sink.service import OutputPathError, SinkService
from sink.settings import SinkSettings


def build_parser() -> argparse.ArgumentParser:
    parser = SettingsParser(prog="python -m sink", description=__doc__, settings=SinkSettings)
    parser.add_argument("--pull", required=True, help="endpoint to bind for events from the classifier")
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = start_process("sink", args)
    try:
        service = SinkService(args.pull, args.settings, keys=args.curve_keys)
    except OutputPathError as exc:
        # Fatal: no restart makes the path writable, so the launcher stops instead of retrying.
        print(f"sink: {exc.key}: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except zmq.ZMQError as exc:
        # Not fatal: a port still held by a previous run frees up; the launcher restarts the sink.
        print(f"sink: {exc}", file=sys.stderr)
        return 1
    service.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
