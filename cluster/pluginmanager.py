"""Build the plugin manager in a worker: load plugins, register steps, validate.

Loading order (tox and datasette): ``--plugins-dir`` files, then the
``durable_cluster`` entry-point group (minus names in
``DURABLE_DISABLE_PLUGINS``), then the built-ins (``DEFAULT_PLUGINS``),
registered last so their ``durable_run_step`` runs after wrappers.
``check_pending()`` then fails start-up on a misspelled hook name.
``DURABLE_TRACE_PLUGINS=1`` logs every hook call.

Never at import time: the coordinator forks before any user code is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginLoadError
from .registry import StepRegistry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .context import StepContext

logger = logging.getLogger(__name__)

DEFAULT_PLUGINS = (
    "durable_cluster.plugins.sql",
    "durable_cluster.plugins.http",
    "durable_cluster.plugins.metrics",
    "durable_cluster.plugins.core",
)
ENTRY_POINT_GROUP = "durable_cluster"
DISABLE_ENV = "DURABLE_DISABLE_PLUGINS"
TRACE_ENV = "DURABLE_TRACE_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # builtin, entry point <dist>, file <path>
    version: str | None
    kinds: tuple[str, ...]
    hooks: tuple[str, ...]


class Plugins:
    """A typed facade over ``manager.hook`` (pluggy hook calls are untyped)."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        registry: StepRegistry,
        sources: dict[str, tuple[str, str | None]],
    ) -> None:
        self.manager = manager
        self.registry = registry
        self._sources = sources

    def run_step(self, ctx: StepContext) -> Any:
        return self.manager.hook.durable_run_step(ctx=ctx)

    def worker_started(self, worker: Any) -> None:
        self.manager.hook.durable_worker_started(worker=worker)

    def worker_exiting(self, worker: Any) -> None:
        self.manager.hook.durable_worker_exiting(worker=worker)

    def partition_claimed(self, worker: Any, partition: int) -> None:
        self.manager.hook.durable_partition_claimed(worker=worker, partition=partition)

    def partition_released(self, worker: Any, partition: int) -> None:
        self.manager.hook.durable_partition_released(worker=worker, partition=partition)

    def instance_completed(self, worker: Any, instance_id: str, result: Any) -> None:
        self.manager.hook.durable_instance_completed(worker=worker, instance_id=instance_id, result=result)

    def instance_failed(self, worker: Any, instance_id: str, error: str) -> None:
        self.manager.hook.durable_instance_failed(worker=worker, instance_id=instance_id, error=error)

    def checkpoint_committed(self, worker: Any, records: int, seconds: float) -> None:
        self.manager.hook.durable_checkpoint_committed(worker=worker, records=records, seconds=seconds)

    def describe(self) -> list[PluginInfo]:
        """Each plugin: where it came from, its version, its step kinds and hooks."""
        kinds: dict[str, list[str]] = {}
        for registration in self.registry.registrations():
            kinds.setdefault(registration.plugin, []).append(registration.kind)
        found = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self.manager.get_hookcallers(plugin) or ()))
            source, version = self._sources.get(name, ("registered", None))
            found.append(PluginInfo(name, source, version, tuple(kinds.get(name, ())), hooks))
        return found


def disabled_names(env: dict[str, str] | None = None) -> set[str]:
    raw = (env if env is not None else os.environ).get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def load_file(path: Path) -> ModuleType:
    """Import a plugin file by path as module ``durable_cluster_plugin_<stem>``."""
    name = f"durable_cluster_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        raise PluginLoadError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def plugin_files(plugins_dir: Path | None) -> list[Path]:
    if plugins_dir is None:
        return []
    if not plugins_dir.is_dir():
        raise PluginLoadError(f"--plugins-dir {plugins_dir} is not a directory")
    return sorted(p for p in plugins_dir.glob("*.py") if not p.name.startswith("_"))


def build(
    plugins_dir: Path | None = None,
    *,
    extra: Iterable[object] = (),
    env: dict[str, str] | None = None,
) -> Plugins:
    """Create the manager, load every plugin, register the steps, validate hooks."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    sources: dict[str, tuple[str, str | None]] = {}
    blocked = disabled_names(env)
    for name in blocked:
        manager.set_blocked(name)
    for path in plugin_files(plugins_dir):
        if path.stem in blocked:
            continue
        module = load_file(path)
        _register(manager, module, path.stem)
        sources[path.stem] = (f"file {path}", getattr(module, "__version__", None))
    for plugin in extra:
        name = _register(manager, plugin, None)
        sources[name] = ("registered", None)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in blocked or manager.has_plugin(entry.name):
            continue
        try:
            plugin = entry.load()
        except BaseException as exc:
            raise PluginLoadError(
                f"entry point {entry.name} = {entry.value} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        _register(manager, plugin, entry.name)
        dist = entry.dist
        sources[entry.name] = (
            f"entry point ({dist.name if dist else '?'})",
            dist.version if dist else None,
        )
    for module_name in DEFAULT_PLUGINS:
        short = module_name.rsplit(".", 1)[-1]
        if short in blocked:
            continue
        module = importlib.import_module(module_name)
        _register(manager, module, short)
        sources[short] = ("builtin", None)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin validation failed: {exc}") from exc
    if (env if env is not None else os.environ).get(TRACE_ENV) == "1":
        manager.trace.root.setwriter(lambda message: logger.debug("%s", message.rstrip()))
        manager.enable_tracing()
    registry = _register_steps(manager)
    return Plugins(manager, registry, sources)


def _register(manager: pluggy.PluginManager, plugin: object, name: str | None) -> str:
    try:
        registered = manager.register(plugin, name=name)
    except ValueError as exc:
        raise PluginLoadError(f"plugin {name or plugin!r} cannot be registered: {exc}") from exc
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {name or plugin!r} is invalid: {exc}") from exc
    return registered or str(name)


def _register_steps(manager: pluggy.PluginManager) -> StepRegistry:
    """Call each plugin's ``durable_register_steps`` in turn, so a conflict names both plugins."""
    registry = StepRegistry()
    plugins = [(name, plugin) for name, plugin in manager.list_name_plugin() if plugin is not None]
    for name, plugin in plugins:
        if not hasattr(plugin, "durable_register_steps"):
            continue
        others = [p for _, p in plugins if p is not plugin]
        registry._registering(name)
        manager.subset_hook_caller("durable_register_steps", others)(registry=registry)
    return registry
