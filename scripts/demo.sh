#!/usr/bin/env bash
# Installs the project into .venv, then runs the main job on the embedded default: synthetic
# capture sequences reconstructed by the bundled small ZipMap on a local Ray cluster, on local disk.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch: the wheel of this exact version lies on disk; a bare "torch" would fetch a CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m jobs.demo "$@"
