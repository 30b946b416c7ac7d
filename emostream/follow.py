"""``--follow-stdin``: a stage learns the launcher's current camera set from its stdin.

The stages that connect to every camera (detector workers to the frames, the recorder and the viewer to
the previews) get each camera's endpoint on their command line. When cameras are added or removed while
the pipeline runs (deploy/control.py), the launcher writes one JSON line to such a stage's stdin,
``{"cameras": {"<camera id>": "<endpoint>", ...}}``: the whole set, so the newest line is all that
matters. The stage connects to the new endpoints and lets go of the removed ones without a restart; a
restarted stage gets the current set on its command line.

Only with ``--follow-stdin`` (the launcher adds it): a stage run by hand does not read its terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading

log = logging.getLogger("emostream.follow")


def add_follow_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow-stdin",
        action="store_true",
        help="read camera set changes from stdin, one JSON line each (the launcher's control API sends them)",
    )


def parse_update(line: bytes | str) -> dict[str, str]:
    """The camera id -> endpoint map of one update line; ValueError naming what is wrong."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    cameras = message.get("cameras") if isinstance(message, dict) else None
    if not isinstance(cameras, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in cameras.items()):
        raise ValueError('expected {"cameras": {"<id>": "<endpoint>", ...}}')
    return cameras


class CameraUpdates(threading.Thread):
    """Reads update lines from ``stream`` (stdin) in the background; :meth:`take` hands out the newest."""

    def __init__(self, fd: int | None = None) -> None:
        super().__init__(name="follow-stdin", daemon=True)
        # The raw descriptor, not sys.stdin: a daemon thread blocked in a buffered read holds the buffer's
        # lock, and the interpreter's shutdown then aborts trying to take it.
        self.fd = fd if fd is not None else sys.stdin.fileno()
        self._lock = threading.Lock()
        self._latest: dict[str, str] | None = None

    def run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return  # EOF: the launcher is gone (PR_SET_PDEATHSIG ends this stage) or it was never a pipe
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._take_line(line)

    def _take_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            cameras = parse_update(line)
        except ValueError as exc:
            log.warning("ignoring a camera update on stdin: %s", exc)
            return
        with self._lock:
            self._latest = cameras

    def take(self) -> dict[str, str] | None:
        """The newest camera set not taken yet, or None."""
        with self._lock:
            latest, self._latest = self._latest, None
        return latest


def follow_stdin(enabled: bool) -> CameraUpdates | None:
    """A started reader when ``enabled``, else None."""
    if not enabled:
        return None
    updates = CameraUpdates()
    updates.start()
    return updates
