"""CurveZMQ security (emostream/security.py): the key layout of ``python -m deploy keys``, the config
and command lines that turn it on, their errors naming the key, and a stage refusing a missing key
folder. Secured stages on real sockets are tests/system/test_secured_stages.py.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq

from deploy.config import ConfigError, load_config, parse_config
from deploy.plan import endpoints, plan_stages
from emostream.security import load_client_keys, load_keys
from support import (
    free_ports,
    make_keys,
    start_stage,
)

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# (a) python -m deploy keys ------------------------------------------------------------------------


def test_keys_command_writes_the_layout_with_private_secret_keys_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "keys"
    result = make_keys(out, "--client", "alice", "--client", "bob")
    assert result.returncode == 0, result.stderr
    expected = {
        "server.key",
        "server.key_secret",
        "pipeline.key",
        "pipeline.key_secret",
        "clients/alice.key",
        "clients/alice.key_secret",
        "clients/bob.key",
        "clients/bob.key_secret",
        "authorized/pipeline.key",
        "authorized/alice.key",
        "authorized/bob.key",
    }
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == expected
    for name in expected:
        if name.endswith(".key_secret"):
            assert mode(out / name) == 0o600, name
        else:
            assert not mode(out / name) & 0o022, f"{name} is writable by others"
    assert not mode(out) & 0o077, "the folder holding secret keys is private"

    # The pairs load as a stage and as users need them; authorized/ holds exactly the clients' public keys.
    stage = load_keys(out)
    alice = load_client_keys(out, "alice")
    assert stage.server_public == alice.server_public
    assert stage.server_secret and stage.client_secret and alice.client_secret
    authorized = {zmq.auth.load_certificate(p)[0] for p in (out / "authorized").iterdir()}
    assert authorized == {stage.client_public, alice.client_public, load_client_keys(out, "bob").client_public}
    assert all(zmq.auth.load_certificate(p)[1] is None for p in (out / "authorized").iterdir())

    before = {name: (out / name).read_bytes() for name in expected}
    again = make_keys(out)
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr and "server.key" in again.stderr
    assert {name: (out / name).read_bytes() for name in expected} == before, "a refused run changed files"

    added = make_keys(out, "--client", "carol", "--clients-only")
    assert added.returncode == 0, added.stderr
    assert mode(out / "clients" / "carol.key_secret") == 0o600
    assert (out / "authorized" / "carol.key").is_file()
    assert (out / "server.key_secret").read_bytes() == before["server.key_secret"]

    forced = make_keys(out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "server.key_secret").read_bytes() != before["server.key_secret"]
    assert mode(out / "server.key_secret") == 0o600


# Config and command lines ------------------------------------------------------------------------


def test_defaults_are_plain_and_bound_to_localhost():
    config = load_config(None)
    assert config.security.curve_keys is None
    for spec in plan_stages(config):
        assert "--curve-keys" not in spec.args, spec.name
        for arg in spec.args:
            if arg.startswith("tcp://"):
                assert arg.startswith("tcp://127.0.0.1:"), f"{spec.name}: {arg}"
        if "--metrics-host" in spec.args:
            assert spec.args[spec.args.index("--metrics-host") + 1] == "127.0.0.1"
    assert endpoints(config).events.startswith("tcp://127.0.0.1:")


def test_security_config_resolves_the_folder_from_the_config_and_reaches_every_stage(tmp_path, keys_dir):
    data = {"cameras": [{"id": "a", "source": "demo"}], "detector": {"workers": 2}, "security": {"curve_keys": "keys"}}
    config = parse_config(data, str(tmp_path / "pipeline.yaml"))
    assert config.security.curve_keys == str(keys_dir.resolve())
    for spec in plan_stages(config):
        assert spec.args[spec.args.index("--curve-keys") + 1] == str(keys_dir.resolve()), spec.name


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (None, "security.curve_keys: folder 'nowhere' does not exist"),
        ("pipeline.key_secret", "security.curve_keys: key file"),
        ("authorized", "security.curve_keys: folder"),
    ],
)
def test_security_config_errors_name_the_key(tmp_path, keys_dir, remove, message):
    folder = "nowhere" if remove is None else "keys"
    if remove == "authorized":
        for key in (keys_dir / "authorized").iterdir():
            key.unlink()
        (keys_dir / "authorized").rmdir()
    elif remove:
        (keys_dir / remove).unlink()
    data = {"cameras": [{"id": "a", "source": "demo"}], "security": {"curve_keys": folder}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tmp_path / "pipeline.yaml"))
    assert f"pipeline.yaml: {message}" in str(info.value)
    if remove and remove != "authorized":
        assert remove in str(info.value)


def test_a_stage_with_a_missing_key_folder_exits_with_a_usage_error(tmp_path, processes):
    pull, publish = free_ports(2)
    proc = start_stage(
        "sink",
        "--pull",
        f"tcp://127.0.0.1:{pull}",
        "--publish",
        f"tcp://127.0.0.1:{publish}",
        "--curve-keys",
        str(tmp_path / "missing"),
    )
    processes.append(proc)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2  # EXIT_FATAL: the launcher does not restart it
    assert "--curve-keys" in err and "does not exist" in err
