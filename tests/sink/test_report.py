"""``python -m sink.report`` on an event log built here, checked against numbers computed here by hand."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter

import pytest
from PIL import Image

from emostream.wire import EMOTIONS
from support import PYTHON, REPO

T0 = 1_764_057_600.0  # 2025-11-25 08:00:00 UTC
SCORES = {e: round(1 / len(EMOTIONS), 4) for e in EMOTIONS}


def face(emotion: str, x: int = 10) -> dict:
    return {"box": [x, 20, 48, 48], "emotion": emotion, "confidence": 0.9, "detector_score": 1.0, "scores": SCORES}


def event(camera: str, frame: int, ts_capture: float, latency_s: float, faces: list[dict]) -> dict:
    return {
        "schema": 1,
        "type": "faces",
        "camera": camera,
        "frame": frame,
        "ts_capture": ts_capture,
        "ts_event": ts_capture + latency_s,
        "faces": faces,
    }


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (what numpy and pandas do by default), by hand."""
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


MALFORMED = [
    b"{not json",  # a corrupt line
    b'{"schema": 1, "type": "faces", "camera": "camA", "frame": 3',  # a line cut short by a crash
    b"[1, 2, 3]",  # JSON, but not an object
    json.dumps(event("camA", 7, T0, 0.01, [face("bored")])).encode(),  # an emotion no model emits
    json.dumps({k: v for k, v in event("camA", 8, T0, 0.01, []).items() if k != "ts_capture"}).encode(),
    json.dumps(event("bad camera!", 9, T0, 0.01, [])).encode(),  # not a camera id
    b"\xff\xfe\x00garbage",  # not even UTF-8
]


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> dict:
    """A two-camera log with known contents, and the numbers the report must find in it."""
    rows: list[bytes] = []
    latencies: dict[str, list[float]] = {"camA": [], "camB": []}
    emotions: dict[str, Counter] = {"camA": Counter(), "camB": Counter()}
    faces_total = {"camA": 0, "camB": 0}
    with_faces = {"camA": 0, "camB": 0}
    events = {"camA": 0, "camB": 0}

    def add(e: dict) -> None:
        cam = e["camera"]
        rows.append(json.dumps(e).encode())
        events[cam] += 1
        latencies[cam].append((e["ts_event"] - e["ts_capture"]) * 1000)
        faces_total[cam] += len(e["faces"])
        with_faces[cam] += bool(e["faces"])
        emotions[cam].update(f["emotion"] for f in e["faces"])

    # camA: 10 fps for 20 s, frames 0..199 of which 50 and 51 never arrived; frame i carries i % 3
    # faces with emotions cycling through the seven classes; latency 20..119 ms, varied by frame.
    for i in range(200):
        if i in (50, 51):
            continue
        faces = [face(EMOTIONS[(i + j) % 7], 10 + 60 * j) for j in range(i % 3)]
        add(event("camA", i, T0 + i * 0.1, (20 + (i * 37) % 100) / 1000, faces))
    # camB: 5 fps, two capture runs (a restart numbering again from 0) 30 s apart; one happy face per
    # frame, 100 ms latency, except one frame whose classifier clock runs 5 ms behind capture's.
    for run_start in (T0, T0 + 40.0):
        for i in range(50):
            latency = -0.005 if (run_start == T0 and i == 10) else 0.1
            add(event("camB", i, run_start + i * 0.2, latency, [face("happy")]))
    # An event type this report does not know: counted and ignored.
    rows.insert(5, json.dumps({"schema": 1, "type": "heartbeat", "camera": "camA", "ts_event": T0}).encode())
    # Malformed lines scattered through the file, and a blank line (not malformed: nothing there).
    positions = [0, 17, 60, 120, 200, 250, 299]
    for pos, bad in zip(positions, MALFORMED, strict=True):
        rows.insert(pos, bad)
    rows.insert(100, b"")
    path = tmp_path_factory.mktemp("log") / "events.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    malformed_lines = [i + 1 for i, row in enumerate(rows) if row in MALFORMED]
    return {
        "path": path,
        "lines": len(rows),
        "malformed_lines": malformed_lines,
        "events": events,
        "latencies": latencies,
        "emotions": emotions,
        "faces": faces_total,
        "with_faces": with_faces,
    }


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "sink.report", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The first table of the report: {camera: {column: cell}}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["events", "span_s"])
    header = lines[start].split()
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = dict(zip(header, cells[1:], strict=True))
    return rows


