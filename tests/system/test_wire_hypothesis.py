"""Every wire decoder under hypothesis, 10,000 messages each: random parts and structure-aware mutations
of valid messages (tests/support/wire_fuzz.py); only :class:`WireError`, with a known reason, may come
out. Issue 7, "Bad input".
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from emostream.wire import (
    REJECT_REASONS,
    TOPIC_CREDIT,
    TOPIC_FACES,
    TOPIC_FRAME,
    WireError,
)
from support.wire_fuzz import (
    ALL_KEYS,
    DECODERS,
    FACE_KEYS,
    FLOAT32_OVERFLOW,
    KINDS,
    NASTY_VALUES,
    TEMPLATES,
    decoded_is_consistent,
    dumps,
)

#: Messages per decoder (hypothesis).
FUZZ_EXAMPLES = 10_000


# ------------------------------------------------------------------------------------------------
# the decoders in process, under hypothesis
# ------------------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # see NASTY_VALUES for why bounded
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(NASTY_VALUES).map(copy.deepcopy)  # copies: mutations edit lists in place
)
# Two levels deep at most: deeper nesting buys nothing the decoders could mishandle (no field nests
# deeper than boxes) and hypothesis's recursive strategies would make the 10,000 examples slow.
json_values = (
    json_scalars
    | st.lists(json_scalars, max_size=5)
    | st.dictionaries(st.sampled_from(("emotion", "box", "a")) | st.text(max_size=6), json_scalars, max_size=3)
)
topics = st.sampled_from([TOPIC_FRAME, TOPIC_FACES, TOPIC_CREDIT, b"", b"cam-0", b"cam-1", b"\xff"]) | st.binary(
    max_size=8
)
NOT_BUFFERS = (None, 7, 1.5, "text", ["list"])  # parts a buggy caller could pass in process, never ZeroMQ
# Anything a part can be: bytes of every sort, JSON of every sort, and (in process only) objects that
# are not buffers at all.
random_part = (
    st.binary(max_size=64)
    | topics
    | json_values.map(dumps)
    | st.sampled_from(NOT_BUFFERS)
    | st.builds(memoryview, st.binary(max_size=16))
)
random_message = st.lists(random_part, max_size=5)


#: Mutations, weighted: most edit the header's fields, where the decoders have the most checks.
ACTIONS = (
    ("set",) * 4
    + ("element",) * 2
    + ("face", "delete", "retype", "bytes", "payload", "payload", "part", "topic", "object")
)


@st.composite
def mutated_message(draw: st.DrawFn, kind: str) -> list[Any]:
    """A valid message of ``kind`` with one to three hypothesis-chosen mutations."""
    topic, header_part, *payload = draw(st.sampled_from(TEMPLATES[kind]))
    header: Any = json.loads(header_part)
    header_bytes: bytes | None = None
    structural: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(ACTIONS))
        if action in ("set", "element", "face", "delete") and not isinstance(header, dict):
            action = "retype"
        if action == "set":
            header[draw(st.sampled_from(ALL_KEYS + tuple(sorted(header))))] = draw(json_values)
        elif action == "element":
            lists = sorted(k for k, v in header.items() if isinstance(v, list) and v)
            if lists:
                values = header[draw(st.sampled_from(lists))]
                values[draw(st.integers(0, len(values) - 1))] = draw(json_values)
        elif action == "face":
            faces = header.get("faces")
            if isinstance(faces, list) and faces and all(isinstance(f, dict) for f in faces):
                face = faces[draw(st.integers(0, len(faces) - 1))]
                face[draw(st.sampled_from(FACE_KEYS + tuple(sorted(face))))] = draw(json_values)
        elif action == "delete":
            if header:
                del header[draw(st.sampled_from(sorted(header)))]
        elif action == "retype":
            header = draw(json_values)
        elif action == "bytes":
            header_bytes = draw(st.binary(max_size=48) | st.integers(1, 50_000).map(lambda n: b"[" * n))
        elif action == "payload":
            if payload:  # events and credits have none
                old = payload[0]
                payload[0] = draw(
                    st.sampled_from([b"", old[:-1], old + b"\x00", old[: len(old) // 2]]) | st.binary(max_size=64)
                )
        elif action == "topic":
            topic = draw(topics)
        else:
            structural.append(action)
    parts: list[Any] = [topic, header_bytes if header_bytes is not None else dumps(header), *payload]
    for action in structural:
        index = draw(st.integers(0, len(parts)))
        if action == "object" and index < len(parts):
            parts[index] = draw(st.sampled_from(NOT_BUFFERS))
        elif index < len(parts) and draw(st.booleans()):
            del parts[index]
        else:
            parts.insert(index, draw(random_part))
    return parts


#: Each example goes to every decoder: a decoder sees mutations of its own kind's messages (they get past
#: the first checks, into the fields), random parts, and the other kinds' mutations (misrouted input).
fuzz_messages = st.one_of(random_message, *(mutated_message(kind) for kind in KINDS))


@pytest.mark.timeout(240)
@pytest.mark.filterwarnings(FLOAT32_OVERFLOW)
def test_every_decoder_raises_only_wire_errors_with_a_known_reason_on_10000_hypothesis_messages() -> None:
    outcomes: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}

    # derandomize: the same examples on every run and machine; no deadline: the machine is shared.
    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    @given(parts=fuzz_messages)
    def decode_everywhere(parts: list[Any]) -> None:
        for kind in KINDS:
            try:
                result = DECODERS[kind](parts)
            except WireError as exc:
                assert exc.reason in REJECT_REASONS, exc.reason
                outcomes[kind][exc.reason] += 1
                continue
            assert decoded_is_consistent(kind, result), result
            outcomes[kind]["accepted"] += 1

    decode_everywhere()
    for kind, counts in outcomes.items():
        assert sum(counts.values()) >= FUZZ_EXAMPLES, (kind, counts)
        # The examples reach deep into each decoder, not just its first checks.
        expected = set(REJECT_REASONS) - ({"bad_payload"} if kind in ("event", "credit") else set())
        assert expected <= set(counts), (kind, counts)
        assert counts["accepted"] < FUZZ_EXAMPLES // 10, (kind, counts)
