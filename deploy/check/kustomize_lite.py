"""A small kustomize for machines without one: the subset deploy/kubernetes uses.

`kubectl kustomize` (kustomize v5) is what deploy/check/manifests.py uses
when the machine has kubectl; there it also renders with this module and
fails on any difference, so this stays faithful to what it covers. Anything
outside that subset is refused by name rather than rendered differently:

- resources: files (one or more YAML documents) and folders with a
  kustomization.yaml;
- configMapGenerator: files (`path` or `key=path`), literals, options
  (labels, annotations, disableNameSuffixHash), behavior create / replace /
  merge; generatorOptions (labels, annotations, disableNameSuffixHash);
  the name-hash suffix exactly as kustomize computes it, and the references
  to the ConfigMap in pod templates rewritten to the suffixed name;
- patches: `path` or inline `patch`, with an optional `target` (group,
  version, kind, name, namespace); a strategic-merge patch, or a JSON 6902
  patch (a YAML list of operations: add, remove, replace, test);
- images: newName, newTag, digest;
- namespace (a Namespace object among the resources takes its name).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any

import yaml

KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "images",
    "namespace",
}

# Kinds whose pod template carries containers and volumes.
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# Cluster-scoped kinds among those a kustomization here may hold.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}

# Strategic-merge keys of the built-in lists used in pod templates and
# Services (upstream's patchMergeKey). Other lists are replaced whole, as
# kustomize does for custom resources.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}

GENERATED = "__kustomize_lite_generated__"


class Unsupported(Exception):
    """A kustomization uses something this renderer does not implement."""


def _load_docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _builtin(obj: dict) -> bool:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def _smp(base: Any, patch: Any, builtin: bool, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise Unsupported(f"strategic-merge directive in {sorted(patch)}")
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _smp(out[k], v, builtin, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = MERGE_KEYS.get(field) if builtin else None
        if field == "ports" and builtin:
            key = "containerPort" if all("containerPort" in p for p in patch) else "port"
        if key and all(isinstance(i, dict) and key in i for i in base + patch):
            out = [copy.deepcopy(i) for i in base]
            for item in patch:
                for n, existing in enumerate(out):
                    if existing[key] == item[key]:
                        out[n] = _smp(existing, item, builtin, "")
                        break
                else:
                    out.append(copy.deepcopy(item))
            return out
        return copy.deepcopy(patch)
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise Unsupported(f"JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(obj: dict, ops: list[dict]) -> dict:
    obj = copy.deepcopy(obj)
    for op in ops:
        kind = op.get("op")
        parts = _pointer(op["path"])
        parent: Any = obj
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if kind in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif kind == "add":
                    parent.insert(int(last), value)
                else:
                    parent[int(last)] = value
            else:
                if kind == "replace" and last not in parent:
                    raise Unsupported(f"replace of a missing path {op['path']}")
                parent[last] = value
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent[last]
            if current != op["value"]:
                raise Unsupported(f"test failed at {op['path']}")
        else:
            raise Unsupported(f"JSON patch op {kind!r}")
    return obj


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": obj.get("kind"),
        "name": obj.get("metadata", {}).get("name"),
        "namespace": obj.get("metadata", {}).get("namespace"),
    }
    for key, want in target.items():
        if key not in checks:
            raise Unsupported(f"patch target field {key!r}")
        if checks[key] != want:
            return False
    return True


def _apply_patch(objs: list[dict], base_dir: str, entry: dict) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise Unsupported(f"patches entry fields {sorted(unknown)}")
    if "path" in entry:
        docs = _load_docs(os.path.join(base_dir, entry["path"]))
    else:
        docs = [d for d in yaml.safe_load_all(entry["patch"]) if d]
    target = entry.get("target")
    for doc in docs:
        if isinstance(doc, list):
            if not target:
                raise Unsupported("a JSON 6902 patch without a target")
            hits = [i for i, o in enumerate(objs) if _matches(o, target)]
            if not hits:
                raise Unsupported(f"patch target {target} matches nothing")
            for i in hits:
                objs[i] = _json6902(objs[i], doc)
            continue
        sel = target or {
            "kind": doc.get("kind"),
            "name": doc.get("metadata", {}).get("name"),
        }
        hits = [i for i, o in enumerate(objs) if _matches(o, sel)]
        if not hits:
            raise Unsupported(f"patch {sel} matches nothing")
        for i in hits:
            patch = copy.deepcopy(doc)
            # A targeted patch's own name never renames what it patches.
            for key in ("name", "namespace"):
                patch.get("metadata", {}).pop(key, None)
            patch.pop("apiVersion", None)
            patch.pop("kind", None)
            objs[i] = _smp(objs[i], patch, _builtin(objs[i]))


def _generate_configmap(base_dir: str, entry: dict, options: dict) -> dict:
    unknown = set(entry) - {"name", "files", "literals", "options", "behavior", "namespace"}
    if unknown:
        raise Unsupported(f"configMapGenerator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for spec in entry.get("files", []):
        key, _, path = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
        with open(os.path.join(base_dir, path), encoding="utf-8") as f:
            data[key] = f.read()
    for lit in entry.get("literals", []):
        key, _, value = lit.partition("=")
        data[key] = value
    opts = {**options, **entry.get("options", {})}
    meta: dict[str, Any] = {"name": entry["name"]}
    if entry.get("namespace"):
        meta["namespace"] = entry["namespace"]
    if opts.get("labels"):
        meta["labels"] = dict(opts["labels"])
    if opts.get("annotations"):
        meta["annotations"] = dict(opts["annotations"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": data,
        GENERATED: {"hash": not opts.get("disableNameSuffixHash", False)},
    }


def _set_image(container: dict, images: list[dict]) -> None:
    image = container.get("image", "")
    name, tag = image, ""
    if "@" in image:
        name, _, _ = image.partition("@")
    elif ":" in image.rsplit("/", 1)[-1]:
        name, _, tag = image.rpartition(":")
    for spec in images:
        if spec["name"] != name:
            continue
        new = spec.get("newName", name)
        if "digest" in spec:
            container["image"] = f"{new}@{spec['digest']}"
        elif "newTag" in spec:
            container["image"] = f"{new}:{spec['newTag']}"
        else:
            container["image"] = f"{new}:{tag}" if tag else new


def _pod_specs(obj: dict) -> list[dict]:
    if obj.get("kind") in POD_TEMPLATE_KINDS:
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        return [spec] if spec else []
    if obj.get("kind") == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"].get("spec")
        return [spec] if spec else []
    if obj.get("kind") == "Pod":
        return [obj["spec"]]
    return []


def _containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod.get("containers", [])


def _build(path: str, seen: tuple[str, ...] = ()) -> list[dict]:
    path = os.path.realpath(path)
    if path in seen:
        raise Unsupported(f"a kustomization cycle through {path}")
    with open(os.path.join(path, "kustomization.yaml"), encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise Unsupported(f"{path}/kustomization.yaml: fields {sorted(unknown)}")
    objs: list[dict] = []
    for res in k.get("resources", []):
        rp = os.path.join(path, res)
        objs += _build(rp, seen + (path,)) if os.path.isdir(rp) else _load_docs(rp)
    options = k.get("generatorOptions", {})
    for entry in k.get("configMapGenerator", []):
        cm = _generate_configmap(path, entry, options)
        behavior = entry.get("behavior", "create")
        existing = [
            i
            for i, o in enumerate(objs)
            if o.get("kind") == "ConfigMap" and GENERATED in o and o["metadata"]["name"] == cm["metadata"]["name"]
        ]
        if behavior == "create":
            if existing:
                raise Unsupported(f"ConfigMap {cm['metadata']['name']} generated twice")
            objs.append(cm)
        elif behavior in ("replace", "merge") and existing:
            old = objs[existing[0]]
            if behavior == "merge":
                cm["data"] = {**old.get("data", {}), **cm["data"]}
                for field in ("labels", "annotations"):
                    merged = {**old["metadata"].get(field, {}), **cm["metadata"].get(field, {})}
                    if merged:
                        cm["metadata"][field] = merged
            objs[existing[0]] = cm
        else:
            raise Unsupported(f"configMapGenerator behavior {behavior!r} for {cm['metadata']['name']}")
    for entry in k.get("patches", []):
        _apply_patch(objs, path, entry)
    if k.get("namespace"):
        for o in objs:
            if o.get("kind") == "Namespace":  # kustomize renames it too
                o.setdefault("metadata", {})["name"] = k["namespace"]
            elif o.get("kind") not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = k["namespace"]
    if k.get("images"):
        for o in objs:
            for pod in _pod_specs(o):
                for c in _containers(pod):
                    _set_image(c, k["images"])
    return objs


def _go_json(value: Any) -> str:
    """json.Marshal's encoding: sorted keys, no spaces, <>& escaped."""
    s = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def config_map_hash(cm: dict) -> str:
    """kustomize's name suffix for a ConfigMap (api/hasher). Its lookup of
    "metadata/name" finds no such top-level field, so the name hashes as
    "" (kustomize v5 does exactly this)."""
    m: dict[str, Any] = {"kind": "ConfigMap", "name": "", "data": cm.get("data", {})}
    if isinstance(cm.get("binaryData"), dict):
        m["binaryData"] = cm["binaryData"]
    digest = hashlib.sha256(_go_json(m).encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _rename_refs(pod: dict, renames: dict[str, str]) -> None:
    for vol in pod.get("volumes", []):
        if "configMap" in vol and vol["configMap"].get("name") in renames:
            vol["configMap"]["name"] = renames[vol["configMap"]["name"]]
        for src in vol.get("projected", {}).get("sources", []):
            ref = src.get("configMap")
            if ref and ref.get("name") in renames:
                ref["name"] = renames[ref["name"]]
    for c in _containers(pod):
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref and ref.get("name") in renames:
                ref["name"] = renames[ref["name"]]
        for src in c.get("envFrom", []):
            ref = src.get("configMapRef")
            if ref and ref.get("name") in renames:
                ref["name"] = renames[ref["name"]]


def render(path: str) -> list[dict]:
    """The objects `kubectl kustomize PATH` would print (in another order)."""
    objs = _build(path)
    renames: dict[str, str] = {}
    for o in objs:
        gen = o.pop(GENERATED, None)
        if gen and gen["hash"]:
            old = o["metadata"]["name"]
            o["metadata"]["name"] = f"{old}-{config_map_hash(o)}"
            renames[old] = o["metadata"]["name"]
    for o in objs:
        for pod in _pod_specs(o):
            _rename_refs(pod, renames)
    return objs
