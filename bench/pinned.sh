#!/usr/bin/env bash
# S1 alone, with the servers pinned to two cores and the load generators to
# the others (taskset), so that requests/s ratios are the servers'. Needs 4
# or more cores. Builds nothing and needs no network: it runs the binaries
# already in target/release (copy the working tree with them), h2load if
# installed (else `infergate bench` only), and the Python baselines only if
# $INFERGATE_BENCH_VENV (or /tmp/infergate-bench-venv) has grpcio.
#
#   bench/pinned.sh                       3 rounds of 3 s, 2/8/64/256 workers
#   bench/pinned.sh --rounds 5 --workers 2,8,64
#
# Prints the S1 table and the checks; writes RESULTS.md and the pictures to
# $INFERGATE_PINNED_OUT (default: a temporary directory, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

for binary in target/release/infergate target/release/examples/tonic_echo; do
  [ -x "$binary" ] || { echo "pinned.sh: $binary is missing (cargo build --release --bin infergate --example tonic_echo)" >&2; exit 2; }
done
command -v h2load >/dev/null || echo "pinned.sh: h2load not installed: requests/s from infergate bench only" >&2

out="${INFERGATE_PINNED_OUT:-$(mktemp -d)}"
python=()
venv="${INFERGATE_BENCH_VENV:-${TMPDIR:-/tmp}/infergate-bench-venv}"
if "$venv/bin/python" -c "import grpc, grpc_tools" 2>/dev/null; then
  python=(--python "$venv/bin/python")
fi

status=0
python3 bench/suite.py --only s1 --pinned \
  --infergate target/release/infergate \
  --baseline target/release/examples/tonic_echo \
  "${python[@]}" --out "$out/results" --results "$out/RESULTS.md" "$@" || status=$?
if [ -f "$out/RESULTS.md" ]; then
  echo
  # The checks table: from its header to the first blank line.
  awk '/^\| scenario \| figure \| measured \| target/ {on = 1} on && /^$/ {exit} on' "$out/RESULTS.md"
  echo
  echo "full report: $out/RESULTS.md"
fi
exit "$status"
