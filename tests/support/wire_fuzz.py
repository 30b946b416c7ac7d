"""Malformed wire messages for the fuzz tests: valid templates of every kind and a seeded mutator whose
output the local decoder rejects, with the reason it gives."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from emostream.wire import (
    EMOTIONS,
    MAX_SIDE,
    TOPIC_CREDIT,
    TOPIC_FACES,
    TOPIC_FRAME,
    CameraEvent,
    Credit,
    EmotionEvent,
    Encoding,
    FaceEmotion,
    Faces,
    Frame,
    OtherEvent,
    WireError,
    camera_event,
    decode_credit,
    decode_event,
    decode_faces,
    decode_frame,
    encode_credit,
    encode_event,
    encode_faces,
    encode_frame,
)

KINDS = ("frame", "faces", "event", "credit")
#: numpy's warning when a score beyond float32 is cast (the decoder then rejects it).
FLOAT32_OVERFLOW = "ignore:overflow encountered in cast:RuntimeWarning"
DECODERS: dict[str, Callable[[Sequence[Any]], Any]] = {
    "frame": decode_frame,
    "faces": decode_faces,
    "event": decode_event,
    "credit": decode_credit,
}

# Values that break naive field checks: wrong types, bounds +-1, non-finite floats, odd strings.
# Integers stay within float range and Python's 4300-digit limit: those are the dedicated tests at the
# end of this file.
NASTY_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2, 3, 4, 7, 8, 48, 64, 65, 100, 101, 512, 513, 1024, 1025,
    MAX_SIDE, MAX_SIDE + 1, 1_000_001, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**300,
    0.5, -0.0, 1.0, 1e-300, 1e308, -1e308, float("nan"), float("inf"), float("-inf"),
    "", "0", "1", "1.5", "cam-0", "../etc", "a b", "x" * 300, "\u00fcn\u00efc\u00f8de", "\x00", "bgr", "jpeg", "happy",
    [], [0], [1], [1, 2], [1, 2, 3], [0, 0, 3], [1, 1, 3], [MAX_SIDE + 1, 1, 3], [1, 2, 3, 4], [[1, 2, 3, 4]],
    [[1, 2, 3]], [None], ["1"], [0.5], [float("nan")], [True, False], {}, {"a": 1}, {"emotion": "happy"},
)  # fmt: skip

# Keys of every message kind: a mutation sets keys of other kinds too (misrouted or forged headers).
ALL_KEYS = (
    "v", "schema", "camera", "seq", "ts_capture", "shape", "encoding", "key", "droppable", "worker", "done",
    "window", "load", "interval", "ts_detect", "frame_shape", "boxes", "scores", "crop_size", "type", "frame",
    "ts_event", "faces", "status", "reason",
)  # fmt: skip
FACE_KEYS = ("box", "emotion", "confidence", "scores", "track", "raw_emotion", "smoothed")


# ------------------------------------------------------------------------------------------------
# valid messages to start from
# ------------------------------------------------------------------------------------------------


def valid_messages(kind: str) -> list[list[bytes]]:
    """A few valid, small messages of ``kind`` as plain bytes: the seeds every mutation starts from."""
    rng = np.random.default_rng(5)
    if kind == "frame":
        image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        plain = Frame("cam-0", 3, 1_700_000_000.5, image)
        tracked = Frame("cam.1", 4, 1.0, image, key=False, droppable=True)
        messages = [encode_frame(plain), encode_frame(tracked), encode_frame(plain, Encoding.JPEG)]
    elif kind == "faces":
        messages = []
        for n in (0, 1, 3):
            boxes = np.array([[4 * i, 5, 20, 24] for i in range(n)], np.int32).reshape(n, 4)
            crops = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
            faces = Faces("cam-0", 9, 1.5, 1.6, (48, 64), boxes, np.full(n, 0.9, np.float32), crops, droppable=n == 1)
            messages.append(encode_faces(faces))
    elif kind == "event":
        scores = dict(zip(EMOTIONS, [0.1, 0.0, 0.1, 0.6, 0.1, 0.05, 0.05], strict=True))
        face = FaceEmotion((1, 2, 30, 30), "happy", 0.6, scores, 0.9)
        # With the optional fields the decoder checks when present (tracking), and a camera status event.
        tracked = replace(face, track=3, raw_emotion="sad", smoothed=scores)
        messages = [
            encode_event(EmotionEvent("cam-0", 1, 10.0, 10.1)),
            encode_event(EmotionEvent("cam-0", 2, 10.0, 10.1, [face, face])),
            encode_event(EmotionEvent("cam.2", 3, 10.0, 10.1, [tracked])),
            encode_event(camera_event("cam-1", "down", "x", 3.0)),
        ]
    else:
        messages = [encode_credit(Credit("detector-0-1", 5, 1, 0)), encode_credit(Credit("w", 0, 64, 1000, 100))]
    return [[bytes(part) for part in message] for message in messages]


TEMPLATES = {kind: valid_messages(kind) for kind in KINDS}


def decoded_is_consistent(kind: str, result: Any) -> bool:
    """What a decoder returns for input it accepts is usable as-is by the stage that receives it."""
    if kind == "frame":
        return result.image.dtype == np.uint8 and result.image.ndim == 3 and result.image.shape[2] == 3
    if kind == "faces":
        n = len(result)
        s = result.crops.shape[1] if result.crops.ndim == 3 else -1
        return result.boxes.shape == (n, 4) and result.scores.shape == (n,) and result.crops.shape == (n, s, s)
    if kind == "event":
        # Typed, and what the sink writes and subscribers print is plain JSON again.
        return isinstance(result, (EmotionEvent, CameraEvent, OtherEvent)) and json.loads(json.dumps(result.to_dict()))
    return isinstance(result, Credit) and result.window >= 0 and result.interval >= 1


def dumps(value: Any) -> bytes:
    # allow_nan: NaN and Infinity are what a broken or hostile peer can put on the wire.
    return json.dumps(value, allow_nan=True).encode()


# ------------------------------------------------------------------------------------------------
# the seeded generator for the stage processes
# ------------------------------------------------------------------------------------------------


class Mutator:
    """Deterministic malformed messages for one message kind: ``random.Random(seed)`` decides everything."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.rng = random.Random(seed)
        self.templates = TEMPLATES[kind]
        self.others = [m for k in KINDS if k != kind for m in TEMPLATES[k]]

    def nasty(self) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return copy.deepcopy(rng.choice(NASTY_VALUES))  # mutations edit lists in place
        if roll < 0.8:
            return rng.randint(-(2**40), 2**40)
        if roll < 0.9:
            return [self.nasty() for _ in range(rng.randint(0, 5))]
        return rng.uniform(-1e6, 1e6)

    def header_ops(self, header: dict[str, Any]) -> Any:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.5:
                header[rng.choice(ALL_KEYS if rng.random() < 0.3 else sorted(header) or ALL_KEYS)] = self.nasty()
            elif op < 0.6:
                lists = [k for k, v in header.items() if isinstance(v, list) and v]
                if lists:
                    values = header[rng.choice(lists)]
                    values[rng.randrange(len(values))] = self.nasty()
            elif op < 0.7:
                faces = header.get("faces")
                if isinstance(faces, list) and faces and isinstance(face := rng.choice(faces), dict):
                    face[rng.choice(FACE_KEYS + tuple(sorted(face)))] = self.nasty()
            elif op < 0.9 and header:
                del header[rng.choice(sorted(header))]
            else:
                return self.nasty()  # a header that is not a JSON object
        return header

    def byte_ops(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.4 and buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            elif op < 0.6 and buf:
                del buf[rng.randrange(len(buf)) :]
            elif op < 0.8:
                buf[rng.randrange(len(buf) + 1) : rng.randrange(len(buf) + 1)] = rng.randbytes(rng.randint(1, 8))
            else:
                buf = bytearray(rng.choice([b"", b"\xef\xbb\xbf" + bytes(buf), b"[" * rng.randint(1000, 50_000)]))
        return bytes(buf)

    def __call__(self) -> list[bytes]:
        rng = self.rng
        parts = list(rng.choice(self.templates))
        kind_roll = rng.random()
        if kind_roll < 0.05:  # a message of another kind: a misrouted peer
            parts = list(rng.choice(self.others))
        elif kind_roll < 0.12:  # noise
            return [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
        for _ in range(rng.randint(1, 2)):
            op = rng.random()
            if op < 0.55 and len(parts) > 1:
                try:
                    header = json.loads(parts[1])
                except (ValueError, RecursionError):  # an earlier op broke it: start from an empty object
                    header = {}
                if isinstance(header, dict):
                    parts[1] = dumps(self.header_ops(header))
            elif op < 0.7 and len(parts) > 1:
                parts[1] = self.byte_ops(parts[1])
            elif op < 0.8 and len(parts) > 2:
                parts[2] = self.byte_ops(parts[2]) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 300))
            elif op < 0.9:
                parts[0] = rng.choice([TOPIC_FRAME, TOPIC_FACES, TOPIC_CREDIT, b"", b"cam-0", rng.randbytes(4)])
            elif rng.random() < 0.5 and len(parts) > 1:
                del parts[rng.randrange(len(parts))]
            else:
                parts.insert(rng.randrange(len(parts) + 1), rng.randbytes(rng.randint(0, 16)))
        return parts


