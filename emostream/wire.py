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
``EVENT``  classifier -> sink -> users: topic = camera id, header = the event JSON, no payload. Decoded
           into :class:`EmotionEvent`, :class:`CameraEvent` or (types added later) :class:`OtherEvent`;
           ``docs/event.schema.json`` is generated from them (``python -m emostream.schema``).
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
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, TypeAlias, TypeGuard

import numpy as np

from emostream.jpeg import jpeg_size
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
#: JPEG quality of frames sent with the jpeg encoding (a camera's ``jpeg_quality`` setting).
DEFAULT_JPEG_QUALITY = 80
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


@dataclass(slots=True, frozen=True)
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


@dataclass(slots=True, frozen=True)
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


def _check_camera(camera: Any) -> str:
    if not isinstance(camera, str) or not CAMERA_ID_PATTERN.match(camera):
        raise WireError("bad_field", f"camera={camera!r} is not a camera id")
    return camera


def _camera(header: Mapping[str, Any]) -> str:
    return _check_camera(header.get("camera"))


def _check_camera_topic(parts: Sequence[Part], camera: str, what: str) -> None:
    """Events and previews are published with their camera id as the topic (SUB prefix filtering)."""
    if bytes(_buffer(parts[0])) != camera.encode("utf-8"):
        raise WireError("wrong_topic", f"{what} topic is not its camera id")


