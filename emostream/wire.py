"""The emostream wire format: every message that crosses a ZeroMQ socket between stages.

Version 1. Every message is a ZeroMQ multipart message ``[topic, header, *payload]``:

* ``topic``   -- routing bytes. ``b"frame"`` and ``b"faces"`` between internal stages; the camera id
  for events, so a SUB socket can filter by camera with a plain prefix subscription.
* ``header``  -- UTF-8 JSON object. Internal messages carry ``"v": WIRE_VERSION``; events carry
  ``"schema": EVENT_SCHEMA`` (the public, documented event format).
* ``payload`` -- zero or more binary parts (image bytes, face crops).

``FRAME``  capture -> detector: header ``{v, camera, seq, ts_capture, shape: [h, w, 3], encoding, key,
           droppable}``, one payload part: raw BGR bytes (h*w*3) or a JPEG; or, with ``encoding: "shm"``,
           an empty payload and ``shm: {name, offset, stamp}``: the raw pixels lie in the camera's
           shared-memory ring ``name`` at ``offset``, and the slot still holds them while its stamp
           (8 bytes just before ``offset``) equals ``stamp`` (see :mod:`emostream.shm`). ``key`` (optional, default
           true): run the face detector on this frame; false means "track the faces of this camera's last
           key frame", which the camera only sends to the worker that had that key frame. ``droppable``
           (optional, default false): the frame comes from a source whose drop policy lets later stages
           drop it when it is too old to matter (a live camera); false frames are never dropped for age.
``CREDIT`` detector -> capture (the reverse direction of the same connection), no payload: header
           ``{v, worker, done, window, load, interval, shm}``. The worker has finished ``done`` frames of
           this connection and accepts up to ``window`` frames unfinished on it; ``load`` is how many
           frames (all cameras) it holds unfinished; ``interval`` is its detection interval. Values are
           absolute, not increments, so a lost, repeated or late credit message never skews the count.
           ``shm`` (optional): the worker's shared-memory domain (:func:`emostream.shm.domain`); a camera
           of the same domain may send it ``shm`` frames, any other sends bytes.
``FACES``  detector -> classifier: header ``{v, camera, seq, ts_capture, ts_detect, frame_shape,
           boxes: [[x, y, w, h]...], scores: [...], crop_size, droppable}`` (droppable: the frame's),
           one payload part: N crops of ``crop_size`` x ``crop_size`` uint8 grayscale, row-major,
           concatenated.
``EVENT``  classifier -> sink -> users: topic = camera id, header = the event JSON, no payload.
``PREVIEW`` capture -> recorder (opt-in PUB, best effort): topic = camera id, header ``{v, camera, seq,
           ts_capture, shape: [h, w, 3], scale}`` (shape: the preview's; scale: preview width / frame
           width, so an event's boxes times ``scale`` land on the preview), one payload part: a JPEG.

Decoders accept anything exposing the buffer protocol (``bytes``, ``memoryview``, ``zmq.Frame``) so
receivers can use ``copy=False``. They raise :class:`WireError` -- never anything else -- for input
they cannot trust; ``WireError.reason`` is a short, fixed label suitable for a metrics label.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from emostream.shm import SharedFrameError, SharedFrames

WIRE_VERSION = 1
EVENT_SCHEMA = 1

#: FER2013 class order; index i of every score vector is EMOTIONS[i].
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

TOPIC_FRAME = b"frame"
TOPIC_FACES = b"faces"
TOPIC_CREDIT = b"credit"

MAX_SIDE = 8192  # largest frame side accepted: 8K video, far beyond any camera we serve
MAX_FACES = 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)  # scores travel on as float32: larger ones would become inf
CAMERA_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Part = bytes | memoryview | Any  # Any: zmq.Frame and other buffer-protocol objects


class Encoding(str, Enum):
    """How a frame's pixels travel. RAW is cheapest on one host; JPEG saves bandwidth across hosts."""

    RAW = "bgr"
    JPEG = "jpeg"
    #: Raw pixels in a shared-memory slot on the same machine; the message carries the slot's address.
    SHARED = "shm"


#: Every ``WireError.reason``: stages pre-declare their drop counters with these labels.
REJECT_REASONS = ("bad_part", "bad_parts", "wrong_topic", "bad_header", "bad_version", "bad_field", "bad_payload")


