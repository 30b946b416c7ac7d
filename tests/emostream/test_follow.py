"""``--follow-stdin``: update lines read from a real pipe, the newest wins, bad lines are skipped."""

from __future__ import annotations

import os

import pytest

from emostream.follow import CameraUpdates, parse_update
from support import wait_for


def test_the_newest_camera_set_wins_and_bad_lines_are_skipped():
    read, write = os.pipe()
    updates = CameraUpdates(read)
    updates.start()
    assert updates.take() is None
    os.write(write, b'{"cameras": {"a": "tcp://127.0.0.1:1"}}\n{"cameras": {"a": "tcp://127.0.0.1:1", "b"')
    wait_for(lambda: updates._latest is not None, what="the first line")
    # The second line arrives in two pieces, then a line that is not an update at all.
    os.write(write, b': "tcp://127.0.0.1:2"}}\nnot json\n{"cams": {}}\n')
    wait_for(lambda: (updates._latest or {}).get("b") is not None, what="the second line")
    assert updates.take() == {"a": "tcp://127.0.0.1:1", "b": "tcp://127.0.0.1:2"}
    assert updates.take() is None, "taken once"
    os.close(write)
    updates.join(5)
    assert not updates.is_alive(), "EOF ends the reader"
    os.close(read)


@pytest.mark.parametrize("line", ['{"cameras": ["a"]}', '{"cameras": {"a": 1}}', "[]", "{"])
def test_a_malformed_update_is_a_value_error(line):
    with pytest.raises(ValueError):
        parse_update(line)
