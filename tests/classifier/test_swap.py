"""Live model swaps inside one process: the checks a candidate model file must pass, the requests the
control endpoint takes, and the hand-over between the control thread and the serving loop. The whole
classifier process, fed faces while it swaps, is in tests/system/test_model_swap.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import REGISTRY

from classifier.model import serving_model
from classifier.service import ClassifierService
from classifier.settings import ClassifierSettings
from classifier.swap import (
    CANARY_FACES,
    REFUSAL_REASONS,
    Handover,
    SwapRefused,
    canary_crops,
    check_candidate,
    parse_request,
)
from deploy.model_control import request
from emostream.wire import EMOTIONS, encode_faces
from support import faces, free_ports, wait_for
from support.models import FAVOURED, tiny_model_file

SETTINGS = ClassifierSettings(device="cpu", runtime="auto", max_batch=8, max_wait_ms=5)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The serving model, a valid replacement, and one broken file per check."""
    d = tmp_path_factory.mktemp("swap-models")
    not_a_model = d / "notes.pt2"
    not_a_model.write_text("not a model\n")
    return {
        "serving": tiny_model_file(d / "serving.pt2", seed=0),
        "other": tiny_model_file(d / "other.pt2", seed=1, favour=FAVOURED),
        "model_file": not_a_model,
        "class_names": tiny_model_file(d / "sorted-names.pt2", seed=2, class_names=sorted(EMOTIONS)),
        "not_finite": tiny_model_file(d / "nan.pt2", seed=3, nan=True),
        "input_size": tiny_model_file(d / "64px.pt2", seed=4, input_size=(64, 64)),
    }


@pytest.fixture(scope="module")
def serving(models):
    return serving_model(SETTINGS, models["serving"])


def test_a_valid_model_file_passes_the_checks_and_serves_its_own_scores(models, serving) -> None:
    candidate = check_candidate(models["other"], SETTINGS, serving)
    assert candidate.path == models["other"] and candidate.version != serving.version
    crops = canary_crops((48, 48))
    assert (candidate.predict(crops)[:, EMOTIONS.index(FAVOURED)] > 0.9).all()
    assert (serving.predict(crops)[:, EMOTIONS.index(FAVOURED)] < 0.5).all()


@pytest.mark.parametrize("reason", ["model_file", "class_names", "not_finite", "input_size"])
def test_a_bad_model_file_is_refused_with_its_reason_in_one_line(reason: str, models, serving) -> None:
    with pytest.raises(SwapRefused) as refused:
        check_candidate(models[reason], SETTINGS, serving)
    assert refused.value.reason == reason
    message = str(refused.value)
    assert str(models[reason]) in message and "\n" not in message


def test_a_missing_file_and_a_model_with_too_few_outputs_are_refused(models, serving, tmp_path: Path) -> None:
    with pytest.raises(SwapRefused, match="does not exist") as missing:
        check_candidate(tmp_path / "gone.pt2", SETTINGS, serving)
    assert missing.value.reason == "model_file"
    # A model file whose seven names sit on two outputs: its file is fine, its outputs are not.
    from torch import nn

    from emostream.modelfile import save_model
    from emostream.modelinfo import ModelInfo

    two = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    path = save_model(two, ModelInfo(arch="two-outputs", class_names=list(EMOTIONS)), tmp_path / "two.pt2")
    with pytest.raises(SwapRefused, match="2 outputs for 7 class names") as outputs:
        check_candidate(path, SETTINGS, serving)
    assert outputs.value.reason == "outputs"


