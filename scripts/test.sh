#!/usr/bin/env bash
# Installs the project and its test dependencies into .venv, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The run-report tests open the page in a real headless Chromium (Debian's packages).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        chromium chromium-driver
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch: the wheel of this exact version lies on disk; a bare "torch" would fetch a CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
