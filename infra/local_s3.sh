#!/usr/bin/env bash
# A local S3 endpoint (moto's server) for development, with buckets created and fake credentials.
#
#   infra/local_s3.sh                 # 127.0.0.1:9000, buckets "inputs" and "outputs"
#   PORT=9100 BUCKETS="a b" infra/local_s3.sh
#
# Then, in another shell, export the printed AWS_* variables and put
#   storage: {endpoint_url: http://127.0.0.1:9000}
# in the job spec (credentials never go into a spec).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-9000}"
args=()
for bucket in ${BUCKETS:-inputs outputs}; do
  args+=(--bucket "$bucket")
done
exec "$PYTHON" -m pipeline.testing.s3server --host "$HOST" --port "$PORT" "${args[@]}"
