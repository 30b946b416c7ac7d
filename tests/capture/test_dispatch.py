"""Least-loaded, credit-based dispatch of a camera's frames to detector workers (plain logic, fake clock).

The same behaviour through real processes and sockets: test_capture.py
(``..._to_the_least_loaded_worker_that_has_room``) and test_pipeline.py.
"""

from __future__ import annotations

from capture.dispatch import EXPIRY_S, Dispatcher
from emostream.wire import Credit


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def credit(done: int = 0, window: int = 2, load: int = 0, interval: int = 1, name: str = "w") -> Credit:
    return Credit(worker=name, done=done, window=window, load=load, interval=interval)


def test_no_worker_means_no_assignment() -> None:
    dispatcher = Dispatcher(FakeClock())
    assert not dispatcher.has_room()
    assert dispatcher.assign() is None


def test_a_worker_gets_at_most_its_window_until_it_reports_frames_done() -> None:
    dispatcher = Dispatcher(FakeClock())
    dispatcher.update(b"a", credit(window=2))
    assert [dispatcher.assign().peer for _ in range(2)] == [b"a", b"a"]
    assert dispatcher.assign() is None and not dispatcher.has_room()
    dispatcher.update(b"a", credit(done=1, window=2))
    assert dispatcher.assign().peer == b"a"
    assert dispatcher.assign() is None


def test_the_least_loaded_worker_with_room_gets_the_frame() -> None:
    dispatcher = Dispatcher(FakeClock())
    dispatcher.update(b"busy", credit(load=3, name="busy"))
    dispatcher.update(b"idle", credit(load=0, name="idle"))
    # idle's estimated load grows with what this camera sends it: 0, then 1 (< 3), then no room.
    assert [dispatcher.assign().peer for _ in range(2)] == [b"idle", b"idle"]
    # idle is full (window 2): busy has room, and a frame is better late than dropped.
    assert dispatcher.assign().peer == b"busy"
    dispatcher.update(b"idle", credit(done=2, load=0, name="idle"))
    assert dispatcher.assign().peer == b"idle"


def test_equal_loads_go_to_the_worker_that_waited_longest() -> None:
    dispatcher = Dispatcher(FakeClock())
    for peer in (b"a", b"b", b"c"):
        dispatcher.update(peer, credit(window=10))
    picks = []
    for _ in range(6):
        picks.append(dispatcher.assign().peer)
        # Every worker reports all its frames done at once: loads stay equal.
        for peer, state in dispatcher.workers.items():
            dispatcher.update(peer, credit(done=state.sent, window=10))
    assert picks == [b"a", b"b", b"c", b"a", b"b", b"c"]


def test_a_silent_worker_expires_and_comes_back_when_it_speaks() -> None:
    clock = FakeClock()
    dispatcher = Dispatcher(clock)
    dispatcher.update(b"a", credit())
    dispatcher.update(b"b", credit())
    clock.now = EXPIRY_S / 2
    dispatcher.update(b"b", credit())
    clock.now = EXPIRY_S + 0.1
    assert dispatcher.assign().peer == b"b"
    assert set(dispatcher.workers) == {b"b"}
    assert dispatcher.update(b"a", credit(done=0)) is True, "a worker that speaks again is known again"


def test_credits_are_absolute_so_repeated_or_late_ones_do_not_add_room() -> None:
    dispatcher = Dispatcher(FakeClock())
    dispatcher.update(b"a", credit(done=5, window=1))  # counts start from the first credit seen
    assert dispatcher.assign() is not None
    for _ in range(3):  # heartbeats repeating the same state
        dispatcher.update(b"a", credit(done=5, window=1))
    assert dispatcher.assign() is None
    dispatcher.update(b"a", credit(done=4, window=1))  # an old credit arriving late
    assert dispatcher.assign() is None
    dispatcher.update(b"a", credit(done=6, window=1))
    assert dispatcher.assign() is not None


def test_a_frame_that_could_not_be_sent_gives_its_room_back() -> None:
    dispatcher = Dispatcher(FakeClock())
    dispatcher.update(b"a", credit(window=1))
    assignment = dispatcher.assign()
    assert dispatcher.assign() is None
    dispatcher.unsend(assignment)
    assert dispatcher.assign() == assignment


def test_with_an_interval_key_frames_go_least_loaded_and_the_frames_after_follow_them() -> None:
    dispatcher = Dispatcher(FakeClock())
    dispatcher.update(b"a", credit(window=1, interval=3, name="a"))
    dispatcher.update(b"b", credit(window=1, interval=3, name="b"))
    first = [dispatcher.assign() for _ in range(3)]
    # One key frame, then two tracked frames on the same worker, beyond its window of 1.
    assert [(a.peer, a.key) for a in first] == [(b"a", True), (b"a", False), (b"a", False)]
    # The group is complete: the next key frame goes to the least-loaded worker with room.
    nxt = dispatcher.assign()
    assert (nxt.peer, nxt.key) == (b"b", True)
    assert dispatcher.workers[b"a"].in_flight == 3


def test_a_key_frames_worker_that_goes_away_ends_its_group() -> None:
    dispatcher = Dispatcher(FakeClock())
    dispatcher.update(b"a", credit(window=1, interval=4, name="a"))
    dispatcher.update(b"b", credit(window=1, interval=4, name="b", load=1))
    assert dispatcher.assign().peer == b"a"
    dispatcher.forget(b"a")
    nxt = dispatcher.assign()
    assert (nxt.peer, nxt.key) == (b"b", True), "the next worker has no tracks: it must detect"
