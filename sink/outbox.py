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
    #: Entries dropped to keep the bound since the outbox opened (at open too: a previous run's entries
    #: beyond a now smaller bound).
    dropped: int

    def append(self, camera: str, body: str) -> None:
        """Queue an event (it may wait in memory until :meth:`flush`)."""
        ...

    def flush(self) -> None:
        """Store what ``append`` queued and drop the oldest entries beyond the bound."""
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

    One connection behind a lock serves both threads; each operation is a short statement on a local file.
    Appends gather in memory until :meth:`flush` (the sink calls it after each burst of events it read,
    and :meth:`peek` does first) writes them in one transaction: one commit per burst instead of per event.
    ``synchronous=NORMAL``: a flushed append survives a crash of the process (not a power cut, which may
    lose the last ones); a crash loses the appends of the burst in hand.
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
        self._queued: list[tuple[str, str]] = []
        self.dropped = self._trim()

    def _trim(self) -> int:
        excess = self._count - self.max_events
        if excess <= 0:
            return 0
        oldest = "SELECT id FROM events ORDER BY id LIMIT ?"
        cursor = self._db.execute(f"DELETE FROM events WHERE id IN ({oldest})", (excess,))
        self._count -= cursor.rowcount
        return cursor.rowcount

    def append(self, camera: str, body: str) -> None:
        with self._lock:
            self._queued.append((camera, body))

    def _flush(self) -> None:
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO events (camera, body) VALUES (?, ?)", queued)
            self._count += len(queued)
            self.dropped += self._trim()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def peek(self, limit: int) -> list[Entry]:
        with self._lock:
            self._flush()
            rows = self._db.execute("SELECT id, camera, body FROM events ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    def ack(self, last_id: int) -> None:
        with self._lock:
            cursor = self._db.execute("DELETE FROM events WHERE id <= ?", (last_id,))
            self._count -= cursor.rowcount

    def __len__(self) -> int:
        return self._count + len(self._queued)

    def close(self) -> None:
        with self._lock:
            self._flush()
            self._db.close()


class MemoryOutbox:
    """The same FIFO in memory, for an output that writes local files (nothing to wait out across restarts)."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._lock = threading.Lock()
        self._entries: deque[Entry] = deque()
        self._next_id = 1
        self.dropped = 0

    def append(self, camera: str, body: str) -> None:
        with self._lock:
            self._entries.append(Entry(self._next_id, camera, body))
            self._next_id += 1
            if len(self._entries) > self.max_events:
                self._entries.popleft()
                self.dropped += 1

    def flush(self) -> None:
        pass

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
