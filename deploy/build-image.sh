#!/usr/bin/env bash
# Builds the infergate container image FROM scratch out of the release
# binary, with no base image to pull: stages a build context (the binary,
# the shared libraries `ldd` names, the dynamic loader, a CA bundle,
# passwd/group with the user "infergate" (65532), the default
# configuration) next to deploy/Containerfile, then builds it with podman
# (or docker). See docs/container.md.
#
#   deploy/build-image.sh                      # infergate:<version> and infergate:latest
#   deploy/build-image.sh --tag registry.example/infergate:1.0
#   deploy/build-image.sh --context-only ctx/  # stage only; build ctx/ elsewhere
#
# Options:
#   --binary PATH    the binary to package (default: target/release/infergate,
#                    built with `cargo build --release` when missing)
#   --tag NAME       image name; may be repeated (default: infergate:<version>
#                    and infergate:latest)
#   --context DIR    stage the build context in DIR and keep it (default: a
#                    temporary directory, removed afterwards)
#   --context-only   stage the context (in --context DIR) and do not build
#   --keep-debug     keep the binary's debug info (file:line in backtraces;
#                    about 50 MB more); by default it is stripped, symbols kept
#   --engine NAME    podman or docker (default: $CONTAINER_ENGINE, else podman
#                    if installed, else docker)
#   --quiet          print less (the engine's build steps are not shown)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
tags=()
context=""
context_only=0
keep_debug=0
quiet=0
engine="${CONTAINER_ENGINE:-}"

die() {
  echo "build-image: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --tag) tags+=("${2:?--tag needs a name}"); shift 2 ;;
    --context) context="${2:?--context needs a directory}"; shift 2 ;;
    --context-only) context_only=1; shift ;;
    --keep-debug) keep_debug=1; shift ;;
    --engine) engine="${2:?--engine needs podman or docker}"; shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)"
revision="$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
[ ${#tags[@]} -gt 0 ] || tags=("infergate:$version" "infergate:latest")

if [ -z "$binary" ]; then
  binary="$repo/target/release/infergate"
  if [ ! -x "$binary" ]; then
    echo "== cargo build --release --bin infergate (no $binary yet)"
    (cd "$repo" && cargo build --release --bin infergate)
  fi
fi
[ -x "$binary" ] || die "$binary: no such executable"

[ "$context_only" = 0 ] || [ -n "$context" ] || die "--context-only needs --context DIR"
if [ "$context_only" = 0 ]; then
  if [ -z "$engine" ]; then
    if command -v podman >/dev/null; then engine=podman
    elif command -v docker >/dev/null; then engine=docker
    else die "neither podman nor docker is installed (or stage with --context-only)"
    fi
  fi
  command -v "$engine" >/dev/null || die "$engine is not installed"
fi

# The CA bundle the OpenAI backend reads besides its own Mozilla roots
# (a private CA installed on the build machine comes along).
certs=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$certs" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing Debian's ca-certificates (no $certs)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null; }
  fi
  [ -s "$certs" ] || die "no $certs: install your distribution's ca-certificates"
fi

if [ -n "$context" ]; then
  mkdir -p "$context"
  [ -z "$(ls -A "$context")" ] || die "$context is not empty"
  context="$(cd "$context" && pwd)"
else
  context="$(mktemp -d "${TMPDIR:-/tmp}/infergate-image.XXXXXX")"
  trap 'rm -rf "$context"' EXIT
fi
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/infergate"
install -d -m 1777 "$root/tmp"

echo "== staging $binary in $context"
if [ "$keep_debug" = 0 ] && ! command -v objcopy >/dev/null; then
  echo "   (no objcopy, binutils: the debug info stays in)"
  keep_debug=1
fi
if [ "$keep_debug" = 1 ]; then
  install -m 0755 "$binary" "$root/usr/local/bin/infergate"
else
  objcopy --strip-debug "$binary" "$root/usr/local/bin/infergate"
  chmod 0755 "$root/usr/local/bin/infergate"
fi

# Every library the binary links, and the loader, at the paths ldd (that
# is, the loader itself) finds them at, symlinks resolved. A static binary
# (musl) has none.
if ldd_out="$(ldd "$binary" 2>&1)"; then
  if grep -q 'not found' <<<"$ldd_out"; then
    die "$binary links libraries this machine lacks: $(grep 'not found' <<<"$ldd_out")"
  fi
  libs="$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)"
  [ -n "$libs" ] || die "ldd names no libraries for $binary: $ldd_out"
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    [ "$quiet" = 1 ] || echo "   $lib"
  done
else
  grep -qiE 'not a dynamic executable|statically linked' <<<"$ldd_out" \
    || die "ldd $binary failed: $ldd_out"
  echo "   (statically linked: no libraries)"
fi

cp -L "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$root/etc/ssl/certs/ca-certificates.crt"
cp "$repo/src/default.toml" "$root/etc/infergate/infergate.toml"
chmod 0644 "$root/etc/infergate/infergate.toml"
printf '%s\n' \
  'root:x:0:0:root:/root:/sbin/nologin' \
  'infergate:x:65532:65532:infergate:/nonexistent:/sbin/nologin' \
  'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'infergate:x:65532:' 'nogroup:x:65534:' >"$root/etc/group"
# glibc's name service: files, then DNS (upstream host names); no other
# NSS modules are in the image.
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' 'services: files' >"$root/etc/nsswitch.conf"
# Runtimes mount their own /etc/hosts and /etc/resolv.conf; this one is for
# those that do not (a plain chroot).
printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' >"$root/etc/hosts"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf" "$root/etc/hosts"
cp "$repo/deploy/Containerfile" "$context/Containerfile"

echo "   rootfs: $(du -sh "$root" | cut -f1)"
if [ "$context_only" = 1 ]; then
  echo "== context staged in $context (build it with: podman build --format docker $context, or docker build $context)"
  exit 0
fi

tag_args=()
for tag in "${tags[@]}"; do tag_args+=(--tag "$tag"); done
format_args=()
# podman: its default OCI format drops HEALTHCHECK, the docker format keeps
# it; no intermediate images left behind (there is nothing to cache).
[ "$(basename "$engine")" = podman ] && format_args=(--format docker --layers=false)
[ "$quiet" = 1 ] && format_args+=(--quiet)  # the image id only
echo "== $engine build ${tags[*]}"
"$engine" build "${format_args[@]}" "${tag_args[@]}" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --file "$context/Containerfile" "$context" || die "$engine build failed"
echo "== built ${tags[*]} ($("$engine" image inspect --format '{{.Size}}' "${tags[0]}") bytes)"
