"""Every Prometheus metric emostream exports, defined once so names and labels agree across stages.

Each stage process serves its own registry on its own port (see :func:`serve_metrics`); a metric is
exported by a process only once that process has touched it, except unlabelled ones. The catalogue
with every metric's meaning is in docs/metrics.md.
"""

from __future__ import annotations

import contextlib

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

FRAMES_RECEIVED = Counter(
    "emostream_frames_received",
    "Frames a stage took in: grabbed from the source (capture) or decoded from its input socket.",
    ["stage", "camera"],
)
FRAMES = Counter("emostream_frames", "Frames a stage finished processing and passed on.", ["stage", "camera"])
FRAMES_DROPPED = Counter(
    "emostream_frames_dropped",
    "Frames or messages a stage dropped, by reason (overload, malformed, read_error, ...).",
    ["stage", "camera", "reason"],
)
FACES = Counter("emostream_faces", "Faces detected.", ["camera"])
FACES_REJECTED = Counter(
    "emostream_faces_rejected",
    "Detector candidates not reported as faces, by reason (not_frontal: under detector.confident_score and "
    "landmarks that do not fit a frontal face).",
    ["camera", "reason"],
)
DETECTIONS = Counter(
    "emostream_detections",
    "Frames the face detector ran on. With detector.interval N > 1 the other frames reuse their camera's "
    "last key-frame boxes.",
    ["camera"],
)
EMOTIONS = Counter("emostream_emotions", "Classified faces by top emotion.", ["camera", "emotion"])
EVENT_LATENCY = Histogram(
    "emostream_event_latency_seconds",
    "Capture timestamp to event publication at the sink.",
    ["camera"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "emostream_stage_seconds",
    "Processing time of one unit of work (a frame; a batch in the classifier).",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
# Classifier-only metrics without labels would otherwise show up, empty, in every process that imports
# this module: they join the registry only when the classifier calls register_classifier_metrics().
BATCH_SIZE = Histogram(
    "emostream_classifier_batch_size", "Faces per classifier forward pass.", buckets=BATCH_BUCKETS, registry=None
)
QUEUE_DEPTH = Gauge("emostream_classifier_queue_depth", "Faces received and waiting for a batch.", registry=None)
CAMERA_UP = Gauge("emostream_camera_up", "1 while a camera delivers frames, else 0.", ["camera"])
STAGE_RESTARTS = Counter("emostream_stage_restarts", "Stage processes restarted by the launcher.", ["stage"])
STAGE_HANGS = Counter(
    "emostream_stage_hangs",
    "Stage processes the launcher killed because their /healthz stopped answering (then restarted).",
    ["stage"],
)
STAGE_UP = Gauge("emostream_stage_up", "1 while the launcher sees the stage process running.", ["stage"])
AUTH_FAILURES = Counter(
    "emostream_auth_failures",
    "Failed CurveZMQ handshakes on a stage's binding sockets: peers without keys, with a key not in "
    "authorized/, or expecting another server key. Such a peer receives nothing.",
    ["stage"],
)
# sink.outputs (sink/outputs.py): one set per output, labelled by the output's name.
OUTPUT_DELIVERED = Counter(
    "emostream_output_delivered",
    "Events an output acknowledged (MQTT PUBACK, Redis XADD reply, HTTP 2xx, written).",
    ["output"],
)
OUTPUT_PENDING = Gauge("emostream_output_pending", "Events waiting in an output's outbox.", ["output"])
OUTPUT_RETRIES = Counter("emostream_output_retries", "Failed delivery attempts of an output, each retried.", ["output"])
OUTPUT_DROPPED = Counter(
    "emostream_output_dropped",
    "Events an output dropped undelivered, by reason (outbox_full, queue_full).",
    ["output", "reason"],
)
OUTPUT_UP = Gauge(
    "emostream_output_up", "1 while an output's last connection or delivery succeeded, else 0.", ["output"]
)
MODEL_INFO = Info("emostream_model", "The emotion model the classifier serves.", registry=None)
FACES_REUSED = Counter(
    "emostream_classifier_faces_reused",
    "Faces that took their track's last scores instead of a model call (classifier.classify_every).",
    registry=None,
)
CLASSIFY_EVERY = Gauge(
    "emostream_classifier_classify_every",
    "Frames a tracked face's scores may be reused right now: classifier.classify_every, more while the "
    "classifier is behind (classifier.classify_every_max).",
    registry=None,
)
MODEL_SWAPS = Counter(
    "emostream_model_swaps",
    "Models the classifier switched to while serving (python -m deploy model use FILE or previous).",
    registry=None,
)
MODEL_SWAP_REFUSALS = Counter(
    "emostream_model_swap_refusals",
    "Model swap requests the classifier refused, by reason (model_file, class_names, input_size, outputs, "
    "not_finite, no_previous, bad_request, ...); the model that served keeps serving.",
    ["reason"],
)


def register_classifier_metrics() -> None:
    """Add the classifier's unlabelled metrics to the default registry (idempotent)."""
    for metric in (BATCH_SIZE, QUEUE_DEPTH, FACES_REUSED, CLASSIFY_EVERY, MODEL_INFO, MODEL_SWAPS):
        with contextlib.suppress(ValueError):  # already registered in this process
            REGISTRY.register(metric)


def declare_drops(stage: str, camera: str, reasons: tuple[str, ...]) -> None:
    """Export zero-valued drop counters up front, so dashboards and rate() see them before any drop."""
    for reason in reasons:
        FRAMES_DROPPED.labels(stage, camera, reason)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Serve /metrics, /healthz and /readyz on ``host:port``; ``None`` or 0 disables it."""
    if port:
        from emostream.health import serve_http

        serve_http(port, host)
