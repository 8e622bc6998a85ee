#!/usr/bin/env bash
# CI for the Python package (called from .ci/run): from a fresh clone, a virtual
# environment with maturin, numpy and pytest from PyPI, the extension's format and lints,
# the wheel built in release, installed, and the tests run against the installed wheel.
# Needs a Rust toolchain and Python >= 3.10 (torch is optional: its tests skip without it).
#   HECNN_PY=python3.12 python/ci.sh   # another interpreter
#   HECNN_PY_VENV=DIR python/ci.sh     # another venv location (default python/.venv-ci)
set -euo pipefail
cd "$(dirname "$0")"
here="$PWD"
py="${HECNN_PY:-python3}"
venv="${HECNN_PY_VENV:-$here/.venv-ci}"

echo "== python: $("$py" --version)"
if [[ ! -x "$venv/bin/python" ]]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "maturin>=1.5,<2" numpy pytest
export PYO3_PYTHON="$venv/bin/python"

echo "== python: format and clippy (the extension crate, outside the workspace)"
cargo fmt -- --check
cargo clippy --release -- -D warnings

echo "== python: wheel (release)"
dist="$(mktemp -d)"
trap 'rm -rf "$dist"' EXIT
"$venv/bin/maturin" build --release --interpreter "$venv/bin/python" --out "$dist"
"$venv/bin/python" -m pip install --quiet --force-reinstall "$dist"/hecnn-*.whl

echo "== python: tests (against the installed wheel)"
# Run from outside the source tree so that `import hecnn` is the installed package.
cd "$dist"
"$venv/bin/python" -c 'import hecnn, sys; print("hecnn", hecnn.__version__, "from", hecnn.__file__)'
"$venv/bin/pytest" -q -p no:cacheprovider "$here/tests"
