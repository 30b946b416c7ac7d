"""sink.outputs end to end: a real sink process fed real events over ZeroMQ, delivering to a real mosquitto,
a real redis-server, a webhook on a real HTTP server and Parquet files; brokers stopped and restarted on
the same port; a full outbox; a hung webhook beside working outputs. Every check counts events, none times."""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zmq

from emostream.wire import EMOTIONS, EmotionEvent, FaceEmotion, OtherEvent, camera_event, encode_event
from support import PYTHON, REPO, free_ports, metric_samples, sample, wait_for
from support.brokers import (
    EventFeeder,
    Mosquitto,
    MqttSubscriber,
    RedisServer,
    SilentServer,
    Webhook,
    face_event,
    in_order_and_complete,
)

CAMERAS = ["cam0", "cam1"]
PROBE = "probe"


def real(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["camera"] != PROBE]


#: The Parquet columns as docs/events.md ("Events in MQTT, Redis, webhooks and Parquet") documents them.
EVENT_COLUMNS = ["camera", "type", "frame", "ts_capture", "ts_event", "ts_detect", "faces", "status", "reason", "extra"]
FACE_COLUMNS = ["box", "emotion", "confidence", "scores", "detector_score", "track", "smoothed", "raw_emotion", "extra"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def documented_row(event: dict[str, Any]) -> dict[str, Any]:
    """The row docs/events.md promises for a JSON event: its value (or null) in each column; ``extra`` the
    event's other keys (``schema`` aside), read back from its JSON text; faces the same, face by face."""

    def split(obj: dict[str, Any], columns: list[str]) -> dict[str, Any]:
        row = {c: obj.get(c) for c in columns if c != "extra"}
        row["extra"] = {k: v for k, v in obj.items() if k not in columns and k != "schema"} or None
        return row

    row = split(event, EVENT_COLUMNS)
    if row["faces"] is not None:
        row["faces"] = [split(face, FACE_COLUMNS) for face in row["faces"]]
    return row


def plain(value: Any) -> Any:
    """A value pandas read back, as JSON would hold it: arrays as lists, NaN/None as None, numpy as Python."""
    if isinstance(value, np.ndarray | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    # NaN: a null in a number column (pandas makes ``frame`` float when a camera event leaves it empty).
    return None if isinstance(value, float) and math.isnan(value) else value


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a Parquet file read with pandas, ``extra`` columns parsed from their JSON text."""
    table = pd.read_parquet(path)
    assert list(table.columns) == EVENT_COLUMNS
    rows = [{k: plain(v) for k, v in row.items()} for row in table.to_dict("records")]
    for row in rows:
        row["extra"] = json.loads(row["extra"]) if row["extra"] is not None else None
        for face in row["faces"] or []:
            face["extra"] = json.loads(face["extra"]) if face["extra"] is not None else None
    return rows


class Sink:
    """``python -m sink`` with ``outputs``, its PUB socket subscribed to by the test, its metrics scraped."""

    def __init__(
        self,
        context: zmq.Context,
        outputs: list[dict[str, Any]],
        outbox: Path,
        probe: bool = True,
        jsonl: Path | None = None,
    ) -> None:
        pull, pub, self.metrics_port = free_ports(3)
        self.proc = subprocess.Popen(
            [
                PYTHON, "-m", "sink", "--pull", f"tcp://127.0.0.1:{pull}", "--publish", f"tcp://127.0.0.1:{pub}",
                "--outputs", json.dumps(outputs), "--outbox-dir", str(outbox), "--metrics-port", str(self.metrics_port),
                *(["--jsonl", str(jsonl)] if jsonl else []),
            ],
            cwd=REPO, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{pub}")
        wait_for(lambda: metric_samples(self.metrics_port), timeout=60, what="the sink's /metrics")
        self.feeder = EventFeeder(context, f"tcp://127.0.0.1:{pull}")
        #: Events of camera "probe" sent until the PUB socket had the test's subscription (PUB drops what
        #: it publishes before): the outputs get them too, so counts add them and content checks skip them.
        self.probes = 0
        while probe and not self.sub.poll(100 if self.probes else 0):
            self.feeder.send([PROBE], range(self.probes, self.probes + 1))
            self.probes += 1

    def send(self, frames: range) -> None:
        self.feeder.send(CAMERAS, frames)

    def read_pub(self, count: int) -> list[dict[str, Any]]:
        """``count`` events from the PUB socket."""
        events = []
        while len(events) < count and self.sub.poll(30_000):
            event = json.loads(self.sub.recv_multipart()[1])
            if event["camera"] != PROBE:
                events.append(event)
        return events

    def metric(self, name: str, **labels: str) -> float | None:
        return sample(metric_samples(self.metrics_port), name, **labels)

    def wait_metric(self, name: str, value: float, **labels: str) -> None:
        wait_for(lambda: self.metric(name, **labels) == value, timeout=60, what=f"{name}{labels} == {value}")

    def stop(self) -> str:
        self.feeder.close()
        self.sub.close(linger=0)
        self.proc.terminate()
        _, stderr = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, stderr
        return stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@pytest.fixture
def sinks():
    started: list[Sink] = []
    yield started
    for sink in started:
        sink.kill()


@pytest.fixture
def servers():
    started: list[Any] = []
    yield started
    for server in started:
        if hasattr(server, "stop"):
            server.stop()
        if hasattr(server, "close"):
            server.close()


def test_every_output_receives_every_event_in_order(tmp_path: Path, zmq_context, sinks, servers) -> None:
    mosquitto, redis = Mosquitto(tmp_path / "mqtt"), RedisServer(tmp_path / "redis")
    for server in (mosquitto, redis):
        server.start()
        servers.append(server)
    subscriber = MqttSubscriber(mosquitto.port, "emostream/#")
    webhook = Webhook()
    servers += [subscriber, webhook]
    outputs = [
        {"type": "mqtt", "url": mosquitto.url, "qos": 1},
        {"type": "redis", "url": redis.url, "stream": "emo:{camera}", "maxlen": 10_000},
        {"type": "webhook", "url": webhook.url, "batch": 25, "linger_s": 0.2},
        {"type": "parquet", "dir": str(tmp_path / "parquet"), "rotate": "1h"},
    ]
    sink = Sink(zmq_context, outputs, tmp_path / "outbox", jsonl=tmp_path / "events.jsonl")
    sinks.append(sink)
    frames = range(300)
    sink.send(frames)
    published = sink.read_pub(len(frames) * len(CAMERAS))
    assert not in_order_and_complete(published, CAMERAS, frames)
    for name in ("mqtt", "redis", "webhook", "parquet"):
        sink.wait_metric("emostream_output_delivered_total", len(published) + sink.probes, output=name)
        assert sink.metric("emostream_output_pending", output=name) == 0
        assert sink.metric("emostream_output_up", output=name) == 1
        assert sink.metric("emostream_output_retries_total", output=name) == 0
    wait_for(lambda: len(subscriber.received()) >= len(published) + sink.probes, what="every MQTT message")
    mqtt = [(topic, event) for topic, event in subscriber.received() if event["camera"] != PROBE]
    assert all(topic == f"emostream/{event['camera']}" for topic, event in mqtt)
    assert not in_order_and_complete([event for _, event in mqtt], CAMERAS, frames)
    assert [event for _, event in mqtt] == published, "the MQTT payload is the event as PUB sends it"
    for camera in CAMERAS:
        assert redis.stream(f"emo:{camera}") == [e for e in published if e["camera"] == camera]
    assert all(len(body["events"]) <= 25 for body in webhook.bodies)
    assert real(webhook.events()) == published
    sink.stop()  # closes the Parquet file
    files = sorted((tmp_path / "parquet").glob("*.parquet"))
    assert len(files) == 1 and not list((tmp_path / "parquet").glob("*.part"))
    lines = read_jsonl(tmp_path / "events.jsonl")
    assert real(lines) == published
    assert parquet_rows(files[0]) == [documented_row(e) for e in lines]


def test_parquet_rows_read_back_with_pandas_equal_the_json_lines_events(tmp_path: Path, zmq_context, sinks) -> None:
    now = time.time()
    scores = {e: round(0.1 + i / 100, 2) for i, e in enumerate(EMOTIONS)}
    untracked = FaceEmotion(box=(-5, 0, 30, 31), emotion="angry", confidence=0.16, scores=scores)
    newer = FaceEmotion(box=(1, 2, 3, 4), emotion="sad", confidence=0.5, scores=scores, extra={"age": 31})
    events = [
        face_event("cam0", 0),  # a tracked face, as the classifier sends it
        EmotionEvent(camera="cam1", frame=7, ts_capture=now - 0.1, ts_event=now, faces=(), ts_detect=now - 0.04),
        EmotionEvent(camera="cam0", frame=1, ts_capture=now, ts_event=now, faces=(untracked, newer),
                     extra={"zone": "door"}),  # keys of a newer producer
        camera_event("cam1", "down", "cannot open: no such file", now),
        camera_event("cam1", "up", "frames flow", now + 1),
        OtherEvent(type="count", camera="cam0", ts_event=now, extra={"people": 3, "where": {"x": 1}}),
    ]  # fmt: skip
    sink = Sink(zmq_context, [{"type": "parquet", "dir": str(tmp_path / "parquet")}], tmp_path / "outbox",
                probe=False, jsonl=tmp_path / "events.jsonl")  # fmt: skip
    sinks.append(sink)
    for event in events:
        sink.feeder.socket.send_multipart(encode_event(event))
    sink.wait_metric("emostream_output_delivered_total", len(events), output="parquet")
    sink.stop()
    lines = read_jsonl(tmp_path / "events.jsonl")
    assert lines == [e.to_dict() for e in events]
    files = sorted((tmp_path / "parquet").glob("*.parquet"))
    assert len(files) == 1
    rows = parquet_rows(files[0])
    assert rows == [documented_row(e) for e in lines]
    assert rows[2]["extra"] == {"zone": "door"} and rows[2]["faces"][1]["extra"] == {"age": 31}
    assert rows[3]["faces"] is None and rows[3]["frame"] is None and rows[3]["status"] == "down"
    assert rows[1]["ts_detect"] == pytest.approx(now - 0.04) and rows[1]["extra"] is None  # a column, not extra


class PacedSender:
    """A thread that sends the next frame of every camera each ``interval`` s, like a live pipeline, until
    stopped; it owns the sink's feeder meanwhile (a ZeroMQ socket is used by one thread)."""

    def __init__(self, sink: Sink, interval: float = 0.05) -> None:
        self.sink, self.interval = sink, interval
        self.frames = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sink.send(range(self.frames, self.frames + 1))
            self.frames += 1

    def wait_frames(self, count: int) -> None:
        wait_for(lambda: self.frames >= count, timeout=120, what=f"{count} frames sent")

    def stop(self) -> range:
        """Every frame sent."""
        self._stop.set()
        self.thread.join()
        return range(self.frames)


OUTAGE_S = 20.0


def test_brokers_down_for_20_s_mid_run_receive_every_event_in_order_when_they_return(
    tmp_path: Path, zmq_context, sinks, servers
) -> None:
    mosquitto, redis = Mosquitto(tmp_path / "mqtt"), RedisServer(tmp_path / "redis")
    for server in (mosquitto, redis):
        server.start()
        servers.append(server)
    subscriber = MqttSubscriber(mosquitto.port, "emostream/#")
    servers.append(subscriber)
    outputs = [{"type": "mqtt", "url": mosquitto.url}, {"type": "redis", "url": redis.url}]
    sink = Sink(zmq_context, outputs, tmp_path / "outbox")
    sinks.append(sink)
    sender = PacedSender(sink)  # a frame of each camera every 50 ms, from before the outage to after it
    sender.wait_frames(40)
    for name in ("mqtt", "redis"):
        wait_for(lambda n=name: (sink.metric("emostream_output_delivered_total", output=n) or 0) >= 80 + sink.probes,
                 what=f"{name} delivering before the outage")  # fmt: skip

    mosquitto.stop()
    redis.stop()
    down_from = sender.frames
    # The outage lasts 20 s of the sender's frames, however busy the machine: no time is asserted.
    sender.wait_frames(down_from + int(OUTAGE_S / sender.interval))
    during = sender.frames - down_from
    for name in ("mqtt", "redis"):
        assert sink.metric("emostream_output_up", output=name) == 0
        # Everything sent since the brokers stopped waits in the outbox (and perhaps a batch from before).
        wait_for(lambda n=name: (sink.metric("emostream_output_pending", output=n) or 0) >= 2 * during,
                 what=f"{name} pending >= {2 * during}")  # fmt: skip
        assert (sink.metric("emostream_output_retries_total", output=name) or 0) >= 1
    mosquitto.start()
    redis.start()
    sender.wait_frames(sender.frames + 100)  # the run goes on after the restart
    everything = sender.stop()
    assert len(everything) >= 40 + int(OUTAGE_S / sender.interval) + 100

    published = sink.read_pub(2 * len(everything))
    assert not in_order_and_complete(published, CAMERAS, everything), "the PUB socket went on during the outage"
    total = 2 * len(everything) + sink.probes
    for name in ("mqtt", "redis"):
        wait_for(lambda n=name: (sink.metric("emostream_output_delivered_total", output=n) or 0) >= total,
                 timeout=120, what=f"{name} to deliver the backlog")  # fmt: skip
        sink.wait_metric("emostream_output_pending", 0, output=name)
        assert sink.metric("emostream_output_up", output=name) == 1
        assert sink.metric("emostream_output_dropped_total", output=name, reason="outbox_full") == 0
    problems = lambda: in_order_and_complete([e for _, e in subscriber.received()], CAMERAS, everything)  # noqa: E731
    wait_for(lambda: not problems(), timeout=60, what=f"every MQTT event ({problems()})")
    for camera in CAMERAS:
        assert not in_order_and_complete(redis.stream(f"emostream:{camera}"), [camera], everything)
    sink.stop()


def test_a_full_outbox_drops_the_oldest_counts_them_and_survives_a_sink_restart(
    tmp_path: Path, zmq_context, sinks, servers
) -> None:
    redis = RedisServer(tmp_path / "redis")  # not started: the output is down from the beginning
    servers.append(redis)
    outputs = [{"type": "redis", "url": redis.url, "outbox_max_events": 50, "retry_max_s": 1}]
    sink = Sink(zmq_context, outputs, tmp_path / "outbox")
    sinks.append(sink)
    sink.send(range(100))  # 200 events
    assert len(sink.read_pub(200)) == 200
    sink.wait_metric("emostream_output_dropped_total", 150 + sink.probes, output="redis", reason="outbox_full")
    assert sink.metric("emostream_output_pending", output="redis") == 50
    assert sink.metric("emostream_output_delivered_total", output="redis") == 0
    assert sink.metric("emostream_output_up", output="redis") == 0
    sink.stop()

    restarted = Sink(zmq_context, outputs, tmp_path / "outbox", probe=False)
    sinks.append(restarted)
    assert restarted.metric("emostream_output_pending", output="redis") == 50, "the outbox is on disk"
    redis.start()
    restarted.wait_metric("emostream_output_delivered_total", 50, output="redis")
    restarted.wait_metric("emostream_output_pending", 0, output="redis")
    for camera in CAMERAS:  # the newest 25 frames of each camera, in order
        assert [e["frame"] for e in redis.stream(f"emostream:{camera}")] == list(range(75, 100))
    restarted.stop()


def test_a_hung_webhook_slows_neither_the_pub_socket_nor_the_other_outputs(
    tmp_path: Path, zmq_context, sinks, servers
) -> None:
    redis, hung = RedisServer(tmp_path / "redis"), SilentServer()
    redis.start()
    servers += [redis, hung]
    outputs = [
        {"type": "webhook", "url": hung.url, "timeout_s": 600, "linger_s": 0},
        {"type": "redis", "url": redis.url},
        {"type": "parquet", "dir": str(tmp_path / "parquet")},
    ]
    sink = Sink(zmq_context, outputs, tmp_path / "outbox")
    sinks.append(sink)
    frames = range(500)
    sink.send(frames)
    published = sink.read_pub(1000)
    assert not in_order_and_complete(published, CAMERAS, frames)
    for name in ("redis", "parquet"):
        sink.wait_metric("emostream_output_delivered_total", 1000 + sink.probes, output=name)
    assert sink.metric("emostream_output_delivered_total", output="webhook") == 0
    # The first POST hangs with the events it took; the rest wait in the outbox.
    wait_for(lambda: sink.metric("emostream_output_pending", output="webhook") == 1000 + sink.probes, what="pending")
    for camera in CAMERAS:
        assert not in_order_and_complete(redis.stream(f"emostream:{camera}"), [camera], frames)
    sink.stop()  # the hung POST does not hold the stop up past its join timeout
    table = pd.concat(pd.read_parquet(f) for f in sorted((tmp_path / "parquet").glob("*.parquet")))
    assert len(real(table.to_dict("records"))) == 1000
