"""``sink.outputs``: every event also delivered to MQTT, Redis Streams, a webhook or Parquet files.

Each output has an outbox (``sink/outbox.py``; on disk for the network outputs) and a delivery thread.
The sink's thread only appends to the outboxes, so a slow or dead output never slows the pipeline or the
other outputs. A delivery thread hands the oldest events to its output in outbox order and removes them
once the output acknowledged them (MQTT PUBACK, Redis XADD reply, HTTP 2xx, rows taken by the Parquet
writer): delivery is at least once, in order per camera, and an output that is down is retried with
exponential backoff while its outbox keeps the events (the oldest are dropped, counted, when it is full).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from emostream import metrics
from emostream.runtime import ThrottledLog
from emostream.wire import EMOTIONS, Event
from sink.outbox import DiskOutbox, Entry, MemoryOutbox, Outbox
from sink.settings import MqttOutput, OutputSettings, ParquetOutput, RedisOutput, SinkSettings, WebhookOutput

log = logging.getLogger("sink.outputs")

#: First wait after a failed delivery; it doubles up to the output's ``retry_max_s``.
BACKOFF_MIN_S = 0.5
#: How often an idle delivery thread asks its output whether the connection still stands (the ``up`` gauge).
PROBE_INTERVAL_S = 5.0
#: Rows the Parquet writer gathers into one row group: big enough for columnar compression, small in memory.
PARQUET_ROW_GROUP = 10_000
DROP_REASONS = {"disk": "outbox_full", "memory": "queue_full"}


def event_json(event: Event) -> str:
    """The event as users see it in every output: ``Event.to_dict`` as compact JSON, one line."""
    return json.dumps(event.to_dict(), separators=(",", ":"))


class Output(Protocol):
    """One destination. ``deliver`` returns once every event of the batch is acknowledged and raises
    otherwise; the delivery thread then closes the output and connects it again after a backoff."""

    def connect(self) -> None: ...

    def deliver(self, batch: Sequence[Entry]) -> None: ...

    def alive(self) -> bool:
        """False when the connection is known to be gone (asked while idle)."""
        ...

    def idle(self) -> None:
        """Called when there is nothing to deliver (the Parquet writer rotates its file on time)."""
        ...

    def close(self) -> None: ...


class MqttPublisher:
    """Publishes each event to ``topic`` (``{camera}`` filled in) and waits for the broker's PUBACK (qos 1)."""

    def __init__(self, settings: MqttOutput) -> None:
        self.settings = settings
        self.url = urlsplit(settings.url)
        self._client: Any = None

    def connect(self) -> None:
        import paho.mqtt.client as mqtt

        connected = threading.Event()
        refused: list[str] = []

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            connected.set()

        # Clean session, no automatic reconnect: after a failure the delivery thread starts a fresh client
        # and sends again from the outbox, so paho never resends on its own, out of outbox order.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, clean_session=True, reconnect_on_failure=False)
        if self.url.username:
            client.username_pw_set(unquote(self.url.username), unquote(self.url.password or ""))
        client.max_inflight_messages_set(self.settings.batch)
        client.on_connect = on_connect
        self._client = client
        client.connect(self.url.hostname or "", self.url.port or 1883, keepalive=30)
        client.loop_start()
        if not connected.wait(self.settings.timeout_s):
            raise TimeoutError(f"no CONNACK from {self.settings.url} within {self.settings.timeout_s:g} s")
        if refused:
            raise ConnectionRefusedError(f"{self.settings.url} refused the connection: {refused[0]}")

    def deliver(self, batch: Sequence[Entry]) -> None:
        topic, qos = self.settings.topic, self.settings.qos
        infos = [self._client.publish(topic.format(camera=e.camera), e.body, qos=qos) for e in batch]
        deadline = time.monotonic() + self.settings.timeout_s
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"no PUBACK within {self.settings.timeout_s:g} s")

    def alive(self) -> bool:
        return bool(self._client is not None and self._client.is_connected())

    def idle(self) -> None:
        pass

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.disconnect()
            client.loop_stop()


