"""Each stage's settings model is the one source of its CLI, its config section and its plan command line."""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from capture.__main__ import build_parser as capture_parser
from capture.settings import CameraSettings
from classifier.__main__ import build_parser as classifier_parser
from classifier.settings import ClassifierSettings
from classifier.tracking import DEFAULT_IOU, DEFAULT_MAX_AGE, DEFAULT_WINDOW
from deploy.config import load_config, parse_config
from deploy.plan import endpoints, metrics_ports, plan_stages, port_layout, thread_split
from detector.__main__ import build_parser as detector_parser
from detector.settings import DetectorSettings
from emostream import settings_cli
from sink.__main__ import build_parser as sink_parser
from sink.settings import SinkSettings
from support import shared_path

#: Each stage: its parser, its settings model, the least argv it needs, and those settings' values there.
STAGES = {
    "capture": (capture_parser, CameraSettings, ["--camera", "c", "--frames", "tcp://h:1", "--source", "demo"]),
    "detector": (detector_parser, DetectorSettings, ["--frames", "tcp://h:1", "--push", "tcp://h:2"]),
    "classifier": (classifier_parser, ClassifierSettings, ["--pull", "tcp://h:1", "--push", "tcp://h:2"]),
    "sink": (sink_parser, SinkSettings, ["--pull", "tcp://h:1"]),
}
REQUIRED = {"capture": {"id": "c", "source": "demo"}}


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_cli_without_settings_flags_gives_the_models_defaults(stage: str) -> None:
    parser, model, argv = STAGES[stage]
    args = parser().parse_args(argv)
    assert args.settings == model(**REQUIRED.get(stage, {}))
    for name, info in model.model_fields.items():
        if not info.is_required():
            assert getattr(args, name) == info.default, f"{stage}: --{name} defaults to something else"


@pytest.mark.parametrize("stage", STAGES)
def test_every_setting_has_a_flag_with_its_meaning_in_the_help(stage: str) -> None:
    parser, model, _ = STAGES[stage]
    helps = {option: action.help for action in parser()._actions for option in action.option_strings}
    for name, info in model.model_fields.items():
        flag = settings_cli.flag(name, info)
        assert flag in helps, f"{stage}: no {flag} for {name}"
        assert info.description and info.description.replace("%", "%%")[:40] in helps[flag]


def test_the_tracking_defaults_are_the_classifier_settings_defaults() -> None:
    defaults = ClassifierSettings()
    assert (
        defaults.smoothing_window,
        defaults.track_iou,
        defaults.track_max_age,
    ) == (DEFAULT_WINDOW, DEFAULT_IOU, DEFAULT_MAX_AGE)


#: A config whose every stage setting differs from its default (and every bool is flipped).
CUSTOM = {
    "cameras": [
        {
            "id": "a",
            "source": "(a video file, set by custom_config: start_s needs one)",
            "loop": True,
            "start_s": 2.5,
            "pacing": "fast",
            "fps": 7.5,
            "resize": [320, 240],
            "drop_policy": "block",
            "encoding": "jpeg",
            "jpeg_quality": 55,
            "decode_threads": 0,
            "rtsp_transport": "udp",
        },
        {"id": "b", "source": "demo"},
    ],
    "detector": {
        "workers": 2,
        "backend": "haar",
        "model": "(the YuNet file, set by custom_config)",
        "runtime": "opencv",
        "align": False,
        "roll_passes": [15.0],
        "roll_every": 2,
        "downscale": 0.5,
        "min_face": 20,
        "score_threshold": 0.5,
        "confident_score": 0.9,
        "max_landmark_misfit": 0.1,
        "crop_size": 64,
        "threads": 1,
        "interval": 3,
        "window": 2,
    },
    "classifier": {
        "max_batch": 16,
        "max_wait_ms": 2.5,
        "adaptive_wait": False,
        "max_age_ms": 250.0,
        "device": "cpu",
        "runtime": "torch",
        "bf16": False,
        "rescore_near_ties": False,
        "tta": "flip",
        "threads": 2,
        "smoothing_window": 1,
        "track_iou": 0.45,
        "track_max_age": 3,
        "classify_every": 3,
        "classify_every_max": 5,
        "load_latency_ms": 80.0,
        "control": "tcp://127.0.0.1:7001",
    },
    "sink": {"publish": "tcp://127.0.0.1:7000", "jsonl": "events.jsonl"},
}


