"""The bench's output: an aligned text report, the JSON file, the PNG plot and the README's performance
table, all read from the bench's JSON document (so a saved ``bench.json`` can be rendered again:
:func:`read_json`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.bench.ratios import Headline
from deploy.bench.targets import check_targets, cpus_text, flags_text, machine_text
from emostream.jsonutil import json_ready
from emostream.onnxmodel import ENGINES


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


def align(
    header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ", left: Sequence[int] = (0,)
) -> list[str]:
    """Rows as aligned text columns: the ``left`` columns (text) left-aligned, the others (numbers) right-aligned."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def drops_text(run: dict[str, Any]) -> str:
    drops = run.get("drops_in_window") or {}
    return ", ".join(f"{k} {v:,.0f}" for k, v in drops.items()) or "none"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}x"


def _others(entry: dict[str, Any]) -> str:
    """Cores other processes kept busy while ``entry`` was measured (see :class:`CpuWatch`)."""
    watch = entry.get("cpu_watch") or {}
    return _fmt(watch.get("other_processes_cores", entry.get("other_processes_cores")), 2)


#: Cores of other processes above which a measurement is flagged as disturbed in the report.
NOISY_CORES = 0.5
#: The steadiness probe's median speed after the end-to-end runs over before them below which the report
#: says the machine itself slowed down meanwhile (a VM's host can do that; no process here shows it).
SLOWED_SPEED = 0.85
#: Share of the steadiness probe's windows below 80% of its median, before or after the runs, from which the
#: report says the host was unsteady: its speed moved within the probe itself, so figures measured at
#: different moments of this bench (the CPU budget's stages against the pipeline) compare less well.
UNSTEADY_SHARE = 0.1


def noisy_steps(results: dict[str, Any]) -> list[str]:
    """Names of the measurements during which other processes kept more than NOISY_CORES cores busy."""
    entries: list[tuple[str, dict[str, Any]]] = [
        (f"baseline slice {i + 1}", sl) for i, sl in enumerate(results["baseline"].get("slices", []))
    ]
    entries += [(name, entry) for name, entry in results.get("stages", {}).items()]
    entries += [("classifier", results.get("classifier", {})), ("matmul peak", results.get("peak", {}))]
    entries += [("int8 matmul peak", results.get("int8_peak") or {})]
    entries += [(_run_name(r), r) for r in all_runs(results) if not r.get("error")]
    out = []
    for name, entry in entries:
        watch = entry.get("cpu_watch") or {}
        others = watch.get("other_processes_cores", entry.get("other_processes_cores"))
        if others is not None and others > NOISY_CORES:
            out.append(f"{name} ({others:.1f})")
    return out


