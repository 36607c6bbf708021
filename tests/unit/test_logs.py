"""Log formats: JSON lines (event names, ids, extras, tracebacks) and the text line."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from datetime import datetime
from typing import Any

import pytest

from durable_cluster import logs
from durable_cluster.context import step_logger
from durable_cluster.errors import ConfigError


def record(message: str, *args: Any, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    """A record as ``logger.log(level, message, *args, extra=extra)`` makes it."""
    return logging.getLogger("durable_cluster.test").makeRecord(
        "durable_cluster.test", level, __file__, 1, message, args, None, extra=extra or None
    )


def as_json(rec: logging.LogRecord) -> dict[str, Any]:
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# -- JSON ----------------------------------------------------------------------------------


def test_a_json_line_has_the_fixed_fields_then_the_extras() -> None:
    line = as_json(record("worker[%d] started (pid %d)", 0, 42, action="worker_started", slot=0, partition=3))
    assert list(line)[:6] == ["ts", "level", "logger", "pid", "event", "message"]
    assert line["level"] == "info"
    assert line["logger"] == "durable_cluster.test"
    assert line["pid"] == os.getpid()
    assert line["event"] == "worker_started"
    assert line["message"] == "worker[0] started (pid 42)"
    assert (line["slot"], line["partition"]) == (0, 3)
    assert "action" not in line  # it is the event
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))


def test_without_an_action_the_event_is_a_slug_of_the_message_template() -> None:
    assert as_json(record("greeted %s", "ada"))["event"] == "greeted"
    assert as_json(record("greeted %s", "bob"))["event"] == "greeted"  # stable per call site
    slug = as_json(record("reconciler: deleted %d terminal instances, %5.1f%% of %s", 1, 2.0, "x"))
    assert slug["event"] == "reconciler_deleted_terminal_instances_of"
    named = as_json(record("hello %(name)s, again", {"name": "ada"}))
    assert (named["event"], named["message"]) == ("hello_again", "hello ada, again")
    long = as_json(record("word " * 40))["event"]
    assert len(long) <= logs.MAX_EVENT
    assert long.startswith("word_word")
    assert not long.endswith("_")
    assert as_json(record("%s", "anything"))["event"] == "log"
    assert as_json(record("x", action=""))["event"] == "x"


def test_a_step_line_carries_the_instance_and_node_ids() -> None:
    capture = Capture()
    base = logging.getLogger("durable_cluster.step.greet")
    base.addHandler(capture)
    base.setLevel(logging.INFO)
    try:
        step_logger("durable_cluster.step.greet", "0badcafe", "a1b2c3d4", "0badcafe::1/a1b2c3d4").info(
            "greeting %s", "ada"
        )
    finally:
        base.removeHandler(capture)
    line = as_json(capture.records[0])
    assert line["event"] == "greeting"
    assert line["instance_id"] == "0badcafe"
    assert line["node_id"] == "a1b2c3d4"
    assert line["step_key"] == "0badcafe::1/a1b2c3d4"


def test_a_line_with_only_a_step_key_gets_its_node_from_the_key() -> None:
    line = as_json(
        record(
            "step %s raised",
            "k",
            action="step_error",
            instance_id="0badcafe",
            step_key="0badcafe::1/ffee0011",
        )
    )
    assert (line["instance_id"], line["node_id"]) == ("0badcafe", "ffee0011")


def test_tracebacks_and_odd_values_stay_on_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(), extra={"thing": object()}
        )
    rec.__dict__["tags"] = {"b"}
    rec.__dict__["huge"] = 2**70
    line = as_json(rec)
    assert line["level"] == "error"
    assert "ValueError: boom" in line["exc"]
    assert line["thing"].startswith("<object object")
    assert line["tags"] == ["b"]
    assert line["huge"] in (2**70, str(2**70))


def test_the_pid_field_is_the_logging_process_and_a_childs_pid_moves_aside() -> None:
    assert "child_pid" not in as_json(record("started", pid=os.getpid()))
    line = as_json(record("worker spawned", action="worker_spawned", pid=99999999))
    assert line["pid"] == os.getpid()
    assert line["child_pid"] == 99999999


# -- text ----------------------------------------------------------------------------------


def test_the_text_line_is_unchanged_except_for_a_steps_ids() -> None:
    formatter = logs.TextFormatter()
    plain = formatter.format(record("cluster %s started", "x", action="cluster_started"))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    \[\d+\] durable_cluster\.test: cluster x started",
        plain,
    )
    step = formatter.format(record("greeting %s", "ada", instance_id="0badcafe", node_id="a1b2c3d4"))
    assert step.endswith("greeting ada [instance 0badcafe node a1b2c3d4]")


# -- configuration -------------------------------------------------------------------------


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


LOG_SOMETHING = (
    "import logging; from durable_cluster.cli import configure_logging; configure_logging('info'{fmt}); "
    "logging.getLogger('durable_cluster.x').info('hello %s', 'you', extra={{'action': 'said_hello', "
    "'instance_id': 'abc'}}); logging.getLogger('durable_cluster.x').debug('hidden')"
)


def test_configure_logging_json_writes_json_lines_to_stderr() -> None:
    done = run_python(LOG_SOMETHING.format(fmt=", 'json'"))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "said_hello"
    assert lines[0]["message"] == "hello you"
    assert lines[0]["instance_id"] == "abc"


def test_configure_logging_takes_the_format_from_the_environment_when_not_given() -> None:
    done = run_python(LOG_SOMETHING.format(fmt=""), env={"DURABLE_LOG_FORMAT": "json"})
    assert json.loads(done.stderr)["event"] == "said_hello"
    done = run_python(LOG_SOMETHING.format(fmt=""), env={"DURABLE_LOG_FORMAT": ""})
    assert done.stderr.rstrip().endswith("durable_cluster.x: hello you")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="--log-format must be one of text, json"):
        logs.configure_logging("info", "yaml")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_cluster",
            "init",
            "--log-format",
            "yaml",
            "--dsn",
            "host=/nonexistent",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "--log-format must be one of text, json, not 'yaml'" in done.stderr
