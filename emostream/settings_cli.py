"""Stage settings on the command line: argparse options from a pydantic model's fields, and back.

Each stage keeps its settings in one pydantic model (``<stage>/settings.py``) whose fields hold the only
copy of every default, constraint and one-line meaning (``description``). :func:`add_arguments` turns the
fields into options, :func:`from_args` builds the model back from the parsed options (a bad value is a
usage error naming the flag, exit 2), and :func:`to_argv` writes a settings object as the options that
parse back to it: what ``deploy/plan.py`` puts on each stage's command line. A stage's parser is a
:class:`SettingsParser`, which does the first two: ``parse_args`` returns the validated model as
``args.settings``.

A field is spelled ``--field-name`` (a bool that defaults to true: ``--no-field-name``) unless its
``Annotated`` metadata holds a :class:`Cli` that says otherwise.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)


def positive_number(what: str = "a number", hint: str = "") -> Callable[[str], float]:
    """An argparse ``type``: a finite number above 0, else a usage error that quotes the text, e.g.
    ``'-5' is not a number of seconds > 0 (omit it to run until Ctrl-C)``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} > 0{hint}")
        return value

    return parse


@dataclass(frozen=True)
class Cli:
    """How one settings field appears on the command line, where the default spelling does not fit."""

    #: The option, e.g. ``--camera`` for the field ``id``, ``--fixed-wait`` for ``adaptive_wait``.
    flag: str | None = None
    metavar: str | None = None
    #: argparse ``type`` for values the field's type cannot parse from text (``640x480``); raises
    #: ``argparse.ArgumentTypeError`` with a message that quotes the text.
    parse: Callable[[str], Any] | None = None
    #: The inverse of ``parse``: a value as command-line text.
    format: Callable[[Any], str] | None = None


def _cli(info: FieldInfo) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


def flag(name: str, info: FieldInfo) -> str:
    """The option that sets field ``name``."""
    custom = _cli(info).flag
    if custom:
        return custom
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if _is_bool(info) and info.default is True else f"--{dashed}"


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _option(name: str, info: FieldInfo) -> dict[str, Any]:
    """argparse keywords for one non-bool field."""
    cli = _cli(info)
    kind = _unwrap_optional(info.annotation)
    kwargs: dict[str, Any] = {"dest": name, "metavar": cli.metavar}
    if info.is_required():
        kwargs["required"] = True
    else:
        kwargs["default"] = info.get_default(call_default_factory=True)
    if cli.parse is not None:
        kwargs["type"] = cli.parse
    elif typing.get_origin(kind) is Literal:
        kwargs["choices"] = list(typing.get_args(kind))
        kwargs.pop("metavar")
    elif kind in (int, float):
        kwargs["type"] = kind
    # Anything else (str, str | int) stays text; the model validates it.
    return kwargs


def _help(info: FieldInfo) -> str:
    text = (info.description or "").replace("%", "%%")
    if _is_bool(info) and info.default is True:
        text = f"turn off: {text}"
    if not info.is_required() and info.default is not None and not _is_bool(info):
        text += " (default: %(default)s)"
    return text


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel]) -> None:
    """One option per field of ``model``, with its default, choices and help from the field."""
    for name, info in model.model_fields.items():
        option = flag(name, info)
        if _is_bool(info):
            action = "store_false" if info.default is True else "store_true"
            parser.add_argument(option, dest=name, action=action, help=_help(info))
        else:
            parser.add_argument(option, help=_help(info), **_option(name, info))


def _problem(error: Any) -> str:
    """One validation error as a short phrase: the bound for range errors, pydantic's message otherwise."""
    ctx = error.get("ctx") or {}
    bounds = {
        "greater_than_equal": ("ge", "must be {} or more"),
        "less_than_equal": ("le", "must be {} or less"),
        "greater_than": ("gt", "must be more than {}"),
        "less_than": ("lt", "must be less than {}"),
    }
    if error["type"] in bounds:
        key, text = bounds[error["type"]]
        return text.format(ctx[key])
    return str(error["msg"]).removeprefix("Value error, ")


def from_args(parser: argparse.ArgumentParser, model: type[M], args: argparse.Namespace) -> M:
    """The settings ``add_arguments`` parsed into ``args``; a value the model refuses is a usage error
    (``parser.error``: usage, the flag and the value, exit 2)."""
    data = {name: getattr(args, name) for name in model.model_fields}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines: list[str] = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            line = _problem(error)
            if name in model.model_fields:
                info = model.model_fields[name]
                cli, value = _cli(info), data[name]
                shown = cli.format(value) if cli.format and value is not None else value
                text = repr(shown) if isinstance(shown, str) else str(shown)
                line = f"{flag(name, info)} {text}: {line}"
            if line not in lines:  # a tuple's items each fail alike
                lines.append(line)
        parser.error("; ".join(lines))
        raise  # parser.error exits; this line only satisfies type checkers


def to_argv(settings: BaseModel, model: type[BaseModel] | None = None) -> list[str]:
    """The options that :func:`add_arguments` parses back into ``settings``: every value that is set, so
    the command line shows the whole configuration; a bool only when it is not its default. ``model``
    (default: the settings' own class) names the fields to write, e.g. a stage's settings model for a
    config section that adds pipeline-only fields."""
    argv: list[str] = []
    for name, info in (model or type(settings)).model_fields.items():
        value = getattr(settings, name)
        if _is_bool(info):
            if value != info.default:
                argv.append(flag(name, info))
        elif value is not None:
            text = (_cli(info).format or str)(value)
            argv += [flag(name, info), text]
    return argv


class SettingsParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with one option per field of ``settings``, whose ``parse_args`` validates them
    and returns the model as ``args.settings``: a bad value never gets past parsing."""

    def __init__(self, *args: Any, settings: type[BaseModel], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings_model = settings
        # In a group of their own: each is also a key of the launcher config, under the same name.
        add_arguments(self.add_argument_group("settings (deploy config keys of the same names)"), settings)

    # argparse's stub overloads this on the namespace's type; this one always returns a Namespace.
    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.settings = from_args(self, self.settings_model, parsed)
        return parsed, extras
