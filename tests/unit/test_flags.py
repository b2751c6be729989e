"""Gateway flags declared once (server/flags.py, server/config.py): the parser
and the config come from the same fields, so their defaults cannot drift."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from lemur.server.config import GROUPS, LORA_ADMIN_KEY_ENV, GatewayConfig
from lemur.server.flags import GROUP_PREFIX, add_flags, cli_name, from_args
from lemur.server.main import LaunchOptions


def parse(argv: list[str], cls: type = GatewayConfig):
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_flags(parser, cls, order=GROUPS)
    return from_args(cls, parser.parse_args(argv))


def test_no_flags_give_the_dataclass_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LORA_ADMIN_KEY_ENV, raising=False)
    assert parse([]) == GatewayConfig()
    assert parse([], LaunchOptions) == LaunchOptions()


def test_each_field_is_its_flag_with_its_type() -> None:
    config = parse(["--port", "9001", "--rate-limit-rpm", "2.5", "--api-keys-file", "/k", "--log-prompts",
                    "--no-playground", "--no-warmup", "--lora-modules", "a=/x", "b=/y"])  # fmt: skip
    assert config.port == 9001 and config.rate_limit_rpm == 2.5 and str(config.api_keys_file) == "/k"
    assert config.log_prompts and not config.playground and not config.warmup
    assert config.lora_modules == (("a", "/x"), ("b", "/y"))


def test_every_declared_field_has_a_distinct_flag_in_a_known_group() -> None:
    names = []
    for cls in (GatewayConfig, LaunchOptions):
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("flag")
            if spec is not None:
                assert spec.group in GROUPS, (f.name, spec.group)
                names.append(cli_name(f, spec))
            else:  # the rest are read from the engine's own flags
                assert "engine_flag" in f.metadata, f.name
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--lora-modules", "nameonly"], "--lora-modules: takes NAME=PATH, not 'nameonly'"),
     (["--lora-modules", "a=/x", "a=/y"], "--lora-modules: names 'a' twice")],
)  # fmt: skip
def test_a_bad_value_is_a_usage_error_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(argv)


def test_the_admin_key_defaults_to_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LORA_ADMIN_KEY_ENV, "sk-admin")
    assert parse([]).lora_admin_key == "sk-admin"
    assert parse(["--lora-admin-key", "sk-other"]).lora_admin_key == "sk-other"
    monkeypatch.setenv(LORA_ADMIN_KEY_ENV, "")
    assert parse([]).lora_admin_key is None


def test_engine_flags_are_read_with_our_default() -> None:
    """--shutdown-timeout is vLLM's flag; the gateway drains for the same time, 30 s unless given."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shutdown-timeout", type=int, default=0)  # as vLLM declares it
    parser.add_argument("--served-model-name", nargs="+", default=None)
    add_flags(parser, GatewayConfig)
    assert from_args(GatewayConfig, parser.parse_args([])).shutdown_timeout == 30.0
    config = from_args(GatewayConfig, parser.parse_args(["--shutdown-timeout", "5", "--served-model-name", "a", "b"]))
    assert config.shutdown_timeout == 5.0 and config.served_model_names == ("a", "b")


def test_groups_are_created_in_the_declared_order() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, GatewayConfig, order=GROUPS)
    titles = [g.title for g in parser._action_groups if g.title and g.title.startswith(GROUP_PREFIX)]
    assert titles == [GROUP_PREFIX + g for g in GROUPS]
