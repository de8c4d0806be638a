#!/usr/bin/env bash
# The benchmark suite: release builds, loopback only, bounded in time (a full
# run takes a few minutes on a 2-core machine). Writes bench/RESULTS.md and
# the pictures in bench/results/.
#
#   bench/run.sh            the full suite (figures of record)
#   bench/run.sh --smoke    seconds, not minutes: checks the suite still works
#                           (CI runs it; it writes to a temporary directory)
#   bench/run.sh --only s1,s4
#   bench/run.sh --rounds 5 --seconds 5    (S1's rounds and seconds per run)
#   bench/pinned.sh          S1 alone, servers and load generator on disjoint
#                            cores (needs >= 4 cores; no build, no network)
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

# S1's independent load generator: h2load (Debian nghttp2-client). Without
# it (no apt-get, no root, no network) S1 skips its h2load rows and says so.
if ! command -v h2load >/dev/null; then
  echo "== installing h2load (nghttp2-client)"
  sudo=()
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=(sudo -n); fi
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -q nghttp2-client >/dev/null 2>&1 \
      || { "${sudo[@]}" apt-get update -q >/dev/null 2>&1 \
           && "${sudo[@]}" apt-get install -y -q nghttp2-client >/dev/null 2>&1; } \
      || true
  fi
  command -v h2load >/dev/null \
    || echo "== h2load could not be installed: S1 runs without its h2load rows" >&2
fi

# The Python baselines (grpc.aio + run_in_executor; grpcio in N processes)
# run in a virtualenv.
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
