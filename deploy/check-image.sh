#!/usr/bin/env bash
# Proves that the image deploy/build-image.sh makes is self-contained,
# without running a container (where a sandbox refuses `podman run`): builds
# it, checks its metadata, exports a container's root filesystem (podman
# create + export run nothing), and serves from that filesystem under
# chroot as the image's user: ListModels and a Generate through grpcurl, a
# /metrics scrape, and `infergate health` from inside. Needs root (chroot).
#
#   deploy/check-image.sh [--binary PATH] [--grpcurl PATH] [--engine podman|docker]
#
# .ci/run runs it after the release build; it exits non-zero on the first
# failure, cleaning up the container, the image and its temporary files.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
binary="$repo/target/release/infergate"
grpcurl="${GRPCURL:-grpcurl}"
engine="${CONTAINER_ENGINE:-podman}"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?}"; shift 2 ;;
    --grpcurl) grpcurl="${2:?}"; shift 2 ;;
    --engine) engine="${2:?}"; shift 2 ;;
    *) echo "check-image: unknown argument: $1" >&2; exit 64 ;;
  esac
done

fail() {
  echo "check-image: FAILED: $*" >&2
  [ -s "${log:-}" ] && sed 's/^/  server: /' "$log" >&2
  exit 1
}

tag="localhost/infergate-check:$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/infergate-check.XXXXXX")"
root="$work/rootfs"
log="$work/server.log"
container=""
server=""
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  # (podman logs an error about healthcheck timers where systemd is not
  # running; nothing to clean up there.)
  [ -z "$container" ] || "$engine" rm -f "$container" >/dev/null 2>&1 || true
  "$engine" rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

timeout 300 "$repo/deploy/build-image.sh" --quiet --engine "$engine" --binary "$binary" --tag "$tag" \
  || fail "the image did not build"

# What a runtime reads from the image.
# shellcheck disable=SC2016 # a Go template, not shell
config="$("$engine" image inspect --format \
  'user={{.Config.User}} ports={{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}healthcheck={{.Config.Healthcheck.Test}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}}' "$tag")"
echo "   $config"
for want in 'user=65532:65532' '50051/tcp' '9464/tcp' 'healthcheck=[CMD /usr/local/bin/infergate health' \
  'entrypoint=[/usr/local/bin/infergate]' '--listen 0.0.0.0:50051' '--metrics-listen 0.0.0.0:9464'; do
  [[ "$config" == *"$want"* ]] || fail "the image's config lacks \"$want\""
done

# The image's files, as a container would see them, without running one.
container="$(timeout 60 "$engine" create "$tag")" || fail "$engine create"
mkdir -p "$root"
timeout 120 "$engine" export "$container" | tar -x -C "$root" || fail "$engine export"
chmod 0755 "$root"
echo "   files: $(cd "$root" && find . -type f | sort | tr '\n' ' ')"
echo "   size: $(du -sh "$root" | cut -f1) unpacked, image $("$engine" image inspect --format '{{.Size}}' "$tag") bytes"
[ ! -e "$root/bin/sh" ] || fail "the image has a shell: not FROM scratch?"
certs="$(grep -c 'BEGIN CERTIFICATE' "$root/etc/ssl/certs/ca-certificates.crt" || true)"
[ "${certs:-0}" -gt 50 ] || fail "the CA bundle has ${certs:-no} certificates"
grep -q '^infergate:x:65532:65532:' "$root/etc/passwd" || fail "no infergate user in /etc/passwd"

# Serve from that root alone, as the image's user, with the image's own
# configuration (loopback, port 0: nothing else on this machine is in the
# way; the image's default is 0.0.0.0:50051).
in_root=(chroot --userspec=65532:65532 "$root")
"${in_root[@]}" /usr/local/bin/infergate serve --config /etc/infergate/infergate.toml \
  --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$log" 2>&1 &
server=$!
addr="" metrics=""
for _ in $(seq 100); do
  addr="$(sed -n 's/.*serving gRPC addr=\([0-9.:]*\).*/\1/p' "$log")"
  metrics="$(sed -n 's/.*serving Prometheus metrics on \/metrics addr=\([0-9.:]*\).*/\1/p' "$log")"
  [ -n "$addr" ] && [ -n "$metrics" ] && break
  kill -0 "$server" 2>/dev/null || fail "the server exited at start-up"
  sleep 0.1
done
if [ -z "$addr" ] || [ -z "$metrics" ]; then
  fail "the server did not log its addresses within 10 s"
fi
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$server/status")"
[ "$uid" = 65532 ] || fail "the server runs as uid $uid, not 65532"
echo "   chroot: serving on $addr, /metrics on $metrics, uid $uid"

models="$("$grpcurl" -plaintext -max-time 10 "$addr" infergate.v1.Inference/ListModels)" \
  || fail "ListModels: $models"
names="$(grep -o '"name": "[^"]*"' <<<"$models" | cut -d'"' -f4 | tr '\n' ' ')"
echo "   ListModels: $names"
[[ " $names" == *" echo "* ]] || fail "ListModels does not list echo"

reply="$("$grpcurl" -plaintext -max-time 10 -d '{"model":"echo","prompt":"hello from the image"}' \
  "$addr" infergate.v1.Inference/Generate)" || fail "Generate: $reply"
text="$(grep -o '"text": "[^"]*"' <<<"$reply" | cut -d'"' -f4)"
echo "   Generate echo: \"$text\""
[ "$text" = "hello from the image" ] || fail "Generate answered: $reply"

# /metrics, with bash alone (no curl needed).
# shellcheck disable=SC2016 # expanded by the inner bash
scrape="$(timeout 10 bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}" &&
  printf "GET /metrics HTTP/1.0\r\nHost: infergate\r\n\r\n" >&3 && cat <&3' _ "$metrics")" \
  || fail "no answer from /metrics"
[[ "$scrape" == "HTTP/1."?" 200"* && "$scrape" == *'infergate_requests_total{'* ]] \
  || fail "/metrics answered: ${scrape:0:300}"
echo "   /metrics: $(grep -c '^infergate_' <<<"$scrape") infergate_ samples"

# The image's HEALTHCHECK command, from inside the root.
health="$(timeout 20 "${in_root[@]}" /usr/local/bin/infergate health --addr "$addr" 2>&1)" \
  || fail "infergate health: $health"
echo "   health (in the chroot): $health"
[ "$health" = SERVING ] || fail "infergate health printed: $health"

# SIGTERM: a clean stop.
kill -TERM "$server"
for _ in $(seq 200); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
kill -0 "$server" 2>/dev/null && fail "the server did not stop within 20 s of SIGTERM"
status=0
wait "$server" || status=$?
server=""
[ "$status" = 0 ] || fail "the server exited $status after SIGTERM"
echo "   SIGTERM: exited 0"
echo "== the image is self-contained"