class WireError(ValueError):
    """A message that does not follow this format. ``reason`` is a low-cardinality metrics label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SharedSlot:
    """Where a frame's pixels lie in shared memory (see ``FRAME`` above and :mod:`emostream.shm`)."""

    name: str
    offset: int
    stamp: int


@dataclass(slots=True)
class Frame:
    """One captured video frame (BGR, uint8, HxWx3) and where and when it came from."""

    camera: str
    seq: int
    ts_capture: float
    image: np.ndarray
    #: Detect faces on this frame (True) or reuse the last key frame's tracks (False).
    key: bool = True
    #: Later stages may drop this frame once it is too old (live sources); never for files.
    droppable: bool = False
    #: Set on a received ``shm`` frame: ``image`` is a view of this slot, valid while its stamp holds.
    shared: SharedSlot | None = None


@dataclass(slots=True, frozen=True)
class Credit:
    """A detector worker's flow-control state for one camera connection (see ``CREDIT`` above)."""

    worker: str
    done: int
    window: int
    load: int
    interval: int = 1
    shm: str | None = None


@dataclass(slots=True)
class Faces:
    """The faces found in one frame: boxes in full-frame pixels, detector scores, classifier crops.

    ``boxes`` is int32 (N, 4) as x, y, w, h; ``scores`` float32 (N,); ``crops`` uint8
    (N, crop_size, crop_size). N may be zero: a frame without faces still travels, so that every
    processed frame yields an event.
    """

    camera: str
    seq: int
    ts_capture: float
    ts_detect: float
    frame_shape: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    crops: np.ndarray
    droppable: bool = False

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(slots=True)
class FaceEmotion:
    """One classified face inside an event.

    ``scores`` are the model's calibrated probabilities for this frame alone. With tracking (the
    classifier process always tracks, see :mod:`classifier.tracking`) a face also carries ``track``
    (an id that stays the same across frames of one face, per camera), ``smoothed`` (the track's
    probabilities smoothed over the last frames) and ``raw_emotion`` (the top class of ``scores``);
    ``emotion``/``confidence`` are then the top class of ``smoothed``, the label a display should show.
    These fields are optional: events without them are schema 1 as well.
    """

    box: tuple[int, int, int, int]
    emotion: str
    confidence: float
    scores: dict[str, float]
    detector_score: float | None = None
    track: int | None = None
    smoothed: dict[str, float] | None = None
    raw_emotion: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": [int(v) for v in self.box],
            "emotion": self.emotion,
            "confidence": round(float(self.confidence), 4),
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
        }
        if self.detector_score is not None:
            out["detector_score"] = round(float(self.detector_score), 4)
        if self.track is not None:
            out["track"] = int(self.track)
        if self.smoothed is not None:
            out["smoothed"] = {k: round(float(v), 4) for k, v in self.smoothed.items()}
        if self.raw_emotion is not None:
            out["raw_emotion"] = self.raw_emotion
        return out


@dataclass(slots=True)
class EmotionEvent:
    """The public event: one per processed frame, faces may be empty. See README 'Event format'."""

    camera: str
    frame: int
    ts_capture: float
    ts_event: float
    faces: list[FaceEmotion] = field(default_factory=list)
    type: str = "faces"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": EVENT_SCHEMA,
            "type": self.type,
            "camera": self.camera,
            "frame": self.frame,
            "ts_capture": self.ts_capture,
            "ts_event": self.ts_event,
            "faces": [f.to_dict() for f in self.faces],
        }


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _buffer(part: Part) -> memoryview:
    try:
        view = memoryview(part)
        # cast() refuses views with a zero in their shape; an empty payload is still a valid one.
        return view.cast("B") if view.nbytes else memoryview(b"")
    except TypeError as exc:
        raise WireError("bad_part", f"message part of type {type(part).__name__} is not bytes") from exc