def malformed_batch(kind: str, count: int, seed: int) -> tuple[list[list[bytes]], Counter[str]]:
    """``count`` messages the ``kind`` decoder rejects, and how many it rejects for each reason.

    Each candidate is decoded here first: one that happens to be valid is skipped, so every message
    sent is known to be malformed and why. ZeroMQ cannot send a message of no parts: skipped too.
    """
    mutate, decode = Mutator(kind, seed), DECODERS[kind]
    messages: list[list[bytes]] = []
    reasons: Counter[str] = Counter()
    while len(messages) < count:
        parts = mutate()
        if not parts:
            continue
        try:
            decode(parts)
        except WireError as exc:
            messages.append(parts)
            reasons[exc.reason] += 1
    return messages, reasons


# ------------------------------------------------------------------------------------------------
# input that once got past the decoders as another exception (or as inf): now rejected, counted
# ------------------------------------------------------------------------------------------------

# JSON integers are unbounded; Python turns them into ints that overflow float() (OverflowError in
# math.isfinite) or, past 4300 digits, refuses to parse them at all (a plain ValueError from json).
TOO_BIG_FOR_A_FLOAT = "1" + "0" * 400
TOO_MANY_DIGITS = "9" * 5000
BEYOND_FLOAT32 = "1e39"  # a finite JSON number that float32 makes inf


def with_raw_field(parts: list[bytes], key: str, literal: str) -> list[bytes]:
    """``parts`` with header field ``key`` set to the JSON text ``literal``, written verbatim."""
    header = json.loads(parts[1])
    header[key] = "@@"
    return [parts[0], json.dumps(header).replace('"@@"', literal).encode(), *parts[2:]]


def empty_jpeg_frame() -> list[bytes]:
    jpeg = TEMPLATES["frame"][2]
    assert b'"encoding":"jpeg"' in jpeg[1]
    return [jpeg[0], jpeg[1], b""]
