"""Make a virtual environment built under a staging root valid at its final path.

``ops/deb/build.sh`` builds the venv at ``<stage>/opt/durable-cluster/venv``
with the target system's interpreter, so everything in it is right for
``/opt/durable-cluster/venv`` except the absolute paths that ``venv`` and pip
wrote with the staging prefix: script shebangs, the ``activate`` scripts and
``pyvenv.cfg``. This tool

1. removes the staging prefix from every text file that contains it;
2. drops the project's ``direct_url.json`` (it would record the temporary
   source checkout the wheel was built from) and its line in ``RECORD``;
3. fails if any file, binary or not, still mentions the staging prefix;
4. prints the oldest glibc the installed manylinux wheels accept (for the
   package's ``libc6`` dependency).

Byte-code is compiled afterwards with ``compileall -s <stage> -p /`` so the
``.pyc`` files name the final paths too.

Usage: ``python3 relocate_venv.py STAGE VENV_PATH DIST_NAME``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: manylinux2014 and the older aliases, as glibc versions (PEP 600).
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_")


def strip_prefix(venv: Path, prefix: bytes) -> list[Path]:
    """Remove ``prefix`` from every text file under ``venv``; return the files changed."""
    changed = []
    for path in sorted(venv.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if prefix not in data or b"\0" in data:
            continue
        path.write_bytes(data.replace(prefix, b""))
        changed.append(path)
    return changed


def drop_direct_url(venv: Path, dist: str) -> None:
    """Forget that ``dist`` was installed from a local path (PEP 610 metadata)."""
    normalized = re.sub(r"[-_.]+", "_", dist).lower()
    for info in venv.glob("lib/python*/site-packages/*.dist-info"):
        if info.name.lower().split("-")[0] != normalized:
            continue
        direct_url = info / "direct_url.json"
        if not direct_url.exists():
            continue
        direct_url.unlink()
        record = info / "RECORD"
        lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(f"{info.name}/direct_url.json,")]
        record.write_text("".join(kept), encoding="utf-8")


def leftovers(venv: Path, prefix: bytes) -> list[Path]:
    return [
        path
        for path in sorted(venv.rglob("*"))
        if path.is_file() and not path.is_symlink() and prefix in path.read_bytes()
    ]


def min_glibc(venv: Path) -> tuple[int, int]:
    """The newest glibc any installed wheel's platform tag requires."""
    needed = (2, 17)
    for wheel in venv.glob("lib/python*/site-packages/*.dist-info/WHEEL"):
        for line in wheel.read_text(encoding="utf-8").splitlines():
            if not line.startswith("Tag:"):
                continue
            platform = line.rsplit("-", 1)[-1].strip()
            match = MANYLINUX.search(platform + "_")
            if match:
                version = (int(match[1]), int(match[2]))
            else:
                version = LEGACY_MANYLINUX.get(platform.split("_x86_64")[0], (0, 0))
            needed = max(needed, version)
    return needed


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    stage, venv, dist = Path(argv[0]), Path(argv[1]), argv[2]
    prefix = str(stage).rstrip("/").encode()
    strip_prefix(venv, prefix)
    drop_direct_url(venv, dist)
    left = leftovers(venv, prefix)
    if left:
        print(f"relocate_venv: {len(left)} files still mention {stage}:", file=sys.stderr)
        for path in left[:20]:
            print(f"  {path}", file=sys.stderr)
        return 1
    major, minor = min_glibc(venv)
    print(f"{major}.{minor}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
