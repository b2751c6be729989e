"""Each gateway flag declared once, on the config field it sets.

A field of a frozen config dataclass carries its flag in its metadata:
`flag(default, help, group)` gives `--field-name` with the field's type and
default. `add_flags` turns a class's fields into argparse arguments in
their groups (with the defaults shown), and `from_args` builds the config
from the parsed namespace. Nothing is written twice: the field's name,
type, default and help are the flag's.

A few flags are not ours but the engine's (vLLM declares `--log-level`,
`--served-model-name`, `--shutdown-timeout`): `engine_flag` names the
engine's option the field is read from, and may replace its default.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any

GROUP_PREFIX = "gateway: "
UNSET: Any = object()  # an EngineFlag that keeps the engine's own default


@dataclass(frozen=True)
class Flag:
    help: str
    group: str
    # A bool field whose default is True: the flag is `--no-<name>`.
    negate: bool = False
    positional: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    nargs: str | None = None
    # The default comes from this environment variable when it is set.
    env: str | None = None
    # Turns the parsed value into the field's value; a ValueError is a usage error.
    parse: Callable[[Any], Any] | None = None
    # How --help shows the default, where the value itself would not say it.
    shown_default: str | None = None


@dataclass(frozen=True)
class EngineFlag:
    """A field read from one of the engine's own options (its `dest`)."""

    dest: str
    convert: Callable[[Any], Any] = lambda v: v
    # Our default for the engine's option, where it differs from the engine's.
    engine_default: Any = UNSET


def flag(default: Any, help: str, group: str, **kw: Any) -> Any:
    return field(default=default, metadata={"flag": Flag(help, group, **kw)})


def engine_flag(default: Any, dest: str, **kw: Any) -> Any:
    return field(default=default, metadata={"engine_flag": EngineFlag(dest, **kw)})


def cli_name(f: Field, spec: Flag) -> str:
    return ("--no-" if spec.negate else "--") + f.name.replace("_", "-")


def _value_type(annotation: Any) -> type:
    """`int | None` -> int; `Path` -> Path; tuples and lists are parsed by the Flag."""
    if isinstance(annotation, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _default(f: Field, spec: Flag) -> Any:
    if spec.env and os.environ.get(spec.env):
        return os.environ[spec.env]
    return f.default


def _help(f: Field, spec: Flag) -> str:
    """The help line; the parser's formatter appends '(default: X)' unless
    the Flag says how to show its default (`%(default).0s` prints nothing
    and tells argparse the default is already shown)."""
    text = spec.help.replace("%", "%%")
    if spec.env:
        return f"{text} (default: env {spec.env}; unset: none)%(default).0s"
    if spec.shown_default is not None:
        return f"{text} (default: {spec.shown_default})%(default).0s"
    return text


def add_flags(
    parser: argparse.ArgumentParser, cls: type, order: tuple[str, ...] = (), positionals: bool = True
) -> None:
    """The flags of `cls`'s fields, in argument groups titled 'gateway: GROUP'
    (those in `order` first, in that order, created if missing).
    `positionals=False` leaves positional arguments out (a parser that reads
    some flags among others')."""
    hints = typing.get_type_hints(cls)
    groups = {g.title: g for g in parser._action_groups if g.title}
    for name in order:
        if GROUP_PREFIX + name not in groups:
            groups[GROUP_PREFIX + name] = parser.add_argument_group(GROUP_PREFIX + name)
    engine_defaults = {}
    for f in fields(cls):
        if "engine_flag" in f.metadata:
            spec_e: EngineFlag = f.metadata["engine_flag"]
            if spec_e.engine_default is not UNSET:
                engine_defaults[spec_e.dest] = spec_e.engine_default
            continue
        spec: Flag | None = f.metadata.get("flag")
        if spec is None or (spec.positional and not positionals):
            continue
        title = GROUP_PREFIX + spec.group
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        _add(groups[title], f, spec, _value_type(hints[f.name]))
    if engine_defaults:
        parser.set_defaults(**engine_defaults)


def _add(group: argparse._ArgumentGroup, f: Field, spec: Flag, kind: type) -> None:
    kw: dict[str, Any] = {"help": _help(f, spec)}
    if kind is bool:
        kw["action"] = "store_true"
    else:
        kw.update(default=_default(f, spec), choices=spec.choices, metavar=spec.metavar, nargs=spec.nargs)
        if spec.parse is None:
            kw["type"] = kind
    if spec.positional:
        group.add_argument(f.name, **{**kw, "nargs": "?"})
    else:
        group.add_argument(cli_name(f, spec), dest=f.name, **kw)


def from_args(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """The config `cls` from parsed flags; `overrides` win (values computed by
    the caller). A Flag's `parse` raising ValueError becomes argparse's error
    type, so the caller reports it as a usage error."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in overrides:
            continue
        if "engine_flag" in f.metadata:
            spec_e: EngineFlag = f.metadata["engine_flag"]
            raw = getattr(ns, spec_e.dest, None)
            values[f.name] = f.default if raw is None else spec_e.convert(raw)
            continue
        spec: Flag | None = f.metadata.get("flag")
        if spec is None:
            continue
        raw = getattr(ns, f.name)
        if spec.negate:
            raw = not raw
        if spec.parse is not None:
            try:
                raw = spec.parse(raw)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"{cli_name(f, spec)}: {exc}") from exc
        values[f.name] = raw
    return cls(**values, **overrides)
