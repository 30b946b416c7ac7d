"""Models swapped live: the classifier's control endpoint, the checks a new model file must pass, and
the hand-over to the serving loop between two batches.

``classifier.control`` (a ZeroMQ REP socket, CURVE-secured with ``--curve-keys`` like every other
socket) takes one small JSON request at a time and answers each with one JSON reply:

- ``{"op": "use", "file": "/abs/path/model.pt2"}``: load the file beside the serving model, on this
  control thread (batches keep flowing), check it (:func:`check_candidate`), then hand it to the serving
  loop, which switches between two batches: no frame is lost and no lock is held during ``predict``.
  Reply ``{"ok": true, "serving": {...}, "previous": {...}}``.
- ``{"op": "use", "file": "previous"}``: switch back to the model that served before the last switch
  (kept loaded, so a rollback cannot fail to load); twice in a row switches forth again.
- ``{"op": "show"}``: what serves, and what ``previous`` would switch to.

A refusal is ``{"ok": false, "reason": R, "error": "one line"}``, counted in
``emostream_model_swap_refusals_total{reason}``; the serving model keeps serving. Requests are served
in turn: one that arrives while a file loads waits for that swap to finish.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from classifier.model import EmotionModel, ModelMismatchError, serving_model
from classifier.settings import ClassifierSettings
from emostream import metrics
from emostream.modelinfo import ModelFileError
from emostream.security import CurveKeys, secure_server
from emostream.wire import EMOTIONS

log = logging.getLogger("classifier")

#: Why a swap was refused: the label values of ``emostream_model_swap_refusals_total``.
REFUSAL_REASONS = (
    "model_file",  # not a model file, unreadable, missing, or its runtime cannot serve it (load_model, runtimes)
    "class_names",  # class names other than the event schema's EMOTIONS, or in another order
    "outputs",  # as many outputs as class names it has not
    "input_size",  # another crop size than the serving model's
    "not_finite",  # NaN or infinite scores on the canary batch
    "no_previous",  # "previous" before any swap
    "bad_request",  # not JSON, an unknown op, a missing or relative file path
    "stopping",  # the classifier stopped before the serving loop took the new model
    "handover_timeout",  # the serving loop did not take it within HANDOVER_TIMEOUT_S (a stuck loop)
    "error",  # anything else while loading (the log has the traceback)
)
PREVIOUS = "previous"
#: Faces in the canary batch: this many of the last served crops, and as many made-up ones.
CANARY_FACES = 8
#: The serving loop takes a new model within one batch or one idle poll (100 ms); this bounds the wait
#: for a loop that is stuck (its health watchdog restarts it then).
HANDOVER_TIMEOUT_S = 10.0
POLL_MS = 100


class ControlError(RuntimeError):
    """The control endpoint cannot be bound (its port is taken, a bad address)."""


class SwapRefused(Exception):
    """A swap request refused: ``reason`` is one of :data:`REFUSAL_REASONS`, the message one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canary_crops(input_size: tuple[int, int], recent: np.ndarray | None = None) -> np.ndarray:
    """The canary batch (N, H, W) uint8: up to :data:`CANARY_FACES` crops the classifier served last
    (real faces), then made-up ones (black, white, mid grey, a gradient, seeded noise), so that a check
    before the first face still runs on something besides zeros."""
    h, w = input_size
    made_up = [np.zeros((h, w), np.uint8), np.full((h, w), 255, np.uint8), np.full((h, w), 128, np.uint8)]
    made_up.append(np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8), (h, w)).copy())
    rng = np.random.default_rng(0)
    while len(made_up) < CANARY_FACES:
        made_up.append(rng.integers(0, 256, (h, w), dtype=np.uint8))
    crops = np.stack(made_up)
    if recent is not None and len(recent) and tuple(recent.shape[1:]) == (h, w):
        crops = np.concatenate([recent[:CANARY_FACES], crops])
    return crops


