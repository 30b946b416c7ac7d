"""``python -m deploy bench --soak MINUTES``: the pipeline of four live cameras for a long time, watched
from the outside for what ruins a service that runs for months: memory that grows, processes that die
and are restarted, frames that vanish without being counted.

Every ``interval_s`` (from the first event on) one :func:`take_sample` records, per process (the
launcher and every stage): RSS (``/proc/PID/status`` VmRSS), CPU seconds (``/proc/PID/stat``) and open
file descriptors (``/proc/PID/fd``); from the launcher's ``/metrics`` the restarts and hang kills per
stage; from every stage's ``/metrics`` the frames each camera offered (capture), the events the sink
published and every drop by stage and reason; and what the bench's own subscriber received.

:func:`soak_verdict` (a pure function of the samples, so a saved JSON can be checked again) judges:

* **warm-up**: the first :data:`WARMUP_SHARE` of the run (model loading, allocator pools filling) is
  excluded from the memory verdict;
* **RSS**: per process, the median of the samples in the :data:`EDGE_SHARE` of the run right after
  warm-up against the median of those in its last :data:`EDGE_SHARE`; growth at most
  :data:`RSS_GROWTH_LIMIT`;
* **restarts**: none (the launcher's restart and hang counters, and no process whose pid changed);
* **drops counted**: per camera and at every sample after warm-up, frames offered = events published
  + frames dropped (every reason but ``read_error``, which is no frame) + frames in flight, where in
  flight is at most what the camera offers in the classifier's ``max_age_ms`` plus
  :data:`IN_FLIGHT_SLACK_S` (an older frame is dropped as ``stale``). The subscriber's view is checked
  the same way: frame numbers it never saw = frames counted as dropped, within the same allowance.

File descriptors and CPU are reported (table and plot), not judged: their normal level depends on the
machine, and a leak shows in the plot.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

import yaml

from deploy.bench.endtoend import events_socket, start_launcher, stop_launcher, waiting_face_events
from deploy.bench.procstats import Sample, cpu_seconds, rss_mb, scrape, stage_pids
from deploy.bench.report import align
from deploy.bench.settings import BenchSettings, pipeline_config
from deploy.config import ClassifierConfig
from deploy.plan import endpoints, metrics_ports

SOAK_CAMERAS = 4
#: The first part of the run the memory verdict leaves out: models load, allocator pools and ZeroMQ
#: buffers fill. A share rather than seconds, so a short check run and the 30-minute run judge alike.
WARMUP_SHARE = 0.2
#: Each end of the judged part: the median of its samples stands for the RSS there (one sample is noisy).
EDGE_SHARE = 0.1
RSS_GROWTH_LIMIT = 0.05
DEFAULT_INTERVAL_S = 5.0
#: Besides the classifier's max_age_ms: the time a frame may spend after the classifier took it (its
#: batch, the sink) and the skew between the scrapes of one sample.
IN_FLIGHT_SLACK_S = 1.0
#: Drop reasons that are not frames lost (a failed read of a camera produced no frame).
NOT_FRAMES = frozenset({"read_error"})
#: Launcher WARNING/ERROR lines kept in the JSON.
LOG_LINES = 50
#: Rows of the over-time table in the report (the JSON keeps every sample).
TABLE_ROWS = 20


def proc_stats(pid: int) -> dict[str, float] | None:
    """RSS (MB), CPU seconds (user + system, all threads) and open file descriptors of ``pid``; None if gone."""
    rss = rss_mb(pid)
    cpu_s = cpu_seconds(pid)
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    if rss is None or cpu_s is None:
        return None
    return {"pid": pid, "rss_mb": rss, "cpu_s": cpu_s, "fds": fds}


def _scrape_order(name: str) -> int:
    """Downstream first, captures last: a frame counted as offered was then offered before the sink and
    drop counters were read, so in-flight frames never come out negative by more than the slack."""
    for rank, prefix in enumerate(("sink", "classifier", "detector", "capture", "launcher")):
        if name.startswith(prefix):
            return rank
    return 9


def take_sample(
    t_s: float, pids: dict[str, int], ports: dict[str, int], seen: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """One sample at ``t_s`` seconds into the soak: every process's /proc numbers, every stage's counters,
    and ``seen`` (camera -> (events received, highest frame number)) from the bench's subscriber."""
    procs = {name: stats for name, pid in sorted(pids.items()) if (stats := proc_stats(pid)) is not None}
    samples: dict[str, list[Sample]] = {}
    errors: dict[str, str] = {}
    for name in sorted(ports, key=_scrape_order):
        try:
            samples[name] = scrape(ports[name])
        except Exception as exc:  # noqa: BLE001 - a stage that is down raises URLError, timeouts, resets
            errors[name] = repr(exc)
    restarts: dict[str, float] = defaultdict(float)
    cameras: dict[str, dict[str, Any]] = defaultdict(lambda: {"offered": 0.0, "delivered": 0.0, "dropped": {}})
    unknown = 0.0
    for values in samples.values():
        for metric, labels, value in values:
            if metric in ("emostream_stage_restarts_total", "emostream_stage_hangs_total"):
                restarts[labels.get("stage", "?")] += value
            elif metric == "emostream_frames_received_total" and labels.get("stage") == "capture":
                cameras[labels["camera"]]["offered"] += value
            elif metric == "emostream_frames_total" and labels.get("stage") == "sink":
                cameras[labels["camera"]]["delivered"] += value
            elif metric == "emostream_frames_dropped_total":
                camera, key = labels.get("camera", "?"), f"{labels.get('stage')}/{labels.get('reason')}"
                if camera == "unknown":
                    unknown += value
                else:
                    drops = cameras[camera]["dropped"]
                    drops[key] = drops.get(key, 0.0) + value
    for camera, (events, last) in seen.items():
        cameras[camera].update(seen=events, max_seq=last)
    return {
        "t_s": t_s,
        "procs": procs,
        "restarts": dict(sorted(restarts.items())),
        "cameras": {c: cameras[c] for c in sorted(cameras)},
        "unknown_camera_drops": unknown,
        "metrics_errors": errors,
    }