def _header(part: Part) -> dict[str, Any]:
    try:
        header = json.loads(bytes(_buffer(part)).decode("utf-8"))
    # ValueError: also what json raises for an integer of over 4300 digits (Python's int-string limit).
    except (ValueError, RecursionError) as exc:
        raise WireError("bad_header", f"header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise WireError("bad_header", "header is not a JSON object")
    return header


def _dumps(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _check_parts(parts: Sequence[Part], topic: bytes | None, count: int) -> None:
    if len(parts) != count:
        raise WireError("bad_parts", f"expected {count} message parts, got {len(parts)}")
    if topic is not None and bytes(_buffer(parts[0])) != topic:
        raise WireError("wrong_topic", f"expected topic {topic!r}")


def _check_version(header: dict[str, Any], key: str, expected: int) -> None:
    version = header.get(key)
    if version != expected or isinstance(version, bool):
        raise WireError("bad_version", f"{key}={version!r}, this build speaks {expected}")


def _camera(header: dict[str, Any]) -> str:
    camera = header.get("camera")
    if not isinstance(camera, str) or not CAMERA_ID_PATTERN.match(camera):
        raise WireError("bad_field", f"camera={camera!r} is not a camera id")
    return camera


def _check_camera_topic(parts: Sequence[Part], camera: str, what: str) -> None:
    """Events and previews are published with their camera id as the topic (SUB prefix filtering)."""
    if bytes(_buffer(parts[0])) != camera.encode("utf-8"):
        raise WireError("wrong_topic", f"{what} topic is not its camera id")


def _int(header: dict[str, Any], key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError("bad_field", f"{key}={value!r} is not an integer in [{lo}, {hi}]")
    return value


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int no float can hold: JSON integers are unbounded
        return False


def _time(header: dict[str, Any], key: str) -> float:
    value = header.get(key)
    if not _is_number(value) or value < 0:
        raise WireError("bad_field", f"{key}={value!r} is not a timestamp")
    return float(value)


def _bool(header: dict[str, Any], key: str, default: bool) -> bool:
    value = header.get(key, default)
    if not isinstance(value, bool):
        raise WireError("bad_field", f"{key}={value!r} is not a boolean")
    return value


def _int_list(value: Any, key: str, length: int, lo: int, hi: int) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value)
    ):
        raise WireError("bad_field", f"{key}={value!r} is not {length} integers in [{lo}, {hi}]")
    return value


def camera_id_error(camera: str) -> str | None:
    """Why ``camera`` cannot be a camera id, or None when it can (used by config validation too)."""
    if CAMERA_ID_PATTERN.match(camera):
        return None
    return "camera ids are 1-64 characters of letters, digits, '_', '.', '-', starting alphanumeric"


# ---------------------------------------------------------------------------------------------
# FRAME: capture -> detector
# ---------------------------------------------------------------------------------------------


def encode_frame(
    frame: Frame, encoding: Encoding = Encoding.RAW, jpeg_quality: int = 80, slot: SharedSlot | None = None
) -> list[Any]:
    """Serialize a frame. RAW sends the array's own buffer (no copy when it is contiguous); with ``slot``
    (the pixels already written there) only the slot's address travels, whatever ``encoding`` says."""
    image = frame.image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frames are HxWx3 uint8 BGR, got {image.dtype} {image.shape}")
    header = {
        "v": WIRE_VERSION,
        "camera": frame.camera,
        "seq": int(frame.seq),
        "ts_capture": float(frame.ts_capture),
        "shape": list(image.shape),
        "encoding": Encoding(encoding).value,
    }
    if not frame.key:
        header["key"] = False
    if frame.droppable:
        header["droppable"] = True
    if slot is not None:
        header["encoding"] = Encoding.SHARED.value
        header["shm"] = {"name": slot.name, "offset": int(slot.offset), "stamp": int(slot.stamp)}
        return [TOPIC_FRAME, _dumps(header), b""]
    if encoding == Encoding.SHARED:
        raise ValueError("shared-memory frames need the slot they were written to")
    if encoding == Encoding.JPEG:
        import cv2

        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        payload: Any = buf.tobytes()
    else:
        payload = np.ascontiguousarray(image).data
    return [TOPIC_FRAME, _dumps(header), payload]


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless...); C4, C8 and CC are not SOFs.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame segment without decoding it; None if there is none."""
    buf = bytes(data[:65536]) if len(data) > 65536 else bytes(data)  # the SOF comes before the scan data
    if buf[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(buf[i + 5 : i + 7], "big"), int.from_bytes(buf[i + 7 : i + 9], "big")
        if marker == 0xDA or length < 2:  # start of scan before any SOF, or a broken segment
            return None
        i += 2 + length
    return None


def decode_frame(parts: Sequence[Part], shared: SharedFrames | None = None) -> Frame:
    """Parse and validate a FRAME message. The returned image is read-only when RAW and zero-copy, and
    when ``shm``: a view of the slot (``shared`` maps the rings; without it such frames are refused).
    Check ``shared.current`` after using a shared frame's pixels: see :mod:`emostream.shm`."""
    _check_parts(parts, TOPIC_FRAME, 3)
    header = _header(parts[1])
    _check_version(header, "v", WIRE_VERSION)
    camera = _camera(header)
    seq = _int(header, "seq")
    ts_capture = _time(header, "ts_capture")
    h, w, c = _int_list(header.get("shape"), "shape", 3, 1, MAX_SIDE)
    if c != 3:
        raise WireError("bad_field", f"frames have 3 channels, header says {c}")
    encoding = header.get("encoding")
    key = _bool(header, "key", True)
    droppable = _bool(header, "droppable", False)
    payload = _buffer(parts[2])
    slot = None
    if encoding == Encoding.SHARED.value:
        slot = _shared_slot(header.get("shm"))
        if shared is None:
            raise WireError("bad_field", "a shared-memory frame, but this receiver does not read shared memory")
        if payload.nbytes:
            raise WireError("bad_payload", f"a shared-memory frame carries {payload.nbytes} payload bytes")
        try:
            image = shared.view(slot.name, slot.offset, (h, w, 3))
        except SharedFrameError as exc:
            raise WireError("bad_payload", str(exc)) from None
    elif encoding == Encoding.RAW.value:
        if payload.nbytes != h * w * 3:
            raise WireError("bad_payload", f"raw payload is {payload.nbytes} bytes, shape needs {h * w * 3}")
        image = np.frombuffer(payload, dtype=np.uint8).reshape(h, w, 3)
    elif encoding == Encoding.JPEG.value:
        import cv2

        if not payload.nbytes:  # cv2.imdecode raises cv2.error on an empty buffer
            raise WireError("bad_payload", "JPEG payload is empty")
        # Read the size the JPEG itself declares before decoding it: a few hundred bytes can declare
        # 16000x16000 pixels, which imdecode would allocate (1.5 GB) before any check could refuse it.
        declared = jpeg_size(payload)
        if declared != (h, w):
            raise WireError("bad_payload", f"JPEG declares {declared}, header says {(h, w)}")
        image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise WireError("bad_payload", "JPEG payload does not decode")
        if image.shape != (h, w, 3):
            raise WireError("bad_payload", f"JPEG decodes to {image.shape}, header says {(h, w, 3)}")
    else:
        raise WireError("bad_field", f"encoding={encoding!r} is not one of bgr, jpeg, shm")
    return Frame(camera=camera, seq=seq, ts_capture=ts_capture, image=image, key=key, droppable=droppable, shared=slot)


