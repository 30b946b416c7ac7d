"""Frames through shared memory between a camera and the detector workers on the same machine.

A raw 1280x720 frame is 2.7 MB. Over a TCP socket the kernel copies it twice (into the socket on the
capture side, out of it on the detector side) and both processes fault in fresh buffers: a sizeable
share of the pipeline's whole per-frame CPU budget (measured: docs/benchmarks.md, "Measurements behind
defaults and constants").
So a camera writes each frame once into a slot of a ring in ``/dev/shm`` and sends the detector worker
only the slot's address in the ``FRAME`` header (``encoding: "shm"``, see :mod:`emostream.wire`); the
worker reads the pixels in place.

Who may use it: a worker announces its machine's shared-memory domain in its credits (:func:`domain`:
boot id plus the identity of ``/dev/shm``, so two containers with private ``/dev/shm`` differ); the
camera sends slot addresses only to workers of its own domain and raw bytes to the others.

Slot lifetime: a slot goes back to the ring when the worker's credit reports the frame done (frames of
one connection finish in the order they were sent), or when the worker is forgotten (disconnected or
silent, see :mod:`capture.dispatch`). A worker that was only presumed dead could still read a slot
that has been reused, so each slot starts with a stamp (the frame's sequence number + 1) that the
reader checks after it has used the pixels (:meth:`SharedFrames.current`); a frame whose slot
changed under it is dropped, never processed as another frame's pixels.

Files are ``/dev/shm/emostream-<camera>-<pid>``, mode 0600 (same user only). The camera removes its
own at exit and, at start, those of its earlier processes that died without doing so (SIGKILL),
including one that had the same pid.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
from pathlib import Path

import numpy as np

from emostream.runtime import pid_alive

log = logging.getLogger("emostream.shm")

SHM_DIR = Path("/dev/shm")
PREFIX = "emostream-"
#: Ring files this module creates and accepts: ``emostream-<camera id>-<pid>``.
NAME_PATTERN = re.compile(r"^emostream-[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-[0-9]{1,10}$")
#: Slots per camera ring. Frames in flight per camera are at most the sum over workers of
#: ``window + interval - 1`` (2 workers, window 1, interval 3: 6); a frame that finds no free slot
#: goes as raw bytes instead, so this bounds memory, not correctness. 8 x 2.7 MB at 720p.
DEFAULT_SLOTS = 8
STAMP_BYTES = 8
#: Slots start on cache-line boundaries.
ALIGN = 64


def domain() -> str | None:
    """This machine's shared-memory domain, or None where there is no usable ``/dev/shm``."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        st = SHM_DIR.stat()
    except OSError:
        return None
    if not os.access(SHM_DIR, os.W_OK):
        return None
    return f"{boot_id}:{st.st_dev}:{st.st_ino}"


def ring_name(camera: str, pid: int | None = None) -> str:
    return f"{PREFIX}{camera}-{os.getpid() if pid is None else pid}"


def remove_stale_rings(camera: str) -> list[str]:
    """Unlink the rings of this camera's earlier processes that no longer run; returns their names."""
    removed = []
    with contextlib.suppress(OSError):
        for path in SHM_DIR.glob(f"{PREFIX}{camera}-*"):
            pid_text = path.name[len(PREFIX) + len(camera) + 1 :]
            if not pid_text.isdigit() or int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


