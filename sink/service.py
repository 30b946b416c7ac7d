"""The sink process: PULL events from the classifier, validate, PUB them, append them to JSON Lines and
queue them for the configured outputs (``sink/outputs.py``).

The public socket is an XPUB that keeps each camera's last ``camera`` event (ZeroMQ's last-value cache):
whenever a subscriber subscribes, every camera's current state is published again, so a program that
joins late still learns that a camera is down instead of waiting for its next change of state.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO

import zmq

from emostream import metrics
from emostream.health import HEALTH
from emostream.runtime import ThrottledLog
from emostream.security import CurveKeys, secure_server
from emostream.wire import REJECT_REASONS, CameraEvent, EmotionEvent, Event, WireError, decode_event
from sink.outputs import Outputs, event_json, output_paths
from sink.settings import SinkSettings

log = logging.getLogger("sink")
STAGE = "sink"
#: Events queued per subscriber: ~10 MB at most per slow subscriber, ~2 minutes of 4 cameras at 25 fps.
PUB_HWM = 10_000
#: Events of one burst after which the outputs' outboxes are written anyway (bounds what a crash loses).
OUTPUT_FLUSH_EVENTS = 256
#: Cameras whose last state is kept for late subscribers; the least recently changed go first beyond it.
CAMERA_STATES_KEPT = 4096


class OutputPathError(OSError):
    """An output file that cannot be written; the message says why in one line, ``key`` names the setting."""

    def __init__(self, message: str, key: str = "--jsonl") -> None:
        super().__init__(message)
        self.key = key


def output_file_problem(path: str | Path) -> str | None:
    """Why the sink could not append to ``path`` (creating its folders as it does), or None.

    Changes nothing on disk, so ``python -m deploy check`` can ask it: an existing file is opened for
    append and closed; for a new one, the nearest existing folder above it must be a writable folder.
    """
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, not a file"
    if path.exists():
        try:
            with path.open("a", encoding="utf-8"):
                return None
        except OSError as exc:
            return f"cannot append to {path}: {exc.strerror or exc}"
    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: no permission to write in {parent}"
    return None


class JsonlWriter:
    """Appends one event per line; flushes every line so a reader or a crash never sees half a line.

    Raises :class:`OutputPathError` (one line) when the file cannot be created or opened."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        problem = output_file_problem(self.path)
        if problem:
            raise OutputPathError(problem)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise OutputPathError(f"cannot append to {self.path}: {exc.strerror or exc}") from exc

    def write(self, event: Event) -> None:
        self.write_json(event_json(event))

    def write_json(self, line: str) -> None:
        """Append one event already in its JSON form (:func:`sink.outputs.event_json`)."""
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _bind(socket: zmq.Socket, endpoint: str, what: str) -> None:
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise zmq.ZMQError(exc.errno, f"cannot bind {what} {endpoint}: {exc.strerror}") from None


class SinkService:
    def __init__(
        self,
        pull_endpoint: str,
        settings: SinkSettings | None = None,
        context: zmq.Context | None = None,
        keys: CurveKeys | None = None,
    ) -> None:
        settings = settings or SinkSettings()
        metrics.declare_drops(STAGE, "unknown", REJECT_REASONS)
        # First: an unwritable file is the one problem here no restart fixes (OutputPathError).
        self.writer = JsonlWriter(settings.jsonl) if settings.jsonl else None
        for key, path in output_paths(settings):
            if problem := output_file_problem(path):
                raise OutputPathError(problem, "--" + key.replace("_", "-"))
        try:
            self.outputs = Outputs(settings)
        except (OSError, sqlite3.Error) as exc:  # e.g. an outbox file that is not an SQLite database
            raise OutputPathError(f"cannot open an outbox in {settings.outbox_dir}: {exc}", "--outbox-dir") from exc
        ctx = context or zmq.Context.instance()
        self.pull = ctx.socket(zmq.PULL)
        self.pub = ctx.socket(zmq.XPUB)
        # Every subscription reaches us, not only a topic's first, so each late subscriber gets the states.
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        #: camera -> its last camera event as sent (topic, payload), oldest change first
        self.camera_states: dict[bytes, tuple[bytes, bytes]] = {}
        try:
            secure_server(self.pull, keys, STAGE)  # plain without keys
            _bind(self.pull, pull_endpoint, "--pull")
            # The public endpoint: with keys only authorized subscribers complete the handshake.
            secure_server(self.pub, keys, STAGE)
            # A slow subscriber loses events beyond this many (PUB semantics) instead of growing memory;
            # it can count what it missed from the frame numbers (sink.subscribe.FrameGaps).
            self.pub.setsockopt(zmq.SNDHWM, PUB_HWM)
            _bind(self.pub, settings.publish, "publish")
        except zmq.ZMQError:
            self.close()
            raise
        self._malformed_log = ThrottledLog(log)

    def handle(self, parts: list) -> None:
        try:
            event = decode_event(parts)
        except WireError as err:
            metrics.FRAMES_DROPPED.labels(STAGE, "unknown", err.reason).inc()
            self._malformed_log.warning("dropped malformed event: %s", err)
            return
        camera = event.camera
        is_frame = isinstance(event, EmotionEvent)  # camera up/down events are not frames
        if is_frame:
            metrics.FRAMES_RECEIVED.labels(STAGE, camera).inc()
        message = [bytes(parts[0]), bytes(parts[1])]
        self.pub.send_multipart(message)
        if isinstance(event, CameraEvent):
            self.camera_states.pop(message[0], None)
            self.camera_states[message[0]] = (message[0], message[1])
            if len(self.camera_states) > CAMERA_STATES_KEPT:
                del self.camera_states[next(iter(self.camera_states))]
        if self.writer or self.outputs:
            line = event_json(event)
            if self.writer:
                self.writer.write_json(line)
            self.outputs.append(camera, line)
        if isinstance(event, EmotionEvent):
            metrics.FRAMES.labels(STAGE, camera).inc()
            metrics.EVENT_LATENCY.labels(camera).observe(max(0.0, time.time() - event.ts_capture))

    def on_subscriptions(self) -> None:
        """Read what subscribers sent the XPUB; on any new subscription publish every camera's last state
        again (subscribers already listening get it twice: a state, not a change, so harmless)."""
        subscribed = False
        while True:
            try:
                message = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            subscribed = subscribed or message[:1] == b"\x01"
        if subscribed:
            for topic, payload in self.camera_states.values():
                self.pub.send_multipart([topic, payload])

    def run(self, stop: threading.Event) -> None:
        HEALTH.set_ready()
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        while not stop.is_set():
            HEALTH.beat()
            ready = dict(poller.poll(100))
            if self.pub in ready:
                self.on_subscriptions()
            if self.pull in ready:
                for n in itertools.count(1):
                    try:
                        parts = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.handle(parts)
                    if n % OUTPUT_FLUSH_EVENTS == 0:
                        self.outputs.flush()
                self.outputs.flush()  # one outbox write per burst, not per event
        # Drain what already arrived so classified events reach their files on a clean stop.
        while self.pull.poll(200):
            self.handle(self.pull.recv_multipart(copy=False))
        self.close()

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if hasattr(self, "outputs"):
            self.outputs.close()
        self.pull.close(linger=0)
        self.pub.close(linger=500)
