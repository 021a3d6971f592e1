#!/usr/bin/env bash
# The one-call device check on a GPU (or TPU) host: `make device-check`, or
#   bash scripts/device_check.sh [PYTHON] [OUT]      # OUT defaults to docs/bench
# Uses PYTHON's own jax (its CUDA or TPU build) and installs the wheels of .whl/ (from
# `make device-wheels`), if there are any, into a folder of their own on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
out=${2:-docs/bench}
if compgen -G ".whl/*.whl" > /dev/null; then
  site=${CSTM_DEVICE_SITE:-/tmp/cstm_device_site}
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$python" -m tools.device_check --out "$out" "${@:3}"
