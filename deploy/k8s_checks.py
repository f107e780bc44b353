"""Checks of a rendered overlay that schema validation cannot make; deploy/check.sh runs it.

    python deploy/k8s_checks.py OVERLAY RENDERED.yaml

OVERLAY is the overlay's name (dev, prod), RENDERED.yaml `kubectl kustomize` of it. Fails
(exit 1, one line per problem) when

- a custom resource (apiVersion outside Kubernetes' own groups) has no vendored schema
  (deploy/schemas/) or does not validate against it, strictly;
- a Service's selector matches no pod template (Deployment, StatefulSet, DaemonSet), or
  a Service's targetPort is a name no container of those pods declares; the same for the
  selector of a PodDisruptionBudget;
- a probe (startup, readiness, liveness) aims at a port its container does not declare;
- a ConfigMap or Secret (or a key of one) is referenced by a pod template or a
  CloudNativePG Cluster but neither rendered nor listed for this overlay in
  k8s/operator-provided.yaml; or an entry listed there for this overlay is not used by
  it, or is rendered by it after all.

Only PyYAML and jsonschema are needed: the tools venv of deploy/check.sh has both.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The CloudNativePG CRDs this repository uses, as vendored (deploy/schemas/README.md).
CRD_SCHEMAS = ROOT / "deploy/schemas/cnpg-1.30.0"
CUSTOM_GROUPS = {"postgresql.cnpg.io": CRD_SCHEMAS}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
SERVING_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") not in WORKLOADS:
        return None
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def containers(template: dict) -> Iterator[dict]:
    spec = template.get("spec", {})
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def where(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def check_custom_resources(objects: list[dict], problems: list[str]) -> int:
    checked = 0
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        if "." not in group or group in BUILTIN_K8S_IO:
            continue
        schemas = CUSTOM_GROUPS.get(group)
        schema_file = schemas / f"{obj['kind'].lower()}-{version}.json" if schemas else None
        if schema_file is None or not schema_file.is_file():
            problems.append(f"{where(obj)}: no schema for {obj['apiVersion']} (deploy/schemas/)")
            continue
        schema = json.loads(schema_file.read_text())
        validator = jsonschema.Draft7Validator(schema)
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"{where(obj)}: {path}: {error.message}")
        checked += 1
    return checked


# Groups ending in .k8s.io that Kubernetes itself serves (kubernetes-validate knows them).
BUILTIN_K8S_IO = {
    "networking.k8s.io", "rbac.authorization.k8s.io", "storage.k8s.io", "scheduling.k8s.io",
    "node.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "admissionregistration.k8s.io",
    "apiextensions.k8s.io", "apiregistration.k8s.io", "certificates.k8s.io",
    "flowcontrol.apiserver.k8s.io", "events.k8s.io", "resource.k8s.io",
    "authentication.k8s.io", "authorization.k8s.io", "internal.apiserver.k8s.io",
    "storagemigration.k8s.io",
}


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def check_selectors(objects: list[dict], problems: list[str]) -> int:
    templates = [
        (obj, pod_spec(obj)) for obj in objects if obj.get("kind") in SERVING_WORKLOADS
    ]
    checked = 0
    for obj in objects:
        if obj["kind"] == "Service":
            selector = obj["spec"].get("selector")
        elif obj["kind"] == "PodDisruptionBudget":
            selector = obj["spec"].get("selector", {}).get("matchLabels")
        else:
            continue
        if not selector:
            continue  # a Service without selector has its endpoints set by hand
        checked += 1
        namespace = obj["metadata"].get("namespace")
        selected = [
            template
            for workload, template in templates
            if workload["metadata"].get("namespace") == namespace
            and matches(selector, template["metadata"].get("labels", {}))
        ]
        if not selected:
            problems.append(f"{where(obj)}: selector {selector} matches no pod template")
            continue
        if obj["kind"] != "Service":
            continue
        for port in obj["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for template in selected:
                declared = [p for c in containers(template) for p in c.get("ports", [])]
                names = {p.get("name") for p in declared}
                numbers = {p["containerPort"] for p in declared}
                if (isinstance(target, str) and target not in names) or (
                    isinstance(target, int) and target not in numbers
                ):
                    problems.append(
                        f"{where(obj)}: targetPort {target!r} is not a port of the pods "
                        f"it selects ({sorted(names - {None}) or sorted(numbers)})"
                    )
    return checked


def check_probes(objects: list[dict], problems: list[str]) -> int:
    checked = 0
    for obj in objects:
        template = pod_spec(obj)
        if template is None:
            continue
        for container in containers(template):
            declared = container.get("ports", [])
            names = {p.get("name") for p in declared}
            numbers = {p["containerPort"] for p in declared}
            for probe_name in PROBES:
                probe = container.get(probe_name)
                if not probe:
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler not in probe:
                        continue
                    checked += 1
                    port = probe[handler]["port"]
                    if (isinstance(port, str) and port not in names) or (
                        isinstance(port, int) and port not in numbers
                    ):
                        problems.append(
                            f"{where(obj)}: container {container['name']}: {probe_name} "
                            f"{handler} port {port!r} is not a declared container port "
                            f"({sorted(numbers)})"
                        )
    return checked


def references(objects: list[dict]) -> Iterator[tuple[str, str, str | None, str]]:
    """(kind, name, key or None, who) of every ConfigMap and Secret reference."""
    for obj in objects:
        template = pod_spec(obj)
        if template is not None:
            spec = template.get("spec", {})
            for secret in spec.get("imagePullSecrets", []):
                yield "Secret", secret["name"], None, where(obj)
            for container in containers(template):
                who = f"{where(obj)} ({container['name']})"
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        yield "ConfigMap", source["configMapRef"]["name"], None, who
                    if "secretRef" in source:
                        yield "Secret", source["secretRef"]["name"], None, who
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {})
                    if "configMapKeyRef" in ref:
                        r = ref["configMapKeyRef"]
                        yield "ConfigMap", r["name"], r["key"], who
                    if "secretKeyRef" in ref:
                        r = ref["secretKeyRef"]
                        yield "Secret", r["name"], r["key"], who
            for volume in spec.get("volumes", []):
                who = f"{where(obj)} (volume {volume['name']})"
                sources = [volume]
                sources += volume.get("projected", {}).get("sources", [])
                for source in sources:
                    for field, kind, name_field in (
                        ("configMap", "ConfigMap", "name"),
                        ("secret", "Secret", "secretName" if source is volume else "name"),
                    ):
                        if field not in source:
                            continue
                        name = source[field][name_field]
                        items = source[field].get("items")
                        if items:
                            for item in items:
                                yield kind, name, item["key"], who
                        else:
                            yield kind, name, None, who
        if obj["kind"] == "Cluster" and obj["apiVersion"].startswith("postgresql.cnpg.io/"):
            spec = obj["spec"]
            for role in spec.get("managed", {}).get("roles", []):
                if "passwordSecret" in role:
                    name = role["passwordSecret"]["name"]
                    yield "Secret", name, "username", where(obj)
                    yield "Secret", name, "password", where(obj)
            store = spec.get("backup", {}).get("barmanObjectStore", {})
            for ref in store.get("s3Credentials", {}).values():
                if isinstance(ref, dict) and "name" in ref:
                    yield "Secret", ref["name"], ref.get("key"), where(obj)


def rendered_keys(obj: dict) -> set[str]:
    return set(obj.get("data", {})) | set(obj.get("stringData", {})) | set(
        obj.get("binaryData", {})
    )


def check_references(
    objects: list[dict], overlay: str, provided: list[dict], problems: list[str]
) -> tuple[int, set[tuple[str, str]]]:
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in objects
                if o["kind"] in ("ConfigMap", "Secret")}
    listed = {(p["kind"], p["name"]): p for p in provided if overlay in p["overlays"]}
    used: set[tuple[str, str]] = set()
    count = 0
    for kind, name, key, who in references(objects):
        count += 1
        if (kind, name) in rendered:
            keys = rendered_keys(rendered[(kind, name)])
        elif (kind, name) in listed:
            used.add((kind, name))
            keys = set(listed[(kind, name)]["keys"])
        else:
            problems.append(
                f"{who}: {kind} {name} is neither in the manifests nor in "
                f"k8s/operator-provided.yaml for {overlay}"
            )
            continue
        if key is not None and key not in keys:
            problems.append(f"{who}: {kind} {name} has no key {key!r} ({sorted(keys)})")
    for (kind, name), entry in listed.items():
        if (kind, name) not in used:
            problems.append(
                f"k8s/operator-provided.yaml: {kind} {name} is listed for {overlay} "
                "but nothing there uses it"
            )
        if (kind, name) in rendered:
            problems.append(
                f"k8s/operator-provided.yaml: {kind} {name} is listed for {overlay} "
                f"but the overlay renders it ({entry['what']})"
            )
    return count, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overlay")
    parser.add_argument("rendered", type=Path)
    args = parser.parse_args()
    objects = load(args.rendered)
    provided = yaml.safe_load((ROOT / "k8s/operator-provided.yaml").read_text())
    problems: list[str] = []
    custom = check_custom_resources(objects, problems)
    selectors = check_selectors(objects, problems)
    probes = check_probes(objects, problems)
    refs, _ = check_references(objects, args.overlay, provided, problems)
    for problem in problems:
        print(f"{args.overlay}: {problem}", file=sys.stderr)
    print(
        f"{args.overlay}: {len(objects)} objects; {custom} custom resources validated "
        f"against {CRD_SCHEMAS.relative_to(ROOT)}; {selectors} selectors select pods; "
        f"{probes} probes hit declared ports; {refs} ConfigMap/Secret references checked"
        + (f"; {len(problems)} PROBLEMS" if problems else "")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
