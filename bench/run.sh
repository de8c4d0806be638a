#!/usr/bin/env bash
# The benchmark suite: release builds, loopback only, bounded in time (a full
# run takes a few minutes on a 2-core machine). Writes bench/RESULTS.md and
# the pictures in bench/results/.
#
#   bench/run.sh            the full suite (figures of record)
#   bench/run.sh --smoke    seconds, not minutes: checks the suite still works
#                           (CI runs it; it writes to a temporary directory)
#   bench/run.sh --only s1,s4
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=()
args=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=(--smoke) ;;
    *) args+=("$arg") ;;
  esac
done

echo "== release builds"
cargo build --release --quiet --bin infergate --example tonic_echo

# The Python baseline (grpcio + ThreadPoolExecutor) runs in a virtualenv.
venv="${INFERGATE_BENCH_VENV:-${TMPDIR:-/tmp}/infergate-bench-venv}"
if ! "$venv/bin/python" -c "import grpc, grpc_tools" 2>/dev/null; then
  echo "== virtualenv for the grpcio baseline: $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r examples/python/requirements.txt
fi

out=(--out bench/results --results bench/RESULTS.md)
if [ ${#smoke[@]} -gt 0 ]; then
  tmp="$(mktemp -d)"
  out=(--out "$tmp/results" --results "$tmp/RESULTS.md")
fi

exec python3 bench/suite.py \
  --infergate target/release/infergate \
  --baseline target/release/examples/tonic_echo \
  --python "$venv/bin/python" \
  "${out[@]}" "${smoke[@]}" "${args[@]}"