class RedisStreamer:
    """XADDs each event to ``stream`` (``{camera}`` filled in) as one field, ``event``; one pipeline per batch."""

    def __init__(self, settings: RedisOutput) -> None:
        self.settings = settings
        self._redis: Any = None

    def connect(self) -> None:
        import redis

        timeout = self.settings.timeout_s
        self._redis = redis.Redis.from_url(self.settings.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._redis.ping()

    def deliver(self, batch: Sequence[Entry]) -> None:
        stream, maxlen = self.settings.stream, self.settings.maxlen
        pipe = self._redis.pipeline(transaction=False)
        for e in batch:
            pipe.xadd(stream.format(camera=e.camera), {"event": e.body}, maxlen=maxlen, approximate=True)
        pipe.execute()  # raises on a failed command or connection; each reply is the entry's id

    def alive(self) -> bool:
        try:
            return bool(self._redis is not None and self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure means the connection is not usable
            return False

    def idle(self) -> None:
        pass

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None


class WebhookPoster:
    """POSTs ``{"events": [...]}`` (up to ``batch`` events, oldest first) as JSON; any 2xx acknowledges."""

    def __init__(self, settings: WebhookOutput) -> None:
        self.settings = settings
        self.linger_s = settings.linger_s

    def connect(self) -> None:
        pass  # a connection per POST

    def deliver(self, batch: Sequence[Entry]) -> None:
        body = ('{"events":[' + ",".join(e.body for e in batch) + "]}").encode()
        headers = {"Content-Type": "application/json", **self.settings.headers}
        request = urllib.request.Request(self.settings.url, data=body, headers=headers, method="POST")
        # urlopen raises HTTPError for 4xx/5xx; a 1xx/3xx that gets here is no acknowledgement either.
        with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
            if not 200 <= response.status < 300:
                raise ConnectionError(f"{self.settings.url} answered {response.status}")

    def alive(self) -> bool:
        return True

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass


def parquet_schema() -> Any:
    """The Parquet files' columns: one row per event (docs/events.md, "Parquet files")."""
    import pyarrow as pa

    probabilities = pa.struct([(e, pa.float64()) for e in EMOTIONS])
    face = pa.struct(
        [
            ("box", pa.list_(pa.int32())),
            ("emotion", pa.string()),
            ("confidence", pa.float64()),
            ("scores", probabilities),
            ("detector_score", pa.float64()),
            ("track", pa.int64()),
            ("smoothed", probabilities),
            ("raw_emotion", pa.string()),
            ("extra", pa.string()),
        ]
    )
    return pa.schema(
        [
            ("camera", pa.string()),
            ("type", pa.string()),
            ("frame", pa.int64()),
            ("ts_capture", pa.float64()),
            ("ts_event", pa.float64()),
            ("ts_detect", pa.float64()),
            ("faces", pa.list_(face)),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("extra", pa.string()),
        ]
    )


def _split(obj: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """``obj``'s values for ``columns``, and every other key as JSON text under ``extra`` (None if none)."""
    row = {name: obj.get(name) for name in columns if name != "extra"}
    rest = {k: v for k, v in obj.items() if k not in row and k != "schema"}
    row["extra"] = json.dumps(rest, separators=(",", ":")) if rest else None
    return row


class ParquetWriter:
    """Appends events as rows to ``dir/events-<period start, UTC>.parquet``, a new file every ``rotate``.

    A file is written as ``.parquet.part`` and renamed when it is closed, so readers only ever see whole
    files. Rows gather into row groups of :data:`PARQUET_ROW_GROUP`; the open file's rows are on disk only
    when the file is closed (rotation or a clean stop): a killed sink loses them (the ``.part`` file).
    """

    def __init__(self, settings: ParquetOutput) -> None:
        self.settings = settings
        self.dir = Path(settings.dir)
        self.period = settings.rotate_s
        self.schema = parquet_schema()
        self._event_columns = self.schema.names
        self._face_columns = self.schema.field("faces").type.value_type.names
        self._writer: Any = None
        self._part: Path | None = None
        self._period_end = 0.0
        self._rows: list[dict[str, Any]] = []
        leftovers = sorted(self.dir.glob("*.parquet.part"))
        if leftovers:
            log.warning("parquet %s: %d unfinished file(s) of a killed sink, unreadable: %s", self.dir, len(leftovers),
                        ", ".join(p.name for p in leftovers))  # fmt: skip

    def connect(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def _row(self, entry: Entry) -> dict[str, Any]:
        row = _split(json.loads(entry.body), self._event_columns)
        if row["faces"] is not None:
            row["faces"] = [_split(face, self._face_columns) for face in row["faces"]]
        return row

    def deliver(self, batch: Sequence[Entry]) -> None:
        rows = [self._row(e) for e in batch]
        self.idle()
        if len(self._rows) + len(rows) >= PARQUET_ROW_GROUP:
            self._write(self._rows + rows)  # raises: the batch stays in the outbox, the buffer unchanged
            self._rows = []
        else:
            self._rows += rows

    def _write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        if self._writer is None:
            start = self._period_end - self.period
            stamp = datetime.fromtimestamp(start, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            name, n = f"events-{stamp}", 0
            while (self.dir / f"{name}.parquet").exists() or (self.dir / f"{name}.parquet.part").exists():
                n += 1  # the sink restarted within this period: the earlier file stays as it is
                name = f"events-{stamp}-{n}"
            self._part = self.dir / f"{name}.parquet.part"
            self._writer = pq.ParquetWriter(self._part, self.schema)
        self._writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def _finish(self) -> None:
        """Write the buffered rows and close the open file under its final name."""
        self._write(self._rows)
        self._rows = []
        if self._writer is not None and self._part is not None:
            self._writer.close()
            self._part.rename(self._part.with_suffix(""))
        self._writer, self._part = None, None

    def alive(self) -> bool:
        return True

    def idle(self) -> None:
        now = time.time()
        if now >= self._period_end:
            self._finish()
            self._period_end = (now // self.period + 1) * self.period

    def close(self) -> None:
        self._finish()


def make_output(settings: OutputSettings) -> Output:
    if isinstance(settings, MqttOutput):
        return MqttPublisher(settings)
    if isinstance(settings, RedisOutput):
        return RedisStreamer(settings)
    if isinstance(settings, WebhookOutput):
        return WebhookPoster(settings)
    return ParquetWriter(settings)


def outbox_path(outbox_dir: str | Path, settings: OutputSettings) -> Path | None:
    """Where a network output's outbox lives; None for Parquet (its queue is in memory)."""
    if isinstance(settings, ParquetOutput):
        return None
    return Path(outbox_dir) / f"{settings.label}.sqlite3"


def output_paths(settings: SinkSettings) -> list[tuple[str, Path]]:
    """``(key, file)`` for every file the outputs will create: the config checks them before anything starts."""
    paths: list[tuple[str, Path]] = []
    for i, output in enumerate(settings.outputs or []):
        if isinstance(output, ParquetOutput):
            paths.append((f"outputs[{i}].dir", Path(output.dir) / "events.parquet"))
        elif path := outbox_path(settings.outbox_dir, output):
            paths.append(("outbox_dir", path))
    return paths


class Delivery:
    """One output, its outbox and the thread that moves events from the one to the other."""

    def __init__(self, settings: OutputSettings, outbox: Outbox, output: Output | None = None) -> None:
        self.settings = settings
        self.name = settings.label
        self.outbox = outbox
        self.output = output or make_output(settings)
        self.batch = settings.batch
        self.linger_s = float(getattr(self.output, "linger_s", 0.0))
        self.drop_reason = DROP_REASONS["memory" if isinstance(outbox, MemoryOutbox) else "disk"]
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._log = ThrottledLog(log, 30.0)
        self._metrics_lock = threading.Lock()
        self._dropped_counted = 0
        # Declared up front, so dashboards see every output (and its zeros) before the first event.
        metrics.OUTPUT_DELIVERED.labels(self.name)
        metrics.OUTPUT_RETRIES.labels(self.name)
        metrics.OUTPUT_DROPPED.labels(self.name, self.drop_reason)
        metrics.OUTPUT_UP.labels(self.name).set(0)
        self._update_metrics()
        self.thread = threading.Thread(target=self._run, name=f"output-{self.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def append(self, camera: str, body: str) -> None:
        """The sink's side: queue one event (never waits on the output)."""
        self.outbox.append(camera, body)

    def flush(self) -> None:
        """The sink's side, after a burst of ``append``: store them and wake the delivery thread."""
        self.outbox.flush()
        self._update_metrics()
        self._wake.set()

    def _update_metrics(self) -> None:
        """Pending and the drops the outbox made since the last call (from either thread)."""
        with self._metrics_lock:
            dropped = self.outbox.dropped
            if dropped > self._dropped_counted:
                metrics.OUTPUT_DROPPED.labels(self.name, self.drop_reason).inc(dropped - self._dropped_counted)
                self._dropped_counted = dropped
            metrics.OUTPUT_PENDING.labels(self.name).set(len(self.outbox))

    def _set_up(self, up: bool) -> None:
        metrics.OUTPUT_UP.labels(self.name).set(1 if up else 0)

    def _next_batch(self) -> list[Entry]:
        self._wake.clear()
        batch = self.outbox.peek(self.batch)
        if batch and len(batch) < self.batch and self.linger_s:
            deadline = time.monotonic() + self.linger_s
            while len(self.outbox) < self.batch and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
                self._wake.clear()
            batch = self.outbox.peek(self.batch)
        return batch

    def _run(self) -> None:
        connected = False
        backoff = BACKOFF_MIN_S
        next_probe = 0.0
        while not self._stop.is_set():
            batch = self._next_batch()
            try:
                if not connected:
                    self.output.connect()
                    connected = True
                    self._set_up(True)
                if not batch:
                    self.output.idle()
                    if time.monotonic() >= next_probe:
                        next_probe = time.monotonic() + PROBE_INTERVAL_S
                        if not self.output.alive():
                            raise ConnectionError("connection lost")
                    self._wake.wait(0.5)
                    continue
                self.output.deliver(batch)
            except Exception as exc:  # noqa: BLE001 - every failure is retried the same way
                connected = False
                self._set_up(False)
                if batch:
                    metrics.OUTPUT_RETRIES.labels(self.name).inc()
                self._log.warning("output %s: %s; retrying in %.1f s", self.name, exc, backoff)
                self._close_output()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_s)
                continue
            self.outbox.ack(batch[-1].id)
            metrics.OUTPUT_DELIVERED.labels(self.name).inc(len(batch))
            self._update_metrics()
            self._set_up(True)
            backoff = BACKOFF_MIN_S
        if isinstance(self.outbox, MemoryOutbox):
            self._drain_local()
        self._close_output()

    def _drain_local(self) -> None:
        """On stop, a local output takes what is queued: nothing in memory survives the process."""
        try:
            self.output.connect()
            while batch := self.outbox.peek(PARQUET_ROW_GROUP):
                self.output.deliver(batch)
                self.outbox.ack(batch[-1].id)
                metrics.OUTPUT_DELIVERED.labels(self.name).inc(len(batch))
        except Exception as exc:  # noqa: BLE001
            log.warning("output %s: %d events not written on stop: %s", self.name, len(self.outbox), exc)
            metrics.OUTPUT_DROPPED.labels(self.name, "stopped").inc(len(self.outbox))
        self._update_metrics()

    def _close_output(self) -> None:
        try:
            self.output.close()
        except Exception as exc:  # noqa: BLE001 - closing a broken connection may fail too; it is gone either way
            log.debug("output %s: close: %s", self.name, exc)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.outbox.close()


def open_outbox(settings: OutputSettings, outbox_dir: str | Path) -> Outbox:
    path = outbox_path(outbox_dir, settings)
    if path is None:
        assert isinstance(settings, ParquetOutput)
        return MemoryOutbox(settings.queue_max_events)
    assert not isinstance(settings, ParquetOutput)
    return DiskOutbox(path, settings.outbox_max_events)


class Outputs:
    """Every configured output of a sink: ``append`` queues an event for each, ``close`` stops them."""

    def __init__(self, settings: SinkSettings) -> None:
        self.deliveries = [Delivery(o, open_outbox(o, settings.outbox_dir)) for o in settings.outputs or []]
        for delivery in self.deliveries:
            delivery.start()

    def __bool__(self) -> bool:
        return bool(self.deliveries)

    def append(self, camera: str, body: str) -> None:
        for delivery in self.deliveries:
            delivery.append(camera, body)

    def flush(self) -> None:
        """After a burst of ``append``: one write per outbox for the whole burst."""
        for delivery in self.deliveries:
            delivery.flush()

    def close(self) -> None:
        # Network outputs stop at once (their outboxes keep what is pending for the next start); the
        # Parquet writer finishes its file, which only takes local writes.
        self.flush()
        for delivery in self.deliveries:
            delivery._stop.set()
            delivery._wake.set()
        for delivery in self.deliveries:
            delivery.stop(timeout=30.0 if isinstance(delivery.outbox, MemoryOutbox) else 2.0)
