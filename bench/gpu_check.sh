#!/usr/bin/env bash
# The GPU check of issue 7, as one prepared run for a machine with an NVIDIA GPU whose Python
# already has JAX with CUDA, grpcio, protobuf, numpy and ml_dtypes. It installs nothing from the
# network: packages that machine lacks may be carried as wheels in .whl/ (see bench/README.md).
#
#   bench/gpu_check.sh                # from the repository root; writes results to $OUT or ./gpu-results
#
# 1. raw threefry bits and float values against the CPU results shipped in cpu_reference.npz
#    (bits must be identical; the max ULP distance per distribution is reported),
# 2. kernel throughput per distribution on the GPU,
# 3. an end-to-end 1 GiB fetch over loopback from a server using the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-gpu-results}
mkdir -p "$RESULTS"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wg-site .whl/*.whl
  export PYTHONPATH=/tmp/wg-site${PYTHONPATH:+:$PYTHONPATH}
fi
# weightgen without installing it: the package's directories under their import names.
site=$(mktemp -d)
mkdir -p "$site/weightgen"
ln -s "$PWD/server" "$site/weightgen/server"
ln -s "$PWD/client" "$site/weightgen/client"
ln -s "$PWD/proto/weightgen/v1" "$site/weightgen/v1"
export PYTHONPATH=$site:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1

{ nvidia-smi -L || true; "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'; } | tee "$RESULTS/devices.txt"
status=0
"$PY" bench/gpu/gpu_check.py compare | tee "$RESULTS/compare.json" || status=$?
"$PY" bench/gpu/gpu_check.py throughput | tee "$RESULTS/throughput.json"
"$PY" bench/gpu/gpu_check.py fetch | tee "$RESULTS/fetch.json"
exit $status