def _shared_slot(value: Any) -> SharedSlot:
    if not isinstance(value, dict):
        raise WireError("bad_field", "shm must be an object {name, offset, stamp}")
    name = value.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise WireError("bad_field", f"shm.name={name!r} is not a ring name")
    return SharedSlot(name=name, offset=_int(value, "offset", 0, 2**40), stamp=_int(value, "stamp", 1))


# ---------------------------------------------------------------------------------------------
# CREDIT: detector -> capture
# ---------------------------------------------------------------------------------------------

MAX_WINDOW = 64
MAX_INTERVAL = 100


def encode_credit(credit: Credit) -> list[bytes]:
    header = {
        "v": WIRE_VERSION,
        "worker": credit.worker,
        "done": int(credit.done),
        "window": int(credit.window),
        "load": int(credit.load),
        "interval": int(credit.interval),
    }
    if credit.shm is not None:
        header["shm"] = credit.shm
    return [TOPIC_CREDIT, _dumps(header)]


def decode_credit(parts: Sequence[Part]) -> Credit:
    _check_parts(parts, TOPIC_CREDIT, 2)
    header = _header(parts[1])
    _check_version(header, "v", WIRE_VERSION)
    worker = header.get("worker")
    if not isinstance(worker, str) or not 0 < len(worker) <= 64:
        raise WireError("bad_field", f"worker={worker!r} is not a worker name")
    shm = header.get("shm")
    if shm is not None and (not isinstance(shm, str) or not 0 < len(shm) <= 128):
        raise WireError("bad_field", f"shm={shm!r} is not a shared-memory domain")
    return Credit(
        worker=worker,
        done=_int(header, "done"),
        window=_int(header, "window", 0, MAX_WINDOW),
        load=_int(header, "load", 0, 1_000_000),
        interval=_int(header, "interval", 1, MAX_INTERVAL),
        shm=shm,
    )


