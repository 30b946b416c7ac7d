"""``python -m deploy.bench.outputs``: what ``sink.outputs`` cost the sink, and how they recover from an outage.

Without options: events/s of ``SinkService.handle`` (decode, PUB, then JSON and outbox appends, flushed
every 16 events as bursts are) without outputs, with one network output and with four; the network
outputs point at a closed port, so their outboxes only grow and nothing is delivered. Two interleaved
rounds of 5,000 events.

``--outage SECONDS``: a real ``python -m sink`` delivering to a real mosquitto and redis-server (Debian's,
started here on free loopback ports) while events arrive at a steady rate (``--cameras`` x ``--fps``);
both brokers are stopped for SECONDS and started again on the same ports. Per output it reports the
events queued during the outage, the seconds from the brokers' restart to the first delivery (the
delivery thread's backoff) and until its outbox is empty, the delivery rate while catching up, and the
drops, all read from the sink's ``/metrics``; Redis's streams are read back to check every frame is there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from deploy.bench.procstats import scrape
from deploy.bench.settings import REPO
from emostream.wire import EmotionEvent, FaceEmotion, encode_event
from sink.service import SinkService
from sink.settings import SinkSettings

EVENTS = 5000
SCORES = {"angry": 0.05, "disgust": 0.0, "fear": 0.05, "happy": 0.7, "sad": 0.05, "surprise": 0.1, "neutral": 0.05}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events_per_second(outputs: list[dict[str, Any]] | None, parts: list[list[bytes]]) -> float:
    settings = SinkSettings.model_validate(
        {"publish": f"tcp://127.0.0.1:{_port()}", "outputs": outputs, "outbox_dir": tempfile.mkdtemp()}
    )
    sink = SinkService(f"tcp://127.0.0.1:{_port()}", settings)
    start = time.perf_counter()
    for i, message in enumerate(parts):
        sink.handle(message)
        if i % 16 == 15:
            sink.outputs.flush()
    sink.outputs.flush()
    elapsed = time.perf_counter() - start
    sink.close()
    return len(parts) / elapsed


def throughput() -> None:
    face = FaceEmotion(box=(10, 20, 40, 40), emotion="happy", confidence=0.7, scores=SCORES, track=1, smoothed=SCORES)
    now = time.time()
    parts = [
        encode_event(EmotionEvent(camera=f"cam{i % 4}", frame=i, ts_capture=now, ts_event=now, faces=(face,)))
        for i in range(EVENTS)
    ]
    down = f"127.0.0.1:{_port()}"
    configs: dict[str, list[dict[str, Any]] | None] = {
        "no outputs": None,
        "redis (down)": [{"type": "redis", "url": f"redis://{down}"}],
        "mqtt + redis + webhook (down) + parquet": [
            {"type": "mqtt", "url": f"mqtt://{down}"},
            {"type": "redis", "url": f"redis://{down}"},
            {"type": "webhook", "url": f"http://{down}/"},
            {"type": "parquet", "dir": tempfile.mkdtemp()},
        ],
    }
    for round_ in (1, 2):
        for name, outputs in configs.items():
            print(f"round {round_}: {name}: {events_per_second(outputs, parts):,.0f} events/s", flush=True)


class Broker:
    """A Debian broker on a fixed loopback port: ``start`` waits until it accepts connections, ``stop``
    ends it (SIGTERM) and waits until the port is closed, so a restart listens on the same port."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command, self.port = command, port
        self.proc: subprocess.Popen | None = None

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _wait(self, listening: bool) -> None:
        deadline = time.monotonic() + 15
        while self._listening() != listening:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.command[0]} on port {self.port} did not {'start' if listening else 'stop'}")
            time.sleep(0.02)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self._wait(False)


