"""sink.outputs end to end: a real sink process fed real events over ZeroMQ, delivering to a real mosquitto,
a real redis-server, a webhook on a real HTTP server and Parquet files; brokers stopped and restarted on
the same port; a full outbox; a hung webhook beside working outputs. Every check counts events, none times."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import zmq

from support import PYTHON, REPO, free_ports, metric_samples, sample, wait_for
from support.brokers import (
    EventFeeder,
    Mosquitto,
    MqttSubscriber,
    RedisServer,
    SilentServer,
    Webhook,
    in_order_and_complete,
)

CAMERAS = ["cam0", "cam1"]
PROBE = "probe"


def real(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["camera"] != PROBE]


class Sink:
    """``python -m sink`` with ``outputs``, its PUB socket subscribed to by the test, its metrics scraped."""

    def __init__(self, context: zmq.Context, outputs: list[dict[str, Any]], outbox: Path, probe: bool = True) -> None:
        pull, pub, self.metrics_port = free_ports(3)
        self.proc = subprocess.Popen(
            [
                PYTHON, "-m", "sink", "--pull", f"tcp://127.0.0.1:{pull}", "--publish", f"tcp://127.0.0.1:{pub}",
                "--outputs", json.dumps(outputs), "--outbox-dir", str(outbox), "--metrics-port", str(self.metrics_port),
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
    sink = Sink(zmq_context, outputs, tmp_path / "outbox")
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
    table = pd.read_parquet(files[0])
    table = table[table["camera"] != PROBE]
    assert list(table["frame"]) == [e["frame"] for e in published]
    assert list(table["camera"]) == [e["camera"] for e in published]


def test_a_broker_down_for_a_while_receives_every_event_in_order_when_it_returns(
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
    before, during, after = range(0, 100), range(100, 400), range(400, 500)
    sink.send(before)
    for name in ("mqtt", "redis"):
        sink.wait_metric("emostream_output_delivered_total", 200 + sink.probes, output=name)

    mosquitto.stop()
    redis.stop()
    sink.send(during)
    assert len(sink.read_pub(600)) == 600, "the PUB socket goes on while the brokers are down"
    for name in ("mqtt", "redis"):
        sink.wait_metric("emostream_output_up", 0, output=name)
        wait_for(lambda n=name: sink.metric("emostream_output_pending", output=n) == 600, what=f"{name} pending")
        assert (sink.metric("emostream_output_retries_total", output=name) or 0) >= 1

    mosquitto.start()
    redis.start()
    sink.send(after)
    total = 2 * (len(before) + len(during) + len(after)) + sink.probes
    for name in ("mqtt", "redis"):
        wait_for(lambda n=name: (sink.metric("emostream_output_delivered_total", output=n) or 0) >= total,
                 timeout=120, what=f"{name} to deliver the backlog")  # fmt: skip
        sink.wait_metric("emostream_output_pending", 0, output=name)
        assert sink.metric("emostream_output_up", output=name) == 1
        assert sink.metric("emostream_output_dropped_total", output=name, reason="outbox_full") == 0
    everything = range(0, 500)
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
