"""The exception hierarchy: one base, narrow subclasses, control-flow exits apart.

Each subclass's docstring is its default message (procrastinate's habit).
"""

from __future__ import annotations


class DurableClusterError(Exception):
    """A durable-cluster error."""

    __module__ = "durable_cluster"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(DurableClusterError):
    """The configuration is invalid."""


class EmbeddedPostgresError(DurableClusterError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""


class DatabaseUnavailable(DurableClusterError):
    """The database cannot be reached."""


class SchemaError(DurableClusterError):
    """The durable-cluster schema is missing, too new or could not be migrated."""


class StepKindConflict(DurableClusterError):
    """Two plugins register the same step kind."""


class UnknownStepKind(DurableClusterError):
    """No plugin registers this step kind."""


class PluginLoadError(DurableClusterError):
    """A plugin failed to import or to register its steps."""


class StaleEpoch(DurableClusterError):
    """A checkpoint was fenced off: the partition was claimed by another worker."""


class StepFailed(DurableClusterError):
    """Fail this step (and, without a retry policy, its instance) with this message."""


class RetryStep(DurableClusterError):
    """Run this step again: the runtime retries it a few times with backoff (wrap it in df.retry for more)."""


class HaltCluster(BaseException):  # a control-flow exit, like gunicorn's HaltServer
    """Stop the coordinator: a worker cannot boot, so respawning would crash-loop."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


class InstanceTerminal(DurableClusterError):
    """The instance reached a terminal status (completed, failed or cancelled) meanwhile."""


class AlreadyRecorded(DurableClusterError):
    """The step's result was already checkpointed (by an earlier run of the same step)."""


class TransientStepError(DurableClusterError):
    """The step could not finish for a reason outside it (lost connection, restart): run it again."""
