"""The outboxes: FIFO order, removal only on acknowledgement, the bound that drops the oldest (counted),
the disk outbox surviving a reopen, and two threads (the sink appending, a delivery thread acking)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sink.outbox import DiskOutbox, MemoryOutbox, Outbox


@pytest.fixture(params=["disk", "memory"])
def make(request, tmp_path: Path):
    def build(max_events: int) -> Outbox:
        if request.param == "disk":
            return DiskOutbox(tmp_path / "outbox" / "out.sqlite3", max_events)
        return MemoryOutbox(max_events)

    return build


def test_entries_leave_in_order_and_only_when_acknowledged(make) -> None:
    outbox = make(100)
    for i in range(10):
        outbox.append(f"cam{i % 2}", f'{{"frame":{i}}}')
    outbox.flush()
    assert outbox.dropped == 0
    first = outbox.peek(4)
    assert [e.body for e in first] == [f'{{"frame":{i}}}' for i in range(4)]
    assert [e.camera for e in first] == ["cam0", "cam1", "cam0", "cam1"]
    assert outbox.peek(4) == first, "peeking removes nothing"
    outbox.ack(first[-1].id)
    assert len(outbox) == 6
    assert [e.body for e in outbox.peek(100)] == [f'{{"frame":{i}}}' for i in range(4, 10)]


def test_a_full_outbox_drops_the_oldest_and_says_how_many(make) -> None:
    outbox = make(5)
    for i in range(8):
        outbox.append("cam", str(i))
    outbox.flush()
    assert outbox.dropped == 3
    assert len(outbox) == 5
    assert [e.body for e in outbox.peek(10)] == ["3", "4", "5", "6", "7"]


def test_appends_wait_in_memory_until_flushed_and_peek_flushes_them(tmp_path: Path) -> None:
    path = tmp_path / "out.sqlite3"
    outbox = DiskOutbox(path, 3)
    for i in range(5):
        outbox.append("cam", str(i))
    assert len(outbox) == 5 and outbox.dropped == 0, "the bound applies when the burst is written"
    assert [e.body for e in outbox.peek(10)] == ["2", "3", "4"]
    assert outbox.dropped == 2
    outbox.append("cam", "5")
    outbox.close()  # writes what is queued
    assert [e.body for e in DiskOutbox(path, 3).peek(10)] == ["3", "4", "5"]


def test_the_disk_outbox_survives_a_reopen_and_trims_to_a_smaller_bound(tmp_path: Path) -> None:
    path = tmp_path / "out.sqlite3"
    outbox = DiskOutbox(path, 100)
    for i in range(10):
        outbox.append("cam", str(i))
    outbox.ack(outbox.peek(2)[-1].id)
    last_id = outbox.peek(100)[-1].id
    outbox.close()

    reopened = DiskOutbox(path, 100)
    assert reopened.dropped == 0
    assert [e.body for e in reopened.peek(100)] == [str(i) for i in range(2, 10)]
    reopened.append("cam", "10")
    assert reopened.peek(100)[-1].id > last_id, "ids keep growing: order is append order across runs"
    reopened.close()

    smaller = DiskOutbox(path, 4)
    assert smaller.dropped == 5
    assert [e.body for e in smaller.peek(100)] == ["7", "8", "9", "10"]
    smaller.close()


def test_an_appending_thread_and_an_acking_thread_deliver_everything_once_in_order(make) -> None:
    outbox = make(1_000_000)
    count = 5000
    delivered: list[str] = []

    def deliver() -> None:
        while len(delivered) < count:
            batch = outbox.peek(64)
            if batch:
                delivered.extend(e.body for e in batch)
                outbox.ack(batch[-1].id)

    thread = threading.Thread(target=deliver)
    thread.start()
    for i in range(count):
        outbox.append("cam", str(i))
        if i % 7 == 0:
            outbox.flush()
    outbox.flush()
    thread.join(60)
    assert delivered == [str(i) for i in range(count)]
    assert len(outbox) == 0
