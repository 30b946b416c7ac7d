"""``python -m sink.report``: summarise a sink's JSON Lines event log per camera, as a table, JSON and plots.

    python -m sink.report --events events.jsonl [--out DIR] [--bin SECONDS] [--warmup SECONDS]

Per camera (and for all cameras together): events, time span, frames per second, frames lost (gaps
in the frame numbers capture gave them), faces per frame, share of frames with faces, emotion
distribution of the faces and latency (``ts_event - ts_capture``) p50/p95/p99. The table goes to
stdout; ``report.json`` and PNG plots of the emotion shares over time (one per camera, one overall)
go to ``--out`` (default: ``<events>.report/`` beside the log, e.g. ``events.jsonl.report/``).

The latency percentiles leave out each capture run's warm-up: its events classified in the first
``--warmup`` seconds (default :data:`emostream.stats.WARMUP_S`, as the launcher's summary) after the
run's first event. Frames grabbed while the model was still loading waited for it, and would make the
p99 of a short run seconds long; a run with nothing after its warm-up keeps all its events.

Every line is validated exactly as the sink validates events (:func:`emostream.wire.decode_event`),
so the report counts what a subscriber would have accepted. Malformed lines are counted by reason
(``not_json``, ``not_object``, or the wire's reasons for a JSON object the sink would refuse), the first
few are quoted with their line numbers, and never stop the report; events of other types than
``faces`` are counted and ignored, as docs/events.md's event format asks readers to do.

Exit status: 0 with a report, 1 when the log holds no valid ``faces`` event (empty, or all
malformed), 2 for bad arguments or an unreadable file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emostream.stats import WARMUP_S, percentiles
from emostream.wire import EMOTIONS, EmotionEvent, Event, WireError, decode_event

#: Malformed lines quoted in the output; the rest are only counted (a corrupt file may have millions).
MAX_EXAMPLES = 10
#: Auto bin widths, seconds: the smallest one giving at most TARGET_BINS bins over the log's span.
NICE_BINS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
TARGET_BINS = 60
#: One fixed colour per emotion so every plot (and every report) reads the same way.
EMOTION_COLORS = {
    "angry": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "happy": "#2ca02c",
    "sad": "#1f77b4",
    "surprise": "#ff7f0e",
    "neutral": "#7f7f7f",
}
ALL = "ALL"  # the row/key of the summary over every camera


@dataclass
class EventLog:
    """The valid ``faces`` events of a log, flattened into one row per event and one row per face."""

    events: pd.DataFrame  # camera, frame, ts_capture, ts_event, faces
    faces: pd.DataFrame  # camera, ts_capture, frame, emotion, confidence, track (-1: none), raw_emotion
    lines: int = 0
    blank: int = 0
    malformed: int = 0
    malformed_reasons: Counter[str] = field(default_factory=Counter)
    malformed_examples: list[dict[str, Any]] = field(default_factory=list)
    other_types: Counter[str] = field(default_factory=Counter)


def parse_line(raw: bytes) -> Event:
    """One log line as the sink would accept it, or :class:`WireError` saying why not."""
    # decode_event validates a [topic, JSON] message and requires topic == camera id; a log line has
    # no topic, so take it from the line itself. A line that is not a JSON object is a problem of the
    # file, not of a message, and gets a reason of its own.
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise WireError("not_json", f"not a line of JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError("not_object", f"a JSON {type(obj).__name__}, not an event object")
    camera = obj.get("camera")
    topic = camera.encode("utf-8", "replace") if isinstance(camera, str) else b""
    try:
        return decode_event([topic, raw])
    except WireError:
        raise
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        # The report promises never to crash on a bad line, whatever shape it has.
        raise WireError("bad_field", f"unreadable event ({type(exc).__name__}: {exc})") from exc


def read_log(lines: Iterable[bytes]) -> EventLog:
    """Validate and flatten every line; malformed ones are counted and a few kept as examples."""
    event_rows: list[tuple[str, int, float, float, int]] = []
    face_rows: list[tuple[str, float, int, str, float, int, str]] = []
    log = EventLog(events=pd.DataFrame(), faces=pd.DataFrame())
    for number, raw in enumerate(lines, start=1):
        log.lines += 1
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            log.blank += 1  # a trailing newline or an empty line: nothing to report, nothing wrong
            continue
        try:
            event = parse_line(raw)
        except WireError as err:
            log.malformed += 1
            log.malformed_reasons[err.reason] += 1
            if len(log.malformed_examples) < MAX_EXAMPLES:
                # Details quote the offending value, which can be a whole face: keep one screen line.
                detail = err.detail if len(err.detail) <= 160 else err.detail[:157] + "..."
                log.malformed_examples.append({"line": number, "reason": err.reason, "detail": detail})
            continue
        if not isinstance(event, EmotionEvent):
            log.other_types[event.type] += 1
            continue
        camera, ts_capture = event.camera, float(event.ts_capture)
        event_rows.append((camera, event.frame, ts_capture, float(event.ts_event), len(event.faces)))
        face_rows.extend(
            (
                camera,
                ts_capture,
                event.frame,
                face.emotion,
                float(face.confidence),
                -1 if face.track is None else int(face.track),
                face.raw_emotion or face.emotion,
            )
            for face in event.faces
        )
    log.events = pd.DataFrame(event_rows, columns=["camera", "frame", "ts_capture", "ts_event", "faces"])
    log.faces = pd.DataFrame(
        face_rows, columns=["camera", "ts_capture", "frame", "emotion", "confidence", "track", "raw_emotion"]
    )
    return log


@dataclass(frozen=True)
class Timing:
    """How one camera's frames spread over time, run by run."""

    runs: int  # capture runs in the log (a restarted capture, or a log appended to by several runs)
    active_s: float  # seconds covered by the runs, the gaps between runs left out
    intervals: int  # frame-to-frame intervals within runs: (frames of a run - 1), summed
    lost: int  # frames capture numbered but the log never saw

    @property
    def fps(self) -> float | None:
        # N frames at a steady rate r cover (N - 1) / r seconds, so intervals / active_s recovers r
        # exactly, and a pause between two runs appended to one log does not dilute it.
        return self.intervals / self.active_s if self.active_s > 0 else None


