"""Generate the ModelDeployment CRD from the pydantic models.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3.0 subset:
refs inlined, no nullable unions, no titles, `exclusiveMinimum` as a boolean, and
int-or-string marked with `x-kubernetes-int-or-string`.
"""

from __future__ import annotations

from typing import Any

import yaml

from modeldeploy import GROUP, KIND, PLURAL, VERSION
from modeldeploy.api import (
    STATUS_DEFAULT,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    VerificationStatus,
)
from modeldeploy.render import NoAliasDumper

Schema = dict[str, Any]
_KEEP = {
    "type", "properties", "items", "required", "enum", "default", "description", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "maxProperties", "pattern", "additionalProperties",
    "format",
    "x-kubernetes-validations", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "exclusiveMinimum", "exclusiveMaximum",
}  # fmt: skip
_CONSTRAINTS = {"ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length", "allow_inf_nan", "strict"}


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    """One pydantic schema node to a structural Kubernetes schema node."""
    node = _resolve(node, defs)
    out: Schema = {}
    if "anyOf" in node:
        branches = [_resolve(b, defs) for b in node["anyOf"] if b.get("type") != "null"]
        types = {b.get("type") for b in branches}
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if types == {"integer", "string"}:
            out["x-kubernetes-int-or-string"] = True
            for k in ("description", "default"):
                if rest.get(k) is not None:
                    out[k] = rest[k]
            return out
        if len(branches) != 1:
            raise ValueError(f"cannot express union {node} in a structural schema")
        # Optional[X]: absence means None; the null branch and null default go away.
        node = {**convert(branches[0], defs), **{k: v for k, v in rest.items() if v is not None}}
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    unknown = _CONSTRAINTS & node.keys()
    if unknown:
        # pydantic writes bounds it could not put into the type's schema (a validator before them
        # in the Annotated) under their Python names; the API server would silently ignore them.
        raise ValueError(f"bounds {sorted(unknown)} are not JSON Schema keywords in {node}")
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = convert(value, defs)
            # `additionalProperties: false` (extra="forbid") is implied by pruning.
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        else:
            out[key] = value
    if isinstance(out.get("default"), dict):
        # Object defaults are written out whole (minus unset optionals) so CEL rules on the
        # object can be evaluated against the default itself.
        out["default"] = _strip_none(out["default"])
    if out.get("type") == "array" and "x-kubernetes-list-type" not in out:
        out["x-kubernetes-list-type"] = "atomic"
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def schema_for(model: type[Any]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return convert(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    spec_schema = schema_for(ModelDeploymentSpec)
    status_schema = schema_for(ModelDeploymentStatus)
    status_schema["properties"]["conditions"].update(
        {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    )
    # The prober's keys beside the reconcile's (conditions are shared: a list map by type, each
    # writer owning its own types under its own field manager).
    verification = schema_for(VerificationStatus)["properties"]
    for key, sub in verification.items():
        if key != "conditions":
            status_schema["properties"][key] = sub
    # A new object reads as in progress (observedGeneration 0, Ready Unknown) until the operator
    # writes status: the API server applies this default to every object without a status.
    status_schema["default"] = ModelDeploymentStatus.model_validate(STATUS_DEFAULT).model_dump(
        by_alias=True, exclude_defaults=True
    )
    ready = '.status.conditions[?(@.type=="Ready")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["mdep"],
                "categories": ["all", "modeldeploy"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Model", "type": "string", "jsonPath": ".status.model"},
                        {"name": "Quantize", "type": "string", "jsonPath": ".spec.engine.quantize"},
                        {"name": "GPUs", "type": "integer", "jsonPath": ".status.plan.gpusPerReplica"},
                        {"name": "Ready-Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A Hugging Face model served by Text Generation Inference.",
                            "required": ["spec"],
                            # CEL on metadata.name is only allowed at the root.
                            "x-kubernetes-validations": [r.crd() for r in ModelDeployment.cel_rules],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                # name is declared so the root rule's fieldPath can point at it.
                                "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    return yaml.dump(crd(), Dumper=NoAliasDumper, sort_keys=False, width=120)
