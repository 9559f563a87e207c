#!/usr/bin/env bash
# Installs the project and its test dependencies into .venv, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# CPU torch: the wheel of this exact version lies on disk; a bare "torch" would fetch a CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