def camera_timing(events: pd.DataFrame) -> Timing:
    """Split one camera's events into capture runs and measure them.

    Capture numbers the frames it yields 0, 1, 2, ... (a gap downstream means a frame was lost) and
    starts again from 0 when it restarts. The sink appends to its file, so one log may hold several
    runs: in capture-time order, a frame number that does not grow starts a new run.
    """
    ordered = events.sort_values("ts_capture", kind="stable")
    frames = ordered["frame"].to_numpy()
    times = ordered["ts_capture"].to_numpy()
    starts = np.flatnonzero(np.diff(frames) <= 0) + 1
    runs = list(zip(np.split(frames, starts), np.split(times, starts), strict=True))
    return Timing(
        runs=len(runs),
        active_s=float(sum(t[-1] - t[0] for _, t in runs)),
        intervals=sum(len(f) - 1 for f, _ in runs),
        lost=sum(int(f.max() - f.min() + 1 - len(np.unique(f))) for f, _ in runs),
    )


def warmup_mask(events: pd.DataFrame, warmup_s: float) -> pd.Series:
    """True for the events of each camera's capture runs (as :func:`camera_timing` splits them) that
    were classified within ``warmup_s`` seconds of the run's first event."""
    if warmup_s <= 0 or events.empty:
        return pd.Series(False, index=events.index)
    ordered = events.sort_values(["camera", "ts_capture"], kind="stable")
    new_run = (ordered["camera"] != ordered["camera"].shift()) | (ordered["frame"].diff() <= 0)
    run = new_run.cumsum()
    start = ordered.groupby(run)["ts_event"].transform("min")
    return (ordered["ts_event"] < start + warmup_s).reindex(events.index)


