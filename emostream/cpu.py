"""What the CPU this process runs on can do and how much of it the process may use: its model name
and the instruction sets that decide which number format and runtime serve fastest (bf16 needs AMX or
AVX-512 bf16 to beat float32), and the CPU budget (affinity and cgroup quota) that sizes thread pools."""

from __future__ import annotations

import functools
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: /proc/cpuinfo flags that matter for serving, in the order reports list them.
SERVING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        """bf16 in hardware (AMX or AVX-512 bf16); elsewhere torch emulates it, slower than float32."""
        return "amx_bf16" in self.flags or "avx512_bf16" in self.flags

    def serving_flags(self) -> dict[str, bool]:
        return {flag: flag in self.flags for flag in SERVING_FLAGS}


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and flags from /proc/cpuinfo text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model or platform.processor() or platform.machine(), flags=flags)


@functools.cache
def cpu_info() -> CpuInfo:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux
        return CpuInfo(model=platform.processor() or platform.machine(), flags=frozenset())


# -- how many CPUs this process may use ------------------------------------------------------------
# os.cpu_count() is the host's count: a container limited to 2 CPUs on a 64-core host would size
# every thread pool for 64 and have most of them throttled or preempted. The budget is the smaller of
# the affinity mask (taskset, cpuset) and the cgroup's CPU quota (docker --cpus, Kubernetes limits.cpu).

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may keep busy: ``cpus`` = min(affinity, ceil(cgroup quota)), at least 1."""

    cpus: int
    #: What decided ``cpus``: "affinity", "cgroup v2" (cpu.max) or "cgroup v1" (cpu.cfs_quota_us).
    source: str
    #: CPUs in the affinity mask, the cgroup quota in CPUs (None: no quota), os.cpu_count().
    affinity: int
    quota: float | None
    host_cpus: int

    def describe(self) -> str:
        quota = f"cgroup quota {self.quota:g} CPUs" if self.quota is not None else "no cgroup quota"
        return (
            f"{self.cpus} usable CPU{'s' if self.cpus != 1 else ''} (source: {self.source}; "
            f"affinity {self.affinity} of {self.host_cpus} host CPUs, {quota})"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "usable_cpus": self.cpus,
            "usable_cpus_source": self.source,
            "affinity_cpus": self.affinity,
            "cgroup_quota_cpus": self.quota,
        }


def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask); all of them where there is no such call."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _read_limit_v2(folder: Path) -> float | None:
    """``cpu.max`` ("max 100000" or "200000 100000") as CPUs; None: no limit here."""
    quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
    if quota == "max":
        return None
    return int(quota) / int(period or 100_000)


def _read_limit_v1(folder: Path) -> float | None:
    """``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` as CPUs; None: no limit here (quota -1)."""
    quota = int((folder / "cpu.cfs_quota_us").read_text().strip())
    if quota < 0:
        return None
    return quota / int((folder / "cpu.cfs_period_us").read_text().strip())


def _tightest(mount: Path, path: str, read: Callable[[Path], float | None]) -> float | None:
    """The smallest limit on the way from the process's cgroup folder up to the hierarchy's mount.

    A parent's quota caps its children too. Where the process's path does not exist under the mount
    (a container that mounts only its own cgroup, without a cgroup namespace), the mount itself is it.
    """
    folder = mount / path.strip("/")
    if not folder.is_dir():
        folder = mount
    limits = []
    while True:
        try:
            limit = read(folder)
        except (OSError, ValueError, ZeroDivisionError):  # absent at this level, or garbage: no limit known
            limit = None
        if limit is not None and limit > 0:
            limits.append(limit)
        if folder == mount or mount not in folder.parents:
            break
        folder = folder.parent
    return min(limits) if limits else None


def cgroup_quota(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> tuple[float, str] | None:
    """This process's cgroup CPU quota in CPUs (1.5 = one and a half) and "cgroup v2"/"cgroup v1";
    None where there is none or it cannot be read.

    ``proc_cgroup`` is /proc/self/cgroup ("0::/path" for v2, "4:cpu,cpuacct:/path" for v1);
    ``cgroup_root`` is where the hierarchies are mounted (v2 there, or under ``unified`` in hybrid mode;
    v1 controllers in ``cpu,cpuacct`` or ``cpu`` under it). Tests pass trees made in a temporary folder.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[tuple[float, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # the v2 unified hierarchy
            unified = cgroup_root if (cgroup_root / "cgroup.controllers").exists() else cgroup_root / "unified"
            limit = _tightest(unified, path, _read_limit_v2)
            if limit is not None:
                found.append((limit, "cgroup v2"))
        elif "cpu" in controllers.split(","):
            mount = next(
                (m for m in (cgroup_root / controllers, cgroup_root / "cpu") if m.is_dir()), cgroup_root / "cpu"
            )
            limit = _tightest(mount, path, _read_limit_v1)
            if limit is not None:
                found.append((limit, "cgroup v1"))
    return min(found) if found else None


def cpu_budget(
    proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT, affinity: int | None = None
) -> CpuBudget:
    """How many CPUs this process may keep busy: min(affinity mask, ceil(cgroup quota)), at least 1.

    ``affinity``: the mask's size (None: this process's); the paths as in :func:`cgroup_quota`.
    """
    mask = affinity if affinity is not None else len(affinity_cpus())
    mask = max(1, mask)
    found = cgroup_quota(proc_cgroup, cgroup_root)
    quota, kind = found if found else (None, "")
    cpus, source = mask, "affinity"
    if quota is not None and math.ceil(quota) < mask:
        cpus, source = max(1, math.ceil(quota)), kind
    return CpuBudget(cpus=cpus, source=source, affinity=mask, quota=quota, host_cpus=os.cpu_count() or mask)


def usable_cpus() -> int:
    """The CPUs this process may keep busy (:func:`cpu_budget`): what sizes every thread pool."""
    return cpu_budget().cpus


def thread_budget(requested: int, budget: CpuBudget | None = None) -> int:
    """Threads for one pool (OpenCV, torch, onnxruntime): ``requested`` when set (> 0), else (0: auto)
    the usable CPUs, never the host's count."""
    if requested > 0:
        return requested
    return (budget or cpu_budget()).cpus
