#!/usr/bin/env bash
# The GPU check with a time limit for the whole run (default 600 s; first argument
# overrides it). Each row also has its own limit inside the script (--row-timeout),
# so a hanging row fails alone and the table is still printed; at the overall limit
# `timeout` sends SIGTERM, the script stops the current row, marks the rest as not
# run and prints the table, and SIGKILL follows 30 s later if it does not exit.
#
#   benchmarks/gpu_check.sh                 # full run on the GPU, table also in gpu_check.md
#   benchmarks/gpu_check.sh 300 --device cpu --short
set -u
cd "$(dirname "$0")/.."
limit=600
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then limit=$1; shift; fi
if [[ " $* " != *" --out "* ]]; then set -- "$@" --out gpu_check.md; fi
timeout --signal=TERM --kill-after=30 "$limit" python benchmarks/gpu_check.py "$@"
status=$?
if [[ $status -eq 124 ]]; then echo "gpu_check: the whole run passed ${limit} s" >&2; fi
exit $status
