"""``python -m deploy model``: where the launcher puts the classifier's control endpoint, and the CLI's
answers when nothing serves there or the command is wrong. Swaps against a real classifier:
tests/classifier/test_swap.py (in one process) and tests/system/test_model_swap.py (processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.__main__ import main
from deploy.config import ConfigError, parse_config
from deploy.model_control import connectable, request
from deploy.plan import endpoints, plan_stages
from support import free_port

DEMO = [{"id": "a", "source": "demo"}]


def classifier_args(config: dict) -> list[str]:
    stage = next(s for s in plan_stages(parse_config(config)) if s.name == "classifier")
    return stage.args


def test_the_launcher_binds_the_control_endpoint_at_base_port_plus_49_unless_the_config_names_one() -> None:
    args = classifier_args({"cameras": DEMO, "network": {"base_port": 6000}})
    assert args[args.index("--control") + 1] == "tcp://127.0.0.1:6049"
    args = classifier_args({"cameras": DEMO, "classifier": {"control": "127.0.0.1:7000"}})
    assert args[args.index("--control") + 1] == "tcp://127.0.0.1:7000"


def test_a_control_endpoint_that_is_another_endpoint_of_the_pipeline_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="classifier.control: tcp://127.0.0.1:5550 is also another endpoint"):
        endpoints(parse_config({"cameras": DEMO, "classifier": {"control": "tcp://127.0.0.1:5550"}}))
    with pytest.raises(ConfigError, match="sink.publish: tcp://127.0.0.1:5599 is also an internal endpoint"):
        endpoints(parse_config({"cameras": DEMO, "sink": {"publish": "tcp://127.0.0.1:5599"}}))
    with pytest.raises(ConfigError, match="classifier.control: 'nowhere' is not a ZeroMQ endpoint"):
        parse_config({"cameras": DEMO, "classifier": {"control": "nowhere"}})


def test_a_bind_all_control_endpoint_is_reached_on_this_machine_through_loopback() -> None:
    assert connectable("tcp://0.0.0.0:5599") == "tcp://127.0.0.1:5599"
    assert connectable("tcp://*:5599") == "tcp://127.0.0.1:5599"
    assert connectable("tcp://10.0.0.5:5599") == "tcp://10.0.0.5:5599"


def test_no_classifier_on_the_endpoint_is_one_line_and_status_1(capsys, tmp_path: Path) -> None:
    model = tmp_path / "m.pt2"
    model.write_bytes(b"whatever: the classifier checks it, and none answers")
    endpoint = f"127.0.0.1:{free_port()}"
    assert main(["model", "use", str(model), "--endpoint", endpoint, "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"model: no answer from the classifier's control endpoint tcp://{endpoint}"
    )


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["model", "use"], 2, "model: use needs a model file or 'previous'"),
        (["model", "show", "extra.pt2"], 2, "model: show takes no file"),
        (["model", "show", "--endpoint", "nowhere"], 2, "model: 'nowhere' is not a ZeroMQ endpoint"),
        (["model", "show", "--config", "/no/such.yaml"], 2, "config error: cannot read config /no/such.yaml"),
        (["model", "show", "--endpoint", "127.0.0.1:1", "--curve-keys", "/no/keys"], 2, "model: key folder /no/keys"),
    ],
)
def test_a_wrong_command_is_one_line_naming_what_is_wrong(argv, status, message, capsys) -> None:
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_request_takes_only_the_protocols_ops() -> None:
    with pytest.raises(ValueError, match="op 'delete' is not one of use, show"):
        request("tcp://127.0.0.1:1", "delete")
    with pytest.raises(ValueError, match="needs a model file"):
        request("tcp://127.0.0.1:1", "use")