def brokers(folder: Path) -> tuple[Broker, Broker]:
    """mosquitto and redis-server on free ports; SystemExit naming the package when one is not installed."""
    binaries = {name: shutil.which(name) for name in ("mosquitto", "redis-server")}
    if missing := [name for name, path in binaries.items() if not path]:
        raise SystemExit(f"--outage needs {' and '.join(missing)} (apt-get install mosquitto redis-server)")
    mqtt_port, redis_port = _port(), _port()
    config = folder / "mosquitto.conf"
    # As root mosquitto would switch to the user "mosquitto"; "user root" keeps it as it was started.
    config.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    mosquitto = Broker([str(binaries["mosquitto"]), "-c", str(config)], mqtt_port)
    redis = Broker(
        [str(binaries["redis-server"]), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--dir", str(folder)],
        redis_port,
    )  # fmt: skip
    return mosquitto, redis


class Sender:
    """The classifier's side: a thread sending one ``faces`` event per camera every ``1 / fps`` s."""

    def __init__(self, endpoint: str, cameras: int, fps: float) -> None:
        self.socket: zmq.Socket = zmq.Context.instance().socket(zmq.PUSH)
        self.socket.connect(endpoint)
        self.cameras = [f"cam{i}" for i in range(cameras)]
        self.fps = fps
        self.frames = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sender", daemon=True)

    def _run(self) -> None:
        face = FaceEmotion(box=(10, 20, 40, 40), emotion="happy", confidence=0.7, scores=SCORES, track=1,
                           smoothed=SCORES)  # fmt: skip
        start = time.monotonic()
        while not self._stop.wait(max(0.0, start + self.frames / self.fps - time.monotonic())):
            now = time.time()
            for camera in self.cameras:
                event = EmotionEvent(camera=camera, frame=self.frames, ts_capture=now, ts_event=now, faces=(face,))
                self.socket.send_multipart(encode_event(event))
            self.frames += 1

    @property
    def events(self) -> int:
        return self.frames * len(self.cameras)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()
        self.socket.close(linger=5000)


def _values(port: int, name: str, **labels: str) -> dict[str, float]:
    """``name``'s value by output, from the sink's /metrics."""
    return {
        s_labels["output"]: value
        for s_name, s_labels, value in scrape(port)
        if s_name == name and all(s_labels.get(k) == v for k, v in labels.items())
    }


def _wait_until(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def redis_frames(port: int, cameras: list[str]) -> dict[str, list[int]]:
    """Each camera's distinct frame numbers in its Redis stream, in first-seen order."""
    import redis

    out: dict[str, list[int]] = {}
    with redis.Redis(port=port) as client:
        for camera in cameras:
            frames = [json.loads(fields[b"event"])["frame"] for _, fields in client.xrange(f"emostream:{camera}")]
            out[camera] = list(dict.fromkeys(frames))
    return out


def run_outage(
    outage_s: float, cameras: int = 4, fps: float = 25.0, before_s: float = 5.0, retry_max_s: float | None = None
) -> dict[str, Any]:
    """The outage measurement (module docstring); the result as a dict, one entry per output under ``outputs``."""
    folder = Path(tempfile.mkdtemp(prefix="emostream-outage-"))
    mosquitto, redis = brokers(folder)
    extra = {} if retry_max_s is None else {"retry_max_s": retry_max_s}
    outputs = [
        {"type": "mqtt", "url": f"mqtt://127.0.0.1:{mosquitto.port}", **extra},
        {"type": "redis", "url": f"redis://127.0.0.1:{redis.port}", **extra},
    ]
    names = [str(o["type"]) for o in outputs]
    pull, metrics_port = _port(), _port()
    sink: subprocess.Popen | None = None
    sender: Sender | None = None
    try:
        mosquitto.start()
        redis.start()
        sink = subprocess.Popen(
            [sys.executable, "-m", "sink", "--pull", f"tcp://127.0.0.1:{pull}", "--publish",
             f"tcp://127.0.0.1:{_port()}", "--outputs", json.dumps(outputs), "--outbox-dir", str(folder / "outbox"),
             "--metrics-port", str(metrics_port)],
            cwd=REPO,
        )  # fmt: skip

        def up() -> bool:
            try:
                return _values(metrics_port, "emostream_output_up") == dict.fromkeys(names, 1.0)
            except OSError:
                return False

        _wait_until("the sink's outputs to connect", up, 60)
        sender = Sender(f"tcp://127.0.0.1:{pull}", cameras, fps)
        sender.thread.start()
        time.sleep(before_s)
        mosquitto.stop()
        redis.stop()
        stopped_at = time.monotonic()
        time.sleep(max(0.0, stopped_at + outage_s - time.monotonic()))
        mosquitto.start()
        redis.start()
        restarted = time.monotonic()
        pending0 = _values(metrics_port, "emostream_output_pending")
        delivered0 = _values(metrics_port, "emostream_output_delivered_total")
        # Per output: (seconds after the restart, delivered) of the last sample before its first delivery,
        # then of the first sample with an empty outbox. Fine sampling once delivery begins.
        waiting = {name: (0.0, delivered0[name]) for name in names}
        first: dict[str, tuple[float, float]] = {}
        empty: dict[str, tuple[float, float]] = {}
        deadline = restarted + 600
        while len(empty) < len(names) and time.monotonic() < deadline:
            pending = _values(metrics_port, "emostream_output_pending")
            delivered = _values(metrics_port, "emostream_output_delivered_total")
            t = time.monotonic() - restarted
            for name in names:
                if name in empty:
                    continue
                if name not in first:
                    if delivered[name] > delivered0[name]:
                        first[name] = waiting[name]
                    else:
                        waiting[name] = (t, delivered[name])
                if name in first and pending[name] == 0:
                    empty[name] = (t, delivered[name])
            time.sleep(0.02 if first else 0.1)
        sender.stop()
        sent = sender.events
        _wait_until("every event to be delivered",
                    lambda: min(_values(metrics_port, "emostream_output_delivered_total").values()) >= sent,
                    120)  # fmt: skip
        dropped = _values(metrics_port, "emostream_output_dropped_total")
        retries = _values(metrics_port, "emostream_output_retries_total")
        frames = redis_frames(redis.port, sender.cameras)
        missing = sum(len(set(range(sender.frames)) - set(f)) for f in frames.values())
        in_order = all(f == sorted(f) for f in frames.values())
    finally:
        if sender and sender.thread.is_alive():
            sender.stop()
        if sink:
            sink.terminate()
            sink.wait(60)
        for broker in (mosquitto, redis):
            broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {
        "outage_s": outage_s, "cameras": cameras, "fps": fps, "events_sent": sent,
        "redis_frames_missing": missing, "redis_in_order": in_order, "outputs": {},
    }  # fmt: skip
    for name in names:
        out: dict[str, Any] = {
            "queued_at_restart": pending0[name],
            "dropped": dropped.get(name, 0.0),
            "retries": retries.get(name, 0.0),
        }
        if name in first and name in empty:
            (t0, d0), (t1, d1) = first[name], empty[name]
            out |= {
                "first_delivery_after_s": round(t0, 2),
                "empty_after_s": round(t1, 2),
                "catch_up_events_per_s": round((d1 - d0) / (t1 - t0)) if t1 > t0 else None,
            }
        result["outputs"][name] = out
    return result


def format_outage(result: dict[str, Any]) -> str:
    lines = [
        f"outage {result['outage_s']:g} s, {result['cameras']} cameras x {result['fps']:g} events/s, "
        f"{result['events_sent']:,} events sent; Redis streams: {result['redis_frames_missing']} frames missing, "
        f"{'in order' if result['redis_in_order'] else 'OUT OF ORDER'}"
    ]
    for name, o in result["outputs"].items():
        lines.append(
            f"{name}: {o['queued_at_restart']:,.0f} events queued at the restart; first delivery "
            f"{o.get('first_delivery_after_s', '?')} s after it, "
            f"outbox empty {o.get('empty_after_s', '?')} s after it; "
            f"catching up at {o.get('catch_up_events_per_s') or '?'} events/s; dropped {o['dropped']:g}, "
            f"failed deliveries retried {o['retries']:g}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.bench.outputs", description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, metavar="SECONDS", help="measure recovery from a broker outage")
    parser.add_argument("--cameras", type=int, default=4, help="--outage: cameras sending (default 4)")
    parser.add_argument("--fps", type=float, default=25.0, help="--outage: events/s of each camera (default 25)")
    parser.add_argument("--before", type=float, default=5.0, help="--outage: seconds of traffic before it (default 5)")
    parser.add_argument("--retry-max-s", type=float, help="--outage: the outputs' retry_max_s (default: theirs)")
    parser.add_argument("--json", action="store_true", help="--outage: print the result as JSON")
    args = parser.parse_args()
    if args.outage is None:
        throughput()
        return
    result = run_outage(args.outage, args.cameras, args.fps, args.before, args.retry_max_s)
    print(json.dumps(result, indent=1) if args.json else format_outage(result), flush=True)


if __name__ == "__main__":
    main()
