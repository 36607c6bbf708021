from __future__ import annotations

from typing import Any

import pytest

from durable_cluster import StepKindConflict, StepRegistry, UnknownStepKind, hookimpl, pluginmanager
from durable_cluster.errors import PluginLoadError


def handler(ctx: Any) -> int:
    return 1


def test_add_and_get() -> None:
    registry = StepRegistry()
    registry._registering("mine")
    registry.add("noop", handler, description="does nothing")
    registration = registry.get("noop")
    assert registration.handler is handler
    assert registration.plugin == "mine"
    assert registration.description == "does nothing"
    assert "noop" in registry
    assert registry.kinds() == ["noop"]


def test_duplicate_kind_names_both_plugins() -> None:
    registry = StepRegistry()
    registry._registering("first")
    registry.add("noop", handler)
    registry._registering("second")
    with pytest.raises(StepKindConflict, match="'noop' is registered twice: by first and by second"):
        registry.add("noop", handler)


def test_unknown_kind_lists_registered_kinds() -> None:
    registry = StepRegistry()
    registry.add("b", handler)
    registry.add("a", handler)
    with pytest.raises(UnknownStepKind, match=r"unknown step kind 'zz'; registered kinds: a, b"):
        registry.get("zz")


@pytest.mark.parametrize("kind", ["", "Upper", "1abc", "has space", "x" * 64])
def test_invalid_kind_names(kind: str) -> None:
    with pytest.raises(ValueError, match="invalid step kind"):
        StepRegistry().add(kind, handler)


class Conflicting:
    @hookimpl
    def durable_register_steps(self, registry: StepRegistry) -> None:
        registry.add("sql", handler)


class Misspelled:
    @hookimpl
    def durable_register_stpes(self, registry: StepRegistry) -> None:  # the typo is the test
        registry.add("x", handler)


class FewerArguments:
    @hookimpl
    def durable_worker_started(self) -> None:
        return None


def test_builtins_register_sql() -> None:
    plugins = pluginmanager.build(env={})
    assert "sql" in plugins.registry.kinds()
    sources = {info.name: info.source for info in plugins.describe()}
    assert sources["sql"] == "builtin"
    assert sources["core"] == "builtin"


def test_conflict_with_a_builtin_fails_start_up() -> None:
    with pytest.raises(StepKindConflict, match="'sql' is registered twice"):
        pluginmanager.build(extra=[Conflicting()], env={})


def test_misspelled_hook_fails_start_up() -> None:
    with pytest.raises(PluginLoadError, match="durable_register_stpes"):
        pluginmanager.build(extra=[Misspelled()], env={})


def test_hooks_may_take_fewer_arguments() -> None:
    plugins = pluginmanager.build(extra=[FewerArguments()], env={})
    plugins.worker_started(object())


def test_disabled_plugins_are_blocked(tmp_path: Any) -> None:
    (tmp_path / "extra.py").write_text(
        "from durable_cluster import hookimpl\n"
        "@hookimpl\n"
        "def durable_register_steps(registry):\n"
        "    registry.add('extra', lambda ctx: 1)\n"
    )
    assert "extra" in pluginmanager.build(tmp_path, env={}).registry.kinds()
    blocked = pluginmanager.build(tmp_path, env={"DURABLE_DISABLE_PLUGINS": "extra"})
    assert "extra" not in blocked.registry.kinds()


def test_broken_plugin_file_is_a_clear_error(tmp_path: Any) -> None:
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(PluginLoadError, match=r"broken.py failed to import: ModuleNotFoundError"):
        pluginmanager.build(tmp_path, env={})


def test_missing_plugins_dir(tmp_path: Any) -> None:
    with pytest.raises(PluginLoadError, match="is not a directory"):
        pluginmanager.build(tmp_path / "nope", env={})