def label_flips(faces: pd.DataFrame, column: str = "emotion") -> tuple[int, int]:
    """(tracks, label changes along them): each face track's ``column`` in frame order, counted
    where it differs from the track's previous face. Faces without a track are left out."""
    tracked = faces[faces["track"] >= 0].sort_values(["camera", "track", "ts_capture", "frame"], kind="stable")
    if tracked.empty:
        return 0, 0
    same_track = (tracked["camera"] == tracked["camera"].shift()) & (tracked["track"] == tracked["track"].shift())
    changed = same_track & (tracked[column] != tracked[column].shift())
    return int(tracked.groupby(["camera", "track"]).ngroups), int(changed.sum())


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def summarise(events: pd.DataFrame, faces: pd.DataFrame) -> dict[str, Any]:
    """The numbers of the events and faces given: one camera's, or every camera's together.

    Over several cameras ``fps`` is the sum of the cameras' rates (the pipeline's total frame rate)
    and ``frames_lost``/``runs`` are sums; everything else is computed over the pooled rows. Latency
    leaves out the rows whose ``warmup`` column (:func:`warmup_mask`, when present) is true.
    """
    n = len(events)
    first, last = float(events["ts_capture"].min()), float(events["ts_capture"].max())
    timings = [camera_timing(group) for _, group in events.groupby("camera", sort=True)]
    rates = [t.fps for t in timings if t.fps is not None]
    all_latency_ms = (events["ts_event"] - events["ts_capture"]).to_numpy() * 1000.0
    warm = events["warmup"].to_numpy(dtype=bool) if "warmup" in events else np.zeros(n, bool)
    # Without any event after the warm-up (a run shorter than it), all of them rather than none.
    latency_ms = all_latency_ms if warm.all() else all_latency_ms[~warm]
    counts = faces["emotion"].value_counts()
    total_faces = int(len(faces))
    return {
        "events": n,
        "start": datetime.fromtimestamp(first, timezone.utc).isoformat(),
        "end": datetime.fromtimestamp(last, timezone.utc).isoformat(),
        "span_s": _round(last - first, 3),
        "active_s": _round(sum(t.active_s for t in timings), 3),
        "runs": sum(t.runs for t in timings),
        "fps": _round(sum(rates), 3) if rates else None,
        "frames_lost": sum(t.lost for t in timings),
        "faces": total_faces,
        "faces_per_frame": _round(total_faces / n, 4),
        "frames_with_faces": _round(float((events["faces"] > 0).mean()), 4),
        "emotions": {e: int(counts.get(e, 0)) for e in EMOTIONS},
        "emotion_shares": {e: _round(counts.get(e, 0) / total_faces, 4) if total_faces else None for e in EMOTIONS},
        "mean_confidence": _round(float(faces["confidence"].mean()), 4) if total_faces else None,
        **_track_summary(faces),
        "latency_ms": {
            **{key: _round(v, 3) for key, v in percentiles(latency_ms).items()},
            "mean": _round(float(latency_ms.mean()), 3),
            "max": _round(float(latency_ms.max()), 3),
            "events": int(len(latency_ms)),
            "warmup_left_out": n - int(len(latency_ms)),
        },
        # ts_capture comes from the capture host's clock and ts_event from the classifier's: across
        # machines a negative latency means their clocks disagree (run NTP/chrony), not time travel.
        "negative_latencies": int((all_latency_ms < 0).sum()),
    }


def _track_summary(faces: pd.DataFrame) -> dict[str, Any]:
    """Face tracks and how often their shown label (``emotion``) and per-frame label (``raw_emotion``)
    change: flips a viewer sees, per track."""
    tracks, flips = label_flips(faces, "emotion")
    _, raw_flips = label_flips(faces, "raw_emotion")
    return {
        "tracks": tracks,
        "label_flips": flips,
        "raw_label_flips": raw_flips,
        "label_flips_per_track": _round(flips / tracks, 3) if tracks else None,
        "raw_label_flips_per_track": _round(raw_flips / tracks, 3) if tracks else None,
    }


def auto_bin(span: float) -> float:
    """A round bin width giving at most TARGET_BINS bins over ``span`` seconds."""
    for width in NICE_BINS:
        if span / width <= TARGET_BINS:
            return float(width)
    return float(math.ceil(span / TARGET_BINS))


