"""The launcher's supervisor as plain logic on real (non-emostream) processes: the watchdog kills and
restarts only the stage whose health probe keeps failing, the probe never mistakes a self-connected
socket for a stage, and a stage that keeps dying is given up with its last error. Faults injected into
a running pipeline are tests/system/test_faults.py.
"""

from __future__ import annotations

import socket
import time

import pytest

from deploy.plan import StageSpec
from deploy.supervisor import FatalStageError, Supervisor
from emostream import metrics
from emostream.runtime import pid_alive
from support import free_port, free_ports, wait_for

# ------------------------------------------------------------------------------------------------
# the watchdog, as plain logic on real (non-emostream) processes
# ------------------------------------------------------------------------------------------------


def idle_process_spec(name: str) -> StageSpec:
    # A real long-running process; its "health" is whatever the injected probe says.
    return StageSpec(name, "http.server", [str(free_port()), "--bind", "127.0.0.1"], metrics_port=free_port())


def test_watchdog_kills_only_the_stage_whose_health_probe_keeps_failing_and_it_is_restarted():
    healthy, frozen = idle_process_spec("healthy"), idle_process_spec("frozen")
    answers = {healthy.metrics_port: True, frozen.metrics_port: False}
    supervisor = Supervisor(
        [healthy, frozen], backoff_s=0.05, hang_timeout_s=0.5, probe=answers.__getitem__, probe_grace_s=0.0
    )
    supervisor.start(watch=False)
    try:
        frozen_pid = supervisor.states["frozen"].process.pid
        healthy_pid = supervisor.states["healthy"].process.pid
        assert supervisor.check_liveness() == [], "silent for less than hang_timeout_s: not yet hung"
        time.sleep(0.6)
        assert supervisor.check_liveness() == ["frozen"]
        wait_for(lambda: supervisor.poll() or supervisor.states["frozen"].restarts == 1, what="the restart")
        assert supervisor.states["frozen"].process.pid != frozen_pid
        assert supervisor.states["healthy"].process.pid == healthy_pid
        assert metrics.STAGE_HANGS.labels("frozen")._value.get() == 1
        assert metrics.STAGE_HANGS.labels("healthy")._value.get() == 0
    finally:
        supervisor.stop()
    assert not any(pid_alive(p) for p in (frozen_pid, healthy_pid))


def test_the_health_probe_never_mistakes_a_self_connected_socket_for_a_stage():
    from deploy.supervisor import probe_healthz

    # Probing ports nothing listens on, many times: whatever source port the kernel picks (itself
    # included, in the ephemeral range), the answer is "not healthy" and the port is left free.
    for port in free_ports(20):
        assert probe_healthz(port) is False
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


# ------------------------------------------------------------------------------------------------
# a stage that keeps dying soon after each start is given up, naming its last error
# ------------------------------------------------------------------------------------------------


def failing_spec(name: str, tmp_path, essential: bool = True) -> StageSpec:
    # A real process that fails at once (exit code 1, a crash), every time, with a one-line error on stderr.
    bad = tmp_path / "bad.json"
    bad.write_text("not json\n")
    return StageSpec(name, "json.tool", [str(bad)], essential=essential)


def test_an_essential_stage_that_keeps_dying_ends_the_run_naming_its_last_error(tmp_path):
    supervisor = Supervisor([failing_spec("sink", tmp_path)], backoff_s=0.01, backoff_max_s=0.02, max_restarts=2)
    supervisor.start(watch=False)
    try:
        with pytest.raises(FatalStageError) as info:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # not wait_for: it would swallow the exception
                supervisor.poll()
                time.sleep(0.05)
    finally:
        supervisor.stop()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("sink died 3 times in a row")
    assert message.endswith("its last line: Expecting value: line 1 column 1 (char 0)"), message
    assert supervisor.states["sink"].restarts == 2
    assert supervisor.running() == {}


def test_a_camera_that_keeps_dying_is_given_up_and_counts_as_failed(tmp_path):
    supervisor = Supervisor(
        [failing_spec("capture-lobby", tmp_path, essential=False)], backoff_s=0.01, backoff_max_s=0.02, max_restarts=1
    )
    supervisor.start(watch=False)
    try:
        wait_for(lambda: supervisor.poll() or supervisor.sources_finished(), timeout=60, what="the camera given up")
        assert supervisor.failed_sources() == ["capture-lobby"]
        assert supervisor.states["capture-lobby"].restarts == 1
        assert supervisor.running() == {}
    finally:
        supervisor.stop()


