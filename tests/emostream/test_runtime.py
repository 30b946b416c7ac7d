"""Process start-up every stage shares (emostream/runtime.py): the CPU budget line, and thread pools
sized from the budget, checked on the real detector and classifier processes."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from emostream.cpu import affinity_cpus
from emostream.runtime import EXIT_STOP_DEADLINE, STOP_DEADLINE_ENV, pid_alive, proc_stat_fields, stop_deadline_s
from support import PYTHON, REPO, free_ports

STAGES = {
    "classifier": ["-m", "classifier", "--pull", "tcp://127.0.0.1:{0}", "--push", "tcp://127.0.0.1:{1}"],
    "detector": ["-m", "detector", "--frames", "tcp://127.0.0.1:{0}", "--push", "tcp://127.0.0.1:{1}"],
}
POOLS = {"classifier": "torch", "detector": "OpenCV"}


def budget_line(argv: list[str], cpus: set[int], processes: list[subprocess.Popen]) -> str:
    """Start a stage pinned to ``cpus`` (its affinity: the budget a cpuset or taskset gives) and return
    its "cpu budget:" log line; the stage is stopped once it has said it."""
    proc = subprocess.Popen(
        [PYTHON, *argv],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    processes.append(proc)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # ends at the stage's exit (EOF), if it never says it
        lines.append(line)
        if "cpu budget:" in line:
            proc.send_signal(signal.SIGTERM)
            return line
    pytest.fail(f"no 'cpu budget:' line; the stage exited with {proc.wait()}:\n{''.join(lines)}")


@pytest.mark.skipif(len(affinity_cpus()) < 2, reason="needs 2 CPUs: pinned to 1 must differ from all of them")
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_auto_threads_follow_the_cpu_budget_not_the_host(stage, processes):
    ports = free_ports(2)
    argv = [arg.format(*ports) for arg in STAGES[stage]]
    one = {min(affinity_cpus())}
    line = budget_line([*argv, "--threads", "0"], one, processes)
    assert "1 usable CPU (source: affinity; affinity 1 of" in line
    assert f"threads: {POOLS[stage]} 1 (auto)" in line
    # An explicit count is kept whatever the budget.
    line = budget_line([*argv, "--threads", "3"], one, processes)
    assert f"threads: {POOLS[stage]} 3" in line and "(auto)" not in line
    # Auto on two CPUs: two threads.
    two = set(sorted(affinity_cpus())[:2])
    assert f"threads: {POOLS[stage]} 2 (auto)" in budget_line([*argv, "--threads", "0"], two, processes)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_proc_stat_fields_are_counted_after_a_command_name_that_holds_spaces_and_parentheses():
    # A process may name itself anything (prctl, /proc/self/comm): here "x) S 1 2", which a split on
    # spaces or on the first ")" would read as its state and fields.
    child = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import os, sys, time; open('/proc/self/comm', 'w').write('x) S 1 2'); print(flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.nice(5),
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()  # renamed
        fields = proc_stat_fields(child.pid)
        assert fields is not None
        assert fields[0] in "RS" and int(fields[16]) == os.nice(0) + 5
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert proc_stat_fields(child.pid) is None and not pid_alive(child.pid)


HANGS_ON_STOP = """
import argparse, sys, time
from emostream.runtime import add_common_args, start_process
parser = argparse.ArgumentParser()
add_common_args(parser)
stop = start_process("stuck", parser.parse_args([]))
print("ready", flush=True)
stop.wait()
print("stopping", flush=True)
while True:  # a shutdown that never ends: a blocked socket, a thread that is never joined
    time.sleep(1)
"""


def test_a_stage_whose_stop_hangs_exits_by_the_deadline_in_its_environment():
    # What a stage does when its launcher died (nobody left to SIGKILL it) and its stop hangs.
    child = subprocess.Popen(
        [PYTHON, "-c", HANGS_ON_STOP],
        cwd=REPO,
        env={**os.environ, STOP_DEADLINE_ENV: "0.5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGTERM)
        assert child.stdout.readline() == "stopping\n"
        code = child.wait(timeout=60)
    finally:
        child.kill()
    assert code == EXIT_STOP_DEADLINE
    assert "stuck did not stop within 0.5 s of the stop request" in child.stderr.read()


def test_a_stop_deadline_that_is_no_number_is_ignored_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(STOP_DEADLINE_ENV, "soon")
    assert stop_deadline_s() is None
    assert STOP_DEADLINE_ENV in caplog.text
    monkeypatch.setenv(STOP_DEADLINE_ENV, "-1")
    assert stop_deadline_s() is None
    monkeypatch.setenv(STOP_DEADLINE_ENV, "7.5")
    assert stop_deadline_s() == 7.5
    monkeypatch.delenv(STOP_DEADLINE_ENV)
    assert stop_deadline_s() is None