def _slot_stride(frame_bytes: int) -> int:
    return -(-(STAMP_BYTES + frame_bytes) // ALIGN) * ALIGN


class FrameRing:
    """The camera's side: a file in ``/dev/shm`` cut into ``slots`` slots of ``frame_bytes`` each.

    Not thread-safe: the capture sender thread alone uses it.
    """

    def __init__(self, camera: str, frame_bytes: int, slots: int = DEFAULT_SLOTS) -> None:
        if frame_bytes <= 0 or slots <= 0:
            raise ValueError("frame_bytes and slots must be positive")
        self.name = ring_name(camera)
        self.frame_bytes = frame_bytes
        self.stride = _slot_stride(frame_bytes)
        self.size = self.stride * slots
        path = SHM_DIR / self.name
        # A file with this very name is a ring of an earlier process that had this pid (in a container
        # every capture is pid 1) and died without removing it: no live process can own it.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Reserve the pages now: tmpfs allocates on write, and a write past a full /dev/shm
            # would be a SIGBUS in the middle of a frame. Here it is an OSError the caller handles.
            os.posix_fallocate(fd, 0, self.size)
            self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        finally:
            os.close(fd)
        self._path = path
        self._buffer = np.frombuffer(self._map, dtype=np.uint8)
        self._free = list(range(slots - 1, -1, -1))
        self.slots = slots

    @property
    def in_use(self) -> int:
        return self.slots - len(self._free)

    def fits(self, image: np.ndarray) -> bool:
        return image.nbytes <= self.frame_bytes

    def acquire(self) -> int | None:
        """A free slot, or None when every slot holds a frame in flight."""
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.slots or slot in self._free:
            raise ValueError(f"slot {slot} is not in use")
        self._free.append(slot)

    def write(self, slot: int, image: np.ndarray, stamp: int) -> int:
        """Copy ``image`` into ``slot`` and stamp it; returns the pixels' offset in the file."""
        start = slot * self.stride
        offset = start + STAMP_BYTES
        pixels = self._buffer[offset : offset + image.nbytes].reshape(image.shape)
        np.copyto(pixels, image)
        # Stamp last: a reader that sees this stamp sees these pixels (x86 and ARM order these
        # stores for a reader that checks after it has read, which is all the reader relies on).
        self._buffer[start:offset].view(np.uint64)[0] = stamp
        return offset

    def close(self) -> None:
        """Unlink the file; mappings that readers hold stay valid until they drop them."""
        with contextlib.suppress(OSError):
            self._path.unlink()
        self._buffer = np.empty(0, np.uint8)
        with contextlib.suppress(BufferError):
            self._map.close()


class SharedFrameError(Exception):
    """A slot address that cannot be read here (unknown file, out of bounds)."""


class SharedFrames:
    """The worker's side: read-only views of the rings the cameras name in their frames."""

    #: Rings mapped at once (one per camera); beyond, the least recently used goes first.
    MAX_RINGS = 256

    def __init__(self) -> None:
        self._maps: dict[str, np.ndarray] = {}

    def _ring(self, name: str) -> np.ndarray:
        ring = self._maps.pop(name, None)
        if ring is None:
            if not NAME_PATTERN.match(name):
                raise SharedFrameError(f"{name!r} is not a frame ring name")
            try:
                fd = os.open(SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise SharedFrameError(f"cannot open ring {name}: {exc.strerror}") from None
            try:
                size = os.fstat(fd).st_size
                if size <= STAMP_BYTES:
                    raise SharedFrameError(f"ring {name} is empty")
                ring = np.frombuffer(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ), dtype=np.uint8)
            except OSError as exc:
                raise SharedFrameError(f"cannot map ring {name}: {exc.strerror}") from None
            finally:
                os.close(fd)
            # A camera's new ring replaces its old one (the camera restarted): unmap the old one now,
            # or every restart would pin another ring's memory in every worker.
            camera = name.rsplit("-", 1)[0]
            for old in [n for n in self._maps if n.rsplit("-", 1)[0] == camera]:
                del self._maps[old]
            if len(self._maps) >= self.MAX_RINGS:
                self._maps.pop(next(iter(self._maps)))
        self._maps[name] = ring  # most recently used last
        return ring

    @property
    def mapped(self) -> list[str]:
        """Names of the rings mapped now."""
        return list(self._maps)

    def view(self, name: str, offset: int, shape: tuple[int, int, int]) -> np.ndarray:
        """The frame at ``offset`` of ring ``name`` (read-only, no copy)."""
        ring = self._ring(name)
        nbytes = int(np.prod(shape))
        if offset < STAMP_BYTES or (offset - STAMP_BYTES) % ALIGN or offset + nbytes > ring.size:
            raise SharedFrameError(f"offset {offset} + {nbytes} bytes is outside ring {name} ({ring.size} bytes)")
        return ring[offset : offset + nbytes].reshape(shape)

    def current(self, name: str, offset: int, stamp: int) -> bool:
        """Does the slot at ``offset`` still hold the frame stamped ``stamp``?"""
        ring = self._maps.get(name)
        if ring is None or offset < STAMP_BYTES or offset > ring.size:
            return False
        return int(ring[offset - STAMP_BYTES : offset].view(np.uint64)[0]) == stamp