def _check_int(value: Any, key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError("bad_field", f"{key}={value!r} is not an integer in [{lo}, {hi}]")
    return value


def _int(header: Mapping[str, Any], key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    return _check_int(header.get(key), key, lo, hi)


def _is_number(value: Any) -> TypeGuard[float]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int no float can hold: JSON integers are unbounded
        return False


def _check_number(value: Any, key: str) -> float:
    if not _is_number(value):
        raise WireError("bad_field", f"{key}={value!r} is not a finite number")
    return value


def _check_time(value: Any, key: str) -> float:
    if not _is_number(value) or value < 0:
        raise WireError("bad_field", f"{key}={value!r} is not a timestamp")
    return value


def _time(header: Mapping[str, Any], key: str) -> float:
    return float(_check_time(header.get(key), key))


def _bool(header: Mapping[str, Any], key: str, default: bool) -> bool:
    value = header.get(key, default)
    if not isinstance(value, bool):
        raise WireError("bad_field", f"{key}={value!r} is not a boolean")
    return value


def _int_list(value: Any, key: str, length: int, lo: int, hi: int) -> list[int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value)
    ):
        raise WireError("bad_field", f"{key}={value!r} is not {length} integers in [{lo}, {hi}]")
    return list(value)


def _origin_header(camera: str, seq: int, ts_capture: float) -> dict[str, Any]:
    """The fields every internal message about one frame opens with."""
    return {"v": WIRE_VERSION, "camera": camera, "seq": int(seq), "ts_capture": float(ts_capture)}


def _internal_header(parts: Sequence[Part], topic: bytes | None, count: int) -> dict[str, Any]:
    """Check an internal message's parts, topic and version; return its header."""
    _check_parts(parts, topic, count)
    header = _header(parts[1])
    _check_version(header, "v", WIRE_VERSION)
    return header


def _origin(header: Mapping[str, Any]) -> tuple[str, int, float]:
    """(camera, seq, ts_capture) of an internal message's header."""
    return _camera(header), _int(header, "seq"), _time(header, "ts_capture")


def _image_shape(header: Mapping[str, Any], what: str) -> tuple[int, int]:
    """(h, w) of a header's ``shape: [h, w, 3]``."""
    h, w, c = _int_list(header.get("shape"), "shape", 3, 1, MAX_SIDE)
    if c != 3:
        raise WireError("bad_field", f"{what} have 3 channels, header says {c}")
    return h, w


def camera_id_error(camera: str) -> str | None:
    """Why ``camera`` cannot be a camera id, or None when it can (used by config validation too)."""
    if CAMERA_ID_PATTERN.match(camera):
        return None
    return "camera ids are 1-64 characters of letters, digits, '_', '.', '-', starting alphanumeric"


# ---------------------------------------------------------------------------------------------
# FRAME: capture -> detector
# ---------------------------------------------------------------------------------------------


def encode_frame(
    frame: Frame,
    encoding: Encoding = Encoding.RAW,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    slot: SharedSlot | None = None,
) -> list[Any]:
    """Serialize a frame. RAW sends the array's own buffer (no copy when it is contiguous); with ``slot``
    (the pixels already written there) only the slot's address travels, whatever ``encoding`` says."""
    image = frame.image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frames are HxWx3 uint8 BGR, got {image.dtype} {image.shape}")
    header = _origin_header(frame.camera, frame.seq, frame.ts_capture)
    header.update(shape=list(image.shape), encoding=Encoding(encoding).value)
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


def decode_frame(parts: Sequence[Part], shared: SharedFrames | None = None) -> Frame:
    """Parse and validate a FRAME message. The returned image is read-only when RAW and zero-copy, and
    when ``shm``: a view of the slot (``shared`` maps the rings; without it such frames are refused).
    Check ``shared.current`` after using a shared frame's pixels: see :mod:`emostream.shm`."""
    header = _internal_header(parts, TOPIC_FRAME, 3)
    camera, seq, ts_capture = _origin(header)
    h, w = _image_shape(header, "frames")
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
        decoded = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise WireError("bad_payload", "JPEG payload does not decode")
        image = decoded
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
    header = _internal_header(parts, TOPIC_CREDIT, 2)
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
    header = _origin_header(faces.camera, faces.seq, faces.ts_capture)
    header.update(
        ts_detect=float(faces.ts_detect),
        frame_shape=[int(faces.frame_shape[0]), int(faces.frame_shape[1])],
        boxes=np.asarray(faces.boxes, dtype=np.int64).reshape(n, 4).tolist(),
        scores=[round(float(s), 4) for s in np.asarray(faces.scores).reshape(n)],
        crop_size=int(crops.shape[1]) if n else 48,
    )
    if faces.droppable:
        header["droppable"] = True
    return [TOPIC_FACES, _dumps(header), crops.data]


def decode_faces(parts: Sequence[Part]) -> Faces:
    header = _internal_header(parts, TOPIC_FACES, 3)
    camera, seq, ts_capture = _origin(header)
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
_INT64_MAX = 2**63 - 1
_TIMESTAMP: dict[str, Any] = {"minimum": 0}
_BY_EMOTION: dict[str, Any] = {"propertyNames": {"enum": EMOTIONS}}


def _doc(doc: str, default: Any = MISSING, required: bool = False, **schema: Any) -> Any:
    """A field with its one-line meaning and its JSON Schema constraints (see :mod:`emostream.schema`).
    ``required``: the wire needs the key although the constructor has a default."""
    return field(default=default, metadata={"doc": doc, "schema": schema, "required": required or default is MISSING})


def _extra() -> Any:
    return field(default_factory=dict, metadata={"extra": True})


def _check_emotion(value: Any, key: str) -> str:
    if value not in EMOTIONS:
        raise WireError("bad_field", f"{key}={value!r} is not a known emotion")
    return value


def _probabilities(value: Any, key: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(k in EMOTIONS and _is_number(v) for k, v in value.items()):
        raise WireError("bad_field", f"{key} must map emotions to numbers")
    return dict(value)


def _known(obj: dict[str, Any], cls: type) -> dict[str, Any]:
    """The keyword arguments of ``cls`` found in ``obj`` (a JSON object), the rest as ``extra``.

    An optional key that is present must hold a value: ``null`` is refused like any other wrong type."""
    wanted = {f.name: f.metadata.get("required") for f in fields(cls) if f.name != "extra"}
    for name in wanted.keys() & obj.keys():
        if obj[name] is None:
            raise WireError("bad_field", f"{name}=None is not a value")
    kwargs = {name: obj.get(name) for name, required in wanted.items() if required or name in obj}
    envelope = ("schema", "type") if hasattr(cls, "type") else ()  # an event's, not its fields
    kwargs["extra"] = {k: v for k, v in obj.items() if k not in wanted and k not in envelope}
    return kwargs


class _JsonValue:
    """What events and their faces share: built from a JSON object, turned back into the same object."""

    __slots__ = ()
    # Declared, not defined: what every dataclass built on this has, so that fields() and extra type-check here.
    __dataclass_fields__: ClassVar[dict[str, Any]]
    extra: Mapping[str, Any]

    @classmethod
    def from_dict(cls, obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise WireError("bad_field", f"{obj!r} is not an object")
        return cls(**_known(obj, cls))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every set field in declaration order, then ``extra``."""
        out: dict[str, Any] = {"schema": EVENT_SCHEMA, "type": self.type} if hasattr(self, "type") else {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not None:
                out[f.name] = _plain(value)
        return {**out, **self.extra}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, _JsonValue):
        return value.to_dict()
    return dict(value) if isinstance(value, Mapping) else value


@dataclass(slots=True, frozen=True)
class FaceEmotion(_JsonValue):
    """One classified face inside an event.

    ``scores`` are the model's calibrated probabilities for this frame alone. With tracking (the
    classifier process always tracks, see :mod:`classifier.tracking`) a face also carries ``track``,
    ``smoothed`` and ``raw_emotion``; ``emotion``/``confidence`` are then the top class of ``smoothed``,
    the label a display should show. These fields are optional: events without them are schema 1 as well.
    """

    box: tuple[int, int, int, int] = _doc(
        "[x, y, w, h] in the pixels of the frame as sent by capture", items={"minimum": -MAX_SIDE, "maximum": MAX_SIDE}
    )
    emotion: str = _doc("the label to show: top class of smoothed (of scores without tracking)", enum=EMOTIONS)
    confidence: float = _doc("probability of emotion")
    scores: Mapping[str, float] = _doc("calibrated probability of each class, from this frame alone", **_BY_EMOTION)
    detector_score: float | None = _doc("detector confidence (Haar: 1.0)", None)
    track: int | None = _doc(
        "the same integer for the same face across its camera's frames", None, minimum=0, maximum=_INT64_MAX
    )
    smoothed: Mapping[str, float] | None = _doc(
        "the track's probabilities smoothed over its last frames", None, **_BY_EMOTION
    )
    raw_emotion: str | None = _doc("top class of scores (flickers more than emotion)", None, enum=EMOTIONS)
    #: Keys this build does not know (a newer producer's): kept, so the sink's log passes them on.
    extra: Mapping[str, Any] = _extra()

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", tuple(_int_list(self.box, "box", 4, -MAX_SIDE, MAX_SIDE)))
        _check_emotion(self.emotion, "emotion")
        _check_number(self.confidence, "confidence")
        object.__setattr__(self, "scores", _probabilities(self.scores, "scores"))
        if self.detector_score is not None:
            _check_number(self.detector_score, "detector_score")
        if self.track is not None:
            _check_int(self.track, "track")
        if self.smoothed is not None:
            object.__setattr__(self, "smoothed", _probabilities(self.smoothed, "smoothed"))
        if self.raw_emotion is not None:
            _check_emotion(self.raw_emotion, "raw_emotion")


@dataclass(slots=True, frozen=True)
class EmotionEvent(_JsonValue):
    """The ``faces`` event: one per processed frame, ``faces`` may be empty."""

    type: ClassVar[str] = "faces"
    camera: str = _doc("camera id", pattern=CAMERA_ID_PATTERN.pattern)
    frame: int = _doc("the camera's frame sequence number", minimum=0, maximum=_INT64_MAX)
    ts_capture: float = _doc("Unix seconds when the frame was grabbed", **_TIMESTAMP)
    ts_event: float = _doc("Unix seconds when the frame was classified", **_TIMESTAMP)
    #: Required on the wire (``[]`` for a frame without faces); the default is for building events.
    faces: tuple[FaceEmotion, ...] = _doc("the faces found in the frame, in detector order", (), required=True)
    #: Splits an event's latency into the part before the classifier and the part in it.
    ts_detect: float | None = _doc("Unix seconds when the detector finished the frame", None, **_TIMESTAMP)
    extra: Mapping[str, Any] = _extra()

    def __post_init__(self) -> None:
        _check_camera(self.camera)
        _check_int(self.frame, "frame")
        _check_time(self.ts_capture, "ts_capture")
        _check_time(self.ts_event, "ts_event")
        if self.ts_detect is not None:
            _check_time(self.ts_detect, "ts_detect")
        if not isinstance(self.faces, (list, tuple)) or not all(isinstance(f, FaceEmotion) for f in self.faces):
            raise WireError("bad_field", "faces must be a list of faces")
        object.__setattr__(self, "faces", tuple(self.faces))

    @classmethod
    def from_dict(cls, obj: Any) -> EmotionEvent:
        kwargs = _known(obj, cls)
        if not isinstance(kwargs["faces"], list):
            raise WireError("bad_field", "faces must be a list")
        kwargs["faces"] = tuple(FaceEmotion.from_dict(face) for face in kwargs["faces"])
        return cls(**kwargs)


@dataclass(slots=True, frozen=True)
class CameraEvent(_JsonValue):
    """The ``camera`` event: the camera started delivering frames ("up") or its live source failed
    ("down"; capture retries it with backoff and sends "up" once frames flow again)."""

    type: ClassVar[str] = "camera"
    camera: str = _doc("camera id", pattern=CAMERA_ID_PATTERN.pattern)
    ts_event: float = _doc("Unix seconds of the change", **_TIMESTAMP)
    status: str = _doc("up: frames flow; down: the live source failed", enum=CAMERA_STATUSES)
    reason: str = _doc("why, in words")
    extra: Mapping[str, Any] = _extra()

    def __post_init__(self) -> None:
        _check_camera(self.camera)
        _check_time(self.ts_event, "ts_event")
        if self.status not in CAMERA_STATUSES:
            raise WireError("bad_field", f"camera event status {self.status!r} is not one of {CAMERA_STATUSES}")
        if not isinstance(self.reason, str):
            raise WireError("bad_field", f"reason={self.reason!r} is not a string")


@dataclass(slots=True, frozen=True)
class OtherEvent(_JsonValue):
    """An event of a type this build does not know: readers ignore it, the sink passes it on."""

    type: str = _doc("faces, camera, or a type added later: ignore what you do not know", minLength=1)
    camera: str = _doc("camera id", pattern=CAMERA_ID_PATTERN.pattern)
    ts_event: float = _doc("Unix seconds of the event", **_TIMESTAMP)
    extra: Mapping[str, Any] = _extra()

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type or self.type in _EVENT_TYPES:
            raise WireError("bad_field", f"type={self.type!r} is not another event type")
        _check_camera(self.camera)
        _check_time(self.ts_event, "ts_event")


Event: TypeAlias = EmotionEvent | CameraEvent | OtherEvent
#: The event types of schema 1, by their ``type``.
_EVENT_TYPES: dict[str, type[EmotionEvent | CameraEvent | OtherEvent]] = {"faces": EmotionEvent, "camera": CameraEvent}


def camera_event(camera: str, status: str, reason: str, ts_event: float) -> CameraEvent:
    """A camera up/down event (:class:`CameraEvent`); a bad status raises :class:`WireError` (a ValueError)."""
    return CameraEvent(camera=camera, status=status, reason=reason, ts_event=ts_event)


def encode_event(event: Event) -> list[bytes]:
    return [event.camera.encode("utf-8"), _dumps(event.to_dict())]


def decode_event(parts: Sequence[Part]) -> Event:
    """Validate an event: its typed value, whose ``to_dict()`` is the JSON object users see."""
    _check_parts(parts, None, 2)
    body = _header(parts[1])
    _check_version(body, "schema", EVENT_SCHEMA)
    camera = _camera(body)
    _check_camera_topic(parts, camera, "event")
    kind = body.get("type")
    if not isinstance(kind, str) or not kind:
        raise WireError("bad_field", "event type missing")
    return _EVENT_TYPES.get(kind, OtherEvent).from_dict(body)


# ---------------------------------------------------------------------------------------------
# PREVIEW: capture -> recorder (opt-in, best effort)
# ---------------------------------------------------------------------------------------------

#: Largest preview width capture publishes; larger frames are downscaled, aspect kept.
PREVIEW_MAX_WIDTH = 640


@dataclass(slots=True, frozen=True)
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
    header = _origin_header(preview.camera, preview.seq, preview.ts_capture)
    header.update(shape=list(image.shape), scale=float(preview.scale))
    return [preview.camera.encode("utf-8"), _dumps(header), buf.tobytes()]


def decode_preview(parts: Sequence[Part]) -> Preview:
    """Parse, validate and decode a PREVIEW message (the JPEG's declared size is checked before decoding)."""
    import cv2

    header = _internal_header(parts, None, 3)
    camera, seq, ts_capture = _origin(header)
    _check_camera_topic(parts, camera, "preview")
    h, w = _image_shape(header, "previews")
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
