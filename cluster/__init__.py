"""durable-cluster: durable execution for PostgreSQL.

The public API for plugin authors. Import from ``durable_cluster`` only::

    from durable_cluster import hookimpl, StepContext, StepFailed
"""

from __future__ import annotations

from .context import StepContext
from .errors import (
    DurableClusterError,
    PluginLoadError,
    RetryStep,
    StepFailed,
    StepKindConflict,
    UnknownStepKind,
)
from .hookspecs import hookimpl, hookspec
from .registry import StepRegistry
from .version import __version__

__all__ = [
    "DurableClusterError",
    "PluginLoadError",
    "RetryStep",
    "StepContext",
    "StepFailed",
    "StepKindConflict",
    "StepRegistry",
    "UnknownStepKind",
    "__version__",
    "hookimpl",
    "hookspec",
]
