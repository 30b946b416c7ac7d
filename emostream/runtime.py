"""Process plumbing every stage shares: logging, graceful stop on SIGTERM/SIGINT, common CLI flags."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from emostream.metrics import serve_metrics
from emostream.security import keys_argument

#: A stage exits with this code for a problem no restart can fix (a missing file, a bad model, bad
#: arguments); the launcher then does not restart it. Any other non-zero exit is a crash.
EXIT_FATAL = 2


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags of every stage; ``args.curve_keys``: loaded ``emostream.security.CurveKeys`` or None (plain)."""
    group = parser.add_argument_group("process")
    group.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)")
    group.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics server binds")
    group.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # Loaded while parsing: a missing key file is a usage error (exit 2), which the launcher does not restart.
    group.add_argument(
        "--curve-keys",
        type=keys_argument,
        default=None,
        metavar="DIR",
        help="secure every ZeroMQ socket with CurveZMQ using the keys in DIR (python -m deploy keys); default: plain",
    )


def start_process(name: str, args: argparse.Namespace) -> threading.Event:
    """Configure logging, serve metrics and return an event that is set on SIGTERM or SIGINT."""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
    )
    serve_metrics(args.metrics_port, args.metrics_host)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        logging.getLogger(name).info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    return stop


class ThrottledLog:
    """Log a recurring warning at most once per ``interval_s``, saying how many were held back.

    A peer that sends garbage (or a fuzzer) must not turn every rejected message into a log line:
    each one is still counted in the metrics, the log only has to say that it is happening.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = -float("inf")
        self._held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held += 1
            return
        if self._held:
            msg += f" (and {self._held} more like it in the last {self.interval_s:g} s)"
        self._last, self._held = now, 0
        self.logger.warning(msg, *args)
