"""Malformed messages in process: the seeded generator and the known escapes.

Issue 7, "Bad input". The seeded generator (tests/support/wire_fuzz.py) that
tests/system/test_stage_fuzz.py sends to the real stages is deterministic and covers every reason;
inputs that once escaped the decoders as other exceptions are rejected as wire errors. Every decoder
under hypothesis is tests/system/test_wire_hypothesis.py.
"""

from __future__ import annotations

import pytest

from emostream.wire import (
    REJECT_REASONS,
    WireError,
    decode_faces,
)
from support.wire_fuzz import (
    BEYOND_FLOAT32,
    DECODERS,
    FLOAT32_OVERFLOW,
    KINDS,
    TEMPLATES,
    TOO_BIG_FOR_A_FLOAT,
    TOO_MANY_DIGITS,
    decoded_is_consistent,
    empty_jpeg_frame,
    malformed_batch,
    with_raw_field,
)


def test_the_seeded_generator_is_deterministic_and_covers_every_reason() -> None:
    for kind in KINDS:
        for template in TEMPLATES[kind]:  # mutations start from valid messages, whatever the wire adds
            assert decoded_is_consistent(kind, DECODERS[kind](template))
        first, reasons = malformed_batch(kind, 2000, seed=11)
        again, _ = malformed_batch(kind, 2000, seed=11)
        assert first == again
        missing = {"bad_part"} | ({"bad_payload"} if kind in ("event", "credit") else set())
        assert set(reasons) == set(REJECT_REASONS) - missing, (kind, reasons)


@pytest.mark.parametrize(
    ("kind", "parts"),
    [
        ("frame", with_raw_field(TEMPLATES["frame"][0], "ts_capture", TOO_BIG_FOR_A_FLOAT)),
        ("faces", with_raw_field(TEMPLATES["faces"][0], "ts_detect", TOO_BIG_FOR_A_FLOAT)),
        ("faces", with_raw_field(TEMPLATES["faces"][1], "scores", f"[{TOO_BIG_FOR_A_FLOAT}]")),
        ("event", with_raw_field(TEMPLATES["event"][0], "ts_event", TOO_BIG_FOR_A_FLOAT)),
        ("frame", with_raw_field(TEMPLATES["frame"][0], "seq", TOO_MANY_DIGITS)),
        ("credit", with_raw_field(TEMPLATES["credit"][0], "done", TOO_MANY_DIGITS)),
        ("frame", empty_jpeg_frame()),
    ],
    ids=["float-overflow-ts", "float-overflow-ts-detect", "float-overflow-score", "float-overflow-ts-event",
         "5000-digit-seq", "5000-digit-done", "empty-jpeg-payload"],
)  # fmt: skip
def test_known_escapes_are_rejected_as_wire_errors(kind: str, parts: list[bytes]) -> None:
    with pytest.raises(WireError) as info:
        DECODERS[kind](parts)
    assert info.value.reason in REJECT_REASONS


@pytest.mark.filterwarnings(FLOAT32_OVERFLOW)
def test_faces_whose_score_float32_cannot_hold_are_rejected() -> None:
    # Accepted today as inf; the classifier then dies serializing the event (JSON refuses inf).
    with pytest.raises(WireError):
        decode_faces(with_raw_field(TEMPLATES["faces"][1], "scores", f"[{BEYOND_FLOAT32}]"))
