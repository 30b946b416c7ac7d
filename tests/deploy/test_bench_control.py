"""deploy/bench/control.py's pure parts; the measurement itself (a launcher, cameras added and removed
through the CLI) is what tests/system/test_control_launcher.py already asserts, untimed."""

from __future__ import annotations

import pytest

from deploy.bench.control import format_control, gaps, main


def test_gaps_count_the_frame_numbers_missing_between_the_first_and_last_seen():
    assert gaps([]) == 0
    assert gaps([5, 6, 7]) == 0
    assert gaps([5, 7, 6, 6]) == 0  # order and repeats do not matter
    assert gaps([5, 9]) == 3


def test_the_report_names_each_camera_and_what_never_happened():
    text = format_control(
        {
            "added": [
                {"camera": "added0", "cli_returned_s": 0.4, "first_event_s": 3.25},
                {"camera": "added1", "cli_returned_s": 0.5, "first_event_s": None},
            ],
            "removed": [{"camera": "added0", "cli_returned_s": 0.3, "process_gone_s": None}],
            "first_camera": "cam0",
            "first_camera_events": 120,
            "first_camera_frame_gaps": 0,
        }
    )
    assert "+ added0" in text and "3.25 s" in text and "never" in text and "still running" in text
    assert "cam0: 120 events meanwhile, 0 frame-number gaps" in text


def test_adding_no_camera_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main(["--add", "0"])
    assert info.value.code == 2
