"""Start every stage as its own OS process, restart the ones that die, stop them all cleanly.

Children run in their own session so that a Ctrl-C in the terminal reaches the launcher alone and
the launcher decides the stop order (sources first, so frames in flight drain into the sink). Each
child also gets SIGTERM from the kernel if the launcher itself dies (PR_SET_PDEATHSIG), so no stage
outlives it: one whose stop then hangs exits on its own by the deadline the launcher set in its
environment (emostream.runtime.STOP_DEADLINE_ENV), since no launcher is left to SIGKILL it.

A stage that hangs without dying (a deadlock, a stuck read, SIGSTOP) is found by its heartbeat: every
stage's main loop beats :data:`emostream.health.HEALTH`, and its ``/healthz`` answers 503 once the
beats stop (or not at all when the whole process is frozen). The supervisor's watchdog asks each
stage's ``/healthz`` every second; a stage that has not answered 200 for ``hang_timeout_s`` is killed
and restarted like one that died, counted in ``emostream_stage_hangs_total``.

A stage that keeps dying soon after each start (restarted ``max_restarts`` times in a row, and dead
again each time within STABLE_AFTER_S of its start) is given up on: a restart is not going to fix it.
Each child's stderr is relayed line by line to the launcher's, and its last line (a traceback's
exception, a stage's one-line error) names the cause in the launcher's own line about it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from deploy.plan import Restart, StageSpec
from emostream import metrics
from emostream.runtime import EXIT_FATAL, STOP_DEADLINE_ENV

log = logging.getLogger("deploy")
STABLE_AFTER_S = 30.0  # a stage that ran this long is healthy again: its backoff resets
PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
#: No probe in a stage's first seconds: it is loading and binding, and hang_timeout_s is far longer.
PROBE_GRACE_S = 5.0
#: How much later than the launcher's stop timeout a stage exits on its own, should its stop hang and
#: the launcher be gone (emostream.runtime.STOP_DEADLINE_ENV).
STOP_DEADLINE_SLACK_S = 5.0
#: How long the exit handling waits for a dead stage's last stderr lines to be relayed.
RELAY_JOIN_S = 1.0
#: The longest last stderr line quoted in the launcher's own lines.
LAST_LINE_MAX = 300


def probe_healthz(port: int) -> bool:
    """True when the stage on ``port`` answers 200 on /healthz in time.

    A raw socket rather than urllib, to catch TCP self-connection: probing a port nothing listens on
    (a stage still starting, or restarting) can make the kernel pick that very port as the source port
    and connect the socket to itself (ports in the ephemeral range, as tests use). urllib would then
    read its own request back, and the probe would hold the port the stage is about to bind.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as sock:
            if sock.getsockname() == sock.getpeername():
                return False
            sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0].split()
            return len(status) >= 2 and status[1] == b"200"
    except OSError:  # refused, timed out, reset
        return False


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):  # not Linux: children may outlive a SIGKILLed launcher
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_setup(nice: int, cpus: tuple[int, ...] | None = None) -> Callable[[], None]:
    """What a stage's child process does before it runs the stage: die with the launcher, take its
    nice value and CPUs (before any thread starts, so every thread of the stage has them)."""

    def setup() -> None:
        _die_with_parent()
        if nice:
            os.nice(nice)
        if cpus:
            with contextlib.suppress(OSError):  # a CPU taken away since the plan: the stage runs unpinned
                os.sched_setaffinity(0, cpus)

    return setup


@dataclass
class StageState:
    spec: StageSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    #: Last time /healthz answered 200 (or the start): the watchdog's clock.
    live_at: float = 0.0
    restarts: int = 0
    failures_in_row: int = 0
    next_start_at: float | None = None
    finished: bool = False  # exited 0 under Restart.ON_FAILURE: its work is done
    #: Exited EXIT_FATAL, or died again after max_restarts quick restarts: a restart cannot help.
    fatal: bool = False
    #: The last non-empty line the stage wrote to stderr (its error, when it died of one).
    last_line: str = ""
    relay: threading.Thread | None = None

    def last_words(self) -> str:
        return f"; its last line: {self.last_line}" if self.last_line else ""


def _close_stdin(process: subprocess.Popen | None) -> None:
    if process is not None and process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()