def custom_config() -> dict:
    yunet = shared_path("models", "face_detection_yunet_2026may.onnx")
    video = shared_path("media", "faces.mp4")
    cameras = [{**CUSTOM["cameras"][0], "source": str(video)}, *CUSTOM["cameras"][1:]]
    return {**CUSTOM, "cameras": cameras, "detector": {**CUSTOM["detector"], "model": str(yunet)}}


def _as(model: type[BaseModel], section: BaseModel) -> BaseModel:
    """A config section as the stage's own settings model (the section may add pipeline-only fields)."""
    return model.model_validate(section.model_dump(include=set(model.model_fields)))


@pytest.mark.parametrize("custom", [False, True], ids=["defaults", "custom"])
def test_the_plan_command_lines_parse_back_to_the_config_settings(custom: bool) -> None:
    config = parse_config(custom_config() if custom else {"cameras": [{"id": "a", "source": "demo"}]})
    threads = thread_split(config)
    stages = {s.name: s for s in plan_stages(config, threads)}
    assert sink_parser().parse_args(stages["sink"].args).settings == _as(SinkSettings, config.sink)
    # Thread counts as the launcher split them (0 in the config: auto, from the CPU budget); the control
    # endpoint as the launcher planned it (none in the config: network.base_port+49).
    classifier = config.classifier.model_copy(
        update={"threads": threads.classifier, "control": endpoints(config).control}
    )
    assert classifier_parser().parse_args(stages["classifier"].args).settings == _as(ClassifierSettings, classifier)
    detector = config.detector.model_copy(update={"threads": threads.detector})
    for i in range(config.detector.workers):
        args = detector_parser().parse_args(stages[f"detector-{i}"].args)
        assert args.settings == _as(DetectorSettings, detector) and args.worker == i
    for camera in config.cameras:
        args = capture_parser().parse_args(stages[f"capture-{camera.id}"].args)
        assert args.settings == _as(CameraSettings, camera)