def check_candidate(
    path: str | Path, settings: ClassifierSettings, serving: EmotionModel, recent: np.ndarray | None = None
) -> EmotionModel:
    """Load ``path`` as the classifier would at start-up (``settings``: device, runtime choice, TTA) and
    check it against ``serving``; the loaded, warmed-up model, or :class:`SwapRefused`.

    Checks, in order: the model-file format (:func:`emostream.modelfile.load_model`, the runtime's own
    checks such as a stale int8 file), class names equal to the event schema's, one output per class,
    the serving model's input size, finite scores on :func:`canary_crops` (``recent``: crops served last).
    """
    path = Path(path)
    try:
        candidate = serving_model(settings, path)
    except ModelMismatchError as exc:
        raise SwapRefused(exc.reason, str(exc)) from None
    except ModelFileError as exc:
        raise SwapRefused("model_file", str(exc)) from None
    except (RuntimeError, ValueError, OSError) as exc:  # e.g. onnxruntime refusing a corrupt graph
        raise SwapRefused("model_file", f"{path}: {exc}".splitlines()[0]) from None
    size, served_size = candidate.info.input_size, serving.info.input_size
    if size != served_size:
        raise SwapRefused(
            "input_size", f"{path}: input size {list(size)} differs from the serving model's {list(served_size)}"
        )
    crops = canary_crops(served_size, recent)
    probs = candidate.predict(crops)
    if probs.shape != (len(crops), len(EMOTIONS)):
        raise SwapRefused("outputs", f"{path}: scores of shape {probs.shape} for {len(crops)} canary faces")
    bad = int((~np.isfinite(probs)).any(axis=1).sum())
    if bad:
        message = f"{path}: non-finite scores (NaN or inf) for {bad} of {len(crops)} canary faces"
        raise SwapRefused("not_finite", message)
    candidate.warm_up()  # here, not in the serving loop: the first batches after the switch pay nothing extra
    log.info("%s passed the checks: %s", path, candidate.selection.describe())
    return candidate


def describe(model: EmotionModel | None) -> dict[str, Any] | None:
    """What a reply says about a model: the file that serves, the file asked for, version, runtime."""
    if model is None:
        return None
    return {
        "file": str(model.path),
        "source": str(model.source),
        "version": model.version,
        "runtime": model.runtime.label,
        "arch": model.info.arch,
        "device": str(model.device),
    }


def parse_request(raw: bytes) -> tuple[str, str | None]:
    """``(op, file)`` of a request; :class:`SwapRefused` (``bad_request``) naming what is wrong."""
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SwapRefused("bad_request", "the request is not JSON") from None
    if not isinstance(request, dict):
        raise SwapRefused("bad_request", 'the request is not a JSON object like {"op": "show"}')
    op = request.get("op")
    if op == "show":
        return "show", None
    if op != "use":
        raise SwapRefused("bad_request", f"op: {op!r} is not one of 'use', 'show'")
    file = request.get("file")
    if not isinstance(file, str) or not file:
        raise SwapRefused("bad_request", "file: a model file path (absolute) or 'previous' is required with op 'use'")
    if file != PREVIOUS and not Path(file).is_absolute():
        raise SwapRefused("bad_request", f"file: {file!r} is not an absolute path (the classifier's cwd is not yours)")
    return "use", file


