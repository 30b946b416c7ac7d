"""The classifier process: PULL faces from every detector, batch, classify, PUSH events to the sink."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import zmq

from classifier.batching import Batch, FaceBatcher
from classifier.model import EmotionModel
from classifier.settings import ClassifierSettings
from classifier.swap import CANARY_FACES, ModelControl
from classifier.tracking import ReuseGovernor, Tracker, batch_lateness
from emostream import metrics
from emostream.health import HEALTH
from emostream.runtime import ThrottledLog
from emostream.security import CurveKeys, secure_client, secure_server
from emostream.wire import REJECT_REASONS, EmotionEvent, FaceEmotion, Faces, WireError, decode_faces, encode_event

log = logging.getLogger("classifier")
STAGE = "classifier"
MAX_DRAIN = 256  # messages read per wake-up, so a flood cannot starve the batch deadline
#: Faces messages queued on the receiving side. Bounded so that a slow classifier pushes back on the
#: detectors (they stop asking cameras for frames, and live cameras drop the oldest, counted) instead
#: of building a queue of stale frames; large enough for a few full batches.
RCVHWM = 128
#: The kernel's receive buffer (bytes): Faces messages are a few KB, so autotuned loopback buffers
#: would hold hundreds of them beyond RCVHWM.
RCVBUF = 256 * 1024
#: Decimal digits of the probabilities in events: finer than any calibration, and short JSON.
DIGITS = 4


def _probabilities(class_names: list[str], probs: np.ndarray) -> dict[str, float]:
    return {name: round(float(v), DIGITS) for name, v in zip(class_names, probs, strict=True)}


def events_for_batch(
    batch: Batch,
    probs: np.ndarray,
    class_names: list[str],
    tracker: Tracker | None = None,
    classified: np.ndarray | None = None,
) -> list[EmotionEvent]:
    """One event per frame of the batch, faces in detector order, in the batch's frame order.

    With a ``tracker`` (what the service passes) frames go through it in that order: every face gets
    its track id and smoothed scores, and ``emotion``/``confidence`` follow the smoothed scores;
    without one, faces carry the raw scores only. ``classified`` (faces,) bool marks the faces the model
    scored in this batch (default: all); the others carry scores reused from their track.
    """
    now = time.time()
    events = []
    fresh = np.ones(batch.face_count, dtype=bool) if classified is None else classified
    for frame, frame_probs, frame_fresh in zip(batch.frames, batch.split(probs), batch.split(fresh), strict=True):
        if tracker is not None:
            ids, smoothed = tracker.update(
                frame.camera, frame.seq, frame.boxes, frame_probs, frame.ts_capture, frame_fresh
            )
        faces = []
        for i, (box, det_score, p) in enumerate(zip(frame.boxes, frame.scores, frame_probs, strict=True)):
            raw_top = int(np.argmax(p))
            tracking: dict[str, Any] = {}
            shown = p
            if tracker is not None:
                shown = smoothed[i]
                tracking = {
                    "track": int(ids[i]),
                    "smoothed": _probabilities(class_names, shown),
                    "raw_emotion": class_names[raw_top],
                }
            top = int(np.argmax(shown))
            x, y, w, h = (int(v) for v in box)
            face = FaceEmotion(
                box=(x, y, w, h),
                emotion=class_names[top],
                confidence=round(float(shown[top]), DIGITS),
                scores=_probabilities(class_names, p),
                detector_score=round(float(det_score), DIGITS),
                **tracking,
            )
            faces.append(face)
        events.append(
            EmotionEvent(
                camera=frame.camera,
                frame=frame.seq,
                ts_capture=frame.ts_capture,
                ts_event=now,
                faces=tuple(faces),
                ts_detect=frame.ts_detect,
            )
        )
    return events


class ClassifierService:
    def __init__(
        self,
        model: EmotionModel,
        pull_endpoint: str,
        push_endpoint: str,
        settings: ClassifierSettings | None = None,
        context: zmq.Context | None = None,
        keys: CurveKeys | None = None,
    ) -> None:
        # The service uses the batching, staleness and tracking settings; the model was built from the rest.
        settings = settings or ClassifierSettings()
        self.model = model
        #: One tracker for every camera (tracks are per camera inside it); fed in each batch's frame order.
        self.tracker = Tracker(
            settings.smoothing_window, settings.track_iou, settings.track_max_age, settings.classify_every
        )
        self.reuse = ReuseGovernor(
            settings.classify_every, settings.classify_every_max, settings.load_latency_ms / 1000
        )
        self.max_age_s = settings.max_age_ms / 1000.0
        self._malformed_log = ThrottledLog(log)
        metrics.register_classifier_metrics()
        metrics.CLASSIFY_EVERY.set(self.reuse.every)
        metrics.declare_drops(STAGE, "unknown", REJECT_REASONS)
        self.batcher = FaceBatcher(settings.max_batch, settings.max_wait_ms, adaptive=settings.adaptive_wait)
        ctx = context or zmq.Context.instance()
        self.pull = ctx.socket(zmq.PULL)
        secure_server(self.pull, keys, STAGE)  # plain without keys
        self.pull.setsockopt(zmq.RCVHWM, RCVHWM)
        self.pull.setsockopt(zmq.RCVBUF, RCVBUF)
        self.pull.bind(pull_endpoint)
        self.push = ctx.socket(zmq.PUSH)
        secure_client(self.push, keys)
        self.push.setsockopt(zmq.SNDHWM, 1000)
        self.push.setsockopt(zmq.LINGER, 2000)
        self.push.connect(push_endpoint)
        self.publish_model_info()
        log.info("%s", model.describe())
        #: The control endpoint for live model swaps (classifier/swap.py); None without ``settings.control``.
        self.control: ModelControl | None = None
        if settings.control:
            self.control = ModelControl(settings.control, settings, lambda: self.model, ctx, keys)

    def publish_model_info(self) -> None:
        model = self.model
        metrics.MODEL_INFO.info(
            {
                "path": str(model.path),
                "arch": model.info.arch,
                "device": str(model.device),
                "runtime": model.runtime.label,
                "tta": model.tta,
                "version": model.version,
                "data_sha256": model.info.data_sha256[:16],
                "privatetest_accuracy": str(model.info.metrics.get("PrivateTest", {}).get("accuracy", "")),
            }
        )

    def _receive(self, timeout_ms: int) -> None:
        if not self.pull.poll(timeout_ms):
            return
        for _ in range(MAX_DRAIN):
            try:
                parts = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                faces = decode_faces(parts)
            except WireError as err:
                metrics.FRAMES_DROPPED.labels(STAGE, "unknown", err.reason).inc()
                self._malformed_log.warning("dropped malformed faces message: %s", err)
                continue
            metrics.FRAMES_RECEIVED.labels(STAGE, faces.camera).inc()
            if self.is_stale(faces):
                metrics.FRAMES_DROPPED.labels(STAGE, faces.camera, "stale").inc()
                continue
            self.batcher.add(faces)

    def is_stale(self, faces: Faces) -> bool:
        """A live camera's frame too old to be worth classifying; files' frames never are."""
        return faces.droppable and self.max_age_s > 0 and time.time() - faces.ts_capture > self.max_age_s

    def _switch_model(self) -> None:
        """Between two batches: serve the model the control thread checked and offered, if any."""
        if self.control is None:
            return
        model = self.control.handover.take()
        if model is None:
            return
        self.model = model
        self.tracker.forget_scores()  # no face is shown the old model's scores after the switch
        try:
            self.publish_model_info()
            metrics.MODEL_SWAPS.inc()
            HEALTH.set_ready(reason=f"model {model.path.name} loaded")
            log.info("%s", model.describe())
        finally:  # the control thread waits for this to reply
            self.control.handover.done()

    def _classify(self, batch: Batch) -> None:
        started = time.perf_counter()
        plan = self.tracker.plan(batch.frames, self._reuse_interval(batch))
        crops = batch.crops[plan.classify] if plan.reused else batch.crops
        if len(crops):
            probs = plan.fill(self.model.predict(crops))
        else:  # every face reuses its track's scores
            probs = plan.fill(np.empty((0, len(self.model.class_names)), dtype=np.float32))
        if self.control is not None and len(crops):
            # The canary of the next swap: real crops. A view is enough: nothing writes to a batch's crops again.
            self.control.recent = crops[:CANARY_FACES]
        events = events_for_batch(batch, probs, self.model.class_names, self.tracker, plan.classify)
        metrics.STAGE_SECONDS.labels(STAGE).observe(time.perf_counter() - started)
        if len(crops):
            metrics.BATCH_SIZE.observe(len(crops))
        if plan.reused:
            metrics.FACES_REUSED.inc(plan.reused)
        for event in events:
            # Count before sending: whoever sees the event then also sees it in /metrics.
            metrics.FRAMES.labels(STAGE, event.camera).inc()
            for face in event.faces:
                metrics.EMOTIONS.labels(event.camera, face.emotion).inc()
            self.push.send_multipart(encode_event(event))

    def _reuse_interval(self, batch: Batch) -> int:
        before = self.reuse.every
        every = self.reuse.observe(batch_lateness(batch.frames, time.time()))
        if every != before:
            metrics.CLASSIFY_EVERY.set(every)
            if before == self.reuse.base or every == self.reuse.base:
                # One line as load shedding starts and one as it ends; the steps between are in the gauge.
                log.info(
                    "classify_every %d -> %d: batches %s %.0f ms after capture",
                    before,
                    every,
                    "arrive more than" if every > before else "are back within",
                    self.reuse.late_s * 1000 if every > before else self.reuse.late_s * 500,
                )
        return every

    def run(self, stop: threading.Event) -> None:
        HEALTH.set_ready(reason=f"model {self.model.path.name} loaded")
        if self.control is not None:
            self.control.start(stop)
        while not stop.is_set():
            HEALTH.beat()
            due = self.batcher.seconds_until_due()
            timeout_ms = 100 if due is None else int(np.ceil(due * 1000))
            self._receive(timeout_ms)
            while self.batcher.ready():
                self._classify(self.batcher.take())
                self._switch_model()
            self._switch_model()
            metrics.QUEUE_DEPTH.set(self.batcher.pending_faces)
        while len(self.batcher):  # flush what was already received
            self._classify(self.batcher.take())
        if self.control is not None:
            self.control.join()
        self.pull.close(linger=0)
        self.push.close()
