"""The step registry: step kind -> handler, filled by ``durable_register_steps``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import StepKindConflict, UnknownStepKind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .context import StepContext

    Handler = Callable[[StepContext], Any | Awaitable[Any]]

KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Registration:
    kind: str
    handler: Handler
    plugin: str
    description: str


class StepRegistry:
    """Step kinds and their handlers.

    Plugins call :meth:`add` from their ``durable_register_steps`` hook. A
    kind may be registered once: a second registration raises
    :class:`StepKindConflict` at start-up, naming both plugins.
    """

    __module__ = "durable_cluster"

    def __init__(self) -> None:
        self._steps: dict[str, Registration] = {}
        self._current_plugin = "?"

    def add(self, kind: str, handler: Handler, *, description: str = "") -> None:
        """Register ``handler`` for step ``kind`` (lower case, ``[a-z][a-z0-9_.-]*``).

        A handler takes a :class:`~durable_cluster.StepContext` and returns a
        JSON-serialisable value, or an awaitable of one. Synchronous handlers
        run in a thread pool.
        """
        if not KIND.match(kind):
            raise ValueError(f"invalid step kind {kind!r}: use [a-z][a-z0-9_.-]*, at most 63 characters")
        existing = self._steps.get(kind)
        if existing is not None:
            raise StepKindConflict(
                f"step kind {kind!r} is registered twice: by {existing.plugin} and by {self._current_plugin}"
            )
        self._steps[kind] = Registration(kind, handler, self._current_plugin, description)

    def get(self, kind: str) -> Registration:
        try:
            return self._steps[kind]
        except KeyError:
            raise UnknownStepKind(
                f"unknown step kind '{kind}'; registered kinds: {', '.join(sorted(self._steps)) or '(none)'}"
            ) from None

    def kinds(self) -> list[str]:
        return sorted(self._steps)

    def registrations(self) -> list[Registration]:
        return [self._steps[k] for k in sorted(self._steps)]

    def __contains__(self, kind: object) -> bool:
        return kind in self._steps

    def _registering(self, plugin: str) -> None:
        self._current_plugin = plugin
