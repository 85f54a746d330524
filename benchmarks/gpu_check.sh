#!/usr/bin/env bash
# The GPU check under one hard time limit (default 240 s; a first numeric argument
# overrides it). Run from anywhere; no network is needed.
#
#   benchmarks/gpu_check.sh                           # the full check on the GPU
#   benchmarks/gpu_check.sh --out "$OUT/gpu_check.md" # the table also in a file
#   benchmarks/gpu_check.sh 60 --device cpu --short   # seconds, on any machine
#
# 1. Dependencies: gpu_check.py --check-deps imports each one and prints its
#    version or MISSING. When a required one is missing and a wheel directory
#    exists ($WHEELHOUSE, default benchmarks/wheelhouse), the missing packages are
#    installed from it, offline and without their dependencies, into a temporary
#    directory put on PYTHONPATH (the machine's own packages, torch included, are
#    not touched). A wheelhouse is made where there is network, for the GPU
#    machine's Python (e.g. 3.11):
#      pip download --only-binary=:all: --no-deps --python-version 3.11 \
#        --platform manylinux2014_x86_64 -d benchmarks/wheelhouse \
#        skorch tabulate tqdm safetensors scikit-learn scipy threadpoolctl joblib
# 2. The check: every row has its own time limit and the rows share a budget (the
#    limit less 30 s), so the table is printed before the limit; --out is written
#    after every row. At the limit `timeout` sends SIGTERM (the script marks the
#    rest as not run and prints the table), and SIGKILL 20 s later.
# Exit status: 0 every row ok or skipped, 1 a row failed, 2 a required dependency
# is missing, 124 the hard limit was reached.
set -u
cd "$(dirname "$0")/.."
limit=240
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then limit=$1; shift; fi
py=${PYTHON:-$(command -v python3 || command -v python)}

deps=$("$py" benchmarks/gpu_check.py --check-deps 2>&1)
status=$?
echo "$deps"
if [[ $status -eq 2 ]]; then
  wheels=${WHEELHOUSE:-benchmarks/wheelhouse}
  missing=$(sed -n 's/^MISSING required packages: //p' <<< "$deps")
  if [[ -z "$missing" || ! -d "$wheels" ]]; then
    echo "gpu_check: required packages missing and no wheel directory ($wheels)" >&2
    exit 2
  fi
  target=$(mktemp -d)/site
  echo "gpu_check: installing $missing from $wheels into $target (offline)"
  # shellcheck disable=SC2086 - one word per package
  "$py" -m pip install --quiet --no-index --no-deps --find-links "$wheels" \
    --target "$target" $missing || exit 2
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
  "$py" benchmarks/gpu_check.py --check-deps || exit 2
elif [[ $status -ne 0 ]]; then
  exit "$status"
fi

export SKTRANSFER_GPU_CHECK_DEPS_OK=1  # checked above: not again
timeout --signal=TERM --kill-after=20 "$limit" \
  "$py" benchmarks/gpu_check.py --budget "$((limit > 60 ? limit - 30 : limit / 2))" "$@"
status=$?
if [[ $status -eq 124 ]]; then echo "gpu_check: the whole run passed ${limit} s" >&2; fi
exit $status
