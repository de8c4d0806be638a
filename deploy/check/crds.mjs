// Validates the custom resources of each rendering (JSON files written by
// manifests.py --out) against their CRDs' OpenAPI schemas, as compiled by
// the @kubernetes-models packages (package.json): types, required fields,
// enums, patterns. (Unknown fields are not errors there: CRD schemas allow
// them, and the API server drops them; `kubectl apply` warns.)
//   node crds.mjs RENDERING.json...
import fs from "node:fs";
import path from "node:path";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = {
  "keda.sh/v1alpha1 ScaledObject": ScaledObject,
  "monitoring.coreos.com/v1 PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1 ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1 PrometheusRule": PrometheusRule,
};
const builtin = /^(v1|(apps|policy|autoscaling|batch|networking\.k8s\.io|rbac\.authorization\.k8s\.io)\/v\d+)$/;

let failed = 0;
for (const file of process.argv.slice(2)) {
  const where = path.basename(file, ".json");
  let checked = 0;
  for (const obj of JSON.parse(fs.readFileSync(file, "utf8"))) {
    if (builtin.test(obj.apiVersion)) continue;
    const name = `${obj.kind}/${obj.metadata?.name}`;
    const Model = models[`${obj.apiVersion} ${obj.kind}`];
    if (!Model) {
      console.log(`FAIL ${where}: ${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
      failed++;
      continue;
    }
    try {
      new Model(obj).validate();
      checked++;
    } catch (e) {
      console.log(`FAIL ${where}: ${name}: ${e.message}`);
      failed++;
    }
  }
  console.log(`  ${where}: ${checked} custom resources valid against their CRD schemas`);
}
process.exit(failed ? 1 : 0);