class Handover:
    """One model passed from the control thread to the serving loop, which takes it between two batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: EmotionModel | None = None
        self._taken = threading.Event()

    def offer(self, model: EmotionModel, stop: threading.Event, timeout_s: float = HANDOVER_TIMEOUT_S) -> bool:
        """Control thread: True once the loop has switched to ``model``; False (withdrawn) on ``stop`` or timeout."""
        with self._lock:
            self._model = model
            self._taken.clear()
        deadline = time.monotonic() + timeout_s
        while not self._taken.wait(0.05):
            if stop.is_set() or time.monotonic() > deadline:
                with self._lock:
                    if self._model is model:
                        self._model = None
                        return False
                # Taken just now: the loop is switching.
                self._taken.wait()
                break
        return True

    def take(self) -> EmotionModel | None:
        """Serving loop: the model offered, if any (call :meth:`done` once it serves)."""
        with self._lock:
            model, self._model = self._model, None
        return model

    def done(self) -> None:
        self._taken.set()


class ModelControl:
    """The control endpoint and its thread. The service calls :meth:`start` with its stop event, reads
    :attr:`handover` between batches and sets :attr:`recent` to the crops it served last."""

    def __init__(
        self,
        endpoint: str,
        settings: ClassifierSettings,
        current: Any,
        context: zmq.Context,
        keys: CurveKeys | None = None,
    ) -> None:
        #: Callable returning the serving model (the service's attribute, read from this thread).
        self.current = current
        self.settings = settings
        self.endpoint = endpoint
        self.handover = Handover()
        #: The last served crops (a view of the last batch's, which nothing writes to again).
        self.recent: np.ndarray | None = None
        #: What served before the last switch: the target of "previous".
        self.previous: EmotionModel | None = None
        self.socket = context.socket(zmq.REP)
        secure_server(self.socket, keys, "classifier")
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            raise ControlError(f"classifier.control: cannot bind {endpoint}: {exc}") from None
        for reason in REFUSAL_REASONS:  # exported at 0, so rate() and alerts see them before any refusal
            metrics.MODEL_SWAP_REFUSALS.labels(reason)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, stop: threading.Event) -> None:
        self._stop = stop
        # The socket was made and bound on the caller's thread; from here on only this thread touches it.
        self._thread = threading.Thread(target=self._serve, name="model-control", daemon=True)
        self._thread.start()
        log.info("model control on %s (python -m deploy model use FILE|previous, show)", self.endpoint)

    def join(self, timeout_s: float = 2.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.socket.poll(POLL_MS):
                    continue
                raw = self.socket.recv()
                self.socket.send(json.dumps(self.handle(raw)).encode())
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                log.error("model control stopped: %s", exc)
        finally:
            self.socket.close(linger=0)

    def handle(self, raw: bytes) -> dict[str, Any]:
        """The reply to one request (never raises)."""
        try:
            op, file = parse_request(raw)
            if op == "show":
                return {"ok": True, "serving": describe(self.current()), "previous": describe(self.previous)}
            assert file is not None
            return self._use(file)
        except SwapRefused as refused:
            metrics.MODEL_SWAP_REFUSALS.labels(refused.reason).inc()
            log.warning("model swap refused (%s): %s; %s keeps serving", refused.reason, refused, self.current().path)
            return {"ok": False, "reason": refused.reason, "error": str(refused)}
        except Exception as exc:  # a bug must not kill the control thread: the request is refused, logged
            log.exception("model swap failed")
            metrics.MODEL_SWAP_REFUSALS.labels("error").inc()
            return {"ok": False, "reason": "error", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}

    def _use(self, file: str) -> dict[str, Any]:
        serving = self.current()
        if file == PREVIOUS:
            if self.previous is None:
                raise SwapRefused("no_previous", "no previous model: nothing was swapped since the classifier started")
            candidate = self.previous
        else:
            log.info("loading %s beside %s (serving continues)", file, serving.path)
            candidate = check_candidate(file, self.settings, serving, self.recent)
        if not self.handover.offer(candidate, self._stop):
            if self._stop.is_set():
                raise SwapRefused("stopping", f"{file}: the classifier stopped before switching to it")
            message = f"{file}: the serving loop did not take it in {HANDOVER_TIMEOUT_S:g} s"
            raise SwapRefused("handover_timeout", message)
        self.previous = serving
        return {"ok": True, "serving": describe(candidate), "previous": describe(serving)}
