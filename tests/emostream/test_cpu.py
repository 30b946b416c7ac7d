"""The CPU budget: affinity and cgroup quotas read from fake /proc/self/cgroup and /sys/fs/cgroup trees
built in a temporary folder, and the CPU's model and flags from /proc/cpuinfo text."""

from __future__ import annotations

from pathlib import Path

import pytest

from emostream.cpu import cgroup_quota, cpu_budget, parse_cpuinfo, thread_budget


def v2_tree(tmp_path: Path, cpu_max: dict[str, str], own: str = "/kubepods/pod1/ctr") -> tuple[Path, Path]:
    """A pure cgroup v2 mount with ``cpu.max`` files at the given folders, and a /proc/self/cgroup naming ``own``."""
    root = tmp_path / "sys" / "fs" / "cgroup"
    (root / own.strip("/")).mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for folder, text in cpu_max.items():
        (root / folder.strip("/") / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return proc, root


def v1_tree(tmp_path: Path, quota: str, period: str = "100000", controllers: str = "cpu,cpuacct") -> tuple[Path, Path]:
    """A cgroup v1 ``cpu,cpuacct`` hierarchy with the process in /docker/abc."""
    root = tmp_path / "cgroup"
    folder = root / controllers / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
    (folder / "cpu.cfs_period_us").write_text(period + "\n")
    (root / controllers / "cpu.cfs_quota_us").write_text("-1\n")
    (root / controllers / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"12:memory:/docker/abc\n4:{controllers}:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n")
    return proc, root


def test_cgroup_v2_quota_rounds_up_and_caps_a_larger_affinity(tmp_path):
    proc, root = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "150000 100000"})
    assert cgroup_quota(proc, root) == (1.5, "cgroup v2")
    budget = cpu_budget(proc, root, affinity=64)
    assert (budget.cpus, budget.source, budget.quota, budget.affinity) == (2, "cgroup v2", 1.5, 64)
    assert "2 usable CPUs (source: cgroup v2" in budget.describe()


def test_cgroup_v2_max_is_no_limit_and_a_parents_quota_still_applies(tmp_path):
    proc, root = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "max 100000"})
    assert cgroup_quota(proc, root) is None
    budget = cpu_budget(proc, root, affinity=8)
    assert (budget.cpus, budget.source, budget.quota) == (8, "affinity", None)
    proc, root = v2_tree(tmp_path / "nested", {"/kubepods/pod1/ctr": "max 100000", "/kubepods": "300000 100000"})
    assert cpu_budget(proc, root, affinity=8).cpus == 3


def test_cgroup_v2_in_hybrid_mode_is_found_under_unified(tmp_path):
    root = tmp_path / "cgroup"
    (root / "unified" / "app").mkdir(parents=True)
    (root / "unified" / "app" / "cpu.max").write_text("200000 100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("3:cpuset:/\n0::/app\n")
    assert cgroup_quota(proc, root) == (2.0, "cgroup v2")


def test_cgroup_v1_quota_and_period(tmp_path):
    proc, root = v1_tree(tmp_path, quota="250000", period="100000")
    assert cgroup_quota(proc, root) == (2.5, "cgroup v1")
    budget = cpu_budget(proc, root, affinity=64)
    assert (budget.cpus, budget.source) == (3, "cgroup v1")


def test_cgroup_v1_unlimited_quota_leaves_the_affinity(tmp_path):
    proc, root = v1_tree(tmp_path, quota="-1", controllers="cpu")
    assert cgroup_quota(proc, root) is None
    assert cpu_budget(proc, root, affinity=4).cpus == 4


def test_cgroup_v1_container_that_mounts_only_its_own_cgroup(tmp_path):
    # No cgroup namespace: /proc/self/cgroup names /docker/abc, the mount shows that cgroup at its root.
    root = tmp_path / "cgroup"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("4:cpu:/docker/abc\n")
    assert cgroup_quota(proc, root) == (1.0, "cgroup v1")


def test_an_affinity_smaller_than_the_quota_decides(tmp_path):
    proc, root = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "400000 100000"})
    budget = cpu_budget(proc, root, affinity=2)
    assert (budget.cpus, budget.source, budget.quota) == (2, "affinity", 4.0)


@pytest.mark.parametrize(
    "cpu_max", ["", "garbage", "100000 0", "-5 100000", "max max", "12 34 56", "\x00\x01"], ids=repr
)
def test_garbage_quota_files_fall_back_to_the_affinity(tmp_path, cpu_max):
    proc, root = v2_tree(tmp_path, {"/kubepods/pod1/ctr": cpu_max})
    budget = cpu_budget(proc, root, affinity=3)
    assert (budget.cpus, budget.source) == (3, "affinity")


@pytest.mark.parametrize("cgroup_file", ["", "garbage\n", "0::\n", ":::\n", "x:cpu\n"], ids=repr)
def test_garbage_or_missing_cgroup_files_fall_back_to_the_affinity(tmp_path, cgroup_file):
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(cgroup_file)
    assert cpu_budget(proc, tmp_path / "no-such-root", affinity=3).cpus == 3
    assert cpu_budget(tmp_path / "missing", tmp_path / "no-such-root", affinity=3).cpus == 3


def test_a_quota_below_one_cpu_still_gives_one(tmp_path):
    proc, root = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "20000 100000"})
    assert cpu_budget(proc, root, affinity=8).cpus == 1


def test_this_process_has_a_budget_within_the_host():
    budget = cpu_budget()
    assert 1 <= budget.cpus <= budget.affinity <= budget.host_cpus


def test_thread_budget_keeps_an_explicit_count_and_fills_auto_from_the_budget(tmp_path):
    proc, root = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "200000 100000"})
    budget = cpu_budget(proc, root, affinity=64)
    assert thread_budget(0, budget) == 2
    assert thread_budget(5, budget) == 5


def test_cpuinfo_model_and_serving_flags():
    info = parse_cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n")
    assert info.model == "AMD EPYC" and not info.native_bf16
    assert info.serving_flags()["avx2"] and not info.serving_flags()["amx_bf16"]