# ---------------------------------------------------------------------------------------------
# FACES: detector -> classifier
# ---------------------------------------------------------------------------------------------


def encode_faces(faces: Faces) -> list[Any]:
    n = len(faces)
    crops = np.ascontiguousarray(faces.crops, dtype=np.uint8)
    if crops.ndim != 3 or crops.shape[0] != n or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops must be (N, S, S) uint8 with N={n}, got {crops.shape}")
    header = {
        "v": WIRE_VERSION,
        "camera": faces.camera,
        "seq": int(faces.seq),
        "ts_capture": float(faces.ts_capture),
        "ts_detect": float(faces.ts_detect),
        "frame_shape": [int(faces.frame_shape[0]), int(faces.frame_shape[1])],
        "boxes": np.asarray(faces.boxes, dtype=np.int64).reshape(n, 4).tolist(),
        "scores": [round(float(s), 4) for s in np.asarray(faces.scores).reshape(n)],
        "crop_size": int(crops.shape[1]) if n else 48,
    }
    if faces.droppable:
        header["droppable"] = True
    return [TOPIC_FACES, _dumps(header), crops.data]


def decode_faces(parts: Sequence[Part]) -> Faces:
    _check_parts(parts, TOPIC_FACES, 3)
    header = _header(parts[1])
    _check_version(header, "v", WIRE_VERSION)
    camera = _camera(header)
    seq = _int(header, "seq")
    ts_capture = _time(header, "ts_capture")
    ts_detect = _time(header, "ts_detect")
    fh, fw = _int_list(header.get("frame_shape"), "frame_shape", 2, 1, MAX_SIDE)
    crop_size = _int(header, "crop_size", 8, 512)
    droppable = _bool(header, "droppable", False)
    boxes = header.get("boxes")
    scores = header.get("scores")
    if not isinstance(boxes, list) or len(boxes) > MAX_FACES:
        raise WireError("bad_field", f"boxes must be a list of at most {MAX_FACES}")
    for box in boxes:
        _int_list(box, "box", 4, -MAX_SIDE, MAX_SIDE)
    if (
        not isinstance(scores, list)
        or len(scores) != len(boxes)
        or not all(_is_number(s) and abs(s) <= FLOAT32_MAX for s in scores)
    ):
        raise WireError("bad_field", "scores must be one finite float32 number per box")
    n = len(boxes)
    payload = _buffer(parts[2])
    if payload.nbytes != n * crop_size * crop_size:
        raise WireError("bad_payload", f"crops are {payload.nbytes} bytes, {n} boxes need {n * crop_size**2}")
    return Faces(
        camera=camera,
        seq=seq,
        ts_capture=ts_capture,
        ts_detect=ts_detect,
        frame_shape=(fh, fw),
        boxes=np.asarray(boxes, dtype=np.int32).reshape(n, 4),
        scores=np.asarray(scores, dtype=np.float32),
        crops=np.frombuffer(payload, dtype=np.uint8).reshape(n, crop_size, crop_size),
        droppable=droppable,
    )


# ---------------------------------------------------------------------------------------------
# EVENT: classifier -> sink -> subscribers
# ---------------------------------------------------------------------------------------------


CAMERA_STATUSES = ("up", "down")


def camera_event(camera: str, status: str, reason: str, ts_event: float) -> dict[str, Any]:
    """A ``type: camera`` event: the camera started delivering frames ("up") or its live source failed
    ("down"; capture retries it with backoff and sends "up" once frames flow again)."""
    if status not in CAMERA_STATUSES:
        raise ValueError(f"camera status {status!r} is not one of {CAMERA_STATUSES}")
    return {
        "schema": EVENT_SCHEMA,
        "type": "camera",
        "camera": camera,
        "ts_event": ts_event,
        "status": status,
        "reason": reason,
    }


def encode_event(event: EmotionEvent | dict[str, Any]) -> list[bytes]:
    body = event.to_dict() if isinstance(event, EmotionEvent) else event
    return [str(body["camera"]).encode("utf-8"), _dumps(body)]