@pytest.fixture(scope="module")
def report(log, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out") / "report"
    # No warm-up: every latency counts, as the hand-computed percentiles below take them all.
    proc = run_report("--events", str(log["path"]), "--out", str(out), "--bin", "5", "--warmup", "0")
    assert proc.returncode == 0, proc.stderr
    return {"proc": proc, "out": out, "json": json.loads((out / "report.json").read_text())}


def test_counts_lines_events_malformed_and_other_types(log, report):
    data = report["json"]
    assert data["lines"] == log["lines"]
    assert data["blank_lines"] == 1
    assert data["malformed"]["count"] == len(MALFORMED)
    assert [e["line"] for e in data["malformed"]["examples"]] == log["malformed_lines"]
    assert sum(data["malformed"]["reasons"].values()) == len(MALFORMED)
    # A line that is not JSON at all is the file's problem, not a wire message's: said in those words.
    assert data["malformed"]["reasons"]["not_json"] == 3  # corrupt, cut short, not UTF-8
    assert data["malformed"]["reasons"]["not_object"] == 1
    assert "bad_header" not in data["malformed"]["reasons"]
    assert data["other_types"] == {"heartbeat": 1}
    out = report["proc"].stdout
    assert f"{len(MALFORMED)} malformed" in out
    for line in log["malformed_lines"]:
        assert f"line {line}:" in out, f"malformed line {line} not reported"


def test_per_camera_numbers_match_the_log(log, report):
    cams = report["json"]["cameras"]
    assert set(cams) == {"camA", "camB"}
    for cam in cams:
        got, n = cams[cam], log["events"][cam]
        assert got["events"] == n
        assert got["faces"] == log["faces"][cam]
        assert got["faces_per_frame"] == pytest.approx(log["faces"][cam] / n, abs=1e-4)
        assert got["frames_with_faces"] == pytest.approx(log["with_faces"][cam] / n, abs=1e-4)
        assert got["emotions"] == {e: log["emotions"][cam][e] for e in EMOTIONS}
        for e in EMOTIONS:
            assert got["emotion_shares"][e] == pytest.approx(log["emotions"][cam][e] / log["faces"][cam], abs=1e-4)
        for p in (50, 95, 99):
            assert got["latency_ms"][f"p{p}"] == pytest.approx(percentile(log["latencies"][cam], p), abs=1e-3)
        assert got["latency_ms"]["max"] == pytest.approx(max(log["latencies"][cam]), abs=1e-3)

    a, b = cams["camA"], cams["camB"]
    # camA: one run of 199 frame intervals minus the 2 lost frames' over 19.9 s; 198 events.
    assert a["runs"] == 1 and a["frames_lost"] == 2
    assert a["span_s"] == pytest.approx(19.9, abs=1e-3)
    assert a["fps"] == pytest.approx(197 / 19.9, abs=1e-3)
    assert a["faces"] == sum(i % 3 for i in range(200) if i not in (50, 51))
    # camB: two runs of 50 frames at 5 fps; the 30 s pause between them is no part of its rate.
    assert b["runs"] == 2 and b["frames_lost"] == 0
    assert b["span_s"] == pytest.approx(49.8, abs=1e-3)
    assert b["active_s"] == pytest.approx(19.6, abs=1e-3)
    assert b["fps"] == pytest.approx(5.0, abs=1e-3)
    assert b["emotions"]["happy"] == 100 and b["emotion_shares"]["happy"] == 1.0
    assert b["negative_latencies"] == 1


def test_overall_numbers_pool_every_camera(log, report):
    overall = report["json"]["overall"]
    events = sum(log["events"].values())
    faces = sum(log["faces"].values())
    assert overall["events"] == events
    assert overall["faces_per_frame"] == pytest.approx(faces / events, abs=1e-4)
    assert overall["fps"] == pytest.approx(197 / 19.9 + 5.0, abs=1e-3)
    assert overall["frames_lost"] == 2 and overall["runs"] == 3
    assert overall["span_s"] == pytest.approx(49.8, abs=1e-3)
    pooled = log["latencies"]["camA"] + log["latencies"]["camB"]
    for p in (50, 95, 99):
        assert overall["latency_ms"][f"p{p}"] == pytest.approx(percentile(pooled, p), abs=1e-3)
    total = log["emotions"]["camA"] + log["emotions"]["camB"]
    assert overall["emotions"] == {e: total[e] for e in EMOTIONS}


def test_printed_table_shows_the_same_numbers(log, report):
    rows = table_rows(report["proc"].stdout)
    assert set(rows) == {"camA", "camB", "ALL"}
    for cam in ("camA", "camB"):
        row = rows[cam]
        assert int(row["events"]) == log["events"][cam]
        assert float(row["faces/frame"]) == pytest.approx(log["faces"][cam] / log["events"][cam], abs=0.006)
        assert float(row["with_faces"].rstrip("%")) == pytest.approx(
            100 * log["with_faces"][cam] / log["events"][cam], abs=0.06
        )
        for p in (50, 95, 99):
            assert float(row[f"lat_p{p}_ms"]) == pytest.approx(percentile(log["latencies"][cam], p), abs=0.06)
    assert float(rows["camB"]["fps"]) == pytest.approx(5.0, abs=0.006)
    assert int(rows["camA"]["lost"]) == 2
    assert int(rows["ALL"]["events"]) == sum(log["events"].values())
    assert "ts_event before ts_capture" in report["proc"].stdout, "the clock-skew event is not pointed out"


def test_plots_are_valid_pngs_one_per_camera_and_one_overall(report):
    data = report["json"]
    assert data["bin_s"] == 5.0
    assert data["plots"] == {"ALL": "emotions_overall.png", "camA": "emotions_camA.png", "camB": "emotions_camB.png"}
    for name in data["plots"].values():
        path = report["out"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
        with Image.open(path) as image:
            image.verify()  # decodes the chunks and their checksums
        with Image.open(path) as image:
            assert image.width > 200 and image.height > 100


def test_default_output_folder_sits_beside_the_log_and_the_bin_is_chosen(log, tmp_path):
    copy = tmp_path / "run.jsonl"
    copy.write_bytes(log["path"].read_bytes())
    proc = run_report("--events", str(copy))
    assert proc.returncode == 0, proc.stderr
    # <events>.report/, as --help says: the log's whole name and ".report".
    data = json.loads((tmp_path / "run.jsonl.report" / "report.json").read_text())
    # 49.8 s of log and about 60 bins wanted: the smallest round width that fits is 1 s.
    assert data["bin_s"] == 1.0
    assert (tmp_path / "run.jsonl.report" / "emotions_overall.png").exists()
    assert f"{tmp_path / 'run.jsonl.report'}" in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "it is empty"),
        (b"\n\n", "it is empty"),
        (b"\n".join(MALFORMED) + b"\n", f"{len(MALFORMED)} malformed"),
        (json.dumps({"schema": 1, "type": "heartbeat", "camera": "c", "ts_event": T0}).encode(), "other types"),
    ],
    ids=["empty", "blank", "all-malformed", "no-faces-events"],
)
def test_a_log_without_valid_events_exits_non_zero_with_a_clear_message(tmp_path, content, words):
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    proc = run_report("--events", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "no valid 'faces' events" in proc.stderr and words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing to report, so nothing written"


def test_a_missing_file_or_a_bad_bin_is_a_usage_error(tmp_path):
    missing = run_report("--events", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(event("cam0", 0, T0, 0.01, [])) + "\n")
    bad_bin = run_report("--events", str(path), "--bin", "0")
    assert bad_bin.returncode == 2 and "positive" in bad_bin.stderr


def test_a_single_event_has_no_rate_but_still_reports(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(event("cam0", 0, T0, 0.04, [face("sad")])) + "\n")
    proc = run_report("--events", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    cam = json.loads((tmp_path / "out" / "report.json").read_text())["cameras"]["cam0"]
    assert cam["events"] == 1 and cam["fps"] is None and cam["emotions"]["sad"] == 1
    assert cam["latency_ms"]["p50"] == pytest.approx(40.0, abs=1e-3)
    assert table_rows(proc.stdout)["cam0"]["fps"] == "-"


def test_tracks_label_flips_and_mean_confidence(tmp_path):
    """Two tracks on one camera: flips counted along each track in frame order, never across tracks."""

    def tracked(emotion: str, raw: str, track: int, confidence: float) -> dict:
        return {**face(emotion), "track": track, "raw_emotion": raw, "smoothed": SCORES, "confidence": confidence}

    shown = {1: ["happy", "happy", "sad", "sad", "happy"], 2: ["fear", "fear", "fear", "neutral", "neutral"]}
    raw = {1: ["happy", "sad", "sad", "happy", "happy"], 2: ["fear", "neutral", "fear", "neutral", "neutral"]}
    rows = []
    for i in range(5):
        faces = [tracked(shown[t][i], raw[t][i], t, 0.5 + 0.1 * t) for t in (1, 2)]
        rows.append(json.dumps(event("cam", i, T0 + i * 0.04, 0.02, faces)))
    rows.append(json.dumps(event("cam", 5, T0 + 0.2, 0.02, [face("angry")])))  # untracked: no flips
    path = tmp_path / "tracked.jsonl"
    path.write_text("\n".join(rows) + "\n")
    proc = run_report("--events", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "report.json").read_text())["cameras"]["cam"]
    # Shown labels: track 1 happy-happy-sad-sad-happy (2 changes), track 2 fear x3, neutral x2 (1 change).
    assert (summary["tracks"], summary["label_flips"], summary["label_flips_per_track"]) == (2, 3, 1.5)
    # Per-frame labels: track 1 changes 2 times, track 2 three times.
    assert (summary["raw_label_flips"], summary["raw_label_flips_per_track"]) == (5, 2.5)
    assert summary["mean_confidence"] == pytest.approx((5 * 0.6 + 5 * 0.7 + 0.9) / 11, abs=1e-4)
    assert "flips/track" in proc.stdout


def test_latency_percentiles_leave_out_each_capture_runs_warm_up(tmp_path):
    """A run whose first frames waited seconds for the model: the percentiles describe the steady state
    after each capture run's first 5 s of events, and say so; --warmup 0 keeps every event."""
    rows = []
    for run_start in (T0, T0 + 100.0):  # two capture runs, each with its own warm-up
        # 1 s of frames captured while the model loaded, all classified at once 3 s in (2.1..3.0 s late).
        for i in range(10):
            rows.append(event("cam", i, run_start + i * 0.1, 3.0 - i * 0.1, [face("happy")]))
        # Then, from 3 s on, 30 s of steady frames at 10 fps, 60 ms each.
        for i in range(10, 310):
            rows.append(event("cam", i, run_start + 2.0 + i * 0.1, 0.06, [face("happy")]))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    proc = run_report("--events", str(path))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "events.jsonl.report" / "report.json").read_text())
    latency = data["cameras"]["cam"]["latency_ms"]
    # Left out per run: the events classified before its first event (3.0 s in) + 5 s, i.e. the 10 backlog
    # frames and frames 10..59 (classified 3.06 .. 7.96 s after the run's first frame was captured).
    assert latency["warmup_left_out"] == 2 * 60 and latency["events"] == 2 * 250
    assert latency["p99"] == pytest.approx(60.0, abs=1e-3) and latency["max"] == pytest.approx(60.0, abs=1e-3)
    assert data["warmup_s"] == 5.0
    assert "after each capture run's first 5 s of events (120 warm-up events left out, --warmup)" in proc.stdout
    assert float(table_rows(proc.stdout)["cam"]["lat_p99_ms"]) == pytest.approx(60.0, abs=0.06)

    everything = run_report("--events", str(path), "--out", str(tmp_path / "all"), "--warmup", "0")
    assert everything.returncode == 0, everything.stderr
    latency = json.loads((tmp_path / "all" / "report.json").read_text())["cameras"]["cam"]["latency_ms"]
    assert latency["warmup_left_out"] == 0 and latency["max"] == pytest.approx(3000.0, abs=1e-3)
