#!/usr/bin/env bash
# Build the Debian package durable-cluster_<version>_amd64.deb into OUTDIR.
#
#   ops/deb/build.sh OUTDIR
#
# Needs no root and no network but PyPI (or the configured pip index). Needs
# dpkg-deb and the distribution's Python (>= 3.11, with its venv module:
# `apt install python3-venv`) on an amd64 Debian or Ubuntu machine: the same
# one the package is for, since the venv links to /usr/bin/python3.X.
#
# How the virtual environment gets to /opt/durable-cluster/venv without root:
# it is created with the target's own interpreter *inside* a staging root, at
# <stage>/opt/durable-cluster/venv, and the project (a wheel built from a copy
# of this checkout) and its dependencies are pip-installed into it. Everything
# there is already right for /opt/durable-cluster/venv except the absolute
# paths venv and pip wrote with the staging prefix (script shebangs, activate,
# pyvenv.cfg); relocate_venv.py strips that prefix and checks nothing else
# mentions it. Byte-code is compiled last, with compileall's -s/-p, so the
# .pyc files carry the final paths; dpkg keeps the sources' mtimes, so they
# stay valid, and the service never needs to write next to its code.
#
# Environment:
#   PYTHON           interpreter whose X.Y the package targets (default /usr/bin/python3);
#                    the venv always links to /usr/bin/pythonX.Y
#   DEB_COMPRESSION  dpkg-deb compressor: zstd (default; dpkg >= 1.21.18), xz, gzip, none
#   DEB_MAINTAINER   the Maintainer field
#   PIP_*            passed through to pip (PIP_CACHE_DIR, PIP_INDEX_URL, ...); pip's cache is reused
set -euo pipefail

NAME=durable-cluster
DIST=durable-cluster
PREFIX=/opt/durable-cluster

usage() {
    echo "usage: $0 OUTDIR" >&2
    exit 2
}
fail() {
    echo "build.sh: $*" >&2
    exit 1
}

