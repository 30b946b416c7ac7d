"""The control API's logic without a pipeline: the route table, validation of a changed camera list
through the config's own parse_config, stable camera ports, the token rule, writing the config back,
and the HTTP server and ``deploy cameras`` CLI against it. A launcher changed while it runs:
tests/system/test_control_launcher.py.
"""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request

import pytest
import yaml

from deploy.__main__ import main as deploy_main
from deploy.config import ConfigError, load_config, parse_config
from deploy.control import (
    CameraController,
    ControlServer,
    ControlThread,
    Request,
    Route,
    write_config,
)
from deploy.plan import PREVIEW_OFFSET, plan_stages, port_layout, split_threads
from deploy.supervisor import Supervisor
from emostream.cpu import CpuBudget
from emostream.webrtc import HttpError
from support import free_port

BUDGET = CpuBudget(cpus=2, source="affinity", affinity=2, quota=None, host_cpus=2)


def config_data(*ids: str, **sections) -> dict:
    return {
        "cameras": [{"id": i, "source": "demo"} for i in ids],
        "sink": {"publish": "tcp://127.0.0.1:5999"},
        **sections,
    }


def controller(data: dict, tmp_path, persist: bool = False) -> tuple[CameraController, Supervisor]:
    """A controller over a supervisor that was never started: the changes tested here are all refused
    before any process would start."""
    origin = str(tmp_path / "pipeline.yaml")
    config = parse_config(data, origin)
    threads = split_threads(1, 0, 0, BUDGET)
    supervisor = Supervisor(plan_stages(config, threads))
    ctl = CameraController(
        supervisor, data, origin, config, threads, persist=tmp_path / "pipeline.yaml" if persist else None
    )
    return ctl, supervisor


def dispatch(server: ControlServer, method: str, path: str, body=None) -> tuple[int, object]:
    raw = json.dumps(body).encode() if body is not None else b""
    try:
        return server.dispatch(method, path, {}, raw)
    except HttpError as err:
        return err.status, str(err)


# ------------------------------------------------------------------------------------------------
# Routes and validation
# ------------------------------------------------------------------------------------------------


def test_list_and_get_answer_the_cameras_as_written_in_the_config(tmp_path):
    data = config_data("a", "b")
    data["cameras"][1]["fps"] = 5
    ctl, _ = controller(data, tmp_path)
    server = ControlServer(ctl.routes())
    status, body = dispatch(server, "GET", "/cameras")
    assert status == 200
    assert body["cameras"] == [{"id": "a", "source": "demo"}, {"id": "b", "source": "demo", "fps": 5}]
    assert body["state"] == {"a": {"running": False, "pid": None, "restarts": 0, "finished": False,
                                   "failed": False, "last_line": ""}, "b": body["state"]["a"]}  # fmt: skip
    status, body = dispatch(server, "GET", "/cameras/b")
    assert status == 200 and body["camera"] == {"id": "b", "source": "demo", "fps": 5}
    assert dispatch(server, "GET", "/cameras/zz") == (404, "no camera 'zz' (GET /cameras lists them)")


@pytest.mark.parametrize(
    ("entry", "status", "message"),
    [
        ({"id": "c", "source": "demo", "fps": 0}, 422, "cameras[2].fps: Input should be greater than 0"),
        ({"id": "c", "source": "demo", "fsp": 5}, 422, "cameras[2].fsp: unknown key"),
        ({"id": "c"}, 422, "cameras[2].source: Field required"),
        ({"id": "bad id!", "source": "demo"}, 422, "cameras[2].id"),
        ({"id": "c", "source": "no/such/file.mp4"}, 422, "cameras[2].source: file 'no/such/file.mp4' does not exist"),
        ({"id": "a", "source": "demo"}, 409, "cameras: camera id 'a' exists already"),
        ({"id": "c", "source": "webrtc"}, 422, "cameras[2].source: a webrtc camera cannot be added while"),
        (["not", "an", "entry"], 400, "the body must be one camera entry"),
    ],
    ids=["bad-value", "unknown-key", "missing-key", "bad-id", "missing-file", "duplicate", "webrtc", "not-object"],
)
def test_a_bad_camera_is_refused_naming_the_key_and_nothing_changes(tmp_path, entry, status, message):
    data = config_data("a", "b")
    ctl, supervisor = controller(data, tmp_path, persist=True)
    before_specs = supervisor.specs()
    server = ControlServer(ctl.routes())
    got_status, got = dispatch(server, "POST", "/cameras", entry)
    assert got_status == status, got
    assert message in got
    assert [c.id for c in ctl.config.cameras] == ["a", "b"]
    assert ctl.data == data
    assert supervisor.specs() == before_specs
    assert not (tmp_path / "pipeline.yaml").exists(), "a refused change is not persisted"