def test_max_restarts_0_restarts_forever(tmp_path):
    supervisor = Supervisor([failing_spec("sink", tmp_path)], backoff_s=0.01, backoff_max_s=0.01, max_restarts=0)
    supervisor.start(watch=False)
    try:
        wait_for(lambda: supervisor.poll() or supervisor.states["sink"].restarts >= 4, timeout=60, what="4 restarts")
    finally:
        supervisor.stop()


# ------------------------------------------------------------------------------------------------
# stages added, removed and told of a new camera set while the others run (the control API)
# ------------------------------------------------------------------------------------------------


def test_a_stage_added_and_removed_while_running_leaves_the_others_alone_and_drops_its_series():
    kept = idle_process_spec("sink")
    supervisor = Supervisor([kept], hang_timeout_s=0)
    supervisor.start(watch=False)
    try:
        kept_pid = supervisor.running()["sink"]
        idle = idle_process_spec("x")
        camera = StageSpec("capture-new", idle.module, idle.args, essential=False)
        supervisor.add_stage(camera)
        with pytest.raises(ValueError, match="runs already"):
            supervisor.add_stage(camera)
        new_pid = supervisor.running()["capture-new"]
        assert metrics.STAGE_UP.labels("capture-new")._value.get() == 1
        assert supervisor.remove_stage("capture-new") is True
        assert not pid_alive(new_pid)
        supervisor.poll()
        assert supervisor.running() == {"sink": kept_pid}, "no restart of the removed one, the other untouched"
        exported = {s.labels["stage"] for m in metrics.STAGE_UP.collect() for s in m.samples}
        assert "capture-new" not in exported and "sink" in exported
        assert supervisor.remove_stage("capture-new") is False
    finally:
        supervisor.stop()
    assert not pid_alive(kept_pid)


def test_update_spec_writes_the_new_camera_set_to_a_following_stage_without_restarting_it(tmp_path):
    out = tmp_path / "lines.json"
    # json.tool --json-lines reads JSON lines from stdin ("-") and writes them out at EOF: a real
    # process that shows what reached its stdin.
    spec = StageSpec(
        "detector-0", "json.tool", ["--json-lines", "--compact", "-", str(out)], update='{"cameras": {}}\n'
    )
    supervisor = Supervisor([spec], hang_timeout_s=0)
    supervisor.start(watch=False)
    try:
        pid = supervisor.running()["detector-0"]
        changed = StageSpec(spec.name, spec.module, spec.args, update='{"cameras": {"a": "tcp://h:1"}}\n')
        supervisor.update_spec(changed)
        supervisor.update_spec(changed)  # the same set again: nothing written
        assert supervisor.specs()["detector-0"] is changed, "a restart would use the new command line"
        supervisor.states["detector-0"].process.stdin.close()  # EOF: json.tool writes what it read and exits
        wait_for(lambda: supervisor.states["detector-0"].process.poll() is not None, what="json.tool's exit")
        assert out.read_text().splitlines() == ['{"cameras":{"a":"tcp://h:1"}}']
        assert supervisor.states["detector-0"].process.pid == pid
    finally:
        supervisor.stop()


SLOW_TO_STOP = """
import signal, sys, time
def stop(signum, frame):
    time.sleep(float(sys.argv[1]))  # a stage whose exit takes a while (native runtimes tearing down)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", file=sys.stderr, flush=True)
while True:
    time.sleep(0.1)
"""


def test_a_stage_slower_to_stop_than_its_share_of_the_stop_timeout_is_not_killed_before_the_timeout(tmp_path):
    # Stages are stopped by module, in reverse plan order: detector, then classifier, then sink; three
    # groups share the 6 s timeout, 2 s each. The classifier takes 3 s to exit.
    for module in ("fake_detector", "fake_classifier", "fake_sink"):
        (tmp_path / f"{module}.py").write_text(SLOW_TO_STOP)
    env = {"PYTHONPATH": str(tmp_path)}
    plan = [
        StageSpec("sink", "fake_sink", ["0"], env=env),
        StageSpec("classifier", "fake_classifier", ["3"], env=env),
        StageSpec("detector", "fake_detector", ["0"], env=env),
    ]
    supervisor = Supervisor(plan, hang_timeout_s=0, stop_timeout_s=6.0)
    supervisor.start()
    try:
        # "ready" on stderr (the supervisor keeps each stage's last line): its SIGTERM handler is installed.
        wait_for(lambda: all(s.last_line == "ready" for s in supervisor.states.values()), timeout=30, what="ready")
    finally:
        supervisor.stop()
    codes = {name: state.process.returncode for name, state in supervisor.states.items() if state.process}
    # Its share (2 s) ran out while it stopped; the timeout had not: it exited on its own, not killed (-9).
    assert codes == {"sink": 0, "classifier": 0, "detector": 0}
