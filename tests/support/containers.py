"""The container files (Dockerfile, deploy/compose.yaml) read the way the container tests check them:
stage command lines parsed by the stages' own parsers, compose variables interpolated."""

from __future__ import annotations

import argparse
import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from support import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "compose.yaml"

STAGES = ("capture", "detector", "classifier", "sink")
#: What emostream.health serves beside /metrics on every stage's metrics port.
HEALTH_PATHS = {"/healthz", "/readyz"}
ENDPOINT = re.compile(r"^tcp://(?P<host>[^:/]+):(?P<port>\d+)$")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


# ---------------------------------------------------------------------------------------------
# Stage command lines, parsed by the stages' own parsers
# ---------------------------------------------------------------------------------------------


class BadArgs(Exception):
    """What argparse would have printed before exiting."""


@dataclass
class StageCommand:
    """A ``python -m <stage> ...`` command line as the stage itself understands it."""

    module: str
    args: argparse.Namespace
    binds: list[str] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)

    @property
    def metrics_port(self) -> int:
        return self.args.metrics_port

    def bound_ports(self) -> set[int]:
        return {int(ENDPOINT.match(e)["port"]) for e in self.binds} | {self.metrics_port}


def stage_parser(module: str) -> argparse.ArgumentParser:
    parser = importlib.import_module(f"{module}.__main__").build_parser()

    def fail(message: str) -> None:
        raise BadArgs(message)

    parser.error = fail  # collect the message instead of exiting the test process
    return parser


def parse_stage(argv: list[str], where: str) -> StageCommand:
    """Parse ``python -m <stage> ARGS`` with the stage's real parser and say what it binds/connects."""
    assert len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m", (
        f"{where}: {argv[:3]} is not `python -m <stage>`"
    )
    module = argv[2]
    assert module in STAGES, f"{where}: `python -m {module}` is not a stage ({', '.join(STAGES)})"
    parser = stage_parser(module)
    # argparse accepts unambiguous prefixes (--work for --worker); a file must spell flags in full,
    # or a new flag sharing the prefix would silently change what it means.
    known = {option for action in parser._actions for option in action.option_strings}
    for token in map(str, argv[3:]):
        if token.startswith("--"):
            assert token.split("=", 1)[0] in known, f"{where}: `python -m {module}` has no flag {token}"
    try:
        args = parser.parse_args([str(a) for a in argv[3:]])
    except BadArgs as exc:
        pytest.fail(f"{where}: `python -m {module}` rejects its arguments: {exc}")
    cmd = StageCommand(module, args)
    # Who binds and who connects, as in deploy/plan.py and each stage's --help.
    if module == "capture":
        cmd.binds = [args.frames]
        cmd.connects = [args.events] if args.events else []
    elif module == "detector":
        cmd.connects = [*args.frames, args.push]
    elif module == "classifier":
        cmd.binds, cmd.connects = [args.pull], [args.push]
    else:
        cmd.binds = [args.pull, args.publish]
    for endpoint in cmd.binds + cmd.connects:
        assert ENDPOINT.match(endpoint), f"{where}: {endpoint!r} is not tcp://host:port"
    for endpoint in cmd.binds:
        # Inside a container or a pod 127.0.0.1 is the container itself: a bind there is unreachable.
        assert ENDPOINT.match(endpoint)["host"] in ("0.0.0.0", "*"), f"{where}: binds {endpoint}, not 0.0.0.0"
    assert args.metrics_port > 0, f"{where}: no --metrics-port, so no /metrics, /healthz or /readyz to probe"
    assert args.metrics_host == "0.0.0.0", f"{where}: --metrics-host {args.metrics_host} is unreachable for scrapers"
    return cmd


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) for every instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not buf and not stripped):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_cmd() -> list[str]:
    cmds = [json.loads(rest) for kw, rest in dockerfile() if kw == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    return cmds[-1]


# ---------------------------------------------------------------------------------------------
# deploy/compose.yaml
# ---------------------------------------------------------------------------------------------


def interpolate(value: Any, seen: set[str]) -> Any:
    """Apply compose's ${VAR:-default} interpolation with every variable unset (the plain `up`)."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            seen.add(m["name"])
            assert m["default"] is not None, f"${{{m['name']}}} has no default: a plain `up` would fail"
            return m["default"]

        return INTERPOLATION.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, seen) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, seen) for k, v in value.items()}
    return value


def compose() -> tuple[dict[str, Any], set[str]]:
    seen: set[str] = set()
    doc = interpolate(yaml.safe_load(COMPOSE.read_text()), seen)
    return doc, seen


def project_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if "build" in svc}


def compose_commands(doc: dict[str, Any]) -> dict[str, StageCommand]:
    commands = {}
    for name, svc in project_services(doc).items():
        command = svc.get("command") or dockerfile_cmd()
        assert isinstance(command, list), f"compose {name}: write command as a list (no shell parsing)"
        commands[name] = parse_stage(command, f"compose service {name}")
    return commands


def healthcheck_url(test: list[str], where: str) -> tuple[int, str]:
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"{where}: healthcheck.test {test!r}"
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[A-Za-z]*)", " ".join(test))
    assert m, f"{where}: healthcheck does not fetch http://127.0.0.1:<port>/<path>"
    return int(m[1]), m[2]
