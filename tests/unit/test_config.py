from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from durable_cluster import config
from durable_cluster.config import Settings
from durable_cluster.errors import ConfigError


def parse(command: str, argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, command)
    return Settings.from_args(parser.parse_args(argv), env=env or {})


def test_defaults() -> None:
    settings = parse("start", [])
    assert settings.dsn is None
    assert settings.data_dir == Path(".durable")
    assert settings.pin is True
    assert settings.max_user_connections == 10
    assert settings.enable_superuser_instances is False


def test_flag_beats_environment_beats_default() -> None:
    assert parse("start", [], {"DURABLE_DSN": "postgresql://x"}).dsn == "postgresql://x"
    assert (
        parse("start", ["--dsn", "postgresql://y"], {"DURABLE_DSN": "postgresql://x"}).dsn == "postgresql://y"
    )
    assert parse("start", [], {"DURABLE_WORKERS": "3"}).workers == 3
    assert parse("start", ["--no-pin"]).pin is False
    assert parse("start", [], {"DURABLE_PIN": "off"}).pin is False
    assert parse("start", [], {"DURABLE_ENABLE_SUPERUSER_INSTANCES": "yes"}).enable_superuser_instances


def test_bounds_and_bad_values_are_clear() -> None:
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        parse("start", ["--workers", "0"])
    with pytest.raises(ConfigError, match="DURABLE_WORKERS"):
        parse("start", [], {"DURABLE_WORKERS": "many"})
    with pytest.raises(ConfigError, match="DURABLE_PIN"):
        parse("start", [], {"DURABLE_PIN": "maybe"})


def test_every_flag_names_its_environment_variable() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, "start")
    text = parser.format_help()
    for option in config.OPTIONS:
        if "start" in option.commands:
            assert option.env in text.replace("\n", " ").replace("  ", " ") or option.env in text


def test_markdown_reference_lists_every_option() -> None:
    text = config.markdown()
    for option in config.OPTIONS:
        assert f"`{option.env}`" in text


def test_sql_settings() -> None:
    assert Settings(enable_superuser_instances=True).sql_settings()["enable_superuser_instances"] == "on"


def test_every_setting_has_an_option_and_back() -> None:
    from dataclasses import fields

    names = {f.name for f in fields(Settings)} - {"extra"}
    assert names == {option.name for option in config.OPTIONS}