class FatalStageError(RuntimeError):
    """An essential stage failed for good: the run ends with a non-zero status and this one line."""


def _relay_stderr(state: StageState, pipe: IO[bytes]) -> None:
    """Copy a child's stderr to ours line by line, remembering its last non-empty line.

    It must read to the end whatever happens to our stderr: a pipe nobody drains blocks the child."""
    with pipe:
        for line in iter(pipe.readline, b""):
            text = line.decode("utf-8", "replace")
            # Our stderr closed, or replaced by an object without a byte buffer: keep reading all the same.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                out = getattr(sys.stderr, "buffer", None)
                if out is not None:
                    out.write(line)
                else:
                    sys.stderr.write(text)
                sys.stderr.flush()
            text = text.strip()
            if text:
                state.last_line = text if len(text) <= LAST_LINE_MAX else text[: LAST_LINE_MAX - 3] + "..."


class Supervisor:
    def __init__(
        self,
        stages: list[StageSpec],
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        hang_timeout_s: float = 15.0,
        probe: Callable[[int], bool] = probe_healthz,
        probe_grace_s: float = PROBE_GRACE_S,
        max_restarts: int = 5,
    ) -> None:
        self.states = {spec.name: StageState(spec) for spec in stages}
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stop_timeout_s = stop_timeout_s
        self.hang_timeout_s = hang_timeout_s
        self._probe = probe
        self.probe_grace_s = probe_grace_s
        #: Quick restarts in a row (each run shorter than STABLE_AFTER_S) after which a stage that dies
        #: again is given up; 0: restart forever.
        self.max_restarts = max_restarts
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def _spawn(self, state: StageState) -> None:
        # The stage's own stop deadline comes after this launcher's SIGKILL: it only acts when no launcher is left to.
        deadline = {STOP_DEADLINE_ENV: f"{self.stop_timeout_s + STOP_DEADLINE_SLACK_S:g}"}
        env = {**os.environ, **state.spec.env, **deadline}
        # A stage that follows camera changes reads them from a pipe; the others keep the launcher's stdin.
        stdin = subprocess.PIPE if state.spec.update is not None else None
        state.process = subprocess.Popen(
            state.spec.argv,
            start_new_session=True,
            preexec_fn=_child_setup(state.spec.nice, state.spec.cpus),
            env=env,
            stdin=stdin,
            stderr=subprocess.PIPE,
        )
        if state.process.stdin is not None:
            # Never block the supervisor on a stage that does not read (hung): a full pipe fails the write.
            os.set_blocking(state.process.stdin.fileno(), False)
        state.last_line = ""
        assert state.process.stderr is not None
        state.relay = threading.Thread(
            target=_relay_stderr, args=(state, state.process.stderr), name=f"stderr-{state.spec.name}", daemon=True
        )
        state.relay.start()
        state.started_at = state.live_at = time.monotonic()
        state.next_start_at = None
        metrics.STAGE_UP.labels(state.spec.name).set(1)
        # Exported at 0 from the start: increase() and alerts then see the first restart too.
        metrics.STAGE_RESTARTS.labels(state.spec.name)
        metrics.STAGE_HANGS.labels(state.spec.name)
        log.info("started %s (pid %d)", state.spec.name, state.process.pid)

    def start(self, watch: bool = True) -> None:
        """Spawn every stage; ``watch``: probe them for hangs from a thread (tests call check_liveness)."""
        for state in self.states.values():
            self._spawn(state)
        if watch and self.hang_timeout_s > 0:
            threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    # -- changes while running (deploy/control.py) -----------------------------------------------

    def add_stage(self, spec: StageSpec) -> None:
        """Start one more stage (a camera added while the pipeline runs); it is supervised like the others."""
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("the pipeline is stopping")
            if spec.name in self.states:
                raise ValueError(f"stage {spec.name} runs already")
            state = self.states[spec.name] = StageState(spec)
            self._spawn(state)

    def remove_stage(self, name: str) -> bool:
        """Stop one stage for good (a camera removed): SIGTERM, SIGKILL after ``stop_timeout_s``; its
        series are dropped so no "stage down" alert fires for it. False when there is no such stage."""
        with self._lock:
            state = self.states.pop(name, None)
        if state is None:
            return False
        # Out of the lock: the others' supervision goes on while this one stops. It is no longer in
        # self.states, so poll() will not restart it nor take its exit for a failure.
        process = state.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            self._wait(process, time.monotonic() + self.stop_timeout_s)
            if process.poll() is None:
                log.warning("%s did not stop in time; killing it", name)
                process.kill()
                process.wait()
        _close_stdin(process)
        if state.relay is not None:
            state.relay.join(RELAY_JOIN_S)
        for series in (metrics.STAGE_UP, metrics.STAGE_RESTARTS, metrics.STAGE_HANGS):
            with contextlib.suppress(KeyError):  # never exported (a finished source has none either)
                series.remove(name)
        log.info("removed %s", name)
        return True

    def update_spec(self, spec: StageSpec) -> None:
        """Replace a running stage's spec without restarting it: a restart uses the new command line, and
        a stage that follows camera changes gets the new update line on its stdin now."""
        with self._lock:
            state = self.states[spec.name]
            changed = spec.update is not None and spec.update != state.spec.update
            state.spec = spec
            process = state.process
            if changed and process is not None and process.stdin is not None and process.poll() is None:
                assert spec.update is not None
                try:
                    os.write(process.stdin.fileno(), spec.update.encode())
                except OSError as exc:  # died meanwhile: its restart gets the new command line
                    log.warning("%s: could not pass the new camera set: %s", spec.name, exc)

    def specs(self) -> dict[str, StageSpec]:
        with self._lock:
            return {name: state.spec for name, state in self.states.items()}

    def stage_info(self) -> dict[str, dict[str, object]]:
        """Per stage: pid (None while down), restarts, whether it finished or failed for good, its last line."""
        with self._lock:
            return {
                name: {
                    "pid": state.process.pid if state.process and state.process.poll() is None else None,
                    "restarts": state.restarts,
                    "finished": state.finished,
                    "failed": state.fatal,
                    "last_line": state.last_line,
                }
                for name, state in self.states.items()
            }

    # -- hung stages -----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            self.check_liveness()

    def check_liveness(self) -> list[str]:
        """Probe every running stage's /healthz once; kill those silent for ``hang_timeout_s``.

        Returns the stages killed. Stages without a metrics port cannot be probed and are skipped.
        The probes run outside the lock (each may take PROBE_TIMEOUT_S); the kill re-checks under it
        that the process is still the one probed.
        """
        with self._lock:
            targets = [
                (state, state.process, port)
                for state in self.states.values()
                if state.process is not None
                and (port := state.spec.metrics_port) is not None
                and time.monotonic() - state.started_at >= self.probe_grace_s
            ]
        killed = []
        for state, proc, port in targets:
            ok = self._probe(port)
            now = time.monotonic()
            with self._lock:
                if state.process is not proc or proc.poll() is not None or self._stopping.is_set():
                    continue
                if ok:
                    state.live_at = now
                    continue
                silent = now - state.live_at
                if silent < self.hang_timeout_s:
                    continue
                log.warning("%s hung: /healthz silent for %.1fs; killing it for a restart", state.spec.name, silent)
                metrics.STAGE_HANGS.labels(state.spec.name).inc()
                proc.kill()  # SIGKILL works on a stopped (SIGSTOP) process too; poll() reaps and restarts it
                killed.append(state.spec.name)
        return killed

    def poll(self) -> None:
        """Reap exited stages and (re)start due ones. Raises FatalStageError for an essential stage."""
        now = time.monotonic()
        with self._lock:
            for state in self.states.values():
                proc = state.process
                if proc is not None and proc.poll() is not None:
                    self._on_exit(state, proc.returncode, now)
                if state.next_start_at is not None and now >= state.next_start_at:
                    state.restarts += 1
                    metrics.STAGE_RESTARTS.labels(state.spec.name).inc()
                    self._spawn(state)

    def _on_exit(self, state: StageState, code: int, now: float) -> None:
        name = state.spec.name
        _close_stdin(state.process)
        state.process = None
        if state.relay is not None:
            state.relay.join(RELAY_JOIN_S)  # its last lines, the error among them, are still in the pipe
        metrics.STAGE_UP.labels(name).set(0)
        if code == 0 and state.spec.restart == Restart.ON_FAILURE:
            log.info("%s finished", name)
            state.finished = True
            # A finished source is no longer a stage: drop its series so "stage down" does not fire.
            metrics.STAGE_UP.remove(name)
            return
        if code == EXIT_FATAL:
            state.fatal = True
            what = f"{name} exited with a fatal error (exit code {code})"
            if state.spec.essential:
                raise FatalStageError(what + state.last_words())
            log.error("%s; not restarting it%s", what, state.last_words())
            return
        ran_for = now - state.started_at
        state.failures_in_row = 1 if ran_for >= STABLE_AFTER_S else state.failures_in_row + 1
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if self.max_restarts and state.failures_in_row > self.max_restarts:
            state.fatal = True
            what = (
                f"{name} died {state.failures_in_row} times in a row, each within {STABLE_AFTER_S:.0f} s of its "
                f"start (the last: {how} after {ran_for:.1f}s)"
            )
            if state.spec.essential:
                raise FatalStageError(what + state.last_words())
            log.error("%s; not restarting it%s", what, state.last_words())
            return
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (state.failures_in_row - 1))
        log.warning("%s died (%s) after %.1fs; restarting in %.1fs", name, how, ran_for, delay)
        state.next_start_at = now + delay

    def sources_finished(self) -> bool:
        """True when no camera will deliver another frame: each ended (a file without loop) or failed
        for good (a fatal exit: a broken file, looping or not, or bad arguments; or max_restarts
        quick restarts that died again)."""
        with self._lock:  # cameras come and go from the control API's thread
            sources = [s for s in self.states.values() if not s.spec.essential]
            return bool(sources) and all(s.finished or s.fatal for s in sources)

    def sources(self) -> list[str]:
        """The cameras' stages now."""
        with self._lock:
            return [n for n, s in self.states.items() if not s.spec.essential]

    def failed_sources(self) -> list[str]:
        """Cameras that failed for good (not restarted)."""
        with self._lock:
            return [n for n, s in self.states.items() if not s.spec.essential and s.fatal]

    def failed_cameras(self) -> dict[str, str]:
        """Camera id -> the last stderr line of its capture, for the cameras that failed for good."""
        with self._lock:
            return {
                s.spec.labels.get("camera", n): s.last_line
                for n, s in self.states.items()
                if not s.spec.essential and s.fatal
            }

    def running(self) -> dict[str, int]:
        with self._lock:
            return {n: s.process.pid for n, s in self.states.items() if s.process and s.process.poll() is None}

    def stop(self) -> None:
        """SIGTERM sources first, then downstream stages in order; SIGKILL what outlives the timeout.

        Each group is waited for up to its share of ``stop_timeout_s`` before the next is signalled (so
        frames in flight drain downstream), and every stage still running then has until the whole
        timeout: a stage slow to exit (the classifier's native runtimes take a second or two to tear
        down on a busy host) is not killed just because its share ran out.
        """
        self._stopping.set()
        with self._lock:
            for state in self.states.values():
                state.next_start_at = None
            # Plan order is downstream-first, so reversed it is sources first.
            modules = list(dict.fromkeys(s.spec.module for s in reversed(list(self.states.values()))))
            deadline = time.monotonic() + self.stop_timeout_s
            share = self.stop_timeout_s / len(modules)
            for module in modules:
                group = [s.process for s in self.states.values() if s.spec.module == module and s.process]
                for process in group:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                group_deadline = min(deadline, time.monotonic() + share)
                for process in group:
                    self._wait(process, group_deadline)
            for state in self.states.values():
                stage = state.process
                if stage is None:
                    continue
                self._wait(stage, deadline)
                if stage.poll() is None:
                    log.warning("%s did not stop in time; killing it", state.spec.name)
                    stage.kill()
                    stage.wait()
                metrics.STAGE_UP.labels(state.spec.name).set(0)
            for state in self.states.values():
                if state.relay is not None:
                    state.relay.join(RELAY_JOIN_S)  # the stages' last lines before the launcher's summary

    @staticmethod
    def _wait(process: subprocess.Popen, deadline: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
