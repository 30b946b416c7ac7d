"""Camera up/down events on the public event stream, sent by the capture process to the sink.

Dashboards see a camera's state in ``emostream_camera_up``; programs that subscribe to the event
stream see it as ``type: camera`` events (``status`` "up" or "down", with a reason), in order with
that camera's ``faces`` events. They go straight to the sink's input, beside the classifier's events.
"""

from __future__ import annotations

import logging
import time

import zmq

from emostream.security import CurveKeys, secure_client
from emostream.wire import camera_event, encode_event

log = logging.getLogger("capture")

#: Status events waiting for a sink that is not there (restarting): enough for any outage's flapping.
SNDHWM = 100


class CameraStatusEvents:
    """Callable given to :class:`capture.stream.FrameStream` as ``on_status``."""

    def __init__(self, context: zmq.Context, endpoint: str, camera: str, keys: CurveKeys | None = None) -> None:
        self.camera = camera
        self.socket = context.socket(zmq.PUSH)
        secure_client(self.socket, keys)
        self.socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self.socket.setsockopt(zmq.LINGER, 1000)  # a final "down" still reaches the sink at exit
        self.socket.connect(endpoint)
        self.sent = 0

    def __call__(self, status: str, reason: str) -> None:
        event = camera_event(self.camera, status, reason, ts_event=time.time())
        try:
            self.socket.send_multipart(encode_event(event), flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            # The sink has been unreachable for SNDHWM status changes; camera_up still tells the story.
            log.warning("camera %s: status event %r not sent: the sink is not taking events", self.camera, status)
        log.info("camera %s: %s (%s)", self.camera, status, reason)

    def close(self) -> None:
        self.socket.close()
