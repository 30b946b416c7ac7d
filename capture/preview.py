"""The opt-in preview stream of a capture process (``--preview ENDPOINT``): a PUB socket for viewers.

Frames only exist in capture and the detectors, so anything that wants to *show* a run -- the
recorder (``python -m sink.record``), a future browser viewer -- subscribes here. Each frame the grab
loop hands to the sender is also handed to :class:`PreviewPublisher`, which downscales it to at most
:data:`emostream.wire.PREVIEW_MAX_WIDTH` pixels wide, JPEG-encodes it and publishes it as a ``PREVIEW``
message (topic = camera id) from its own thread.

Best effort by design, it must never slow capture: the grab loop only drops the frame into a one-frame
slot (a few microseconds); when the preview thread is still busy with the previous frame, the older
pending one is replaced and counted in ``emostream_frames_dropped_total{stage="preview",reason="busy"}``.
The PUB socket keeps at most :data:`SNDHWM` previews per subscriber and drops the rest (PUB semantics).
"""

from __future__ import annotations

import logging
import threading

import cv2
import zmq

from capture.sender import FrameSlot
from emostream.metrics import FRAMES, FRAMES_DROPPED
from emostream.security import CurveKeys, secure_server
from emostream.wire import PREVIEW_MAX_WIDTH, Frame, Preview, encode_preview

log = logging.getLogger("capture")

STAGE = "preview"
#: Previews queued per subscriber: a slow one loses previews, it never holds memory or capture back.
SNDHWM = 10
JPEG_QUALITY = 75


def make_preview(frame: Frame, max_width: int = PREVIEW_MAX_WIDTH) -> Preview:
    """A frame downscaled to at most ``max_width`` pixels wide (aspect kept; never enlarged)."""
    h, w = frame.image.shape[:2]
    image = frame.image
    scale = 1.0
    if w > max_width:
        scale = max_width / w
        size = (max_width, max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return Preview(camera=frame.camera, seq=frame.seq, ts_capture=frame.ts_capture, image=image, scale=scale)


class PreviewPublisher:
    """Binds a PUB socket on ``endpoint``; :meth:`publish` hands a frame over without waiting."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        camera: str,
        keys: CurveKeys | None = None,
        max_width: int = PREVIEW_MAX_WIDTH,
        jpeg_quality: int = JPEG_QUALITY,
    ) -> None:
        self.camera = camera
        self.max_width = max_width
        self.jpeg_quality = jpeg_quality
        self.socket = context.socket(zmq.PUB)
        secure_server(self.socket, keys, "capture")  # plain without keys
        self.socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self.socket.setsockopt(zmq.LINGER, 0)  # previews are never worth waiting for at exit
        self.socket.bind(endpoint)  # raises zmq.ZMQError; the caller reports it
        self.published = 0
        self._slot = FrameSlot()
        self._published = FRAMES.labels(stage=STAGE, camera=camera)
        self._busy = FRAMES_DROPPED.labels(stage=STAGE, camera=camera, reason="busy")
        # The socket is used by this thread alone from here on (ZeroMQ sockets are not thread-safe).
        self._thread = threading.Thread(target=self._run, name=f"preview-{camera}", daemon=True)
        self._thread.start()

    def publish(self, frame: Frame) -> None:
        """Called from the grab loop: never blocks. The frame's image must not be modified afterwards
        (capture never does: the sender may still be sending the same buffer)."""
        if self._slot.put_replace(frame) is not None:
            self._busy.inc()

    def _run(self) -> None:
        while not self._slot.drained:
            frame = self._slot.take(0.1)
            if frame is None:
                continue
            try:
                parts = encode_preview(make_preview(frame, self.max_width), self.jpeg_quality)
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK)  # PUB drops at the HWM, never blocks
            except (ValueError, zmq.ZMQError) as exc:
                log.warning("camera %s: preview of frame %d not published: %s", self.camera, frame.seq, exc)
                continue
            self.published += 1
            self._published.inc()

    def close(self) -> None:
        self._slot.close()
        self._thread.join(timeout=2)
        self.socket.close()
