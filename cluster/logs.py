"""Log formats: the classic text line, or one JSON object per line (``--log-format json``).

Every log call of the runtime names its event in the ``action`` extra
(``worker_started``, ``instance_completed``, ``http_request`` ...); other
extras carry the ids (``instance_id``, ``node_id``, ``step_key``, ``slot``,
``partition`` ...). The JSON format turns a record into::

    {"ts": "2025-05-04T12:00:00.123Z", "level": "info", "logger": "durable_cluster.worker",
     "pid": 4242, "event": "worker_started", "message": "worker[0] started (pid 4242, cpu 0)",
     "slot": 0}

``event`` is the ``action`` extra, or, for a record without one (a plugin's
own ``logging`` call), a slug of the message template (``"greeted %s"`` ->
``greeted``), so every line has exactly one event name and the same call
site always yields the same one. Step log lines (``ctx.logger``, the
engine's step errors) always carry ``instance_id`` and ``node_id``: a record
with a ``step_key`` but no ``node_id`` gets the node from the key's last
segment. A traceback goes into ``exc``.

The text format is unchanged (``LOG_FORMAT``), except that a step's own log
lines end with ``[instance <id> node <id>]``.

Workers are forked from the coordinator after logging is configured, so they
inherit the format; processes started with ``posix_spawn`` (the reload
watcher, the metrics server) read ``DURABLE_LOG_FORMAT``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import ConfigError

__all__ = ["FORMATS", "LOG_FORMAT", "JsonFormatter", "TextFormatter", "configure_logging", "event_name"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"
FORMATS = ("text", "json")

#: Attributes every LogRecord has: everything else on a record is an ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
#: printf placeholders of a message template (``%s``, ``%(name)s``, ``%-7.2f``, ``%%``).
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
MAX_EVENT = 64  # characters of a slugged event name


def event_name(record: logging.LogRecord) -> str:
    """The record's ``action`` extra, else a slug of its message template (stable per call site)."""
    action = getattr(record, "action", None)
    if isinstance(action, str) and action:
        return action
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    slug = _NOT_WORD.sub("_", _PLACEHOLDER.sub(" ", template).lower()).strip("_")
    if len(slug) > MAX_EVENT:
        slug = slug[:MAX_EVENT].rsplit("_", 1)[0] or slug[:MAX_EVENT]
    return slug or "log"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and key != "action" and not key.startswith("_")
    }


def _step_ids(fields: dict[str, Any]) -> None:
    """Give a step line its node id when it only has the step key (``<scope>/<node>``)."""
    key = fields.get("step_key")
    if isinstance(key, str) and "node_id" not in fields and "/" in key:
        fields["node_id"] = key.rsplit("/", 1)[-1]


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, event, message, then every extra."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "event": event_name(record),
            "message": message,
        }
        extras = _extras(record)
        _step_ids(extras)
        # The coordinator's lines name the child they are about in ``pid``: keep the
        # logging process in ``pid`` and move the other one aside.
        other_pid = extras.pop("pid", None)
        if other_pid is not None and other_pid != record.process:
            extras["child_pid"] = other_pid
        for key, value in extras.items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(line, default=_default).decode()
        except TypeError:  # e.g. an integer beyond 64 bits
            return json.dumps(line, default=_default)


class TextFormatter(logging.Formatter):
    """``LOG_FORMAT``; a step's own lines (they carry ``node_id``) end with its instance and node."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        node = getattr(record, "node_id", None)
        instance = getattr(record, "instance_id", None)
        if node is not None and instance is not None:
            text += f" [instance {instance} node {node}]"
        return text


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in format ``fmt`` (``text`` or ``json``), replacing any set-up."""
    if fmt not in FORMATS:
        raise ConfigError(f"--log-format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("psycopg").setLevel(logging.WARNING)
    # httpx logs every request URL at INFO (credentials included); steps log their own audit line.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
