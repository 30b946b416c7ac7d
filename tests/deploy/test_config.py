"""Config validation: every mistake is reported with the key that holds it, and the launcher exits non-zero."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from deploy.config import ConfigError, load_config, parse_config
from deploy.plan import endpoints, metrics_ports, plan_stages
from support import PYTHON, REPO, shared_path


def test_embedded_demo_config_is_valid_and_plans_every_stage():
    config = load_config(None)
    names = [s.name for s in plan_stages(config)]
    assert names == ["sink", "classifier", "detector-0", "capture-demo"]


@pytest.mark.parametrize(("shared_memory", "flag_given"), [(True, False), (False, True)])
def test_network_shared_memory_false_makes_every_camera_send_frames_over_the_socket(shared_memory, flag_given):
    config = parse_config(
        {
            "cameras": [{"id": "a", "source": "demo"}, {"id": "b", "source": "demo"}],
            "network": {"shared_memory": shared_memory},
        }
    )
    captures = [s for s in plan_stages(config) if s.module == "capture"]
    assert len(captures) == 2
    assert all(("--no-shared-memory" in s.args) is flag_given for s in captures)


def test_decode_threads_reach_each_capture_command_line():
    config = parse_config(
        {"cameras": [{"id": "a", "source": "demo"}, {"id": "b", "source": "demo", "decode_threads": 0}]}
    )
    args = {s.name: s.args for s in plan_stages(config) if s.module == "capture"}
    assert [a[a.index("--decode-threads") + 1] for a in (args["capture-a"], args["capture-b"])] == ["1", "0"]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"cameras": [{"id": "a", "source": "demo", "fps": -1}]}, "cameras[0].fps"),
        ({"cameras": [{"id": "a", "source": "demo", "frame_rate": 5}]}, "cameras[0].frame_rate: unknown key"),
        ({"cameras": [{"id": "a b", "source": "demo"}]}, "cameras[0].id"),
        ({"cameras": [{"id": "a", "source": "demo"}, {"id": "a", "source": "demo"}]}, "cameras: camera id 'a'"),
        ({"cameras": []}, "cameras"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"workers": "two"}}, "detector.workers"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"backend": "ssd"}}, "detector.backend"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"roll_passes": [120]}}, "detector.roll_passes"),
        ({"cameras": [{"id": "a", "source": "demo"}], "classifier": {"max_batch": 0}}, "classifier.max_batch"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"interval": 0}}, "detector.interval"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"window": 100}}, "detector.window"),
        ({"cameras": [{"id": "a", "source": "demo"}], "classifier": {"max_age_ms": -1}}, "classifier.max_age_ms"),
        ({"cameras": [{"id": "a", "source": "demo"}], "classifier": {"tta": "ten_crop"}}, "classifier.tta"),
        ({"cameras": [{"id": "a", "source": "demo"}], "sinks": {}}, "sinks: unknown key"),
        ({"cameras": [{"id": "a", "source": "demo", "decode_threads": -1}]}, "cameras[0].decode_threads"),
        ({"cameras": [{"id": "a", "source": "rtsp://h/s", "rtsp_transport": "sctp"}]}, "cameras[0].rtsp_transport"),
        ({"cameras": [{"id": "a", "source": "/no/such/video.mp4"}]}, "cameras[0].source: file"),
        (
            {"cameras": [{"id": "a", "source": "demo"}], "classifier": {"model": "/no/model.pt2"}},
            "classifier.model: file",
        ),
        ({"cameras": [{"id": "a", "source": "demo", "resize": [640]}]}, "cameras[0].resize"),
    ],
)
def test_bad_config_names_the_offending_key(data, key):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    assert f"test.yaml: {key}" in str(info.value)


def test_relative_paths_resolve_from_the_config_folder(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    config = parse_config({"cameras": [{"id": "a", "source": "clip.mp4"}]}, str(tmp_path / "p.yaml"))
    assert config.cameras[0].source == str(video)
    assert config.cameras[0].is_file


def test_publish_endpoint_colliding_with_an_internal_one_is_refused():
    config = parse_config({"cameras": [{"id": "a", "source": "demo"}], "sink": {"publish": "tcp://127.0.0.1:5551"}})
    with pytest.raises(ConfigError, match="sink.publish"):
        endpoints(config)


def test_ports_and_endpoints_are_distinct_for_many_cameras_and_workers():
    config = parse_config(
        {"cameras": [{"id": f"c{i}", "source": "demo"} for i in range(12)], "detector": {"workers": 4}}
    )
    ports = metrics_ports(config)
    assert len(set(ports.values())) == len(ports) == 1 + 1 + 1 + 4 + 12
    ends = endpoints(config)
    assert len({ends.faces, ends.events_in, ends.events, *ends.frames.values()}) == 3 + 12


def test_finite_file_cameras_are_restarted_only_on_failure(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    config = parse_config(
        {"cameras": [{"id": "f", "source": str(video)}, {"id": "l", "source": str(video), "loop": True}]}
    )
    restart = {s.name: s.restart.value for s in plan_stages(config)}
    assert restart["capture-f"] == "on_failure" and restart["capture-l"] == "always"


def test_launcher_exits_non_zero_and_names_the_key_for_a_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"cameras": [{"id": "cam0", "source": "demo"}], "classifier": {"max_wait_ms": "soon"}})
    )
    result = subprocess.run(
        [PYTHON, "-m", "deploy", "run", "--config", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "classifier.max_wait_ms" in result.stderr


def test_launcher_reports_yaml_syntax_errors(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("cameras: [\n  - id: a\n")
    result = subprocess.run(
        [PYTHON, "-m", "deploy", "check", "--config", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_stage_settings_reach_the_stage_command_lines_and_the_stage_parsers_accept_them():
    from classifier.__main__ import build_parser as classifier_parser
    from detector.__main__ import build_parser as detector_parser

    config = parse_config(
        {
            "cameras": [{"id": "a", "source": "demo"}],
            "detector": {"threads": 1, "interval": 3, "window": 1},
            "classifier": {"max_age_ms": 250, "tta": "flip"},
        }
    )
    stages = {s.name: s for s in plan_stages(config)}
    cls_args = classifier_parser().parse_args(stages["classifier"].args)
    det_args = detector_parser().parse_args(stages["detector-0"].args)
    assert cls_args.threads == 1, "the classifier defaults to one torch thread"
    assert cls_args.max_age_ms == 250
    assert cls_args.tta == "flip"
    assert (det_args.threads, det_args.interval, det_args.window) == (1, 3, 1)
    assert cls_args.adaptive_wait, "the adaptive wait is the default"
    fixed = parse_config({"cameras": [{"id": "a", "source": "demo"}], "classifier": {"adaptive_wait": False}})
    fixed_cls = next(s for s in plan_stages(fixed) if s.name == "classifier")
    assert "--fixed-wait" in fixed_cls.args and not classifier_parser().parse_args(fixed_cls.args).adaptive_wait
    assert classifier_parser().parse_args(fixed_cls.args).tta == "none", "no test-time augmentation by default"
    assert cls_args.rescore_near_ties, "int8's near ties go to float32 by default"
    kept = parse_config({"cameras": [{"id": "a", "source": "demo"}], "classifier": {"rescore_near_ties": False}})
    kept_cls = next(s for s in plan_stages(kept) if s.name == "classifier")
    assert "--keep-near-ties" in kept_cls.args
    assert not classifier_parser().parse_args(kept_cls.args).rescore_near_ties


@pytest.mark.parametrize("path", sorted((REPO / "deploy" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    shared_path("media", "faces.mp4")  # the examples replay the shared video
    shared_path("models", "face_detection_yunet_2026may.onnx")
    config = load_config(path)
    assert plan_stages(config)
