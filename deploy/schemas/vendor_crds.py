"""Turn CustomResourceDefinitions into the strict JSON schemas deploy/check.sh validates with.

    python deploy/schemas/vendor_crds.py OUT_DIR CRD.yaml [CRD.yaml ...]

For each served version of each CRD it writes OUT_DIR/<kind>-<version>.json (lower case):
the version's openAPIV3Schema without descriptions, every object that lists its properties
closed (additionalProperties: false, as `kubernetes-validate --strict` does for built-in
kinds) unless the CRD keeps unknown fields there (x-kubernetes-preserve-unknown-fields).
The API server would prune an unknown field silently; this check fails on it instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def strict(node: object) -> object:
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "description"}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    # x-kubernetes-int-or-string: Kubernetes accepts a number or a string.
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def main(out_dir: str, *crds: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in crds:
        crd = yaml.safe_load(Path(path).read_text())
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = strict(version["schema"]["openAPIV3Schema"])
            # metadata is checked by the API server's ObjectMeta, not by the CRD.
            schema["properties"]["metadata"] = {"type": "object"}
            target = out / f"{kind.lower()}-{version['name']}.json"
            target.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
            print(f"{target}: {crd['spec']['group']}/{version['name']} {kind}")


if __name__ == "__main__":
    main(*sys.argv[1:])