@pytest.mark.parametrize(
    ("stage", "extra", "message"),
    [
        ("classifier", ["--max-batch", "0"], "--max-batch 0: must be 1 or more"),
        ("classifier", ["--track-iou", "1.5"], "--track-iou 1.5: must be 1.0 or less"),
        ("detector", ["--window", "65"], "--window 65: must be 64 or less"),
        ("detector", ["--score-threshold", "1"], "--score-threshold 1.0: must be less than 1"),
        ("capture", ["--camera", "a b"], "--camera 'a b': camera ids are"),
        ("capture", ["--resize", "8x8"], "--resize '8x8': must be 16 or more"),
        ("capture", ["--fps", "nan"], "--fps nan: "),
    ],
)
def test_a_setting_out_of_its_limits_is_a_usage_error_naming_the_flag(
    stage: str, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, _, argv = STAGES[stage]
    with pytest.raises(SystemExit) as info:
        parser().parse_args([*argv, *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: python -m {stage}" in err and message in err, err


class Toy(BaseModel):
    """Every kind of field the helper handles, in a model of its own."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(description="required text"), settings_cli.Cli(flag="--label")]
    count: Annotated[int, Field(ge=0, description="an int")] = 3
    ratio: Annotated[float, Field(gt=0, description="a float, 100% positive")] = 0.5
    mode: Annotated[Literal["a", "b"] | None, Field(description="an optional choice")] = None
    on: Annotated[bool, Field(description="true by default")] = True
    off: Annotated[bool, Field(description="false by default")] = False
    pair: Annotated[
        tuple[int, int] | None,
        Field(description="two ints"),
        settings_cli.Cli(parse=lambda t: tuple(map(int, t.split(","))), format=lambda p: f"{p[0]},{p[1]}"),
    ] = None


def test_flags_follow_the_field_names_and_parse_back_from_to_argv() -> None:
    parser = settings_cli.SettingsParser(prog="toy", settings=Toy)
    options = {option for action in parser._actions for option in action.option_strings}
    assert {"--label", "--count", "--ratio", "--mode", "--no-on", "--off", "--pair"} <= options
    assert parser.parse_args(["--label", "x"]).settings == Toy(name="x")
    custom = Toy(name="y", count=0, ratio=2.0, mode="b", on=False, off=True, pair=(3, 4))
    argv = settings_cli.to_argv(custom)
    assert argv == ["--label", "y", "--count", "0", "--ratio", "2.0", "--mode", "b", "--no-on", "--off"] + [
        "--pair",
        "3,4",
    ]
    assert parser.parse_args(argv).settings == custom
    assert "--no-on" not in settings_cli.to_argv(Toy(name="z")), "a bool at its default needs no flag"


def test_a_required_setting_is_a_required_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = settings_cli.SettingsParser(prog="toy", settings=Toy)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "the following arguments are required: --label" in capsys.readouterr().err


def test_a_parser_that_does_not_exit_still_refuses_the_value() -> None:
    """Callers that override ``error`` (tests collecting messages) get the message, not a half-built model."""

    class Refused(Exception):
        pass

    parser = settings_cli.SettingsParser(prog="toy", settings=Toy)

    def fail(message: str) -> None:
        raise Refused(message)

    parser.error = fail  # type: ignore[method-assign]
    with pytest.raises(Refused, match="--count -1: must be 0 or more"):
        parser.parse_args(["--label", "x", "--count", "-1"])


def test_the_port_layout_is_what_the_endpoints_and_metrics_use() -> None:
    config = parse_config(
        {
            "cameras": [{"id": "a", "source": "demo"}, {"id": "w", "source": "webrtc"}],
            "detector": {"workers": 2},
            "network": {"base_port": 20000},
            "metrics": {"base_port": 21000},
            "viewer": {},
        }
    )
    layout = port_layout(config)
    ends = endpoints(config)
    assert ends.faces == "tcp://127.0.0.1:20000" and ends.events_in == "tcp://127.0.0.1:20001"
    assert ends.previews == {"a": "tcp://127.0.0.1:20002", "w": "tcp://127.0.0.1:20003"}
    assert ends.frames == {"a": "tcp://127.0.0.1:20050", "w": "tcp://127.0.0.1:20051"}
    assert ends.bridges == {"w": "tcp://127.0.0.1:20052"}
    assert ends.control == "tcp://127.0.0.1:20049"
    assert metrics_ports(config) == layout.metrics
    assert layout.metrics["detector-1"] == 21011 and layout.metrics["capture-w"] == 21101
    ports = layout.ports()
    assert len(ports) == len(set(ports)) == 2 + 1 + 2 + 2 + 1 + len(layout.metrics)


def test_a_bench_style_config_leaves_base_plus_2_free_for_the_public_endpoint() -> None:
    """What the bench does: N cameras, its own base ports, events published just above the sink's input."""
    config = parse_config(
        {
            "cameras": [{"id": f"cam{i}", "source": "demo"} for i in range(4)],
            "network": {"base_port": 12000},
            "metrics": {"base_port": 12200},
            "sink": {"publish": "tcp://127.0.0.1:12002"},
        }
    )
    assert 12002 not in port_layout(config).ports()
    assert endpoints(config).events == "tcp://127.0.0.1:12002"


def test_settings_cli_defaults_reach_argparse_help() -> None:
    parser = argparse.ArgumentParser(prog="toy")
    settings_cli.add_arguments(parser, Toy)
    text = parser.format_help()
    assert "(default: 3)" in text and "100% positive" in text


@pytest.mark.parametrize(
    ("section", "model"),
    [("cameras", CameraSettings), ("detector", DetectorSettings), ("classifier", ClassifierSettings)],
)
def test_the_custom_config_moves_every_setting_off_its_default(section: str, model: type[BaseModel]) -> None:
    """So the round trip above covers a setting added later (the classifier's ``model``: the shipped one)."""
    values = CUSTOM[section][0] if section == "cameras" else CUSTOM[section]
    for name, info in model.model_fields.items():
        if (section, name) != ("classifier", "model") and not info.is_required():
            assert name in values and values[name] != info.default, f"{section}.{name} is not in CUSTOM"


def test_a_pipeline_config_written_as_yaml_loads_back_to_the_same_plan(tmp_path) -> None:
    """How a program (the bench) hands a built config to the launcher: dump, write, load."""
    config = parse_config(custom_config())
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False))
    loaded = load_config(path)
    assert loaded == config
    assert [s.argv for s in plan_stages(loaded)] == [s.argv for s in plan_stages(config)]