def test_update_and_remove_are_validated_like_the_file(tmp_path):
    ctl, _ = controller(config_data("a"), tmp_path)
    server = ControlServer(ctl.routes())
    # The last camera cannot go: a config needs one.
    status, message = dispatch(server, "DELETE", "/cameras/a")
    assert status == 422 and "cameras: List should have at least 1 item" in message
    assert dispatch(server, "DELETE", "/cameras/zz")[0] == 404
    status, message = dispatch(server, "PUT", "/cameras/a", {"id": "b", "source": "demo"})
    assert status == 422 and message.startswith("cameras[0].id: 'b' differs from 'a'")
    status, message = dispatch(server, "PUT", "/cameras/a", {"source": "demo", "pacing": "slow"})
    assert status == 422 and "cameras[0].pacing: Input should be 'realtime' or 'fast'" in message
    assert ctl.data == config_data("a")


def test_the_route_table_answers_404_405_and_400_and_takes_new_routes(tmp_path):
    ctl, _ = controller(config_data("a"), tmp_path)
    server = ControlServer(ctl.routes())
    assert dispatch(server, "GET", "/nothing")[0] == 404
    status, message = dispatch(server, "PATCH", "/cameras/a")
    assert status == 405 and "DELETE, GET, PUT" in message
    with pytest.raises(HttpError) as err:
        server.dispatch("POST", "/cameras", {}, b"{not json")
    assert err.value.status == 400 and "not JSON" in str(err.value)

    # Another part of the launcher adds its own route (POST /model, say): it is served and documented.
    def model(request: Request) -> tuple[int, object]:
        return 200, {"model": request.body["path"]}

    server.add_route(Route("POST", "/model", model, "swap the model", {"type": "object"}, {200: "swapped"}))
    assert dispatch(server, "POST", "/model", {"path": "m.pt2"}) == (200, {"model": "m.pt2"})
    with pytest.raises(ValueError, match="routed already"):
        server.add_route(Route("POST", "/model", model, "again"))
    doc = dispatch(server, "GET", "/openapi.json")[1]
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/openapi.json", "/cameras", "/cameras/{id}", "/model"}
    assert set(doc["paths"]["/cameras/{id}"]) == {"get", "put", "delete"}
    body = doc["paths"]["/cameras"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["id", "source"] and "fps" in body["properties"]
    assert "422" in doc["paths"]["/cameras"]["post"]["responses"]
    assert doc["paths"]["/model"]["post"]["summary"] == "swap the model"


# ------------------------------------------------------------------------------------------------
# Ports stay where they are
# ------------------------------------------------------------------------------------------------


def test_running_cameras_keep_their_ports_and_a_new_camera_takes_the_lowest_free_slot(tmp_path):
    start = parse_config(config_data("a", "b", "c", viewer={}), "config")
    layout = port_layout(start)
    assert layout.slots == {"a": 0, "b": 1, "c": 2}
    # b removed: a and c keep their frames, preview and metrics ports (a plain layout would move c).
    without_b = parse_config(config_data("a", "c", viewer={}), "config")
    kept = port_layout(without_b, keep=layout)
    assert port_layout(without_b).frames["c"] != layout.frames["c"]
    for camera in ("a", "c"):
        assert kept.frames[camera] == layout.frames[camera]
        assert kept.previews[camera] == layout.previews[camera]
        assert kept.metrics[f"capture-{camera}"] == layout.metrics[f"capture-{camera}"]
    assert "b" not in kept.frames and "capture-b" not in kept.metrics
    # d added: it takes b's slot, the lowest free one.
    with_d = port_layout(parse_config(config_data("a", "c", "d", viewer={}), "config"), keep=kept)
    assert with_d.slots == {"a": 0, "c": 2, "d": 1}
    assert with_d.previews["d"] == start.network.base_port + PREVIEW_OFFSET + 1
    assert len(set(with_d.ports())) == len(with_d.ports())


def test_a_new_camera_never_takes_the_port_of_a_webrtc_bridge():
    start = parse_config({"cameras": [{"id": "a", "source": "demo"}, {"id": "w", "source": "webrtc"}]}, "config")
    layout = port_layout(start)
    bridge = layout.bridges["w"]
    assert bridge == layout.frames["w"] + 1  # the first port after the frames: where slot 2 would go
    grown = parse_config({"cameras": [*start.model_dump()["cameras"], {"id": "n", "source": "demo"}]}, "config")
    new = port_layout(grown, keep=layout)
    assert new.bridges == layout.bridges and new.frames["n"] != bridge
    assert len(set(new.ports())) == len(new.ports())


def test_followers_get_the_camera_set_on_their_command_line_and_as_an_update_line():
    config = parse_config(config_data("a", "b", recorder={"out": "videos"}), "config")
    stages = {s.name: s for s in plan_stages(config, split_threads(1, 0, 0, BUDGET))}
    layout = port_layout(config)
    for name, inputs in (("detector-0", layout.frames), ("recorder", layout.previews)):
        spec = stages[name]
        assert "--follow-stdin" in spec.args
        assert json.loads(spec.update) == {"cameras": {c: f"tcp://127.0.0.1:{p}" for c, p in inputs.items()}}
    assert stages["sink"].update is None and stages["capture-a"].update is None
    off = parse_config(config_data("a", control={"enabled": False}), "config")
    assert all(
        s.update is None and "--follow-stdin" not in s.args for s in plan_stages(off, split_threads(1, 0, 0, BUDGET))
    )


# ------------------------------------------------------------------------------------------------
# The control section and persisting
# ------------------------------------------------------------------------------------------------


def test_the_control_api_needs_a_token_off_loopback():
    with pytest.raises(ConfigError, match=r"control: host '0.0.0.0' is not a loopback address: set control.token"):
        parse_config(config_data("a", control={"host": "0.0.0.0"}), "config")
    assert parse_config(config_data("a", control={"host": "0.0.0.0", "token": "t"}), "config").control.token == "t"
    assert parse_config(config_data("a", control={"host": "0.0.0.0", "enabled": False}), "config")
    with pytest.raises(ConfigError, match=r"control.port: Input should be less than or equal to 65535"):
        parse_config(config_data("a", control={"port": 70000}), "config")


def test_deploy_check_validates_the_control_section_and_names_the_api(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config_data("a", control={"host": "10.1.2.3"})))
    assert deploy_main(["check", "--config", str(path)]) == 2
    assert "control: host '10.1.2.3' is not a loopback address: set control.token" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(config_data("a", control={"port": 8123})))
    assert deploy_main(["check", "--config", str(path)]) == 0
    assert "control API: http://127.0.0.1:8123/ (GET /openapi.json)" in capsys.readouterr().out


