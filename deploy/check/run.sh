#!/usr/bin/env bash
# Checks everything under deploy/ (CI's "deploy manifests" step; docs/deploy.md):
#   - the Kubernetes manifests: each kustomization rendered (kubectl kustomize
#     where kubectl is installed, and kustomize_lite.py), every object
#     validated strictly against the Kubernetes 1.30 and 1.34 schemas
#     (PyPI kubernetes-validate), the custom resources (ScaledObject,
#     PodMonitor) against their CRDs' schemas (npm @kubernetes-models, where
#     node is installed) and for structure, and the consistency checks of
#     manifests.py (ports, probes, grace periods, labels, queue capacities);
#     the ConfigMap's TOML with `infergate check-config` if
#     target/release/infergate is built;
#   - Prometheus: promtool check config, check rules, test rules;
#   - Grafana provisioning: structure, and the dashboard it points at.
# Usage: deploy/check/run.sh [VENV]   (default: CI's virtualenv; made if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBERNETES_VALIDATE=1.34.1
venv="${1:-${TMPDIR:-/tmp}/infergate-ci-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" != "$KUBERNETES_VALIDATE" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "-- Kubernetes manifests"
infergate=()
if [ -x target/release/infergate ]; then
  infergate=(--infergate target/release/infergate)
fi
"$venv/bin/python" deploy/check/manifests.py --out "$out" "${infergate[@]}"

echo "-- custom resources against their CRDs' schemas"
if command -v node >/dev/null && command -v npm >/dev/null; then
  npmdir="${TMPDIR:-/tmp}/infergate-ci-npm"
  if [ ! -d "$npmdir/node_modules" ] || ! cmp -s deploy/check/package-lock.json "$npmdir/package-lock.json"; then
    rm -rf "$npmdir"
    mkdir -p "$npmdir"
    cp deploy/check/package.json deploy/check/package-lock.json "$npmdir/"
    (cd "$npmdir" && npm ci --silent --no-audit --no-fund --ignore-scripts)
  fi
  # Next to its node_modules, where its imports resolve.
  cp deploy/check/crds.mjs "$npmdir/"
  node "$npmdir/crds.mjs" "$out"/*.json
else
  echo "  no node here: the custom resources were checked for structure only (manifests.py)"
fi

echo "-- Prometheus: promtool"
if ! command -v promtool >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules_test.yml

echo "deploy manifests: all checks passed"
