"""``python -m deploy.bench.outputs``: what ``sink.outputs`` cost the sink's own thread, side by side.

Events/s of ``SinkService.handle`` (decode, PUB, then JSON and outbox appends, flushed every 16 events as
bursts are) without outputs, with one network output and with four; the network outputs point at a
closed port, so their outboxes only grow and nothing is delivered. Two interleaved rounds of 5,000 events.
"""

from __future__ import annotations

import socket
import tempfile
import time
from typing import Any

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


def main() -> None:
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


if __name__ == "__main__":
    main()