[ $# -eq 1 ] || usage
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
COMPRESSION=${DEB_COMPRESSION:-zstd}
MAINTAINER=${DEB_MAINTAINER:-durable-cluster developers <durable-cluster@localhost>}
umask 022
# Byte-code is compiled once, at the end (step 4), never as a side effect.
export PYTHONDONTWRITEBYTECODE=1

command -v dpkg-deb >/dev/null || fail "dpkg-deb not found (apt install dpkg)"
[ "$(uname -m)" = x86_64 ] || fail "builds amd64 packages on x86_64 only (the wheels are binary)"
command -v "$PYTHON" >/dev/null || fail "no interpreter $PYTHON"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "needs Python >= 3.11, $PYTHON is $PYVER"
INTERPRETER=/usr/bin/python$PYVER
[ -x "$INTERPRETER" ] || fail "the package runs on the distribution's $INTERPRETER, which is missing"

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/cluster/version.py")
[ -n "$VERSION" ] || fail "no __version__ in cluster/version.py"
# PEP 440 -> Debian: pre-releases sort before the release (~), post-releases after (+).
DEB_VERSION=$(printf '%s' "$VERSION" | sed -E 's/\.?((a|b|rc|dev)[0-9]+)/~\1/g; s/\.?post/+post/')
DEB="$OUTDIR/${NAME}_${DEB_VERSION}_amd64.deb"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/durable-cluster-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
VENV=$STAGE$PREFIX/venv

echo "building $NAME $DEB_VERSION for python$PYVER in $WORK"

# 1. A clean copy of the checkout: the wheel build writes build/ and *.egg-info
#    next to the sources, and the checkout may be in use by others.
mkdir -p "$WORK/src"
tar -C "$REPO" -cf - \
    --exclude=./.git --exclude=./build --exclude=./dist --exclude=./.durable --exclude=./.venv \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
    --exclude=.pytest_cache --exclude=./.benchmarks --exclude=./tests \
    . | tar -C "$WORK/src" -xf -

# 2. The venv at its final path inside the staging root; the project's wheel and
#    its dependencies installed without byte-compiling (see step 4).
"$INTERPRETER" -m venv "$VENV" || fail "$INTERPRETER -m venv failed (apt install python$PYVER-venv)"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
"${PIP[@]}" wheel --quiet --no-deps --wheel-dir "$WORK/wheels" "$WORK/src"
"${PIP[@]}" install --quiet --no-compile --no-warn-script-location "$WORK"/wheels/*.whl

# 3. Strip the staging prefix from shebangs, activate scripts and pyvenv.cfg,
#    after dropping the byte-code venv and pip wrote with it.
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
GLIBC=$("$VENV/bin/python" "$HERE/relocate_venv.py" "$STAGE" "$VENV" "$DIST")
"$VENV/bin/python" -c 'import durable_cluster.cli' ||
    fail "the venv cannot import durable_cluster"

# 4. Byte-code, naming the final paths.
"$VENV/bin/python" -m compileall -q -j 0 -s "$STAGE" -p / "$VENV/lib" >/dev/null ||
    fail "compileall failed"
if grep -rlF -- "$STAGE" "$STAGE" >"$WORK/leftovers"; then
    head -n 20 "$WORK/leftovers" >&2
    fail "files still mention the staging directory $STAGE"
fi

# 5. The rest of the file system.
install -D -m 0644 "$REPO/ops/systemd/durable-cluster.service" "$STAGE/lib/systemd/system/$NAME.service"
# May hold a DSN with a password: root only.
install -D -m 0600 "$REPO/ops/systemd/durable-cluster.default" "$STAGE/etc/default/$NAME"
mkdir -p "$STAGE/usr/bin"
ln -s "$PREFIX/venv/bin/durable-cluster" "$STAGE/usr/bin/durable-cluster"
DOC=$STAGE/usr/share/doc/$NAME
install -D -m 0644 "$REPO/README.md" "$DOC/README.md"
for file in ops/runbook.md docs/settings.md docs/concepts.md CHANGELOG.md; do
    if [ -f "$REPO/$file" ]; then
        install -m 0644 "$REPO/$file" "$DOC/$(basename "$file")"
    fi
done
cat >"$DOC/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: durable-cluster

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0. The virtual environment in
 $PREFIX/venv bundles third-party Python packages under their own licenses,
 recorded in each package's .dist-info directory.
EOF

# 6. Package metadata and maintainer scripts.
mkdir -p "$STAGE/DEBIAN"
install -m 0755 "$HERE/postinst" "$HERE/prerm" "$HERE/postrm" "$STAGE/DEBIAN/"
echo "/etc/default/$NAME" >"$STAGE/DEBIAN/conffiles"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: $NAME
Version: $DEB_VERSION
Architecture: amd64
Maintainer: $MAINTAINER
Installed-Size: $INSTALLED_SIZE
Depends: python3 (>= 3.11), python$PYVER, libc6 (>= $GLIBC), zlib1g, adduser
Section: database
Priority: optional
Description: durable execution for PostgreSQL (pg_durable-compatible)
 Workflows written in SQL with the df schema (multi-step SQL pipelines, HTTP
 calls, custom Python steps) run on a cluster of worker processes that share
 the work through PostgreSQL advisory locks and checkpoint every step, so they
 survive crashes, restarts and failed steps.
 .
 This package installs the durable-cluster command in a self-contained
 virtual environment in $PREFIX/venv (with an embedded PostgreSQL 18 used
 when no DSN is configured) and the durable-cluster systemd service.
EOF
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -print0 | LC_ALL=C sort -z |
    xargs -0 md5sum | sed 's#  \./#  #') >"$STAGE/DEBIAN/md5sums"

dpkg-deb --root-owner-group -Z"$COMPRESSION" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
