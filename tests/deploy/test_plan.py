"""How the launcher splits the CPU budget between the stages' thread pools (deploy/plan.py), and the
thread counts reaching every stage's command line and environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.config import ConfigError, parse_config
from deploy.plan import THREAD_ENV, StageSpec, plan_stages, split_threads, thread_split
from deploy.supervisor import Supervisor
from emostream.cpu import CpuBudget, cpu_budget
from emostream.runtime import STOP_DEADLINE_ENV, proc_stat_fields
from support import free_port, wait_for


def budget(cpus: int, host: int = 64) -> CpuBudget:
    return CpuBudget(cpus=cpus, source="affinity", affinity=cpus, quota=None, host_cpus=host)


def two_cpu_quota_on_64(tmp_path: Path) -> CpuBudget:
    """The budget of a container with a cgroup v2 quota of 2 CPUs and an affinity mask of 64 (a tree made here)."""
    root = tmp_path / "cgroup"
    (root / "ctr").mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu\n")
    (root / "ctr" / "cpu.max").write_text("200000 100000\n")
    proc = tmp_path / "cgroup_file"
    proc.write_text("0::/ctr\n")
    return cpu_budget(proc, root, affinity=64)


def four_cameras(workers: int, detector: dict | None = None, classifier: dict | None = None) -> dict:
    return {
        "cameras": [{"id": f"cam{i}", "source": "demo"} for i in range(4)],
        "detector": {"workers": workers, **(detector or {})},
        "classifier": classifier or {},
    }


def threads_of(stages: list[StageSpec]) -> dict[str, int]:
    return {s.name: int(s.args[s.args.index("--threads") + 1]) for s in stages if "--threads" in s.args}


def test_two_cpus_four_cameras_give_every_pool_one_thread():
    # The defaults (detector auto, classifier 1) on 2 CPUs, with 1 or 2 workers: one thread per pool,
    # the workers being the parallelism.
    for workers in (1, 2):
        split = thread_split(parse_config(four_cameras(workers)), budget(2))
        assert (split.detector, split.classifier, split.oversubscribed) == (1, 1, False)
        assert split.warning() is None
    split = thread_split(parse_config(four_cameras(2, classifier={"threads": 0})), budget(2))
    assert (split.detector, split.classifier) == (1, 1)


def test_a_container_limited_to_two_cpus_on_a_64_core_host_does_not_start_64_threads(tmp_path: Path):
    limited = two_cpu_quota_on_64(tmp_path)
    config = parse_config(four_cameras(1, classifier={"threads": 0}))
    stages = plan_stages(config, thread_split(config, limited))
    assert threads_of(stages) == {"classifier": 1, "detector-0": 1}
    # The same config with the host's 64 CPUs to itself: the pools fill them.
    assert threads_of(plan_stages(config, thread_split(config, budget(64)))) == {"classifier": 32, "detector-0": 32}


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize(("detector", "classifier"), [(0, 0), (0, 1), (1, 0), (0, 2)])
def test_derived_pools_never_ask_more_than_the_budget_beyond_one_thread_per_process(
    cpus, workers, detector, classifier
):
    split = split_threads(workers, detector, classifier, budget(cpus))
    assert split.detector >= 1 and split.classifier >= 1
    if workers * max(detector, 1) + max(classifier, 1) > max(cpus, workers + 1):
        assert split.oversubscribed, "the explicit counts alone ask too much: flagged"
        return
    assert workers * split.detector + split.classifier <= max(cpus, workers + 1)
    assert not split.oversubscribed
    # An explicit count is kept as it is.
    assert split.detector == (detector or split.detector) and split.classifier == (classifier or split.classifier)


def test_both_auto_give_the_classifier_an_equal_share_and_the_workers_the_rest():
    split = split_threads(workers=2, detector=0, classifier=0, budget=budget(8))
    assert (split.detector, split.classifier) == (3, 2)
    assert "threads: detector 2 x 3 (auto), classifier 2 (auto)" in split.describe()
    split = split_threads(workers=2, detector=2, classifier=0, budget=budget(8))
    assert (split.detector, split.classifier) == (2, 4)


def test_explicit_counts_that_oversubscribe_the_budget_are_kept_with_a_warning_naming_the_keys():
    split = split_threads(workers=2, detector=4, classifier=2, budget=budget(2))
    assert (split.detector, split.classifier) == (4, 2) and split.oversubscribed
    warning = split.warning()
    assert warning and "detector.workers x detector.threads + classifier.threads" in warning
    assert "10 threads on 2 usable CPUs" in warning


def test_every_stage_gets_its_pool_size_in_its_thread_environment():
    config = parse_config(four_cameras(2, classifier={"threads": 0}))
    stages = plan_stages(config, split_threads(2, 0, 0, budget(8)))
    env = {s.name: s.env for s in stages}
    for name, threads in {"classifier": 2, "detector-0": 3, "detector-1": 3, "sink": 1, "capture-cam0": 1}.items():
        assert {k: env[name][k] for k in THREAD_ENV} == dict.fromkeys(THREAD_ENV, str(threads)), name
    assert env["detector-0"]["OPENCV_FOR_THREADS_NUM"] == "3"
    assert threads_of(stages) == {"classifier": 2, "detector-0": 3, "detector-1": 3}


def test_the_supervisor_starts_a_stage_with_its_environment_on_top_of_the_launchers():
    spec = StageSpec(
        "idle",
        "http.server",
        [str(free_port()), "--bind", "127.0.0.1"],
        env={"OMP_NUM_THREADS": "3", "EMOSTREAM_TEST_MARK": "yes"},
    )
    supervisor = Supervisor([spec], hang_timeout_s=0)
    supervisor.start(watch=False)
    try:
        pid = supervisor.states["idle"].process.pid
        environ: dict[str, str] = {}

        def read() -> bool:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            environ.update(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
            return "EMOSTREAM_TEST_MARK" in environ

        wait_for(read, what="the stage's environment")
        assert environ["OMP_NUM_THREADS"] == "3" and "PATH" in environ
        # Its own stop deadline, in case this launcher is gone when its stop hangs, comes after the launcher's.
        assert float(environ[STOP_DEADLINE_ENV]) > supervisor.stop_timeout_s
    finally:
        supervisor.stop()


def test_stages_run_at_their_nice_values_downstream_first_and_the_config_sets_them():
    cameras = [{"id": "cam0", "source": "demo"}]
    two = {"workers": 2}
    nice = {s.name: s.nice for s in plan_stages(parse_config({"cameras": cameras, "detector": two, "viewer": {}}))}
    assert nice == {"viewer": 5, "sink": 0, "classifier": 0, "detector-0": 5, "detector-1": 5, "capture-cam0": 0}
    custom = parse_config(
        {"cameras": cameras, "detector": two, "supervisor": {"nice": {"capture": 3, "detector": 0, "sink": 1}}}
    )
    assert {s.name: s.nice for s in plan_stages(custom)} == {
        "sink": 1, "classifier": 0, "detector-0": 0, "detector-1": 0, "capture-cam0": 3,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="supervisor.nice.detector"):
        parse_config({"cameras": cameras, "supervisor": {"nice": {"detector": 20}}})


def test_the_supervisor_starts_a_stage_at_its_nice_value_on_top_of_the_launchers():
    spec = StageSpec("idle", "http.server", [str(free_port()), "--bind", "127.0.0.1"], nice=7)
    supervisor = Supervisor([spec], hang_timeout_s=0)
    supervisor.start(watch=False)
    try:
        pid = supervisor.states["idle"].process.pid
        fields = proc_stat_fields(pid)
        assert fields is not None
        nice = int(fields[16])
        assert nice == os.nice(0) + 7
    finally:
        supervisor.stop()


def pinned(stages: list[StageSpec]) -> dict[str, tuple[int, ...] | None]:
    return {s.name: s.cpus for s in stages}


def test_on_two_cpus_of_its_own_the_launcher_pins_workers_then_cameras_round_robin():
    config = parse_config(four_cameras(2))
    split = thread_split(config, budget(2), cpus=[4, 5])
    assert split.pinned == (4, 5) and "pinned round-robin to CPUs 4,5" in split.describe()
    assert pinned(plan_stages(config, split)) == {
        "sink": None, "classifier": None, "detector-0": (4,), "detector-1": (5,),
        "capture-cam0": (4,), "capture-cam1": (5,), "capture-cam2": (4,), "capture-cam3": (5,),
    }  # fmt: skip
    # One camera, one worker: each on its own CPU, not both on the first.
    one = parse_config({"cameras": [{"id": "cam0", "source": "demo"}]})
    assert pinned(plan_stages(one, thread_split(one, budget(2), cpus=[0, 1])))["capture-cam0"] == (1,)


def test_pinning_is_left_to_the_kernel_where_the_cpus_are_not_the_launchers_to_place(tmp_path: Path):
    config = parse_config(four_cameras(2))
    # A cgroup quota of 2 CPUs on a 64-CPU affinity mask: which 2 is the kernel's business.
    quota = thread_split(config, two_cpu_quota_on_64(tmp_path))
    assert quota.pinned == () and "cgroup v2 quota" in quota.pinning
    assert set(pinned(plan_stages(config, quota)).values()) == {None}
    # More CPUs than captures and workers: nothing to contend for.
    assert thread_split(config, budget(8)).pinned == ()
    assert "6 captures and detector workers for 8 CPUs" in thread_split(config, budget(8)).describe()
    # One CPU: nowhere else to go.
    assert thread_split(config, budget(1)).pinned == ()
    # The setting overrides the rule both ways.
    forced = parse_config({**four_cameras(2), "supervisor": {"pin_cpus": True}})
    assert thread_split(forced, two_cpu_quota_on_64(tmp_path)).pinned == tuple(range(64))
    off = parse_config({**four_cameras(2), "supervisor": {"pin_cpus": False}})
    assert thread_split(off, budget(2)).pinned == ()
    with pytest.raises(ConfigError, match="supervisor.pin_cpus"):
        parse_config({**four_cameras(2), "supervisor": {"pin_cpus": "sometimes"}})


def test_a_worker_with_a_pool_and_a_multithreaded_decoder_get_a_cpu_per_thread():
    config = parse_config(
        {
            "cameras": [{"id": "cam0", "source": "demo", "decode_threads": 2}, {"id": "cam1", "source": "demo"}],
            "detector": {"workers": 2, "threads": 2},
            "supervisor": {"pin_cpus": True},
        }
    )
    stages = pinned(plan_stages(config, thread_split(config, budget(4), cpus=[0, 1, 2, 3])))
    assert stages["detector-0"] == (0, 1) and stages["detector-1"] == (2, 3)
    # Cameras go round by their slot, one CPU along each: the second starts where the first's second CPU is.
    assert stages["capture-cam0"] == (0, 1) and stages["capture-cam1"] == (1,)


def test_the_supervisor_starts_a_stage_on_its_pinned_cpu():
    cpu = max(os.sched_getaffinity(0))
    spec = StageSpec("idle", "http.server", [str(free_port()), "--bind", "127.0.0.1"], cpus=(cpu,))
    supervisor = Supervisor([spec], hang_timeout_s=0)
    supervisor.start(watch=False)
    try:
        pid = supervisor.states["idle"].process.pid
        assert os.sched_getaffinity(pid) == {cpu}
        # Every thread the stage starts inherits it: the main thread's is the process's.
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"Cpus_allowed_list:\t{cpu}\n" in status
    finally:
        supervisor.stop()
