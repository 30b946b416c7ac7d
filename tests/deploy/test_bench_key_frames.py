"""deploy.bench.key_frames: the rolled-pass schedules' cost per frame on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from deploy.bench.key_frames import main, schedule_cost
from support import SHARED


def test_schedule_cost_counts_the_key_frames_and_the_faces_of_every_pass_but_the_first() -> None:
    path = SHARED / "media" / "lena.jpg"
    if not path.is_file():
        pytest.skip(f"shared test media {path} is missing (see shared/media/SOURCE.md)")
    lena = cv2.resize(cv2.imread(str(path)), (640, 360))
    frames = [np.roll(lena, 3 * i, axis=1) for i in range(6)]
    every = schedule_cost(frames, roll_every=1, interval=2, passes=3)
    spread = schedule_cost(frames, roll_every=4, interval=2, passes=3)
    for result in (every, spread):
        assert result["frames"] == 12 and result["interval"] == 2
        assert result["faces_per_frame"] == 1.0  # one upright face, found on key frames and held between
        assert 0 < result["ms_per_frame"] <= result["key_ms_mean"] <= result["key_ms_p95"] <= result["key_ms_max"]
    # Every key frame with both turned passes costs more than at most one on some.
    assert every["key_ms_mean"] > spread["key_ms_mean"]


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--passes", "1"])
    assert exc.value.code == 2 and "--passes" in capsys.readouterr().err