def all_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every end-to-end run of the bench in the order they ran (those that did run)."""
    extra = [results.get(key) for key in ("max_throughput", "max_throughput_socket", "what_if", "accurate_run")]
    return [r for r in [*results.get("runs", []), *extra] if r]


def _run_name(run: dict[str, Any]) -> str:
    name = f"{run['cameras']} cam {run['pacing']}" + (" block" if run["drop_policy"] == "block" else "")
    if run.get("shared_memory") is False:
        name += " socket"
    if run.get("emotion_model"):
        name += f" {Path(run['emotion_model']).stem}"
    return name + "".join(f" {k}={v}" for k, v in (run.get("env") or {}).items())


def _baseline_lines(results: dict[str, Any]) -> list[str]:
    b = results["baseline"]
    share = b.get("share_by_part", {})
    rows = [
        [f"slice {i + 1}", _fmt(sl["fps"]), str(sl["frames"]), "", "", "", "", "", _others(sl)]
        for i, sl in enumerate(b.get("slices", []))
    ]
    rows.append(
        [
            "baseline (median)",
            _fmt(b["fps"]),
            str(b["frames"]),
            _fmt(b["faces_per_frame"], 2),
            *(f"{100 * share.get(k, 0):.0f}%" for k in ("decode", "detect", "crop", "classify")),
            "" if b.get("slices") else _others(b),
        ]
    )
    header = ["", "frames/s", "frames", "faces/frame", "decode", "detect", "crop", "classify", "others"]
    return [
        "Baseline: the study's loop in one process (decode -> Haar full res 1.3/5 -> 48x48 crop -> model b1 fp32)",
        *align(header, rows),
    ]


def _stage_lines(results: dict[str, Any]) -> list[str]:
    st, cls = results["stages"], results["classifier"]
    rows = [["decode (capture)", _fmt(st["decode"]["fps"]), "frames/s", _fmt(st["decode"]["cpu_parallelism"], 2)]]
    rows[0] += ["-", _others(st["decode"])]
    for key, name in (("detector_yunet", "YuNet"), ("detector_yunet_tracked", "YuNet"), ("detector_haar", "Haar")):
        d = st.get(key)
        if d:
            every = f", interval {d['interval']}" if d.get("interval", 1) > 1 else ""
            rows.append(
                [
                    f"detector {name} {d['downscale']:g}x{every}",
                    _fmt(d["fps"]),
                    "frames/s",
                    _fmt(d["cpu_parallelism"], 2),
                    _fmt(d["faces_per_frame"], 2),
                    _others(d),
                ]
            )
            if d.get("align_ms_per_face") is not None and not d.get("interval", 1) > 1:
                rows.append(["  aligned crop, per face", _fmt(d["align_ms_per_face"], 3)])
                rows[-1] += ["CPU ms/face", "-", "-", "-"]
    # Files older than classifier.runtime served torch with bf16.
    served = cls.get("runtime") or "torch bf16"
    for size, value in cls["faces_per_s_by_batch"].items():
        last = int(size) == int(cls["max_batch"])
        rows.append(
            [
                f"classifier {served} batch {size}",
                _fmt(value),
                "faces/s",
                _fmt(cls["cpu_parallelism"], 2) if last else "",
                "",
                _others(cls) if last else "",
            ]
        )
    if cls.get("tta_flip_faces_per_s"):
        label = f"classifier {served} batch {cls['max_batch']}, tta flip"
        rows.append([label, _fmt(cls["tta_flip_faces_per_s"]), "faces/s", "", "", ""])
    if cls.get("torch_faces_per_s"):
        label = f"classifier served on {cls['torch_runtime']} instead, batch {cls['max_batch']}"
        rows.append([label, _fmt(cls["torch_faces_per_s"]), "faces/s", "", "", ""])
    if cls.get("near_ties_kept_faces_per_s"):
        label = f"classifier as served with int8's near ties kept (rescore_near_ties false), batch {cls['max_batch']}"
        rows.append([label, _fmt(cls["near_ties_kept_faces_per_s"]), "faces/s", "", "", ""])
    # Classifier runtimes side by side, measured in the same run (standalone.measure_runtimes).
    for runtime in cls.get("runtimes") or []:
        threads = f", {runtime['threads']} threads" if runtime.get("threads") else ""
        for size, value in runtime.get("faces_per_s_by_batch", {}).items():
            rows.append([f"classifier {runtime['runtime']} batch {size}{threads}", _fmt(value), "faces/s", "", "", ""])
    acc = results.get("accurate_classifier")
    if acc:  # the accurate operating point and the default, side by side (standalone.measure_accurate)
        batch = acc["max_batch"]
        rows.append([f"accurate {Path(acc['model']).name}, {acc['runtime']}, batch {batch}", _fmt(acc["faces_per_s"])])
        rows[-1] += ["faces/s", "", "", _others(acc)]
        rows.append([f"  the default beside it, {acc['default_runtime']}", _fmt(acc["default_faces_per_s"])])
        rows[-1] += ["faces/s", "", "", ""]
    return [
        "Stages standalone (this process, same frames; rate = median over chunks)",
        *align(["stage", "rate", "unit", "cores used", "faces/frame", "others"], rows),
    ]


def _interval_lines(study: list[dict[str, Any]]) -> list[str]:
    if not study:
        return []
    return [
        "",
        "Detection interval: YuNet on 1 frame in N, its boxes held on the others (same frames)",
        *align(
            ["interval", "detections/frame", "faces kept (IoU>=0.5)", "median IoU", "held boxes unmatched"],
            [
                [
                    str(row["interval"]),
                    _fmt(row["detections_per_frame"], 2),
                    f"{100 * row['faces_kept']:.1f}%",
                    _fmt(row["median_iou"], 2),
                    f"{100 * row['held_unmatched']:.1f}%",
                ]
                for row in study
            ],
        ),
    ]


def steadiness_text(steady: dict[str, Any]) -> str:
    """The CPU steadiness measurement (standalone.CpuSteadiness as JSON) in one phrase."""
    below = steady["below"]
    return (
        f"{100 * below['80']:.0f}% of {steady['window_s']:g} s windows below 80% of the median speed "
        f"({100 * below['70']:.0f}% below 70%), the slowest at {100 * steady['slowest']:.0f}%"
    )


def unsteady_probes(results: dict[str, Any]) -> dict[str, float]:
    """The steadiness probes (``before_runs`` / ``after_runs``) with at least UNSTEADY_SHARE of their windows
    below 80% of their median speed, and that share."""
    steadiness = results.get("cpu_steadiness") or {}
    return {
        when: float(probe["below"]["80"])
        for when, probe in steadiness.items()
        if probe and probe.get("below") and probe["below"].get("80", 0.0) >= UNSTEADY_SHARE
    }


def speed_after_runs(results: dict[str, Any]) -> float | None:
    """The steadiness probe's median speed after the end-to-end runs over its median before them; None
    without both probes."""
    steadiness = results.get("cpu_steadiness") or {}
    before, after = steadiness.get("before_runs"), steadiness.get("after_runs")
    if not before or not after or not before.get("median_ops_per_s"):
        return None
    return float(after["median_ops_per_s"] / before["median_ops_per_s"])


def _steadiness_lines(steadiness: dict[str, Any]) -> list[str]:
    lines = [f"    {when.replace('_', ' ')}: {steadiness_text(steady)}" for when, steady in steadiness.items()]
    return (
        ["  CPU steadiness, one fixed single-thread workload, nothing else of the bench running:", *lines]
        if lines
        else []
    )


def _all_core_lines(all_cores: dict[str, Any]) -> list[str]:
    """Decode and the detector alone against one copy per usable CPU at once (allcore.AllCoreStage as JSON)."""
    if not all_cores:
        return []
    rows = [
        [
            stage,
            _fmt(1000 * m["alone_cpu_s_per_frame"], 2),
            _fmt(1000 * m["all_cores_cpu_s_per_frame"], 2),
            str(m["processes"]),
            _ratio(m["slowdown"]),
        ]
        for stage, m in all_cores.items()
    ]
    return [
        "",
        "Every CPU busy: the same single-threaded loop alone, then one copy per usable CPU at once (CPU ms/frame)",
        *align(["stage", "alone", "all CPUs busy", "copies", "slowdown"], rows),
    ]


def _run_lines(results: dict[str, Any]) -> list[str]:
    """The end-to-end runs: throughput, latency and drops, then CPU cores per stage."""
    runs = all_runs(results)
    header = ["run", "offered", "events/s", "faces/fr", "p50 ms", "p95 ms", "p99 ms", "to det", "in cls"]
    header += ["sink p99", "batch"]
    rows = []
    for run in runs:
        if run.get("error"):
            # A dash in every figure's column; the failure in the drops column.
            rows.append([_run_name(run), *["-"] * (len(header) - 1), "FAILED: " + run["error"][:50]])
            continue
        lat, sink = run["latency_ms"], run["sink_latency_ms"]
        rows.append(
            [
                _run_name(run),
                _fmt(run["offered_fps"]),
                _fmt(run["events_per_s"]),
                _fmt(run["faces_per_frame"], 2),
                _fmt(lat["p50"], 0),
                _fmt(lat["p95"], 0),
                _fmt(lat["p99"], 0),
                # The two parts of the latency: JSON written before events carried ts_detect lacks them.
                _fmt((run.get("to_detector_ms") or {}).get("p99"), 0),
                _fmt((run.get("in_classifier_ms") or {}).get("p99"), 0),
                _fmt(sink["p99"], 0),
                _fmt(run.get("classifier_mean_batch"), 1),
                drops_text(run),
            ]
        )
    lines = align([*header, "drops in window (stage/reason)"], rows, left=(0, len(header)))
    lines.append("  to det / in cls: p99 of capture to detector done / detector done to classified, ms")
    pinning = sorted({run["cpu_pinning"] for run in runs if run.get("cpu_pinning")})
    lines += [f"  CPU pinning (supervisor.pin_cpus): {text}" for text in pinning]
    rows = []
    for run in runs:
        if run.get("error"):
            continue
        cores = run.get("cpu_cores_by_stage", {})
        rows.append(
            [
                _run_name(run),
                *(_fmt(cores.get(k), 2) for k in ("capture", "detector", "classifier", "sink", "launcher")),
                _others(run),
                _fmt(run.get("detector_ms_per_frame"), 1),
                _fmt(run.get("classifier_ms_per_call"), 1),
            ]
        )
    lines += [
        "",
        "  CPU cores per stage in the window (/proc), ms per detector frame and per classifier batch (/metrics)",
    ]
    header = ["run", "capture", "detector", "classifier", "sink", "launcher", "others", "det ms", "cls ms"]
    return lines + align(header, rows, indent="    ")


def _headline_lines(results: dict[str, Any]) -> list[str]:
    h, s = results["headline"], results["settings"]
    what_if_rows = []
    if h.get("what_if_env"):  # only with --what-if
        env = " ".join(f"{k}={v}" for k, v in h["what_if_env"].items())
        what_if_rows = [
            [f"what_if_fps ({env})", _fmt(h.get("what_if_fps"))],
            ["what_if_over_max_throughput", _ratio(h.get("what_if_over_max_throughput"))],
        ]
    cap = h["stage_capacity_fps"]
    kept = h.get("faces_kept_at_interval")
    rows = [
        ["baseline_fps", _fmt(h["baseline_fps"])],
        [f"end_to_end_fps ({h['end_to_end_cameras']} cameras, realtime)", _fmt(h["end_to_end_fps"])],
        ["end_to_end_over_baseline", _ratio(h["end_to_end_over_baseline"])],
        ["p50 / p99 latency ms (that run)", f"{_fmt(h['p50_latency_ms'], 0)} / {_fmt(h['p99_latency_ms'], 0)}"],
        ["max_throughput_fps (fast, block)", _fmt(h["max_throughput_fps"])],
        ["max_throughput_over_baseline", _ratio(h["max_throughput_over_baseline"])],
        ["socket_fps (the same, frames over sockets)", _fmt(h.get("socket_fps"))],
        ["shared_memory_over_socket", _ratio(h.get("shared_memory_over_socket"))],
        [f"classifier_faces_per_s (batch {s['max_batch']})", _fmt(h["classifier_faces_per_s"], 0)],
        ["classifier_batched_over_batch1", _ratio(h["classifier_batched_over_batch1"])],
        ["classifier_tta_flip_faces_per_s (the same, tta flip)", _fmt(h.get("classifier_tta_flip_faces_per_s"), 0)],
        [
            "stage capacity fps: decode / detector / classifier",
            " / ".join(_fmt(cap[k]) for k in ("decode", "detector", "classifier")),
        ],
        [f"pipeline_over_slowest_stage ({h['slowest_stage']})", _fmt(h["pipeline_over_slowest_stage"], 2)],
        ["cpu_budget_fps", _fmt(h["cpu_budget_fps"])],
        ["pipeline_over_cpu_budget", _fmt(h["pipeline_over_cpu_budget"], 2)],
        ["cpu_budget_all_cores_fps (every CPU busy)", _fmt(h.get("cpu_budget_all_cores_fps"))],
        ["pipeline_over_all_core_budget", _fmt(h.get("pipeline_over_all_core_budget"), 2)],
        [
            "detector interval / faces kept at it",
            f"{h.get('detector_interval', 1)} / " + (f"{100 * kept:.1f}%" if kept else "-"),
        ],
        *what_if_rows,
    ]
    if h.get("accurate_faces_per_s") is not None:  # only with an accurate model
        rows += [
            ["accurate_faces_per_s (the accurate model as served)", _fmt(h["accurate_faces_per_s"], 0)],
            ["accurate_over_default", _ratio(h.get("accurate_over_default"))],
            [
                "accurate model's realtime run: events/s, p99 ms",
                f"{_fmt(h.get('accurate_events_per_s'))}, {_fmt(h.get('accurate_p99_latency_ms'), 0)}",
            ],
        ]
    return ["Headline", *align(["", "value"], rows)]


def _target_lines(results: dict[str, Any]) -> list[str]:
    rows = [[t.target, t.measured, t.verdict] for t in check_targets(results)]
    return [
        f"Against the targets, on {results['machine'].get('cpu_model') or '?'}",
        *align(["target", "measured", ""], rows, left=(0, 1, 2)),
    ]


def _engines_text(machine: dict[str, Any]) -> str:
    """ ", onnxruntime V, OpenVINO V" and the commit, where the file records them (older files do not)."""
    text = "".join(f", {engine.title} {machine[name]}" for name, engine in ENGINES.items() if machine.get(name))
    commit = commit_label(machine)
    return text + (f"; commit {commit}" if commit else "")


def commit_label(machine: dict[str, Any]) -> str | None:
    """The commit measured, short (12 hex digits, ``-dirty`` kept); None for files that do not record it."""
    commit = machine.get("commit")
    if not commit:
        return None
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _peak_lines(results: dict[str, Any]) -> list[str]:
    """The classifier's compute against the machine's matmul peak of the type it computes in."""
    h, cls = results["headline"], results["classifier"]
    dtype = h.get("classifier_peak_dtype") or results["peak"].get("dtype", "bfloat16")
    peaks = [f"{results['peak'].get('dtype', 'bfloat16')} {_fmt(results['peak']['gflops'], 0)}"]
    if h.get("int8_peak_gops"):
        peaks.append(f"int8 {_fmt(h['int8_peak_gops'], 0)}")
    share = h.get("classifier_share_of_peak")
    ceiling = h.get("classifier_batch1_ceiling")
    return [
        f"  classifier batched/batch-1 {_ratio(h['classifier_batched_over_batch1'])}"
        + (f" (at most {_ratio(ceiling)} on this machine: its {dtype} peak over batch 1's rate)" if ceiling else "")
        + f"; {cls['flops_per_face'] / 1e9:.3f} GFLOP/face x {_fmt(h['classifier_faces_per_s'], 0)} faces/s = "
        f"{_fmt(h['classifier_gflops'])} GFLOP/s,",
        (f"  {100 * share:.0f}% of this machine's measured {dtype} matmul peak" if share else "  no measured peak")
        + f" (GFLOP/s, {results['peak']['threads']} threads: {', '.join(peaks)})",
    ]


def format_report(results: dict[str, Any]) -> str:
    """The printed summary: aligned text tables of every measurement and the headline ratios."""
    m, s = results["machine"], results["settings"]
    quick = " --quick" if s.get("quick") else ""
    lines = [
        f"emostream bench{quick} on {machine_text(m)}",
        f"torch {m['torch']}, OpenCV {m['opencv']}{_engines_text(m)}; every number below was measured side by "
        "side in this run.",
        "'others' = CPU cores other processes on this machine kept busy meanwhile (noise indicator).",
        "",
        *_baseline_lines(results),
        "",
        *_stage_lines(results),
        *_interval_lines(results.get("interval_study") or []),
        *_all_core_lines(results.get("all_cores") or {}),
        "",
        *_peak_lines(results),
        *_steadiness_lines(results.get("cpu_steadiness") or {}),
        "",
        f"End to end: python -m deploy run, YuNet {s['downscale']:g}x at interval {s.get('interval', 1)}, "
        f"{s['workers']} detector workers, max_batch {s['max_batch']}; {s['warmup_s']:g} s warm-up, "
        f"then {s['measure_s']:g} s measured",
        *_run_lines(results),
    ]
    busy = noisy_steps(results)
    if busy:
        lines += [
            "",
            f"NOTE: other processes kept more than {NOISY_CORES:g} cores busy during: {', '.join(busy)}.",
            "  Those numbers are depressed; ratios within one step (batched/batch-1, runs against each other) hold",
            "  up better than ratios across steps measured at different moments.",
        ]
    speed = speed_after_runs(results)
    if speed is not None and speed < SLOWED_SPEED:
        lines += [
            "",
            f"NOTE: after the end-to-end runs the CPU steadiness probe ran at {100 * speed:.0f}% of its speed before "
            "them: the machine itself",
            "  slowed down meanwhile, so some end-to-end figures may be depressed (the probe cannot tell which).",
        ]
    unsteady = unsteady_probes(results)
    if unsteady:
        shares = ", ".join(f"{when.replace('_', ' ')} {100 * share:.0f}%" for when, share in unsteady.items())
        lines += [
            "",
            f"NOTE: the host was unsteady: windows of the steadiness probe below 80% of its median speed, {shares}.",
            "  Figures measured minutes apart (the CPU budget's stages alone against the pipeline, one run against",
            "  another) compare less well than in a steady hour; ratios measured side by side hold up better.",
        ]
    return "\n".join([*lines, "", *_headline_lines(results), "", *_target_lines(results)])


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """``results`` with the headline keys at the top level (what dashboards and diffs read first)."""
    doc = {**results["headline"], **{k: v for k, v in results.items() if k != "headline"}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(doc), indent=1) + "\n")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """A bench JSON file as :func:`write_json` wrote it, back in the shape the bench returns (the
    headline numbers under ``headline``), for :func:`format_report` and :func:`update_readme`."""
    doc = json.loads(Path(path).read_text())
    names = [f.name for f in dataclasses.fields(Headline)]
    headline = {name: doc.get(name) for name in names}
    return {**{k: v for k, v in doc.items() if k not in names}, "headline": headline}


#: The README's performance table sits between these lines; :func:`update_readme` rewrites it.
README_START = "<!-- bench-table:start -->"
README_END = "<!-- bench-table:end -->"


def readme_table(results: dict[str, Any], json_link: str = "docs/bench.json") -> str:
    """The README's performance block (markers excluded): the CPU it ran on, then the targets table."""
    m = results["machine"]
    started = str(results.get("started_at", "?"))[:10]
    short = commit_label(m)
    commit = f" at commit `{short}`" if short else ""
    lines = [
        "<!-- generated from docs/bench.json by: python -m deploy bench --render docs/bench.json "
        "--readme README.md -->",
        f"Measured by `python -m deploy bench` on {started}{commit} ([{json_link}]({json_link})), on "
        f"**{m.get('cpu_model') or '?'}**, {cpus_text(m)}; flags: {flags_text(m)}.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {t.target} | {t.measured} | {t.verdict} |" for t in check_targets(results)),
    ]
    return "\n".join(lines)


