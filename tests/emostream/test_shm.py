"""Frames through shared memory (emostream/shm.py, capture.sender.SharedSlots, the detector's check).

Real /dev/shm files and real sockets; the tests skip where /dev/shm is not usable (emostream then sends
every frame over the socket, which the other capture tests cover). A real capture process sending
through shared memory is tests/capture/test_capture_shm.py.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import numpy as np
import pytest
import zmq

from capture.dispatch import WorkerState
from capture.sender import SharedSlots
from detector.pipeline import build_extractor
from detector.settings import DetectorSettings
from detector.worker import DetectorWorker
from emostream import shm
from emostream.wire import Frame, SharedSlot, WireError, decode_frame, encode_frame
from support import free_port

pytestmark = pytest.mark.skipif(shm.domain() is None, reason="no writable /dev/shm on this machine")

FACES_MP4_FRAMES = 241


def ring_files(camera: str) -> list[str]:
    return sorted(p.name for p in shm.SHM_DIR.glob(f"{shm.PREFIX}{camera}-*"))


def image(seed: int, shape: tuple[int, int, int] = (36, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def ring():
    made = shm.FrameRing(f"test{os.getpid()}", 36 * 64 * 3, slots=2)
    yield made
    made.close()


def test_a_frame_written_to_a_slot_reads_back_identical_and_read_only(ring: shm.FrameRing) -> None:
    reader = shm.SharedFrames()
    slot = ring.acquire()
    offset = ring.write(slot, image(1), stamp=7)
    view = reader.view(ring.name, offset, (36, 64, 3))
    assert np.array_equal(view, image(1))
    assert not view.flags.writeable
    assert reader.current(ring.name, offset, 7)
    assert (shm.SHM_DIR / ring.name).stat().st_mode & 0o777 == 0o600


def test_a_reused_slot_is_no_longer_current_for_the_frame_that_was_there(ring: shm.FrameRing) -> None:
    reader = shm.SharedFrames()
    slot = ring.acquire()
    offset = ring.write(slot, image(1), stamp=1)
    reader.view(ring.name, offset, (36, 64, 3))
    ring.release(slot)
    assert ring.acquire() == slot  # the freed slot is the next one taken
    ring.write(slot, image(2), stamp=2)
    assert not reader.current(ring.name, offset, 1)
    assert reader.current(ring.name, offset, 2)


def test_a_cameras_new_ring_replaces_its_old_mapping_in_the_reader() -> None:
    # A restarted camera has a new pid, so a new ring: readers must not keep every old one mapped.
    camera = f"restart{os.getpid()}"
    reader = shm.SharedFrames()
    first = shm.FrameRing(camera, 64, slots=1)
    other = shm.FrameRing(f"other{os.getpid()}", 64, slots=1)
    try:
        reader.view(first.name, first.write(first.acquire(), image(1, (4, 4, 3)), 1), (4, 4, 3))
        reader.view(other.name, other.write(other.acquire(), image(2, (4, 4, 3)), 1), (4, 4, 3))
        first.close()
        (shm.SHM_DIR / shm.ring_name(camera, 1)).write_bytes(bytes(128))  # the camera's next process
        reader.view(shm.ring_name(camera, 1), 8, (4, 4, 3))
        assert sorted(reader.mapped) == sorted([other.name, shm.ring_name(camera, 1)])
    finally:
        other.close()
        (shm.SHM_DIR / shm.ring_name(camera, 1)).unlink(missing_ok=True)


def test_a_full_ring_gives_no_slot_and_a_released_one_comes_back(ring: shm.FrameRing) -> None:
    taken = [ring.acquire(), ring.acquire()]
    assert sorted(taken) == [0, 1]
    assert ring.acquire() is None
    ring.release(taken[0])
    assert ring.acquire() == taken[0]
    with pytest.raises(ValueError, match="not in use"):
        ring.release(5)


@pytest.mark.parametrize(
    ("name", "offset", "why"),
    [
        ("../../etc/passwd", 8, "not a frame ring name"),
        ("emostream-nosuchcamera-1", 8, "cannot open ring"),
        (None, 10, "outside ring"),  # misaligned
        (None, 8 + 2 * 7040, "outside ring"),  # past the end
    ],
)
def test_the_reader_refuses_addresses_it_cannot_trust(ring: shm.FrameRing, name, offset, why) -> None:
    header_slot = SharedSlot(name or ring.name, offset, 1)
    parts = encode_frame(Frame("cam", 0, 0.0, image(1)), slot=header_slot)
    with pytest.raises(WireError, match=why) as caught:
        decode_frame(parts, shm.SharedFrames())
    assert caught.value.reason == "bad_payload"


def test_a_receiver_without_shared_memory_refuses_shared_frames(ring: shm.FrameRing) -> None:
    offset = ring.write(ring.acquire(), image(1), stamp=1)
    parts = encode_frame(Frame("cam", 0, 0.0, image(1)), slot=SharedSlot(ring.name, offset, 1))
    with pytest.raises(WireError, match="does not read shared memory"):
        decode_frame(parts)


def test_rings_of_dead_camera_processes_are_removed_and_live_ones_kept() -> None:
    camera = f"stale{os.getpid()}"
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    dead_file = shm.SHM_DIR / shm.ring_name(camera, child.pid)
    live_file = shm.SHM_DIR / shm.ring_name(camera, os.getppid())
    dead_file.write_bytes(b"x" * 64)
    live_file.write_bytes(b"x" * 64)
    try:
        assert shm.remove_stale_rings(camera) == [dead_file.name]
        assert not dead_file.exists()
        assert live_file.exists()
    finally:
        for path in (dead_file, live_file):
            path.unlink(missing_ok=True)


def test_a_leftover_ring_with_this_processs_own_name_is_replaced() -> None:
    # In a container every capture process is pid 1: its predecessor's ring has the same name.
    camera = f"pidone{os.getpid()}"
    leftover = shm.SHM_DIR / shm.ring_name(camera)
    leftover.write_bytes(b"old")
    ring = shm.FrameRing(camera, 64, slots=1)
    try:
        assert ring.name == leftover.name
        assert leftover.stat().st_size == ring.size
    finally:
        ring.close()
    assert not leftover.exists()


def worker_state(name: str, domain: str | None) -> WorkerState:
    return WorkerState(name=name, sent=0, done=0, window=1, load=0, interval=1, last_heard=0.0, shm=domain)


def test_slots_come_back_when_frames_are_done_or_the_worker_is_forgotten() -> None:
    slots = SharedSlots(f"ledger{os.getpid()}")
    try:
        assert slots.usable_by(worker_state("local", shm.domain()))
        assert not slots.usable_by(worker_state("remote", None))
        assert not slots.usable_by(worker_state("elsewhere", "another-machine:1:2"))
        frame = image(3, (720, 1280, 3))
        placed = [slots.place(frame, stamp=seq + 1) for seq in range(shm.DEFAULT_SLOTS)]
        assert all(p is not None for p in placed)
        assert slots.place(frame, stamp=99) is None  # every slot in flight: this frame goes as bytes
        for slot, _ in placed[:3]:
            slots.sent(b"a", slot)
        slots.sent(b"a", None)  # a frame that went as bytes holds no slot
        for slot, _ in placed[3:]:
            slots.sent(b"b", slot)
        slots.finished(b"a", 2)  # "a" finished its two oldest frames
        assert slots.ring.in_use == shm.DEFAULT_SLOTS - 2
        slots.forget(b"b")  # "b" is gone: whatever it held is free
        assert slots.ring.in_use == 1
        slots.finished(b"a", 5)  # more than it holds: only what it holds comes back
        assert slots.ring.in_use == 0
    finally:
        slots.close()
    assert ring_files(f"ledger{os.getpid()}") == []


def test_the_detector_drops_a_frame_whose_slot_was_reused_while_it_held_it(ring: shm.FrameRing) -> None:
    context = zmq.Context()
    worker = DetectorWorker(
        context,
        [f"tcp://127.0.0.1:{free_port()}"],
        f"tcp://127.0.0.1:{free_port()}",
        build_extractor(DetectorSettings(backend="haar")),
        threading.Event(),
    )
    try:
        slot = ring.acquire()
        offset = ring.write(slot, image(4), stamp=1)
        parts = encode_frame(Frame("shmcam", 0, time.time(), image(4)), slot=SharedSlot(ring.name, offset, 1))
        ring.write(slot, image(5), stamp=2)  # the camera gave the slot to a newer frame meanwhile
        worker.handle(parts)
        assert worker.processed == 0
        samples = metric_samples_in_process("emostream_frames_dropped_total")
        assert samples.get(("detector", "shmcam", "overwritten")) == 1.0
    finally:
        worker.close()
        context.destroy(linger=0)


def metric_samples_in_process(name: str) -> dict[tuple[str, str, str], float]:
    from prometheus_client import REGISTRY

    return {
        (s.labels["stage"], s.labels["camera"], s.labels["reason"]): s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name == name
    }
