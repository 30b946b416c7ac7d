"""deploy/bench/outputs.py's outage measurement, run for real on tiny settings: a real sink, mosquitto and
redis-server, both brokers stopped for 2 s. Only the shape and the counts are asserted, never a time."""

from __future__ import annotations

import shutil

import pytest

from deploy.bench.outputs import format_outage, run_outage


def test_the_outage_bench_reports_each_output_catching_up_without_losing_an_event() -> None:
    for binary in ("mosquitto", "redis-server"):
        if not shutil.which(binary):
            pytest.skip(f"{binary} is not installed (apt-get install {binary}; .ci/run installs it)")
    result = run_outage(2.0, cameras=2, fps=10.0, before_s=1.0, retry_max_s=1.0)
    assert result["events_sent"] > 0
    assert result["redis_frames_missing"] == 0 and result["redis_in_order"]
    assert set(result["outputs"]) == {"mqtt", "redis"}
    for output in result["outputs"].values():
        assert output["queued_at_restart"] > 0, "events sent while the brokers were down waited in the outbox"
        assert output["dropped"] == 0
        assert output["retries"] >= 1
        assert 0 <= output["first_delivery_after_s"] <= output["empty_after_s"]
    text = format_outage(result)
    assert "mqtt:" in text and "redis:" in text and "0 frames missing" in text
