"""Bounded FIFOs of events waiting for an output: on disk (SQLite) for network outputs, in memory for files.

The sink's thread appends; the output's delivery thread reads the oldest entries (:meth:`peek`) and
removes them only once the output acknowledged them (:meth:`ack`), so an event leaves the outbox after it
was delivered, never before. When an outbox is full, appending drops the oldest entries and counts them:
a system that comes back gets the newest events, and every dropped one is counted in metrics.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from pathlib import Path
from typing import NamedTuple, Protocol


class Entry(NamedTuple):
    """One queued event: its place in the outbox, its camera and its JSON text (``Event.to_dict``)."""

    id: int
    camera: str
    body: str


class Outbox(Protocol):
    #: Entries dropped when the outbox opened (left by a previous run beyond a now smaller bound).
    dropped_at_open: int

    def append(self, camera: str, body: str) -> int:
        """Queue an event; returns how many of the oldest were dropped to make room."""
        ...

    def peek(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` entries, oldest first, left in place."""
        ...

    def ack(self, last_id: int) -> None:
        """Remove every entry up to and including ``last_id``."""
        ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class DiskOutbox:
    """An outbox in one SQLite file (WAL): it survives the sink's restarts and crashes.

    One connection behind a lock serves both threads; each operation is a short statement on a local file,
    so the sink's append waits at most for one peek or delete. ``synchronous=NORMAL``: a committed append
    survives a crash of the process (not a power cut, which may lose the last appends).
    """

    def __init__(self, path: str | Path, max_events: int) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # AUTOINCREMENT: ids only grow, even after the newest rows were deleted, so outbox order is append order.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL, "
            "body TEXT NOT NULL)"
        )
        self._count = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        #: Entries a previous run left beyond a now smaller bound, dropped here (the caller counts them).
        self.dropped_at_open = self._trim()

    def _trim(self) -> int:
        excess = self._count - self.max_events
        if excess <= 0:
            return 0
        oldest = "SELECT id FROM events ORDER BY id LIMIT ?"
        cursor = self._db.execute(f"DELETE FROM events WHERE id IN ({oldest})", (excess,))
        self._count -= cursor.rowcount
        return cursor.rowcount

    def append(self, camera: str, body: str) -> int:
        with self._lock:
            self._db.execute("INSERT INTO events (camera, body) VALUES (?, ?)", (camera, body))
            self._count += 1
            return self._trim()

    def peek(self, limit: int) -> list[Entry]:
        with self._lock:
            rows = self._db.execute("SELECT id, camera, body FROM events ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    def ack(self, last_id: int) -> None:
        with self._lock:
            cursor = self._db.execute("DELETE FROM events WHERE id <= ?", (last_id,))
            self._count -= cursor.rowcount

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryOutbox:
    """The same FIFO in memory, for an output that writes local files (nothing to wait out across restarts)."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._lock = threading.Lock()
        self._entries: deque[Entry] = deque()
        self._next_id = 1
        self.dropped_at_open = 0

    def append(self, camera: str, body: str) -> int:
        with self._lock:
            self._entries.append(Entry(self._next_id, camera, body))
            self._next_id += 1
            dropped = 0
            while len(self._entries) > self.max_events:
                self._entries.popleft()
                dropped += 1
            return dropped

    def peek(self, limit: int) -> list[Entry]:
        with self._lock:
            return [self._entries[i] for i in range(min(limit, len(self._entries)))]

    def ack(self, last_id: int) -> None:
        with self._lock:
            while self._entries and self._entries[0].id <= last_id:
                self._entries.popleft()

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        pass
