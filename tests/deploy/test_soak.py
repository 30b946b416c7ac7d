"""deploy/bench/soak.py: the verdict on a soak's samples (memory growth after warm-up, restarts, frames
that are neither published nor counted as dropped), the /proc numbers of a real process, the report."""

from __future__ import annotations

import os
from typing import Any

import pytest

from deploy.bench.soak import RSS_GROWTH_LIMIT, format_soak, frames_dropped, proc_stats, soak_verdict

DURATION_S = 100.0
IN_FLIGHT_S = 2.0


def samples(
    rss: dict[str, list[float]] | None = None,
    pids: dict[str, list[int]] | None = None,
    restarts: dict[str, float] | None = None,
    lost_per_s: float = 0.0,
    unseen_per_s: float = 0.0,
) -> list[dict[str, Any]]:
    """Eleven samples, one every 10 s of a 100 s soak, of a camera offering 25 frames/s of which 80%
    are published and 20% counted as dropped; ``lost_per_s`` frames/s vanish besides."""
    rss = rss or {"classifier": [500.0] * 11, "sink": [50.0] * 11}
    out = []
    for i in range(11):
        t = 10.0 * i
        offered = 25 * t
        dropped = 0.2 * offered
        delivered = offered - dropped - lost_per_s * t
        out.append(
            {
                "t_s": t,
                "procs": {
                    name: {
                        "pid": (pids or {}).get(name, [100 + j] * 11)[i],
                        "rss_mb": values[i],
                        "cpu_s": 0.5 * t,
                        "fds": 20,
                    }
                    for j, (name, values) in enumerate(rss.items())
                },
                "restarts": restarts or {},
                "cameras": {
                    "cam0": {
                        "offered": offered,
                        "delivered": delivered,
                        "dropped": {"capture/overload": dropped, "capture/read_error": 3.0},
                        "seen": delivered - unseen_per_s * t,
                        "max_seq": offered - 1,
                    }
                },
                "unknown_camera_drops": 0.0,
            }
        )
    return out


def test_a_flat_soak_passes_and_reports_each_process() -> None:
    verdict = soak_verdict(samples(), DURATION_S, IN_FLIGHT_S)
    assert verdict["ok"] and verdict["warmup_s"] == 20.0
    classifier = verdict["stages"]["classifier"]
    assert classifier["rss_growth"] == 0.0 and classifier["restarts"] == 0
    assert classifier["cores_after_warmup"] == pytest.approx(0.5)
    camera = verdict["cameras"]["cam0"]
    assert camera["offered"] == 2500 and camera["dropped"] == 500, "read errors are no frames"
    assert camera["in_flight_allowance"] == 51 and camera["unaccounted_worst"] == 0


def test_growth_during_warm_up_is_forgiven_but_not_after() -> None:
    warm = [300.0, 450.0, 500.0, 500.0, 500.0, 500.0, 500.0, 500.0, 500.0, 500.0, 500.0]
    assert soak_verdict(samples({"classifier": warm}), DURATION_S, IN_FLIGHT_S)["ok"]
    # 500 MB up to 530 MB: 6% after warm-up.
    leak = [500.0, 500.0, 500.0, 500.0, 505.0, 510.0, 515.0, 520.0, 525.0, 530.0, 530.0]
    verdict = soak_verdict(samples({"classifier": leak}), DURATION_S, IN_FLIGHT_S)
    stage = verdict["stages"]["classifier"]
    assert not verdict["ok"] and not stage["ok"]
    assert stage["rss_growth"] == pytest.approx(0.06) and stage["rss_growth"] > RSS_GROWTH_LIMIT
    assert "RSS grew 6.0%" in stage["problems"][0]


def test_a_restart_fails_the_stage_whether_counted_by_the_launcher_or_seen_as_a_new_pid() -> None:
    counted = soak_verdict(samples(restarts={"sink": 1.0}), DURATION_S, IN_FLIGHT_S)
    assert not counted["ok"] and counted["stages"]["sink"]["restarts"] == 1
    new_pid = soak_verdict(samples(pids={"sink": [7] * 5 + [8] * 6}), DURATION_S, IN_FLIGHT_S)
    assert not new_pid["ok"] and new_pid["stages"]["sink"]["problems"] == ["restarted 1 time(s)"]
    assert new_pid["stages"]["classifier"]["ok"]


def test_frames_lost_without_being_counted_fail_the_camera() -> None:
    # 0.6 frames a second vanish: within the in-flight allowance (51) at first, 60 by the end.
    verdict = soak_verdict(samples(lost_per_s=0.6), DURATION_S, IN_FLIGHT_S)
    camera = verdict["cameras"]["cam0"]
    assert not verdict["ok"] and camera["unaccounted_worst"] == pytest.approx(60)
    assert "neither published nor counted" in camera["problems"][0]
    # The counters balance, but the subscriber misses frames nobody counted.
    unseen = soak_verdict(samples(unseen_per_s=0.6), DURATION_S, IN_FLIGHT_S)
    assert not unseen["ok"] and "never saw" in unseen["cameras"]["cam0"]["problems"][0]


def test_frames_dropped_sums_every_reason_but_read_errors() -> None:
    assert frames_dropped({"dropped": {"capture/overload": 5, "classifier/stale": 2, "capture/read_error": 9}}) == 7


def test_proc_stats_reads_this_process() -> None:
    stats = proc_stats(os.getpid())
    assert stats is not None and stats["pid"] == os.getpid()
    assert stats["rss_mb"] > 10 and stats["cpu_s"] > 0 and stats["fds"] >= 3
    assert proc_stats(2**22 + 1) is None, "a pid above pid_max is no process"


def test_the_report_shows_the_table_and_each_verdict() -> None:
    result = {
        "cameras": 1,
        "minutes": DURATION_S / 60,
        "started_at": "now",
        "samples": samples(restarts={"sink": 1.0}),
        "verdict": soak_verdict(samples(restarts={"sink": 1.0}), DURATION_S, IN_FLIGHT_S),
    }
    text = format_soak(result)
    assert "t (s)" in text and "classif" in text
    assert "FAIL: restarted 1 time(s)" in text and "soak verdict: FAIL" in text
    assert "capture/overload 500" in text
