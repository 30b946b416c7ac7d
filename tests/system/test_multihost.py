"""Stages on separate hosts: Linux network namespaces made by the test stand in for machines.

Three "hosts" on one bridge (10.200.x.0/24, inside namespaces only, nothing touches the machine's own
interfaces): capture and detector on the camera host, the classifier on the inference host, the sink
on the events host. They talk TCP with CurveZMQ, each stage started by hand with its own command line,
as an operator would on three machines. The inference host's link is then cut and restored: the flow
must resume. Needs root and iproute2 (`ip netns`); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import PYTHON, REPO

HOSTS = ("camera", "inference", "events")


@dataclass
class Net:
    prefix: str
    subnet: str

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def addr(self, host: str) -> str:
        return f"{self.subnet}.{HOSTS.index(host) + 1}"

    def exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _why_no_namespaces() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces and veth pairs needs root"
    probe = f"emo-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed here: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def net() -> Iterator[Net]:
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    net = Net(prefix=f"emo{tag}", subnet=f"10.200.{int(tag, 16) % 250 + 1}")
    bridge_ns = f"{net.prefix}-br"
    made = [bridge_ns]
    try:
        _ip("netns", "add", bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        for i, host in enumerate(HOSTS):
            ns = net.ns(host)
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # One veth pair per host: eth0 inside the host, its peer on the bridge.
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", bridge_ns)
            _ip("-n", bridge_ns, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", bridge_ns, "link", "set", f"p{i}", "up")
            _ip("-n", ns, "addr", "add", f"{net.addr(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        yield net
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def start_on(net: Net, host: str, module: str, *args: str, log: Path) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen(
        [*net.exec(host), PYTHON, "-m", module, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
    )


def subscribe(net: Net, keys: Path, endpoint: str, count: int, timeout: float) -> list[dict]:
    """``python -m sink.subscribe`` on the events host, with the user's client keys."""
    proc = subprocess.run(
        [*net.exec("events"), PYTHON, "-m", "sink.subscribe", "--endpoint", endpoint]
        + ["--count", str(count), "--timeout", str(timeout), "--curve-keys", str(keys)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.timeout(300)
def test_stages_on_three_hosts_talk_curve_over_tcp_and_survive_a_cut_link(net: Net, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    subprocess.run([PYTHON, "-m", "deploy", "keys", "--out", str(keys)], cwd=REPO, check=True, capture_output=True)
    cam, inf, ev = net.addr("camera"), net.addr("inference"), net.addr("events")
    frames, faces = f"tcp://{cam}:5600", f"tcp://{inf}:5550"
    events_in, publish = f"tcp://{ev}:5551", f"tcp://{ev}:5560"
    secure = ["--curve-keys", str(keys)]
    procs = [
        start_on(net, "events", "sink", "--pull", events_in, "--publish", publish, *secure, log=tmp_path / "s.log"),
        start_on(net, "inference", "classifier", "--pull", faces, "--push", events_in, *secure, log=tmp_path / "c.log"),
        start_on(net, "camera", "detector", "--frames", frames, "--push", faces, *secure, log=tmp_path / "d.log"),
        start_on(
            net, "camera", "capture", "--camera", "far", "--source", "demo", "--fps", "10", "--frames", frames,
            *secure, log=tmp_path / "capture.log",
        ),
    ]  # fmt: skip

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("*.log")))

    try:
        first = subscribe(net, keys, publish, count=10, timeout=90)
        assert len(first) == 10, f"events did not flow across the hosts\n{logs()}"
        assert all(e["camera"] == "far" for e in first) and any(e["faces"] for e in first)

        # Cut the inference host off the network, then bring it back.
        _ip("-n", net.ns("inference"), "link", "set", "eth0", "down")
        time.sleep(4)  # the outage's length, not a measurement
        _ip("-n", net.ns("inference"), "link", "set", "eth0", "up")
        restored = time.time()
        after = subscribe(net, keys, publish, count=30, timeout=90)
        fresh = [e for e in after if e["ts_capture"] > restored]
        assert fresh, f"events did not resume after the link came back\n{logs()}"
        assert all(p.poll() is None for p in procs), f"a stage died during the outage\n{logs()}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