def frames_dropped(camera: dict[str, Any]) -> float:
    """Frames of one camera dropped anywhere, by the counters of one sample (read errors are no frames)."""
    return sum(v for key, v in camera.get("dropped", {}).items() if key.split("/")[-1] not in NOT_FRAMES)


def _edge(values: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    inside = [v for t, v in values if start <= t <= end]
    return median(inside) if inside else None


def soak_verdict(samples: Sequence[dict[str, Any]], duration_s: float, in_flight_s: float) -> dict[str, Any]:
    """The verdict on a soak's samples (see the module's docstring); ``in_flight_s``: how long a frame
    may be in flight (the classifier's max_age plus :data:`IN_FLIGHT_SLACK_S`)."""
    warmup_s = WARMUP_SHARE * duration_s
    edge_s = max(EDGE_SHARE * duration_s, 0.0)
    judged = [s for s in samples if s["t_s"] >= warmup_s]
    last = samples[-1] if samples else {"procs": {}, "restarts": {}, "cameras": {}}
    names = sorted({name for s in samples for name in s["procs"]})
    stages: dict[str, dict[str, Any]] = {}
    for name in names:
        series = [(s["t_s"], s["procs"][name]) for s in samples if name in s["procs"]]
        after = [(t, p) for t, p in series if t >= warmup_s]
        rss = [(t, p["rss_mb"]) for t, p in after]
        start = _edge(rss, warmup_s, warmup_s + edge_s)
        end = _edge(rss, duration_s - edge_s, duration_s)
        growth = (end - start) / start if start and end is not None else None
        restarts = max(int(last["restarts"].get(name, 0)), len({p["pid"] for _, p in series}) - 1)
        span = after[-1][0] - after[0][0] if len(after) > 1 else 0.0
        problems = []
        if growth is None:
            problems.append("no RSS samples at both ends of the judged part")
        elif growth > RSS_GROWTH_LIMIT:
            problems.append(f"RSS grew {100 * growth:.1f}% after warm-up (limit {100 * RSS_GROWTH_LIMIT:g}%)")
        if restarts:
            problems.append(f"restarted {restarts} time(s)")
        stages[name] = {
            "rss_start_mb": start,
            "rss_end_mb": end,
            "rss_max_mb": max((v for _, v in rss), default=None),
            "rss_growth": growth,
            "cpu_s": series[-1][1]["cpu_s"] if series else None,
            "cores_after_warmup": (after[-1][1]["cpu_s"] - after[0][1]["cpu_s"]) / span if span > 0 else None,
            "fds_start": after[0][1]["fds"] if after else None,
            "fds_end": after[-1][1]["fds"] if after else None,
            "fds_max": max((p["fds"] for _, p in after), default=None),
            "restarts": restarts,
            "ok": not problems,
            "problems": problems,
        }
    cameras: dict[str, dict[str, Any]] = {}
    for camera in sorted(last["cameras"]):
        end_counts = last["cameras"][camera]
        first = next((s["cameras"][camera] for s in samples if camera in s["cameras"]), end_counts)
        t_first = next(s["t_s"] for s in samples if camera in s["cameras"])
        span = last["t_s"] - t_first if samples else 0.0
        rate = (end_counts["offered"] - first["offered"]) / span if span > 0 else 0.0
        allowance = math.ceil(rate * in_flight_s) + 1
        unaccounted = [
            c["offered"] - c["delivered"] - frames_dropped(c)
            for s in judged
            if (c := s["cameras"].get(camera)) is not None
        ]
        unseen = [
            c["max_seq"] + 1 - c["seen"] - frames_dropped(c)
            for s in judged
            if (c := s["cameras"].get(camera)) is not None and "seen" in c
        ]
        problems = []
        worst = max(unaccounted, key=abs, default=None)
        if worst is None:
            problems.append("no counters after warm-up")
        elif abs(worst) > allowance:
            problems.append(f"{worst:+,.0f} frames offered but neither published nor counted as dropped")
        worst_seen = max(unseen, key=abs, default=None)
        if worst_seen is not None and abs(worst_seen) > allowance:
            problems.append(f"{worst_seen:+,.0f} frame numbers the subscriber never saw beyond the counted drops")
        cameras[camera] = {
            "offered": end_counts["offered"],
            "delivered": end_counts["delivered"],
            "dropped": frames_dropped(end_counts),
            "dropped_by_reason": dict(sorted(end_counts.get("dropped", {}).items())),
            "offered_per_s": rate,
            "in_flight_allowance": allowance,
            "unaccounted_worst": worst,
            "unseen_worst": worst_seen,
            "ok": not problems,
            "problems": problems,
        }
    unknown = last.get("unknown_camera_drops", 0.0)
    return {
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "edge_s": edge_s,
        "rss_growth_limit": RSS_GROWTH_LIMIT,
        "in_flight_s": in_flight_s,
        "stages": stages,
        "cameras": cameras,
        "unknown_camera_drops": unknown,
        "ok": bool(stages) and bool(cameras) and all(v["ok"] for v in [*stages.values(), *cameras.values()]),
    }


class _Events:
    """The bench's subscriber: events per camera and the highest frame number, as they arrive."""

    def __init__(self, endpoint: str) -> None:
        self.socket = events_socket(endpoint)
        self.seen: dict[str, tuple[int, int]] = {}
        self.total = 0

    def receive(self, wait_ms: int) -> None:
        if not self.socket.poll(wait_ms):
            return
        for event in waiting_face_events(self.socket):
            count, last = self.seen.get(event["camera"], (0, -1))
            self.seen[event["camera"]] = (count + 1, max(last, int(event["frame"])))
            self.total += 1

    def close(self) -> None:
        self.socket.close()


def run_soak(
    settings: BenchSettings,
    minutes: float,
    interval_s: float = DEFAULT_INTERVAL_S,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the pipeline of :data:`SOAK_CAMERAS` live cameras for ``minutes`` after its first event,
    sampling every ``interval_s``; the soak's JSON document (``samples``, ``verdict``)."""
    note = note or (lambda text: print(text, file=sys.stderr, flush=True))
    duration_s = minutes * 60.0
    interval_s = min(interval_s, duration_s / 10) if duration_s > 0 else interval_s
    spec = settings.spec(SOAK_CAMERAS, "realtime", settings.realtime_drop_policy)
    config, parsed = pipeline_config(settings.video, settings.yunet, spec)
    ports = metrics_ports(parsed)
    in_flight_s = ClassifierConfig().max_age_ms / 1000 + IN_FLIGHT_SLACK_S
    samples: list[dict[str, Any]] = []
    error: str | None = None
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="emostream-soak-") as workdir:
        config_path = Path(workdir) / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = Path(workdir) / "launcher.log"
        events = _Events(endpoints(parsed).events)
        safety_s = settings.startup_timeout_s + duration_s + 60.0
        proc = start_launcher(config_path, safety_s, log_path)
        note(
            f"soak: {SOAK_CAMERAS} cameras of {settings.video.name} at 25 fps ({spec.drop_policy}) for "
            f"{minutes:g} min, a sample every {interval_s:g} s, warm-up {WARMUP_SHARE * duration_s:.0f} s"
        )
        t0: float | None = None
        next_at = 0.0
        noted = 0.0
        try:
            while True:
                now = time.monotonic()
                if proc.poll() is not None:
                    error = f"the launcher exited early with code {proc.returncode}"
                    break
                if t0 is None:
                    if time.time() - started > settings.startup_timeout_s:
                        error = f"no event within {settings.startup_timeout_s:.0f} s of starting the launcher"
                        break
                    events.receive(50)
                    if events.total:
                        t0 = time.monotonic()
                    continue
                if now - t0 >= next_at:
                    pids = {**stage_pids(log_path.read_text()), "launcher": proc.pid}
                    samples.append(take_sample(round(now - t0, 3), pids, ports, dict(events.seen)))
                    if samples[-1]["t_s"] - noted >= max(60.0, duration_s / 10) or next_at >= duration_s:
                        noted = samples[-1]["t_s"]
                        note(_progress_line(samples))
                    if next_at >= duration_s:
                        break
                    next_at = min(next_at + interval_s, duration_s)
                events.receive(max(1, int(1000 * min(0.2, next_at - (time.monotonic() - t0)))))
        finally:
            events.close()
            code = stop_launcher(proc)
            log_text = log_path.read_text()
    # The launcher's own account of restarts, hangs and stage errors, whatever the verdict.
    warnings = [line for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line]
    verdict = soak_verdict(samples, duration_s, in_flight_s) if samples else None
    return {
        "command": " ".join([sys.executable, "-m", "deploy", *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "minutes": minutes,
        "interval_s": interval_s,
        "cameras": SOAK_CAMERAS,
        "pipeline": config,
        "error": error,
        "launcher_exit_code": code,
        "events_received": events.total,
        "samples": samples,
        "verdict": verdict,
        "launcher_warnings": warnings[:LOG_LINES] + (["..."] if len(warnings) > LOG_LINES else []),
        "log_tail": log_text[-3000:] if error or code else None,
    }


def _short(name: str) -> str:
    return name.replace("capture-", "").replace("detector-", "det").replace("classifier", "classif")


def _progress_line(samples: Sequence[dict[str, Any]]) -> str:
    s = samples[-1]
    rss = sum(p["rss_mb"] for p in s["procs"].values())
    fds = sum(p["fds"] for p in s["procs"].values())
    delivered = sum(c["delivered"] for c in s["cameras"].values())
    dropped = sum(frames_dropped(c) for c in s["cameras"].values())
    return f"    soak t={s['t_s']:6.0f}s: RSS {rss:,.0f} MB, {fds} fds, {delivered:,.0f} events, {dropped:,.0f} dropped"


def _cores(prev: dict[str, Any], cur: dict[str, Any]) -> float | None:
    dt = cur["t_s"] - prev["t_s"]
    common = [n for n in cur["procs"] if n in prev["procs"] and cur["procs"][n]["pid"] == prev["procs"][n]["pid"]]
    if dt <= 0 or not common:
        return None
    return sum(cur["procs"][n]["cpu_s"] - prev["procs"][n]["cpu_s"] for n in common) / dt


def format_soak(result: dict[str, Any]) -> str:
    """The soak's report: RSS per process over time, then the verdict per process and per camera."""
    samples = result["samples"]
    lines = [f"Soak: {result['cameras']} live cameras for {result['minutes']:g} min ({result['started_at']})"]
    if result.get("error"):
        lines.append(f"FAILED: {result['error']}")
    if not samples:
        return "\n".join(lines)
    names = sorted({n for s in samples for n in s["procs"]}, key=lambda n: (_scrape_order(n), n))
    step = max(1, math.ceil(len(samples) / TABLE_ROWS))
    shown = [i for i in range(0, len(samples), step)]
    if shown[-1] != len(samples) - 1:
        shown.append(len(samples) - 1)
    rows = []
    for i in shown:
        s = samples[i]
        cores = _cores(samples[i - step] if i >= step else samples[0], s) if i else None
        rows.append(
            [f"{s['t_s']:.0f}"]
            + [f"{s['procs'][n]['rss_mb']:.0f}" if n in s["procs"] else "-" for n in names]
            + [
                "-" if cores is None else f"{cores:.2f}",
                str(sum(p["fds"] for p in s["procs"].values())),
                f"{sum(c['delivered'] for c in s['cameras'].values()):,.0f}",
                f"{sum(frames_dropped(c) for c in s['cameras'].values()):,.0f}",
            ]
        )
    lines += ["", "RSS (MB) per process over time; cores: all processes together since the row before"]
    lines += align(["t (s)", *map(_short, names), "cores", "fds", "events", "dropped"], rows)
    verdict = result.get("verdict")
    if not verdict:
        return "\n".join(lines)
    lines += [
        "",
        f"Verdict (warm-up: the first {verdict['warmup_s']:.0f} s; RSS compared between the medians of the "
        f"{verdict['edge_s']:.0f} s after warm-up and the last {verdict['edge_s']:.0f} s)",
    ]
    stage_rows = [
        [
            name,
            f"{v['rss_start_mb']:.0f}" if v["rss_start_mb"] is not None else "-",
            f"{v['rss_end_mb']:.0f}" if v["rss_end_mb"] is not None else "-",
            f"{100 * v['rss_growth']:+.1f}%" if v["rss_growth"] is not None else "-",
            f"{v['cores_after_warmup']:.2f}" if v["cores_after_warmup"] is not None else "-",
            f"{v['fds_start']}->{v['fds_end']}",
            str(v["restarts"]),
            "ok" if v["ok"] else "FAIL: " + "; ".join(v["problems"]),
        ]
        for name, v in sorted(verdict["stages"].items(), key=lambda kv: (_scrape_order(kv[0]), kv[0]))
    ]
    lines += align(
        ["process", "RSS MB", "end MB", "growth", "cores", "fds", "restarts", "verdict"],
        stage_rows,
        left=(0, 7),
    )
    camera_rows = [
        [
            camera,
            f"{v['offered']:,.0f}",
            f"{v['delivered']:,.0f}",
            f"{v['dropped']:,.0f}",
            ", ".join(f"{k} {n:,.0f}" for k, n in v["dropped_by_reason"].items() if n) or "none",
            f"{v['unaccounted_worst']:+,.0f}" if v["unaccounted_worst"] is not None else "-",
            str(v["in_flight_allowance"]),
            "ok" if v["ok"] else "FAIL: " + "; ".join(v["problems"]),
        ]
        for camera, v in verdict["cameras"].items()
    ]
    lines += [""]
    lines += align(
        ["camera", "offered", "events", "dropped", "by reason", "in flight", "allowed", "verdict"],
        camera_rows,
        left=(0, 4, 7),
    )
    lines += ["", f"soak verdict: {'PASS' if verdict['ok'] else 'FAIL'}"]
    return "\n".join(lines)


def write_soak_plot(result: dict[str, Any], path: str | Path) -> Path:
    """RSS, open fds and CPU cores per process over time, the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    names = sorted({n for s in samples for n in s["procs"]}, key=lambda n: (_scrape_order(n), n))
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    warmup_min = (result.get("verdict") or {}).get("warmup_s", 0.0) / 60
    for name in names:
        points = [(s["t_s"] / 60, s["procs"][name]) for s in samples if name in s["procs"]]
        t = [p[0] for p in points]
        axes[0].plot(t, [p[1]["rss_mb"] for p in points], label=name)
        axes[1].plot(t, [p[1]["fds"] for p in points], label=name)
        cores = [
            (b[0], (b[1]["cpu_s"] - a[1]["cpu_s"]) / ((b[0] - a[0]) * 60))
            for a, b in zip(points, points[1:], strict=False)
            if b[0] > a[0] and a[1]["pid"] == b[1]["pid"]
        ]
        axes[2].plot([c[0] for c in cores], [c[1] for c in cores], label=name)
    for ax, label in zip(axes, ("RSS (MB)", "open file descriptors", "CPU (cores)"), strict=True):
        ax.set_ylabel(label)
        ax.axvspan(0, warmup_min, color="0.9", zorder=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[2].set_xlabel("minutes since the first event (grey: warm-up)")
    verdict = result.get("verdict") or {}
    fig.suptitle(
        f"Soak: {result['cameras']} live cameras, {result['minutes']:g} min — {'PASS' if verdict.get('ok') else 'FAIL'}"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
