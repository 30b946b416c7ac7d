"""A detector worker follows a new camera set (``--follow-stdin``) on its live sockets: it asks a new
camera for frames with real credits, and lets go of a removed one, without a restart."""

from __future__ import annotations

import threading

import zmq

from detector.pipeline import build_extractor
from detector.settings import DetectorSettings
from detector.worker import DetectorWorker
from emostream.wire import decode_credit
from support import free_ports


def _credit_from(router: zmq.Socket) -> str:
    assert router.poll(5000), "no credit within 5 s"
    identity, *parts = router.recv_multipart()
    return decode_credit(parts).worker


def test_a_worker_credits_a_camera_added_to_its_set_and_closes_a_removed_one():
    context = zmq.Context()
    first, second, push = (f"tcp://127.0.0.1:{p}" for p in free_ports(3))
    routers = []
    for endpoint in (first, second):
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        routers.append(router)
    worker = DetectorWorker(
        context, [first], push, build_extractor(DetectorSettings(backend="haar")), threading.Event(), worker_id=3
    )
    try:
        worker._credit_all()
        assert _credit_from(routers[0]).startswith("detector-3-")
        assert not routers[1].poll(300), "not connected to the second camera yet"

        worker.set_cameras([first, second])
        assert [link.endpoint for link in worker.links] == [first, second]
        assert _credit_from(routers[1]).startswith("detector-3-"), "a new camera is asked for frames at once"

        worker.set_cameras([second])
        assert [link.endpoint for link in worker.links] == [second]
        while routers[0].poll(100):
            routers[0].recv_multipart()
        worker._credit_all()
        assert _credit_from(routers[1])
        assert not routers[0].poll(300), "a removed camera gets no more credits"
    finally:
        worker.close()
        for router in routers:
            router.close()
        context.term()


def test_a_credit_the_socket_refuses_is_sent_again_without_waiting_for_the_heartbeat(monkeypatch):
    import detector.worker as worker_module

    # No heartbeat in this test: only the retry can deliver the refused credit.
    monkeypatch.setattr(worker_module, "HEARTBEAT_S", 3600.0)
    context = zmq.Context()
    camera, push = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
    stop = threading.Event()
    worker = DetectorWorker(context, [camera], push, build_extractor(DetectorSettings(backend="haar")), stop)
    link = worker.links[0]
    thread = threading.Thread(target=worker.run)
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        # The camera is not up yet: credits wait in the connecting socket's queue until it is full.
        for _ in range(100):
            worker._credit(link)
            if link.retry_ms:
                break
        assert link.retry_ms == worker_module.CREDIT_RETRY_MS, "the send queue never filled"
        link.done = 5  # frames finished meanwhile: what the camera must hear of
        thread.start()  # its first credits are refused as well, the queue being still full
        router.bind(camera)
        done = []
        while 5 not in done:
            assert router.poll(5000), f"the camera heard only of done={done}"
            done.append(decode_credit(router.recv_multipart()[1:]).done)
        assert done[0] == 0 and not link.retry_ms
    finally:
        stop.set()
        thread.join(timeout=5)
        worker.close()
        router.close()
        context.term()