def emotion_shares_over_time(faces: pd.DataFrame, t0: float, bin_s: float, n_bins: int) -> pd.DataFrame:
    """Share of each emotion among the faces of every time bin; bins without faces are all zero."""
    index = pd.RangeIndex(n_bins)
    if faces.empty:
        return pd.DataFrame(0.0, index=index, columns=list(EMOTIONS))
    bins = ((faces["ts_capture"] - t0) // bin_s).astype(int).clip(0, n_bins - 1)
    counts = pd.crosstab(bins, faces["emotion"]).reindex(index=index, columns=list(EMOTIONS), fill_value=0)
    totals = counts.sum(axis=1)
    # Zero rather than NaN for empty bins: the stack then drops to the axis where no face was seen
    # instead of interpolating a mood across a gap.
    return counts.div(totals.where(totals > 0), axis=0).fillna(0.0)


def plot_shares(shares: pd.DataFrame, t0: float, bin_s: float, title: str, path: Path) -> None:
    """A stacked area of emotion shares per time bin, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers, CI or containers
    import matplotlib.pyplot as plt

    x = (shares.index.to_numpy() + 0.5) * bin_s  # bin centres, seconds since the log's first frame
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    try:
        ax.stackplot(
            x,
            [shares[e].to_numpy() for e in EMOTIONS],
            labels=list(EMOTIONS),
            colors=[EMOTION_COLORS[e] for e in EMOTIONS],
            alpha=0.9,
            step="mid",  # a bin is a block of time: draw it flat, do not interpolate between bins
        )
        start = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        ax.set_xlabel(f"seconds since {start} (bins of {bin_s:g} s)")
        ax.set_ylabel("share of faces")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(x[-1] + 0.5 * bin_s, bin_s))
        ax.set_title(title)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def build_report(log: EventLog, source: str, bin_s: float | None, warmup_s: float = WARMUP_S) -> dict[str, Any]:
    """Every number of the report, keyed by camera (plus ALL), ready to be written as JSON; latency
    leaves out each capture run's first ``warmup_s`` seconds of events (see the module docstring)."""
    log.events["warmup"] = warmup_mask(log.events, warmup_s)
    cameras = sorted(log.events["camera"].unique())
    per_camera = {
        camera: summarise(log.events[log.events["camera"] == camera], log.faces[log.faces["camera"] == camera])
        for camera in cameras
    }
    overall = summarise(log.events, log.faces)
    t0 = float(log.events["ts_capture"].min())
    span = float(log.events["ts_capture"].max()) - t0
    width = bin_s if bin_s else auto_bin(span)
    return {
        "source": source,
        "lines": log.lines,
        "blank_lines": log.blank,
        "malformed": {
            "count": log.malformed,
            "reasons": dict(log.malformed_reasons),
            "examples": log.malformed_examples,
        },
        "other_types": dict(log.other_types),
        "warmup_s": warmup_s,
        "bin_s": width,
        "t0": t0,
        "cameras": per_camera,
        "overall": overall,
        "plots": {},
    }


def write_plots(log: EventLog, report: dict[str, Any], out: Path) -> dict[str, str]:
    """One PNG per camera and one over all cameras; returns {camera or ALL: file name}."""
    t0, width = report["t0"], report["bin_s"]
    n_bins = int((float(log.events["ts_capture"].max()) - t0) // width) + 1
    plots = {}
    groups = [(ALL, log.faces, "all cameras")] + [
        (camera, log.faces[log.faces["camera"] == camera], f"camera {camera}") for camera in report["cameras"]
    ]
    for key, faces, label in groups:
        name = "emotions_overall.png" if key == ALL else f"emotions_{key}.png"
        summary = report["overall"] if key == ALL else report["cameras"][key]
        title = f"Emotion shares over time, {label} ({summary['faces']} faces in {summary['events']} frames)"
        plot_shares(emotion_shares_over_time(faces, t0, width, n_bins), t0, width, title, out / name)
        plots[key] = name
    return plots


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def render_tables(report: dict[str, Any]) -> str:
    """The human-readable summary: one row per camera plus ALL, then the emotion shares."""
    rows = {**report["cameras"], ALL: report["overall"]}
    summary = pd.DataFrame(
        {
            camera: {
                "events": str(s["events"]),
                "span_s": _fmt(s["span_s"], ".1f"),
                "runs": str(s["runs"]),
                "fps": _fmt(s["fps"], ".2f"),
                "lost": str(s["frames_lost"]),
                "faces/frame": _fmt(s["faces_per_frame"], ".2f"),
                "with_faces": _fmt(100 * s["frames_with_faces"], ".1f", "%"),
                "lat_p50_ms": _fmt(s["latency_ms"]["p50"], ".1f"),
                "lat_p95_ms": _fmt(s["latency_ms"]["p95"], ".1f"),
                "lat_p99_ms": _fmt(s["latency_ms"]["p99"], ".1f"),
                "confidence": _fmt(s["mean_confidence"], ".3f"),
                "tracks": str(s["tracks"]),
                "flips/track": _fmt(s["label_flips_per_track"], ".2f"),
                "raw_flips/track": _fmt(s["raw_label_flips_per_track"], ".2f"),
            }
            for camera, s in rows.items()
        }
    ).T
    summary.index.name = "camera"
    shares = pd.DataFrame(
        {
            camera: {e: _fmt(None if v is None else 100 * v, ".1f") for e, v in s["emotion_shares"].items()}
            for camera, s in rows.items()
        }
    ).T
    shares.index.name = "camera"
    return (
        summary.to_string()
        + "\n\nemotion shares of faces (%):\n"
        + shares.to_string()
        + f"\n\nlatency = ts_event - ts_capture, after each capture run's first {report['warmup_s']:g} s of events "
        + f"({report['overall']['latency_ms']['warmup_left_out']} warm-up events left out, --warmup); "
        + "fps within capture runs (ALL: their sum); confidence: mean of "
        + "the shown label's; flips/track: changes of the shown (smoothed) label along a face track, raw: of "
        + "the per-frame label; "
        + f"plots in bins of {report['bin_s']:g} s"
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sink.report",
        description="Summarise a sink's JSON Lines event log per camera: table, report.json and PNG plots.",
    )
    parser.add_argument("--events", required=True, type=Path, help="the JSON Lines file the sink wrote (--jsonl)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for report.json and the plots (default: <events>.report/, e.g. events.jsonl.report/)",
    )
    parser.add_argument(
        "--warmup",
        type=_not_negative,
        default=WARMUP_S,
        metavar="SECONDS",
        help="latency leaves out each capture run's events of its first SECONDS (model loading); 0: none",
    )
    parser.add_argument(
        "--bin", type=_positive, default=None, metavar="SECONDS", help="time bin of the plots (default: ~60 bins)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path: Path = args.events
    try:
        # Binary: a line that is not UTF-8 is one malformed line, not a crash of the whole report.
        with path.open("rb") as fh:
            log = read_log(fh)
    except OSError as exc:
        parser.error(f"cannot read {path}: {exc.strerror or exc}")
    malformed = log.malformed
    if log.events.empty:
        why = "it is empty" if log.lines == log.blank else f"{log.lines - log.blank} non-blank lines"
        extra = f", {malformed} malformed" if malformed else ""
        other = f", {sum(log.other_types.values())} of other types" if log.other_types else ""
        print(f"sink.report: no valid 'faces' events in {path} ({why}{extra}{other})", file=sys.stderr)
        for example in log.malformed_examples:
            print(f"  line {example['line']}: {example['reason']}: {example['detail']}", file=sys.stderr)
        return 1

    out: Path = args.out if args.out is not None else path.with_name(path.name + ".report")
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(log, str(path), args.bin, args.warmup)
    report["plots"] = write_plots(log, report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    others = sum(log.other_types.values())
    print(
        f"{path}: {log.lines} lines, {len(log.events)} events, {malformed} malformed, "
        f"{others} of other types, {len(report['cameras'])} cameras"
    )
    print()
    print(render_tables(report))
    if malformed:
        reasons = ", ".join(f"{r} {c}" for r, c in sorted(log.malformed_reasons.items()))
        print(f"\nmalformed lines: {malformed} ({reasons}); first ones:")
        for example in log.malformed_examples:
            print(f"  line {example['line']}: {example['reason']}: {example['detail']}")
    negative = report["overall"]["negative_latencies"]
    if negative:
        print(f"\n{negative} event(s) with ts_event before ts_capture: the capture and classifier clocks disagree")
    print(f"\nwrote {out / 'report.json'} and {len(report['plots'])} plots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
