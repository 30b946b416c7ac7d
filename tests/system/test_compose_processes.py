"""The compose commands run as local processes (hosts and ports substituted): they make a working pipeline
that delivers events and answers health. The container files themselves are checked in
tests/deploy/test_containers.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from itertools import pairwise
from pathlib import Path

from support import PYTHON, REPO, free_ports, http_get, wait_for
from support.containers import (
    ENDPOINT,
    compose,
    compose_commands,
    healthcheck_url,
)

# ---------------------------------------------------------------------------------------------
# The compose commands, run for real as local processes
# ---------------------------------------------------------------------------------------------


def localise(argv: list[str], ports: dict[int, int], metrics_port: int, volumes: dict[str, Path]) -> list[str]:
    """A compose command line for this host: service names and 0.0.0.0 become 127.0.0.1, every
    port a free one (the same mapping for every service, so connects still meet binds), container
    volume paths a temporary folder."""
    out = [PYTHON if argv[0] in ("python", "python3") else argv[0]]
    for prev, arg in pairwise(argv):
        m = ENDPOINT.match(arg)
        if m:
            arg = f"tcp://127.0.0.1:{ports[int(m['port'])]}"
        elif prev == "--metrics-port":
            arg = str(metrics_port)
        elif prev == "--metrics-host":
            arg = "127.0.0.1"
        else:
            for inside, outside in volumes.items():
                if arg.startswith(inside.rstrip("/") + "/"):
                    arg = str(outside / arg[len(inside.rstrip("/")) + 1 :])
        out.append(arg)
    return out


def test_compose_commands_run_as_local_processes_deliver_events_and_answer_health(tmp_path):
    from emostream.wire import CameraEvent, EmotionEvent
    from sink.subscribe import events

    doc, _ = compose()
    commands = compose_commands(doc)
    start_order = ["sink", "classifier", "detector", "capture-cam0"]  # what depends_on orders
    zmq_ports = sorted({int(ENDPOINT.match(e)["port"]) for c in commands.values() for e in c.binds})
    replicas = {name: doc["services"][name].get("deploy", {}).get("replicas", 1) for name in start_order}
    free = free_ports(len(zmq_ports) + sum(replicas.values()))
    ports = dict(zip(zmq_ports, free[: len(zmq_ports)], strict=True))
    metrics_ports = iter(free[len(zmq_ports) :])

    procs: list[tuple[str, str, int, subprocess.Popen]] = []  # service, replica name, metrics port, process
    logs = tmp_path / "logs"
    logs.mkdir()
    log_files = []
    volumes: dict[str, dict[str, Path]] = {}  # service -> {path inside the container: folder here}
    try:
        for name in start_order:
            svc = doc["services"][name]
            volumes[name] = {}
            for volume in svc.get("volumes", []):
                source, target = volume.split(":")[:2]
                volumes[name][target] = tmp_path / source
                (tmp_path / source).mkdir(exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(REPO), **{k: str(v) for k, v in svc.get("environment", {}).items()}}
            for replica in range(replicas[name]):
                port = next(metrics_ports)
                argv = localise(svc["command"], ports, port, volumes[name])
                log_files.append((logs / f"{name}-{replica}.log").open("w"))
                # cwd outside the repository, like the image's WORKDIR: the code comes from PYTHONPATH.
                proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log_files[-1], stderr=subprocess.STDOUT)
                procs.append((name, f"{name}-{replica}", port, proc))

        def all_logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.iterdir()))

        publish = f"tcp://127.0.0.1:{ports[int(ENDPOINT.match(commands['sink'].args.publish)['port'])]}"
        received = []
        statuses = []
        for event in events(publish, camera="cam0", timeout=90):
            if isinstance(event, CameraEvent):  # capture's up/down events reach the sink over --events
                statuses.append(event.status)
                continue
            received.append(event)
            if len(received) >= 10 and any(e.faces for e in received):
                break
        assert len(received) >= 10, f"only {len(received)} events reached {publish}\n{all_logs()}"
        assert any(e.faces for e in received), "the demo camera's face was never found"
        assert all(e.camera == "cam0" and isinstance(e, EmotionEvent) for e in received)
        assert set(statuses) <= {"up"}

        for service, name, port, proc in procs:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}\n{all_logs()}"
            for path in ("/healthz", "/readyz"):
                wait_for(lambda p=port, q=path: http_get(p, q)[0] == 200, timeout=30, what=f"{name} {path} 200")
            # The compose healthcheck itself, pointed at this process's port, must succeed too.
            test = doc["services"][service]["healthcheck"]["test"]
            code = test[test.index("-c") + 1]
            compose_port, _ = healthcheck_url(test, name)
            check = subprocess.run([PYTHON, "-c", code.replace(f":{compose_port}/", f":{port}/")], timeout=30)
            assert check.returncode == 0, f"{name}: compose's healthcheck command fails against a healthy stage"

        jsonl = Path(localise(["python", "--jsonl", commands["sink"].args.jsonl], ports, 0, volumes["sink"])[2])
        assert jsonl.is_relative_to(tmp_path), f"--jsonl {commands['sink'].args.jsonl} is on no volume of the sink"
        assert jsonl.exists() and jsonl.stat().st_size > 0, "the sink wrote nothing to its events volume"
    finally:
        # What `docker compose stop` does: SIGTERM upstream first, then wait, then SIGKILL.
        for _, _, _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for _, name, _, proc in reversed(procs):
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        for log_file in log_files:
            log_file.close()
    assert all(code == 0 for code in codes.values()), f"stages did not stop cleanly on SIGTERM: {codes}"
