"""Process and machine statistics: CPU seconds from /proc, every stage's /metrics, and how busy the
rest of the machine was while something was measured."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

from deploy.bench.result import JsonResult
from emostream.cpu import affinity_cpus
from emostream.runtime import proc_stat_fields

Sample = tuple[str, dict[str, str], float]


def scrape(port: int, timeout: float = 3.0) -> list[Sample]:
    """Every sample of the Prometheus endpoint on ``port`` of this host: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


_STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def stage_pids(log_text: str) -> dict[str, int]:
    """The latest pid of every stage, from the launcher's "started NAME (pid N)" lines."""
    return {name: int(pid) for name, pid in _STARTED.findall(log_text)}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), from /proc; None if it is gone."""
    fields = proc_stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a live process in MB (``VmRSS`` in /proc/PID/status); None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0) / 1024
    except (OSError, ValueError):
        return None


def watched_cpus() -> set[int]:
    """The CPUs whose load the bench watches: those this process may run on (its affinity mask). On a
    big host whose other CPUs run other work, their load is no noise for this measurement."""
    return affinity_cpus()


def machine_ticks(cpus: Collection[int] | None = None) -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot of the CPUs ``cpus`` together (None: every CPU), from
    /proc/stat; None without /proc."""

    def wanted(name: str) -> bool:  # "cpu" is the sum of all, "cpu3" one of them
        if cpus is None:
            return name == "cpu"
        return name[3:].isdigit() and int(name[3:]) in cpus

    try:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal
            rows = [
                [int(v) for v in line.split()[1:9]] for line in f if line.startswith("cpu") and wanted(line.split()[0])
            ]
    except (OSError, ValueError):
        return None
    if not rows:
        return None
    total = sum(sum(r) for r in rows)
    return total - sum(r[3] + r[4] for r in rows), total


def busy_cores(before: tuple[int, int] | None, after: tuple[int, int] | None, cpus: int) -> float | None:
    """Cores the whole machine kept busy between two :func:`machine_ticks` readings."""
    if not before or not after or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * cpus


@dataclass(frozen=True)
class CpuLoad(JsonResult):
    """Cores busy over one measurement: the whole machine, this process, everything else."""

    machine_busy_cores: float | None
    own_cores: float
    other_processes_cores: float | None


class CpuWatch:
    """Cores busy on the CPUs this process may use (:func:`watched_cpus`), in this process, and in every
    other process, over a ``with`` block.

    Why: other processes share this small machine; the JSON then says how much of it they took while
    each standalone number was measured, which is what a reader needs to judge that number.
    """

    result: CpuLoad | None = None

    def __enter__(self) -> CpuWatch:
        self.watched = watched_cpus()
        self.cpus = len(self.watched)
        self._wall = time.perf_counter()
        self._own = time.process_time()
        self._ticks = machine_ticks(self.watched)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        own = (time.process_time() - self._own) / wall if wall > 0 else 0.0
        machine = busy_cores(self._ticks, machine_ticks(self.watched), self.cpus)
        others = max(0.0, machine - own) if machine is not None else None
        self.result = CpuLoad(machine_busy_cores=machine, own_cores=own, other_processes_cores=others)


@dataclass
class Snapshot:
    """Every stage's /metrics and CPU seconds, and the machine's CPU ticks, at one moment."""

    at: float = 0.0
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    ticks: tuple[int, int] | None = None

    def total(self, name: str, **labels: str) -> float:
        """The sum of metric ``name`` over every process and every series with these ``labels``."""
        return sum(
            value
            for samples in self.samples.values()
            for sample, sl, value in samples
            if sample == name and all(sl.get(k) == v for k, v in labels.items())
        )

    def drops(self) -> dict[tuple[str, str, str], float]:
        """emostream_frames_dropped_total by (stage, camera, reason), summed over the processes serving it."""
        out: dict[tuple[str, str, str], float] = defaultdict(float)
        for samples in self.samples.values():
            for sample, labels, value in samples:
                if sample == "emostream_frames_dropped_total":
                    out[(labels.get("stage", "?"), labels.get("camera", "?"), labels.get("reason", "?"))] += value
        return dict(out)


def take_snapshot(ports: dict[str, int], pids: dict[str, int]) -> Snapshot:
    """Read every process's CPU seconds and every stage's /metrics now (a stage that is down: an error);
    the machine's ticks are those of :func:`watched_cpus` (the stages inherit the bench's affinity)."""
    snap = Snapshot(at=time.time(), ticks=machine_ticks(watched_cpus()))
    for name, pid in pids.items():
        cpu = cpu_seconds(pid)
        if cpu is not None:
            snap.cpu[name] = cpu
    for name, port in ports.items():
        try:
            snap.samples[name] = scrape(port)
        except Exception as exc:  # noqa: BLE001 - a stage that is down raises URLError, timeouts, resets
            snap.errors[name] = repr(exc)
    return snap
