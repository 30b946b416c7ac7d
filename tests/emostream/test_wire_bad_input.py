"""Frames and faces of zero or absurd size are bad fields, even when their payload matches the header."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emostream.wire import (
    MAX_SIDE,
    Faces,
    Frame,
    WireError,
    decode_faces,
    decode_frame,
    encode_faces,
    encode_frame,
)


def raw_frame_with_shape(shape: list[int]) -> list[bytes]:
    """A raw frame message whose header says ``shape`` and whose payload has exactly that many bytes,
    so only the shape check can refuse it (empty when the shape has a zero or a negative side)."""
    parts = [bytes(p) for p in encode_frame(Frame("cam", 0, 1.0, np.zeros((2, 2, 3), np.uint8)))]
    header = json.loads(parts[1])
    header["shape"] = shape
    nbytes = int(np.prod(shape)) if min(shape) > 0 else 0
    return [parts[0], json.dumps(header).encode(), bytes(nbytes)]


@pytest.mark.parametrize(
    "shape",
    [[0, 0, 3], [0, 64, 3], [64, 0, 3], [-1, 64, 3], [MAX_SIDE + 1, 1, 3], [1, MAX_SIDE + 1, 3], [1, 1, 0]],
    ids=str,
)
def test_frames_of_zero_or_absurd_size_are_bad_fields_even_when_the_payload_matches(shape: list[int]) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(raw_frame_with_shape(shape))
    assert info.value.reason == "bad_field"


def test_the_largest_side_is_still_a_frame() -> None:
    assert decode_frame(raw_frame_with_shape([MAX_SIDE, 1, 3])).image.shape == (MAX_SIDE, 1, 3)
    assert decode_frame(raw_frame_with_shape([1, MAX_SIDE, 3])).image.shape == (1, MAX_SIDE, 3)


@pytest.mark.parametrize("frame_shape", [[0, 640], [480, 0], [MAX_SIDE + 1, 640], [480, MAX_SIDE + 1]], ids=str)
def test_faces_from_a_frame_of_zero_or_absurd_size_are_bad_fields(frame_shape: list[int]) -> None:
    faces = Faces("cam", 0, 1.0, 1.0, (480, 640), np.zeros((0, 4), np.int32), np.zeros(0), np.zeros((0, 48, 48)))
    parts = [bytes(p) for p in encode_faces(faces)]
    header = json.loads(parts[1])
    header["frame_shape"] = frame_shape
    with pytest.raises(WireError) as info:
        decode_faces([parts[0], json.dumps(header).encode(), parts[2]])
    assert info.value.reason == "bad_field"
