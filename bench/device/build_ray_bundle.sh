#!/bin/sh
# Builds .raydev/ray-site.tar.xz (ignored by git): a pruned, stripped site dir with Ray 2.60.0,
# pydantic 2.14.4, PyAV 18.1.0 (FFmpeg inside: bench/video_throughput.py encodes and decodes
# videos) and the dependencies the offline GPU box lacks.
# Run from anywhere on a Linux x86_64 machine with pip, strip (binutils), xz.
#   sh bench/device/build_ray_bundle.sh
# Target: CPython 3.12 x86_64 that already has numpy, pyarrow, fsspec, psutil,
# pyyaml, click, filelock, msgpack, packaging, protobuf, requests, aiohttp,
# attrs, grpcio, tqdm, jinja2, prometheus-client, torch.
set -eu

OUT_DIR=${OUT_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/.raydev}
mkdir -p "$OUT_DIR"
WHEELS=${WHEELS:-/tmp/rayw}
SITE=${SITE:-/tmp/raysite}

# Ray's own (non-extra) Requires-Dist: click filelock jsonschema msgpack
# packaging protobuf pyyaml requests -> only jsonschema (+ its deps
# jsonschema-specifications, referencing, rpds-py; attrs is present) is missing.
# pydantic 2.14.4 needs pydantic-core==2.50.5, annotated-types,
# typing-inspection, typing-extensions>=4.16.0. safetensors: scene-state files (bench/state_query.py).
PKGS="ray==2.60.0 pydantic==2.14.4 pydantic-core==2.50.5 typing_extensions==4.16.0
annotated-types==0.8.0 typing-inspection==0.4.5 jsonschema==4.26.0
jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
safetensors==0.8.0 av==18.1.0"

mkdir -p "$WHEELS"
# shellcheck disable=SC2086
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$WHEELS" $PKGS

rm -rf "$SITE"
mkdir -p "$SITE"
for pkg in $PKGS; do
  name=$(echo "${pkg%%==*}" | tr '-' '_')
  ver=${pkg##*==}
  whl=$(ls "$WHEELS"/*.whl | grep -i "/${name}-${ver}-" | head -n 1)
  [ -n "$whl" ] || { echo "missing wheel for $pkg" >&2; exit 1; }
  unzip -q -o "$whl" -d "$SITE"
done

cd "$SITE/ray"
# --- prune Ray -------------------------------------------------------------
# Libraries not needed for ray.init + tasks + actors + ActorPool + ray.kill.
# Kept: ray.data + ray.air (pipeline/reader.py imports ray.data lazily),
# ray.job_submission + ray.dashboard python code (pipeline/cli.py, and the
# dashboard agent that raylet always starts), ray.autoscaler, ray.util,
# thirdparty_files and the runtime-env agent's vendored aiohttp stack.
rm -rf jars rllib tune train serve llm workflow includes _raylet.pxd setup-dev.py
# Dashboard web UI assets (~9 MB). Leave a stub so the HTTP head still finds
# client/build (setup_static_dir() raises if it's missing).
rm -rf dashboard/client/build
mkdir -p dashboard/client/build/static
printf '<html><body>Ray dashboard UI stripped from this bundle.</body></html>\n' \
  > dashboard/client/build/index.html
cd "$SITE"
find . -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
find . -name '*.pyc' -delete
# Strip symbol tables from ELF binaries / extension modules (~35 MB saved).
find . -type f \( -name '*.so' -o -name '*.so.*' -o -name raylet -o -name gcs_server \) |
  while read -r f; do strip --strip-unneeded "$f"; done

# --- pack -------------------------------------------------------------------
tar -C "$SITE" -cf - . | xz -9e -T0 > "$OUT_DIR/ray-site.tar.xz"
ls -l "$OUT_DIR/ray-site.tar.xz"