def test_persist_needs_a_config_file_and_the_api(tmp_path, capsys):
    assert deploy_main(["run", "--persist", "--duration", "1"]) == 2
    assert "--persist writes the changed cameras back to --config FILE" in capsys.readouterr().err
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config_data("a", control={"enabled": False})))
    assert deploy_main(["run", "--config", str(path), "--persist", "--duration", "1"]) == 2
    assert "control.enabled: false" in capsys.readouterr().err


def test_write_config_replaces_the_file_atomically_keeping_its_mode(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("# a comment\ncameras: [{id: a, source: demo}]\n")
    os.chmod(path, 0o640)
    data = config_data("a", "b")
    write_config(path, data)
    assert yaml.safe_load(path.read_text()) == data
    assert [c.id for c in load_config(path).cameras] == ["a", "b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"], "no temporary file left behind"
    # Nowhere to write the temporary file (its folder is a file): OSError, and nothing else is touched.
    with pytest.raises(OSError):
        write_config(path / "inside-a-file.yaml", config_data("x"))
    assert yaml.safe_load(path.read_text()) == data


# ------------------------------------------------------------------------------------------------
# Over HTTP, and the CLI
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    ctl, _ = controller(config_data("a", "b"), tmp_path)
    thread = ControlThread(ControlServer(ctl.routes(), token="s3cret"), "127.0.0.1", free_port())
    thread.start()
    yield f"http://127.0.0.1:{thread.port}"
    thread.stop()


def http(url: str, method: str = "GET", body=None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_over_http_every_request_needs_the_token(served):
    status, body = http(f"{served}/cameras")
    assert status == 401 and "token" in body["error"]
    assert http(f"{served}/cameras", token="wrong")[0] == 401
    status, body = http(f"{served}/cameras", token="s3cret")
    assert status == 200 and [c["id"] for c in body["cameras"]] == ["a", "b"]
    assert http(f"{served}/cameras?token=s3cret")[0] == 200
    status, body = http(f"{served}/cameras", "POST", {"id": "c", "source": "demo", "fps": -1}, token="s3cret")
    assert status == 422 and body["error"].endswith("cameras[2].fps: Input should be greater than 0")
    status, body = http(f"{served}/openapi.json", token="s3cret")
    assert status == 200 and body["security"] == [{"token": []}]


def test_the_cli_prints_the_cameras_and_server_errors_as_one_line(served, capsys):
    assert deploy_main(["cameras", "--url", served, "--token", "s3cret", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["a", "down"], ["b", "down"]]
    assert deploy_main(["cameras", "--url", served, "--token", "s3cret", "add", "--id", "c", "--source", "demo",
                        "--fps", "0"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cameras add: 422: ") and "cameras[2].fps" in err
    assert deploy_main(["cameras", "--url", served, "list"]) == 1
    assert capsys.readouterr().err.startswith("cameras list: 401: a valid token is required")
    assert deploy_main(["cameras", "--url", served, "--token", "s3cret", "remove", "zz"]) == 1
    assert capsys.readouterr().err == "cameras remove: 404: no camera 'zz' (GET /cameras lists them)\n"
    assert deploy_main(["cameras", "--url", served, "--token", "s3cret", "update", "a"]) == 1
    assert "nothing to change" in capsys.readouterr().err


def test_the_cli_says_when_no_launcher_listens(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert deploy_main(["cameras", "--url", url, "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cameras list: cannot reach the control API at {url}") and err.count("\n") == 1


def test_a_port_in_use_is_an_error_at_start(tmp_path):
    ctl, _ = controller(config_data("a"), tmp_path)
    first = ControlThread(ControlServer(ctl.routes()), "127.0.0.1", free_port())
    try:
        with pytest.raises(OSError):
            ControlThread(ControlServer(ctl.routes()), "127.0.0.1", first.port)
    finally:
        first.sock.close()


def test_a_change_that_cannot_be_persisted_is_not_applied(tmp_path):
    ctl, supervisor = controller(config_data("a"), tmp_path)
    ctl.persist = tmp_path / "not-a-folder" / "pipeline.yaml"
    (tmp_path / "not-a-folder").write_text("")
    status, message = dispatch(ControlServer(ctl.routes()), "POST", "/cameras", {"id": "b", "source": "demo"})
    assert status == 500 and message.startswith(f"cannot write {ctl.persist}") and message.endswith("nothing changed")
    assert [c.id for c in ctl.config.cameras] == ["a"] and "capture-b" not in supervisor.specs()