def test_the_canary_batch_starts_with_the_crops_served_last() -> None:
    recent = np.random.default_rng(1).integers(0, 256, (20, 48, 48), dtype=np.uint8)
    crops = canary_crops((48, 48), recent)
    assert crops.shape == (2 * CANARY_FACES, 48, 48) and crops.dtype == np.uint8
    assert (crops[:CANARY_FACES] == recent[:CANARY_FACES]).all()
    assert canary_crops((48, 48)).shape == (CANARY_FACES, 48, 48)
    assert canary_crops((48, 48), recent[:, :40, :40]).shape == (CANARY_FACES, 48, 48), "other-size crops unused"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"op": "delete"}', "op: 'delete'"),
        (b'{"op": "use"}', "file: a model file path"),
        (b'{"op": "use", "file": "models/x.pt2"}', "not an absolute path"),
    ],
)
def test_a_bad_request_is_refused_naming_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(SwapRefused, match=problem) as refused:
        parse_request(raw)
    assert refused.value.reason == "bad_request"
    assert parse_request(b'{"op": "use", "file": "previous"}') == ("use", "previous")
    assert parse_request(b'{"op": "show"}') == ("show", None)


def test_an_offer_the_loop_never_takes_is_withdrawn_when_the_classifier_stops(serving) -> None:
    handover, stop = Handover(), threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert handover.offer(serving, stop) is False
    assert handover.take() is None, "a withdrawn model must not be switched to later"
    taker = threading.Thread(target=lambda: wait_for(handover.take, 5) and handover.done())
    taker.start()
    assert handover.offer(serving, threading.Event()) is True
    taker.join()


def swap_count() -> float:
    return REGISTRY.get_sample_value("emostream_model_swaps_total") or 0.0


def refused_count(reason: str) -> float:
    return REGISTRY.get_sample_value("emostream_model_swap_refusals_total", {"reason": reason}) or 0.0


def test_the_service_swaps_on_request_and_refuses_without_dropping_the_serving_model(models) -> None:
    """A real ClassifierService (real sockets) on a thread, asked through deploy.model_control.request."""
    pull, push, control = free_ports(3)
    settings = SETTINGS.model_copy(update={"control": f"tcp://127.0.0.1:{control}"})
    service = ClassifierService(
        serving_model(settings, models["serving"]), f"tcp://127.0.0.1:{pull}", f"tcp://127.0.0.1:{push}", settings
    )
    ctx = zmq.Context.instance()
    events_in = ctx.socket(zmq.PULL)
    events_in.bind(f"tcp://127.0.0.1:{push}")
    faces_out = ctx.socket(zmq.PUSH)
    faces_out.connect(f"tcp://127.0.0.1:{pull}")
    stop = threading.Event()
    loop = threading.Thread(target=service.run, args=(stop,))
    loop.start()
    endpoint = f"tcp://127.0.0.1:{control}"
    refusals = {r: refused_count(r) for r in REFUSAL_REASONS}
    swaps = swap_count()

    def happy_of_next_event(seq: int) -> float:
        faces_out.send_multipart(encode_faces(faces("cam", seq, 1)))
        assert events_in.poll(10_000)
        event = json.loads(events_in.recv_multipart()[-1])
        return event["faces"][0]["scores"][FAVOURED]

    try:
        assert request(endpoint, "use", "previous")["reason"] == "no_previous"
        assert happy_of_next_event(1) < 0.5
        reply = request(endpoint, "use", str(models["other"]))
        assert reply["ok"] and reply["serving"]["file"] == str(models["other"])
        assert reply["previous"]["file"] == str(models["serving"])
        assert happy_of_next_event(2) > 0.9
        refused = request(endpoint, "use", str(models["not_finite"]))
        assert not refused["ok"] and refused["reason"] == "not_finite" and str(models["not_finite"]) in refused["error"]
        assert happy_of_next_event(3) > 0.9, "a refused file leaves the model that served"
        shown = request(endpoint, "show")
        assert shown["serving"]["file"] == str(models["other"]) and shown["previous"]["file"] == str(models["serving"])
        assert request(endpoint, "use", "previous")["serving"]["file"] == str(models["serving"])
        assert happy_of_next_event(4) < 0.5
    finally:
        stop.set()
        loop.join(10)
        events_in.close(linger=0)
        faces_out.close(linger=0)
    assert swap_count() - swaps == 2
    counted = {r: refused_count(r) - refusals[r] for r in REFUSAL_REASONS}
    assert counted == {r: int(r in ("no_previous", "not_finite")) for r in REFUSAL_REASONS}