def decode_event(parts: Sequence[Part]) -> dict[str, Any]:
    """Validate an event and return it as the JSON object users see (a dict, ready to print)."""
    _check_parts(parts, None, 2)
    event = _header(parts[1])
    _check_version(event, "schema", EVENT_SCHEMA)
    camera = _camera(event)
    _check_camera_topic(parts, camera, "event")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise WireError("bad_field", "event type missing")
    _time(event, "ts_event")
    if kind == "faces":
        _int(event, "frame")
        _time(event, "ts_capture")
        faces = event.get("faces")
        if not isinstance(faces, list):
            raise WireError("bad_field", "faces must be a list")
        for face in faces:
            if not isinstance(face, dict) or face.get("emotion") not in EMOTIONS:
                raise WireError("bad_field", f"face {face!r} lacks a known emotion")
            _int_list(face.get("box"), "box", 4, -MAX_SIDE, MAX_SIDE)
            # Tracking fields are optional (events without them are schema 1 too); present, they must be sane.
            if "track" in face:
                _int(face, "track")
            if "raw_emotion" in face and face["raw_emotion"] not in EMOTIONS:
                raise WireError("bad_field", f"raw_emotion={face['raw_emotion']!r} is not a known emotion")
            smoothed = face.get("smoothed")
            if "smoothed" in face and (
                not isinstance(smoothed, dict) or not all(_is_number(v) for v in smoothed.values())
            ):
                raise WireError("bad_field", "smoothed must map emotions to numbers")
    elif kind == "camera" and event.get("status") not in CAMERA_STATUSES:
        raise WireError("bad_field", f"camera event status {event.get('status')!r} is not one of {CAMERA_STATUSES}")
    return event


# ---------------------------------------------------------------------------------------------
# PREVIEW: capture -> recorder (opt-in, best effort)
# ---------------------------------------------------------------------------------------------

#: Largest preview width capture publishes; larger frames are downscaled, aspect kept.
PREVIEW_MAX_WIDTH = 640


@dataclass(slots=True)
class Preview:
    """A downscaled copy of a frame capture sent, for viewers and the recorder.

    ``scale`` is preview width / frame width (<= 1): an event box ``[x, y, w, h]`` in frame pixels is at
    ``[x, y, w, h] * scale`` in the preview.
    """

    camera: str
    seq: int
    ts_capture: float
    image: np.ndarray
    scale: float = 1.0


def encode_preview(preview: Preview, jpeg_quality: int = 75) -> list[bytes]:
    """Serialize a preview (the image is sent as a JPEG; resizing is the caller's business)."""
    import cv2

    image = preview.image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"previews are HxWx3 uint8 BGR, got {image.dtype} {image.shape}")
    if not (_is_number(preview.scale) and 0 < preview.scale <= 1):
        raise ValueError(f"scale {preview.scale!r} is not in (0, 1]")
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    header = {
        "v": WIRE_VERSION,
        "camera": preview.camera,
        "seq": int(preview.seq),
        "ts_capture": float(preview.ts_capture),
        "shape": list(image.shape),
        "scale": float(preview.scale),
    }
    return [preview.camera.encode("utf-8"), _dumps(header), buf.tobytes()]


def decode_preview(parts: Sequence[Part]) -> Preview:
    """Parse, validate and decode a PREVIEW message (the JPEG's declared size is checked before decoding)."""
    import cv2

    _check_parts(parts, None, 3)
    header = _header(parts[1])
    _check_version(header, "v", WIRE_VERSION)
    camera = _camera(header)
    _check_camera_topic(parts, camera, "preview")
    seq = _int(header, "seq")
    ts_capture = _time(header, "ts_capture")
    h, w, c = _int_list(header.get("shape"), "shape", 3, 1, MAX_SIDE)
    if c != 3:
        raise WireError("bad_field", f"previews have 3 channels, header says {c}")
    scale = header.get("scale")
    if not _is_number(scale) or not 0 < scale <= 1:
        raise WireError("bad_field", f"scale={scale!r} is not a number in (0, 1]")
    payload = _buffer(parts[2])
    if not payload.nbytes:
        raise WireError("bad_payload", "JPEG payload is empty")
    declared = jpeg_size(payload)
    if declared != (h, w):
        raise WireError("bad_payload", f"JPEG declares {declared}, header says {(h, w)}")
    image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape != (h, w, 3):
        raise WireError("bad_payload", "JPEG payload does not decode to the header's shape")
    return Preview(camera=camera, seq=seq, ts_capture=ts_capture, image=image, scale=float(scale))