def update_readme(readme: str | Path, results: dict[str, Any]) -> bool:
    """Rewrite the block between README_START and README_END in ``readme``; True when it changed.

    A README without both markers is an error naming them, not a silent no-op.
    """
    path = Path(readme)
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no {README_START} ... {README_END} block to rewrite")
    new = text[: start + len(README_START)] + "\n" + readme_table(results) + "\n" + text[end:]
    if new == text:
        return False
    path.write_text(new)
    return True


def write_plot(results: dict[str, Any], path: str | Path) -> Path:
    """Aggregate throughput and p50/p99 latency against camera count, baseline as a horizontal line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((r for r in results.get("runs", []) if not r.get("error")), key=lambda r: r["cameras"])
    cams = [r["cameras"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(cams, [r["events_per_s"] for r in runs], "o-", label="emostream, aggregate events/s")
    ax1.plot(cams, [r["offered_fps"] for r in runs], "--", color="grey", label="offered (25 fps per camera)")
    baseline = results["headline"]["baseline_fps"]
    ax1.axhline(baseline, color="tab:red", label=f"baseline, study loop ({baseline:.1f})")
    max_fps = results["headline"].get("max_throughput_fps")
    if max_fps:
        ax1.axhline(max_fps, color="tab:green", linestyle=":", label=f"max throughput, fast + block ({max_fps:.1f})")
    what_if = results["headline"].get("what_if_fps")
    if what_if:
        env = " ".join(f"{k}={v}" for k, v in (results["headline"].get("what_if_env") or {}).items())
        ax1.axhline(what_if, color="tab:purple", linestyle="-.", label=f"what-if {env}, fast + block ({what_if:.1f})")
    ax1.set_xlabel("cameras")
    ax1.set_ylabel("frames/s (all cameras)")
    ax1.set_xticks(cams or [1])
    tops = [r["events_per_s"] for r in runs] + [r["offered_fps"] or 0 for r in runs] + [baseline, max_fps or 0]
    ax1.set_ylim(0, 1.6 * max([*tops, what_if or 0, 1]))  # headroom: the legend sits above the lines
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title("throughput")
    ax2.plot(cams, [r["latency_ms"]["p50"] for r in runs], "o-", label="p50")
    ax2.plot(cams, [r["latency_ms"]["p99"] for r in runs], "s-", label="p99")
    ax2.set_xlabel("cameras")
    ax2.set_ylabel("capture -> classified (ms, log scale)")
    ax2.set_xticks(cams or [1])
    # Log scale: an idle pipeline's tens of ms and an overloaded one's seconds on one readable axis.
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.legend(fontsize=8)
    ax2.set_title("latency")
    m = results["machine"]
    st = results["settings"]
    cpus = m.get("usable_cpus") or m["cpu_count"]
    fig.suptitle(
        f"emostream bench: {m.get('cpu_model') or '?'}, {cpus} CPUs, YuNet {st['downscale']:g}x at interval "
        f"{st.get('interval', 1)}, {st['workers']} detector workers"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
