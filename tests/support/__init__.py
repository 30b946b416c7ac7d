"""Helpers shared by the tests: the repository and shared-data paths, free ports, real metrics scraping,
starting stage processes, a crediting detector worker. Fixtures live in the conftest.py files."""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from emostream.wire import Faces

# tests/support/__init__.py: the repository is two folders up, whatever folder a test file is in.
REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
PYTHON = sys.executable


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or a skip that says clearly that the shared data is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data missing: {path} (tests that need real media/data read ../shared)")
    return path


def faces(camera: str, seq: int, n: int) -> Faces:
    """A faces message of ``n`` random 48x48 crops in a row of boxes, as a detector would send."""
    rng = np.random.default_rng(seq)
    boxes = np.array([[10 * i, 10, 40, 40] for i in range(n)], dtype=np.int32).reshape(n, 4)
    return Faces(
        camera,
        seq,
        time.time(),
        time.time(),
        (480, 640),
        boxes,
        np.full(n, 0.9, np.float32),
        rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
    )


def overwrite(data: bytes, start: int, end: int, seed: int) -> bytes:
    """``data`` with bytes [start, end) replaced by seeded garbage (the same garbage on every run)."""
    return data[:start] + random.Random(seed).randbytes(end - start) + data[end:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_range(span: int) -> int:
    """A base port whose next ``span`` ports are free right now (the launcher's port layouts need runs)."""
    for _ in range(50):
        base = free_port()
        if base + span > 65000:
            continue
        try:
            for offset in range(span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def scrape(port: int, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return resp.read().decode()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - endpoints that are not up yet raise many types
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_exc!r})")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of GET 127.0.0.1:port/path; (0, "") while nothing listens there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def metric_samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a real /metrics page keyed by (sample name, labels); {} while it is not up."""
    try:
        text = scrape(port, timeout=5)
    except OSError:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float | None:
    """The value of the sample with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def make_keys(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m deploy keys --out DIRECTORY ARGS``: a deployment's CurveZMQ keys."""
    return subprocess.run(
        [PYTHON, "-m", "deploy", "keys", "--out", str(directory), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_stage(module: str, *args: str) -> subprocess.Popen:
    """``python -m <module> ARGS`` from the repository, output captured as text."""
    return subprocess.Popen(
        [PYTHON, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class CreditingWorker:
    """The detector-worker side of the frames protocol, played by a test: a DEALER connected to a
    camera's ROUTER that asks for up to ``window`` unfinished frames with real CREDIT messages.

    ``receive`` takes a frame without finishing it (the worker is busy with it); ``finish`` reports
    frames done, which lets the camera send more. ``receive(finish=True)`` does both, like an idle
    worker.
    """

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        window: int = 1,
        load: int = 0,
        name: str = "test",
        shared_memory: bool = False,
    ) -> None:
        from emostream import shm
        from emostream.wire import Credit, encode_credit

        self._credit, self._encode = Credit, encode_credit
        # With shared_memory the worker announces this machine's domain, as detector workers do.
        self.shm_domain = shm.domain() if shared_memory else None
        self.shared = shm.SharedFrames()
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.window, self.load, self.name = window, load, name
        self.done = 0
        self.announce()

    def announce(self) -> None:
        credit = self._credit(self.name, self.done, self.window, self.load, shm=self.shm_domain)
        self.socket.send_multipart(self._encode(credit))

    def receive(self, timeout_ms: int = 30_000, finish: bool = False):
        """The next frame (a wire Frame), or None after ``timeout_ms``. A shared-memory frame's pixels
        are copied out of the slot (still ``frame.shared``), so they outlive ``finish``."""
        from emostream.wire import decode_frame

        if not self.socket.poll(timeout_ms):
            return None
        frame = decode_frame(self.socket.recv_multipart(), self.shared)
        if frame.shared is not None:
            frame = dataclasses.replace(frame, image=frame.image.copy())
        if finish:
            self.finish()
        return frame

    def finish(self, count: int = 1) -> None:
        self.done += count
        self.announce()

    def close(self) -> None:
        self.socket.close()


def assert_previews_planned(config, name: str, module: str) -> list[str]:
    """The launcher plan of two demo cameras "a" and "b" with a preview consumer (recorder or viewer):
    the consumer stage comes first and is essential, each capture publishes previews on its endpoint,
    and the consumer subscribes to them all. Returns the consumer's arguments."""
    from deploy.plan import endpoints, plan_stages

    stages = plan_stages(config)
    assert stages[0].name == name and stages[0].module == module and stages[0].essential
    previews = {"a": "tcp://127.0.0.1:5552", "b": "tcp://127.0.0.1:5553"}
    assert endpoints(config).previews == previews
    for camera, endpoint in previews.items():
        capture = next(s for s in stages if s.name == f"capture-{camera}")
        assert capture.args[capture.args.index("--preview") + 1] == endpoint
    args = stages[0].args
    assert [args[i + 1] for i, a in enumerate(args) if a == "--preview"] == list(previews.values())
    return args
