"""A real capture process sending frames through shared memory: local workers get slot addresses and the
others the bytes, with identical pixels; with the flag off every worker gets bytes. The tests skip where
/dev/shm is not usable. The rings themselves are tests/emostream/test_shm.py.
"""

from __future__ import annotations

import os
import subprocess

import cv2
import numpy as np
import pytest
import zmq

from capture.stream import resize_frame
from emostream import shm
from emostream.wire import Frame
from support import CreditingWorker, free_port, shared_path, start_stage

pytestmark = pytest.mark.skipif(shm.domain() is None, reason="no writable /dev/shm on this machine")

FACES_MP4_FRAMES = 241


@pytest.fixture
def faces_mp4() -> str:
    return str(shared_path("media", "faces.mp4"))


def ring_files(camera: str) -> list[str]:
    return sorted(p.name for p in shm.SHM_DIR.glob(f"{shm.PREFIX}{camera}-*"))


@pytest.mark.timeout(120)
def test_capture_sends_local_workers_slot_addresses_and_others_the_bytes_with_identical_pixels(
    faces_mp4: str, zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    camera = f"shm{os.getpid()}"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    local = CreditingWorker(zmq_context, endpoint, window=2, name="local", shared_memory=True)
    remote = CreditingWorker(zmq_context, endpoint, window=2, name="remote")
    proc = start_stage(
        "capture",
        "--camera", camera,
        "--source", faces_mp4,
        "--frames", endpoint,
        "--pacing", "fast",
        "--resize", "320x180",
    )  # fmt: skip
    processes.append(proc)
    got: dict[str, list[Frame]] = {"local": [], "remote": []}
    workers = {"local": local, "remote": remote}
    # Wait on both sockets at once: polling them in turn sat out the full timeout on an idle one.
    poller = zmq.Poller()
    for worker in workers.values():
        poller.register(worker.socket, zmq.POLLIN)
    while sum(map(len, got.values())) < FACES_MP4_FRAMES:
        progressed = False
        for name, worker in workers.items():
            frame = worker.receive(0, finish=True)
            if frame is not None:
                got[name].append(frame)
                progressed = True
        if not progressed:
            assert poller.poll(30_000), f"stalled after {len(got['local'])}"
        if len(got["local"]) == 5:
            assert ring_files(camera) == [shm.ring_name(camera, proc.pid)]
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert got["local"] and got["remote"], {k: len(v) for k, v in got.items()}
    assert all(f.shared is not None and f.shared.name == shm.ring_name(camera, proc.pid) for f in got["local"])
    assert all(f.shared is None for f in got["remote"])
    # Every frame, whichever way it went, holds exactly the pixels the file decodes to.
    expected = {}
    cap = cv2.VideoCapture(faces_mp4)
    while True:
        ok, decoded = cap.read()
        if not ok:
            break
        expected[len(expected)] = resize_frame(decoded, (320, 180))
    received = sorted(got["local"] + got["remote"], key=lambda f: f.seq)
    assert [f.seq for f in received] == list(range(FACES_MP4_FRAMES))
    assert all(np.array_equal(f.image, expected[f.seq]) for f in received)
    assert ring_files(camera) == []  # removed at exit


def test_no_shared_memory_flag_sends_bytes_to_local_workers_too(
    faces_mp4: str, zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    camera = f"noshm{os.getpid()}"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    local = CreditingWorker(zmq_context, endpoint, window=2, name="local", shared_memory=True)
    proc = start_stage(
        "capture", "--camera", camera, "--source", faces_mp4, "--frames", endpoint,
        "--pacing", "fast", "--resize", "160x90", "--no-shared-memory",
    )  # fmt: skip
    processes.append(proc)
    frames = [local.receive(30_000, finish=True) for _ in range(10)]
    assert all(f is not None and f.shared is None for f in frames)
    assert ring_files(camera) == []
