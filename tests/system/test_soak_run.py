"""``python -m deploy bench --soak`` for real, for half a minute: four live cameras under the launcher,
sampled from the outside. No assertion is about speed or memory figures (the machine is shared): the
samples' shape, every process sampled, and a verdict that is what soak_verdict makes of the samples."""

from __future__ import annotations

import json
import subprocess

import pytest

from deploy.bench.soak import SOAK_CAMERAS, soak_verdict
from support import PYTHON, REPO, shared_path

STAGES = {"launcher", "sink", "classifier", "detector-0", "detector-1"} | {f"capture-cam{i}" for i in range(4)}


@pytest.mark.timeout(240)
def test_a_half_minute_soak_samples_every_process_and_judges_its_samples(tmp_path):
    shared_path("media", "faces.mp4")
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    done = subprocess.run(
        [PYTHON, "-m", "deploy", "bench", "--soak", "0.5", "--soak-interval", "3"]
        + ["--json", str(out), "--plot", str(plot)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["error"] is None and result["launcher_exit_code"] == 0, result["log_tail"]
    samples = result["samples"]
    # A sample every 3 s over 30 s, the last at the end.
    assert [s["t_s"] for s in samples][:2] == [0.0, pytest.approx(3.0, abs=0.5)]
    assert len(samples) == 11 and samples[-1]["t_s"] == pytest.approx(30.0, abs=0.5)
    for sample in samples:
        assert set(sample["procs"]) == STAGES, sample["procs"].keys()
        assert all(p["rss_mb"] > 0 and p["fds"] > 0 and p["cpu_s"] >= 0 for p in sample["procs"].values())
        assert set(sample["cameras"]) == {f"cam{i}" for i in range(SOAK_CAMERAS)}
        assert not sample["metrics_errors"]
    last = samples[-1]["cameras"]
    assert all(c["offered"] > 0 and c["delivered"] > 0 and c["seen"] > 0 for c in last.values())
    assert set(last["cam0"]["dropped"]) >= {"capture/overload", "classifier/stale"}, "zero counters are scraped too"

    verdict = result["verdict"]
    assert verdict == soak_verdict(samples, 30.0, verdict["in_flight_s"])
    assert set(verdict["stages"]) == STAGES and verdict["warmup_s"] == pytest.approx(6.0)
    # Restarts as the launcher counted them (a loaded machine may really restart a stage: then it fails).
    launcher_counts = samples[-1]["restarts"]
    assert all(verdict["stages"][name]["restarts"] >= n for name, n in launcher_counts.items())
    assert done.returncode == (0 if verdict["ok"] else 1)
    assert ("soak verdict: PASS" if verdict["ok"] else "soak verdict: FAIL") in done.stdout
    assert plot.stat().st_size > 10_000
