#!/bin/sh
# Unpacks the pruned Ray 2.60.0 + pydantic 2.14.4 bundle into /tmp/site.
# Usage (from the repo root):
#   sh bench/device/install_ray_bundle.sh && export PYTHONPATH=/tmp/site:$PWD
set -eu
HERE=${BUNDLE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/.raydev}
DEST=${RAY_SITE_DIR:-/tmp/site}
mkdir -p "$DEST"
SUM=$(cksum < "$HERE/ray-site.tar.xz")
if [ -f "$DEST/ray/_raylet.so" ] && [ "$(cat "$DEST/.raydev-installed" 2>/dev/null)" = "$SUM" ]; then
  echo "ray bundle already in $DEST"
  exit 0
fi
if command -v xz >/dev/null 2>&1; then
  xz -dc "$HERE/ray-site.tar.xz" | tar -C "$DEST" -xf -
else
  # no xz binary: use Python's lzma/tarfile
  PY=$(command -v python3 || echo /opt/torch/.venv/bin/python3)
  "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
    "$HERE/ray-site.tar.xz" "$DEST"
fi
echo "$SUM" > "$DEST/.raydev-installed"
echo "ray bundle extracted to $DEST"
