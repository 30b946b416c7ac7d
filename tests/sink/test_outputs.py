"""sink.outputs in one process: settings that name the bad key, the --outputs command line, a webhook that
fails then recovers (a real HTTP server), and Parquet files that pandas and DuckDB read, rotated."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from deploy.config import ConfigError, parse_config
from emostream.settings_cli import to_argv
from sink.__main__ import build_parser
from sink.outbox import DiskOutbox, MemoryOutbox
from sink.outputs import Delivery, event_json, parquet_schema
from sink.settings import ParquetOutput, SinkSettings, WebhookOutput
from support import start_stage, wait_for
from support.brokers import Webhook, face_event

CAMERA = {"id": "a", "source": "demo"}


def _config_error(sink: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"cameras": [CAMERA], "sink": sink})
    return str(info.value)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([{"type": "parquet", "dir": "p"}, {"type": "mqtt", "url": "http://broker"}],
         "sink.outputs[1].url: 'http://broker' is not a mqtt://HOST URL"),
        ([{"type": "redis", "url": "redis://h:99999"}], "sink.outputs[0].url: 'redis://h:99999' has a bad port"),
        ([{"type": "kafka", "url": "x"}], "sink.outputs[0].type: must be one of mqtt, redis, webhook, parquet"),
        ([{"url": "mqtt://h"}], "sink.outputs[0].type: must be one of mqtt, redis, webhook, parquet"),
        ([{"type": "mqtt", "url": "mqtt://h", "topic": "a/{cam}"}],
         "sink.outputs[0].topic: topic 'a/{cam}' may hold only the placeholder {camera}"),
        ([{"type": "webhook", "url": "https://h", "bacth": 5}], "sink.outputs[0].bacth: unknown key"),
        ([{"type": "parquet", "dir": "p", "rotate": "1 week"}], "sink.outputs[0].rotate: '1 week' is not a duration"),
        ([{"type": "mqtt", "url": "mqtt://a"}, {"type": "mqtt", "url": "mqtt://b"}],
         "sink.outputs: two outputs are named 'mqtt'"),
    ],
)  # fmt: skip
def test_a_bad_output_is_an_error_naming_its_key(outputs: list, message: str) -> None:
    assert message in _config_error({"outputs": outputs})


def test_unwritable_outbox_and_parquet_folders_are_config_errors(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    redis = [{"type": "redis", "url": "redis://h"}]
    assert "sink.outbox_dir: cannot create" in _config_error({"outputs": redis, "outbox_dir": str(regular / "o")})
    parquet = [{"type": "parquet", "dir": str(regular)}]
    assert f"sink.outputs[0].dir: cannot create {regular}/events.parquet" in _config_error({"outputs": parquet})


def test_outputs_go_through_the_sink_command_line_unchanged() -> None:
    settings = SinkSettings.model_validate(
        {
            "outputs": [
                {"type": "mqtt", "url": "mqtt://u:p@broker:1884", "qos": 2, "name": "site-a"},
                {"type": "redis", "url": "redis://r", "maxlen": None},
                {"type": "webhook", "url": "https://hooks.example/x", "batch": 7, "headers": {"Authorization": "k"}},
                {"type": "parquet", "dir": "archive", "rotate": "10m"},
            ]
        }
    )
    args = build_parser().parse_args(["--pull", "tcp://127.0.0.1:1", *to_argv(settings)])
    assert args.settings == settings


def test_the_sink_exits_fatally_with_one_line_when_its_outbox_cannot_be_created(tmp_path: Path, processes) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    proc = start_stage(
        "sink", "--pull", "tcp://127.0.0.1:0", "--outbox-dir", str(regular / "outbox"),
        "--outputs", '[{"type": "redis", "url": "redis://127.0.0.1:1"}]',
    )  # fmt: skip
    processes.append(proc)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    target = regular / "outbox" / "redis.sqlite3"
    assert stderr.splitlines()[-1] == f"sink: --outbox-dir: cannot create {target}: {regular} is not a folder"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_failing_webhook_is_retried_and_then_gets_every_event_in_order(tmp_path: Path) -> None:
    webhook = Webhook(status=503)
    settings = WebhookOutput(type="webhook", url=webhook.url, name="hook-retry", batch=8, linger_s=0, retry_max_s=0.5)
    delivery = Delivery(settings, DiskOutbox(tmp_path / "hook.sqlite3", 1000))
    delivery.start()
    try:
        events = [face_event("cam", i) for i in range(50)]
        for event in events:
            delivery.append(event.camera, event_json(event))
        delivery.flush()
        wait_for(lambda: _value("emostream_output_retries_total", output="hook-retry") >= 2, what="retries")
        assert _value("emostream_output_delivered_total", output="hook-retry") == 0
        assert _value("emostream_output_pending", output="hook-retry") == 50
        assert _value("emostream_output_up", output="hook-retry") == 0
        webhook.status = 200
        wait_for(lambda: _value("emostream_output_delivered_total", output="hook-retry") == 50, what="delivery")
        assert webhook.events() == [e.to_dict() for e in events]
        assert all(len(body["events"]) <= 8 for body in webhook.bodies)
        assert _value("emostream_output_pending", output="hook-retry") == 0
        assert _value("emostream_output_up", output="hook-retry") == 1
    finally:
        delivery.stop(5)
        webhook.close()


def test_parquet_files_rotate_and_read_back_with_the_documented_schema(tmp_path: Path) -> None:
    settings = ParquetOutput(type="parquet", dir=str(tmp_path / "pq"), rotate="1s", name="pq-rotate")
    delivery = Delivery(settings, MemoryOutbox(10_000))
    delivery.start()
    events = [face_event(f"cam{i % 2}", i // 2) for i in range(40)]
    for event in events[:20]:
        delivery.append(event.camera, event_json(event))
    delivery.flush()
    wait_for(lambda: _value("emostream_output_delivered_total", output="pq-rotate") == 20, what="first rows")
    # The next events belong to a later period (files are cut on the second), so they go to another file.
    start = time.time()
    wait_for(lambda: int(time.time()) > int(start) + 1, timeout=5, what="the next period")
    for event in events[20:]:
        delivery.append(event.camera, event_json(event))
    delivery.flush()
    delivery.stop(30)
    assert not delivery.thread.is_alive()
    files = sorted((tmp_path / "pq").glob("*.parquet"))
    assert len(files) >= 2, files
    assert not list((tmp_path / "pq").glob("*.part"))
    for path in files:
        assert pq.read_schema(path).equals(parquet_schema(), check_metadata=False)
    table = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    assert list(table["camera"]) == [e.camera for e in events]
    assert list(table["frame"]) == [e.frame for e in events]
    assert (table["type"] == "faces").all() and table["status"].isna().all() and table["extra"].isna().all()
    face = table["faces"][0][0]
    original = events[0].faces[0]
    assert list(face["box"]) == list(original.box) and face["emotion"] == original.emotion
    assert face["scores"] == dict(original.scores) and face["track"] == original.track
    try:
        import duckdb
    except ImportError:
        return  # DuckDB is optional; pandas (pyarrow) read the files above
    glob = str(tmp_path / "pq" / "*.parquet")
    happy = duckdb.sql(f"SELECT count(*) FROM (SELECT unnest(faces) AS f FROM '{glob}') WHERE f.emotion = 'happy'")
    assert happy.fetchall() == [(len(events),)]
