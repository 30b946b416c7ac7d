"""deploy/bench/allcore.py: the stages alone and with one copy per CPU at once, in real processes."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.bench.allcore import AllCoreStage, StageLoop, measure_all_cores, run_copies
from support import shared_path


def test_each_copy_reports_its_own_cpu_per_frame_and_the_slowdown_is_together_over_alone():
    video = shared_path("media", "faces.mp4")
    loop = StageLoop("decode", str(video))
    costs = run_copies(loop, 2, 0.5)
    assert len(costs) == 2
    # A 1280x720 H.264 frame takes well over 0.1 ms and well under a second of CPU on any machine here.
    assert all(1e-4 < cost < 1.0 for cost in costs)

    measured = measure_all_cores(loop, 2, 0.5)
    assert measured.stage == "decode" and measured.processes == 2 and len(measured.by_process) == 2
    assert measured.all_cores_cpu_s_per_frame == pytest.approx(
        sorted(measured.by_process)[0] / 2 + sorted(measured.by_process)[1] / 2
    )
    assert measured.slowdown == pytest.approx(measured.all_cores_cpu_s_per_frame / measured.alone_cpu_s_per_frame)
    assert list(measured.to_json()) == [f.name for f in dataclasses.fields(AllCoreStage)]


def test_a_copy_that_fails_is_a_clear_error_not_a_wait(tmp_path):
    loop = StageLoop("detector", str(tmp_path / "missing.mp4"), yunet=None)
    with pytest.raises(RuntimeError, match="a detector copy exited with code 1"):
        run_copies(loop, 2, 0.5)
    # One copy alone: nothing else to wait for, the same error.
    with pytest.raises(RuntimeError, match="a detector copy exited with code 1"):
        run_copies(loop, 1, 0.5)


def test_a_decode_copy_of_a_file_that_does_not_open_fails_instead_of_timing_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="a decode copy exited with code 1"):
        run_copies(StageLoop("decode", str(tmp_path / "missing.mp4")), 1, 0.5)
