#!/usr/bin/env python3
"""Checks deploy/: the Kubernetes manifests, and the files that must agree
with them (the gateway's TOML, the alert rules, Grafana provisioning).

For each kustomization (deploy/kubernetes/base, deploy/kubernetes/overlays/*):
1. renders it, with `kubectl kustomize` where kubectl is installed, and
   always with kustomize_lite.py (the two must give the same objects);
2. validates every object against the Kubernetes OpenAPI schemas of each
   version in --versions, strictly (unknown fields are errors), with
   kubernetes-validate; custom resources, which it has no schema for, are
   checked for their structure here and by crds.mjs (their CRDs' schemas);
3. checks what no schema can: the Services, PDB and PodMonitor select the
   Deployment's pods; ports and probes match the TOML's listen addresses;
   terminationGracePeriodSeconds covers the preStop sleep and the drain;
   the security context; the ScaledObject's target and query labels;
   each model's queue_capacity equals the one in deploy/prometheus/rules.yml.

Writes each rendering as JSON to --out (for crds.mjs), and runs
`infergate check-config` on each rendered TOML when --infergate names a
binary. Exit status 1 on any failure, with one line per failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kustomize_lite  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
PROM = os.path.join(ROOT, "deploy", "prometheus")
GRAFANA = os.path.join(ROOT, "deploy", "grafana", "provisioning")

UID = 65532
CONFIG_PATH = "/etc/infergate/infergate.toml"

failures: list[str] = []


def fail(where: str, what: str) -> None:
    failures.append(f"{where}: {what}")
    print(f"FAIL {where}: {what}")


def key(obj: dict) -> tuple[str, str, str]:
    return (obj.get("kind", ""), obj.get("metadata", {}).get("namespace", ""), obj["metadata"]["name"])


KUBECTL = shutil.which("kubectl")


def render_kubectl(path: str) -> list[dict] | None:
    kubectl = KUBECTL
    if not kubectl:
        return None
    out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        fail(os.path.relpath(path, ROOT), f"kubectl kustomize failed: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render(path: str) -> list[dict]:
    where = os.path.relpath(path, ROOT)
    try:
        lite = kustomize_lite.render(path)
    except (kustomize_lite.Unsupported, OSError, KeyError) as e:
        fail(where, f"kustomize_lite: {e}")
        lite = []
    real = render_kubectl(path)
    if real is None:
        print(f"  {where}: rendered with kustomize_lite.py (no kubectl here)")
        return lite
    a = {key(o): o for o in lite}
    b = {key(o): o for o in real}
    if a != b:
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                fail(where, f"kustomize_lite.py and kubectl kustomize differ on {k}")
    else:
        print(f"  {where}: kubectl kustomize and kustomize_lite.py agree ({len(real)} objects)")
    return real


def validate_schemas(where: str, objs: list[dict], versions: list[str]) -> list[dict]:
    """Strict OpenAPI validation; returns the objects with no schema there."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    unknown = []
    for obj in objs:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except SchemaNotFoundError:
                unknown.append(obj)
                break
            except ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(where, f"{name} against Kubernetes {version}: {path}: {e.message}")
    checked = len(objs) - len(unknown)
    print(f"  {where}: {checked} objects valid against Kubernetes {', '.join(versions)} (strict)")
    return unknown


CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def check_structure(where: str, obj: dict) -> None:
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if (obj.get("apiVersion"), obj.get("kind")) not in CRD_KINDS:
        fail(where, f"{name}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", str(meta.get("name", ""))):
        fail(where, f"{name}: metadata.name missing or not a DNS label")
    if not isinstance(obj.get("spec"), dict) or not obj["spec"]:
        fail(where, f"{name}: spec missing or empty")
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        fail(where, f"{name}: unexpected top-level fields {sorted(extra)}")


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector)
    if set(selector) - {"matchLabels"} and "matchLabels" in selector:
        return False  # matchExpressions: not used here
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def port_of(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def queue_capacities_in_rules() -> dict[str, int]:
    with open(os.path.join(PROM, "rules.yml"), encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    table = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == "infergate:queue_capacity":
                m = re.fullmatch(r"\s*vector\((\d+)\)\s*", rule["expr"])
                if not m or "model" not in rule.get("labels", {}):
                    fail("deploy/prometheus/rules.yml", f"infergate:queue_capacity record not vector(N) with a model label: {rule}")
                    continue
                table[rule["labels"]["model"]] = int(m.group(1))
    return table


def check_consistency(where: str, objs: list[dict], infergate: str | None) -> None:
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        fail(where, f"expected one Deployment, found {len(deployments)}")
        return
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    if not selects(dep["spec"]["selector"], pod_labels):
        fail(where, "the Deployment's selector does not select its own pods")
    ctr = next((c for c in pod["containers"] if c["name"] == "infergate"), None)
    if ctr is None:
        fail(where, "no container named infergate")
        return
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}

    # Security context (the restricted Pod Security Standard, and the image's uid).
    psc, csc = pod.get("securityContext", {}), ctr.get("securityContext", {})
    want = [
        (psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, "runAsNonRoot"),
        ((csc.get("runAsUser") or psc.get("runAsUser")) == UID, f"runAsUser {UID}"),
        (csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"),
        (csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false"),
        (csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL"),
        ((csc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type") == "RuntimeDefault", "seccompProfile RuntimeDefault"),
    ]
    for ok, what in want:
        if not ok:
            fail(where, f"container securityContext lacks {what}")

    # Services, PDB, PodMonitor select the pods, and name real ports.
    for svc in by_kind.get("Service", []):
        n = svc["metadata"]["name"]
        if not selects(svc["spec"].get("selector", {}), pod_labels):
            fail(where, f"Service {n} does not select the Deployment's pods")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in ports:
                fail(where, f"Service {n}: targetPort {tp} is no container port")
    kinds = {s["metadata"]["name"]: s["spec"].get("clusterIP") for s in by_kind.get("Service", [])}
    if "None" not in kinds.values():
        fail(where, "no headless Service (clusterIP: None)")
    if not any(ip in (None, "") for ip in kinds.values()):
        fail(where, "no ClusterIP Service")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"]["selector"], pod_labels):
            fail(where, "the PodDisruptionBudget does not select the Deployment's pods")
    for pm in by_kind.get("PodMonitor", []):
        if not selects(pm["spec"]["selector"], pod_labels):
            fail(where, "the PodMonitor does not select the Deployment's pods")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if ep.get("port") not in ports:
                fail(where, f"PodMonitor port {ep.get('port')} is no container port")
    if not by_kind.get("PodDisruptionBudget"):
        fail(where, "no PodDisruptionBudget")
    if not by_kind.get("PodMonitor") and not by_kind.get("ServiceMonitor"):
        fail(where, "no PodMonitor or ServiceMonitor")

    # The configuration: mounted where the args say, listening where the ports are.
    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mount = next((m for m in ctr.get("volumeMounts", []) if CONFIG_PATH.startswith(m["mountPath"] + "/")), None)
    if mount is None or "configMap" not in vols.get(mount["name"], {}):
        fail(where, f"no ConfigMap mounted over {CONFIG_PATH}")
        return
    cm = config_maps.get(vols[mount["name"]]["configMap"]["name"])
    if cm is None:
        fail(where, f"the mounted ConfigMap {vols[mount['name']]['configMap']['name']} is not in the rendering")
        return
    if CONFIG_PATH not in ctr.get("args", []) + ctr.get("command", []):
        fail(where, f"the container is not started with --config {CONFIG_PATH}")
    text = cm["data"][os.path.basename(CONFIG_PATH)]
    config = tomllib.loads(text)
    server = config.get("server", {})
    host, grpc = port_of(server.get("listen", "127.0.0.1:50051"))
    mhost, metrics = port_of(server.get("metrics_listen", "127.0.0.1:9464"))
    for h, what in ((host, "listen"), (mhost, "metrics_listen")):
        if h not in ("0.0.0.0", "::"):
            fail(where, f"server.{what} binds {h}: the kubelet and other pods cannot reach it")
    if ports.get("grpc") != grpc:
        fail(where, f"container port grpc {ports.get('grpc')} != server.listen port {grpc}")
    if ports.get("metrics") != metrics:
        fail(where, f"container port metrics {ports.get('metrics')} != server.metrics_listen port {metrics}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = ctr.get(probe)
        if not p or "grpc" not in p:
            fail(where, f"{probe} is not a gRPC probe")
        elif p["grpc"]["port"] != grpc:
            fail(where, f"{probe} probes port {p['grpc']['port']}, the gateway listens on {grpc}")
        elif p["grpc"].get("service", "") not in ("", "infergate.v1.Inference"):
            fail(where, f"{probe} asks for health service {p['grpc']['service']!r}")

    # Shutdown: the kubelet's grace covers the preStop sleep and the drain.
    grace = server.get("shutdown_grace_seconds", 30)
    sleep = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if sleep is None:
        fail(where, "no preStop sleep")
        sleep = 0
    if tgps <= sleep + grace:
        fail(where, f"terminationGracePeriodSeconds {tgps} <= preStop sleep {sleep} + shutdown_grace_seconds {grace}")

    # The autoscaler: targets the Deployment; its query's labels are the scrape's.
    for so in by_kind.get("ScaledObject", []):
        ref = so["spec"]["scaleTargetRef"]
        if ref.get("kind", "Deployment") != "Deployment" or ref["name"] != dep["metadata"]["name"]:
            fail(where, f"ScaledObject targets {ref}, not the Deployment")
        if "replicas" in dep["spec"]:
            fail(where, "the Deployment sets replicas while a ScaledObject owns the count")
        mn = so["spec"].get("minReplicaCount", 0)
        for pdb in by_kind.get("PodDisruptionBudget", []):
            if mn <= pdb["spec"].get("maxUnavailable", 1):
                fail(where, f"minReplicaCount {mn} leaves no replica serving through a disruption")
        for trig in so["spec"]["triggers"]:
            if trig["type"] != "prometheus":
                continue
            q = trig["metadata"]["query"]
            ns = dep["metadata"].get("namespace")
            want = [f'namespace="{ns}"'] if ns else []
            for pm in by_kind.get("PodMonitor", []):
                default_job = f"{ns}/{pm['metadata']['name']}"
                job = pod_labels.get(pm["spec"].get("jobLabel", ""), default_job)
                want.append(f'job="{job}"')
            selectors = re.findall(r"\b(infergate_\w+)\s*(\{[^}]*\})?", q)
            if not selectors:
                fail(where, "the ScaledObject's query reads no infergate_ series")
            for metric, sel in selectors:
                labels = set(re.findall(r'\w+\s*=\s*"[^"]*"', (sel or "").replace(" ", "")))
                missing = [w for w in want if w.replace(" ", "") not in labels]
                if missing:
                    fail(where, f"the ScaledObject's query: {metric} does not select {', '.join(missing)} (the scrape's labels)")
            try:
                float(trig["metadata"]["threshold"])
            except (KeyError, ValueError):
                fail(where, "the prometheus trigger's threshold is not a number")

    # The alert rules' queue capacities are the configuration's.
    rules = queue_capacities_in_rules()
    for model in config.get("models", []):
        cap = model.get("queue_capacity", 64)
        if rules.get(model["name"]) != cap:
            fail(where, f"model {model['name']}: queue_capacity {cap}, deploy/prometheus/rules.yml says {rules.get(model['name'])}")

    if infergate:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        out = subprocess.run([infergate, "check-config", f.name], capture_output=True, text=True)
        os.unlink(f.name)
        if out.returncode != 0:
            fail(where, f"infergate check-config: {(out.stderr or out.stdout).strip()}")
        else:
            print(f"  {where}: infergate check-config accepts the ConfigMap's TOML")


def check_grafana() -> None:
    where = "deploy/grafana"
    with open(os.path.join(GRAFANA, "datasources", "infergate.yaml"), encoding="utf-8") as f:
        ds = yaml.safe_load(f)
    with open(os.path.join(GRAFANA, "dashboards", "infergate.yaml"), encoding="utf-8") as f:
        prov = yaml.safe_load(f)
    if ds.get("apiVersion") != 1 or prov.get("apiVersion") != 1:
        fail(where, "provisioning files need apiVersion: 1")
    sources = ds.get("datasources", [])
    if not any(s.get("type") == "prometheus" and s.get("url") and s.get("isDefault") for s in sources):
        fail(where, "no default Prometheus data source with a url")
    providers = prov.get("providers", [])
    if not providers or any(p.get("type") != "file" or not p.get("options", {}).get("path") for p in providers):
        fail(where, "dashboard providers need type: file and options.path")
    with open(os.path.join(ROOT, "dashboards", "infergate.json"), encoding="utf-8") as f:
        dash = json.load(f)
    var = [v for v in dash.get("templating", {}).get("list", []) if v.get("type") == "datasource"]
    if not var or var[0].get("query") != "prometheus":
        fail(where, "dashboards/infergate.json has no Prometheus data-source variable")
    if not failures:
        print(f"  {where}: {len(sources)} data source, {len(providers)} dashboard provider; dashboards/infergate.json parses")


def check_kubernetes_sd() -> None:
    where = "deploy/prometheus/prometheus-kubernetes-sd.yml"
    with open(os.path.join(ROOT, where), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    jobs = cfg.get("scrape_configs", [])
    if len(jobs) != 1 or jobs[0].get("job_name") != "infergate" or not jobs[0].get("kubernetes_sd_configs"):
        fail(where, "expected one job named infergate with kubernetes_sd_configs")
    else:
        print(f"  {where}: structure ok (promtool here lacks Kubernetes discovery)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="1.30.0,1.34.0", help="Kubernetes versions to validate against")
    ap.add_argument("--out", help="folder for each rendering as JSON (for crds.mjs)")
    ap.add_argument("--infergate", help="an infergate binary: run check-config on each rendered TOML")
    ap.add_argument("--no-kubectl", action="store_true", help="render with kustomize_lite.py alone")
    args = ap.parse_args()
    if args.no_kubectl:
        global KUBECTL
        KUBECTL = None
    versions = args.versions.split(",")
    dirs = [os.path.join(K8S, "base")] + sorted(
        os.path.join(K8S, "overlays", d) for d in os.listdir(os.path.join(K8S, "overlays"))
    )
    for d in dirs:
        where = os.path.relpath(d, ROOT)
        objs = render(d)
        if not objs:
            fail(where, "rendered no objects")
            continue
        for obj in validate_schemas(where, objs, versions):
            check_structure(where, obj)
        check_consistency(where, objs, args.infergate)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            name = where.replace("/", "_") + ".json"
            with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
                json.dump(objs, f)
    check_kubernetes_sd()
    check_grafana()
    if failures:
        print(f"{len(failures)} problem(s) in deploy/")
        return 1
    print("deploy/ manifests: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
