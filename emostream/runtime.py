"""Process plumbing every stage shares: logging, graceful stop on SIGTERM/SIGINT, common CLI flags."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable

from emostream.cpu import CpuBudget, cpu_budget
from emostream.metrics import serve_metrics
from emostream.security import keys_argument

#: A stage exits with this code for a problem no restart can fix (a missing file, a bad model, bad
#: arguments); the launcher then does not restart it. Any other non-zero exit is a crash.
EXIT_FATAL = 2

#: Set by the launcher in every stage's environment: seconds after a stop request (SIGTERM, SIGINT)
#: at which a stage whose shutdown hangs exits on its own with EXIT_STOP_DEADLINE. The launcher
#: SIGKILLs a stage that outlives its stop timeout, but a launcher that died (SIGKILL, OOM) cannot;
#: unset, a stage waits for its shutdown as long as it takes.
STOP_DEADLINE_ENV = "EMOSTREAM_STOP_DEADLINE_S"
#: The exit code of a stage that did not finish stopping by its deadline (timeout(1)'s code).
EXIT_STOP_DEADLINE = 124

#: glibc's mallopt parameters (malloc.h) and the values :func:`tune_malloc` sets.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations up to this size come from the heap, not from a fresh mmap: 32 MiB, glibc's largest
#: dynamic threshold, holds a 4K BGR frame (24 MiB).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap is given back to the kernel only beyond this much.
TRIM_THRESHOLD = 256 * 1024 * 1024


def tune_malloc() -> bool:
    """Keep freed frame buffers in the process instead of unmapping and faulting them in again.

    Every stage allocates and frees a megabytes-large buffer per frame (a decoded frame, a received
    ZeroMQ message). glibc serves such sizes with mmap at first, and even after its dynamic threshold
    adapts, trimming the heap hands the pages back, so the next frame faults them in again (hundreds of
    page faults for a 1280x720 frame, each zeroing a page). In a max-throughput pipeline these settings
    raise frames/s (the faults and the gain: docs/benchmarks.md, "Measurements behind defaults and
    constants"). ``EMOSTREAM_TUNE_MALLOC=0`` keeps glibc's defaults, so that
    ``python -m deploy bench --what-if EMOSTREAM_TUNE_MALLOC=0`` measures both side by side. Returns
    False where it did not tune (opted out, or no glibc mallopt).
    """
    if os.environ.get("EMOSTREAM_TUNE_MALLOC", "1") == "0":
        return False
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt if path else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    # Setting the mmap threshold switches off glibc's dynamic adjustment, so both are set together.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


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


def start_process(
    name: str, args: argparse.Namespace, set_threads: Callable[[CpuBudget], str] | None = None
) -> threading.Event:
    """Tune malloc, configure logging, serve metrics, log the CPU budget; returns an event that is set
    on SIGTERM or SIGINT.

    ``set_threads``: sizes the stage's thread pools from the budget and says how (e.g. "torch 2"); its
    text joins the one start-up line about the budget.
    """
    tune_malloc()
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
    )
    serve_metrics(args.metrics_port, args.metrics_host)
    budget = cpu_budget()
    pools = f"; threads: {set_threads(budget)}" if set_threads else ""
    logging.getLogger(name).info("cpu budget: %s%s", budget.describe(), pools)
    stop = threading.Event()
    deadline_s = stop_deadline_s()

    def _request_stop(signum: int, _frame: object) -> None:
        logging.getLogger(name).info("received %s, stopping", signal.Signals(signum).name)
        if deadline_s is not None and not stop.is_set():
            timer = threading.Timer(deadline_s, _exit_at_deadline, (name, deadline_s))
            timer.daemon = True
            timer.start()
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    return stop


def stop_deadline_s() -> float | None:
    """The stop deadline the launcher set (STOP_DEADLINE_ENV); None when unset. A value that is no
    positive number is ignored with a warning: it must not keep a stage from starting."""
    raw = os.environ.get(STOP_DEADLINE_ENV)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):  # NaN fails both
        logging.getLogger(__name__).warning(
            "%s=%r is no positive number of seconds: no stop deadline", STOP_DEADLINE_ENV, raw
        )
        return None
    return value


def _exit_at_deadline(name: str, deadline_s: float) -> None:
    # os.write, not logging: the thread that hangs may hold the logging lock.
    os.write(2, f"{name} did not stop within {deadline_s:g} s of the stop request: exiting now\n".encode())
    os._exit(EXIT_STOP_DEADLINE)


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


#: The kernel's TCP buffer (bytes; Linux doubles it) on both ends of a frame socket: capture's send
#: side and the detector's receive side. Loopback's autotuned buffers hold many raw frames, so a slow
#: consumer received them seconds old; 128 KiB keeps them fresh at little cost in messages/s
#: (measured: docs/benchmarks.md, "Measurements behind defaults and constants").
FRAME_SOCKET_BUFFER = 128 * 1024


def proc_stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, numbered from 0 as in proc(5) less 3:
    [0] the state letter, [11] utime and [12] stime in clock ticks, [16] the nice value. None if the
    process is gone or there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name, in parentheses, may itself hold spaces and ")": split after its last ")".
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields or None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    fields = proc_stat_fields(pid)
    if fields is None:  # it ended meanwhile, or there is no /proc (not Linux: kill said it runs)
        return not os.path.isdir("/proc")
    return fields[0] != "Z"
