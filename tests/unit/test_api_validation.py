"""The pydantic models refuse what the CRD refuses (tests/admission_cases.py is the shared table,
tests/integration/test_admission.py runs it against the API server), and the generated schema
carries the rules the API server needs."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from modeldeploy import api
from modeldeploy.api import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from modeldeploy.crdgen import convert, crd
from tests import kstatus
from tests.admission_cases import BAD, GOOD, Case


def _paths(err: ValidationError) -> list[str]:
    """Each error's location as the API server writes it: spec.a.b[0].c, with the message."""
    out = []
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        out.append(f"{path.lstrip('.')}: {e['msg']}")
    return out


def validate(case: Case) -> ModelDeployment:
    return ModelDeployment.model_validate(case.body())


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_pydantic_refuses_what_the_crd_refuses(case: Case) -> None:
    if case.field == "metadata.name":
        with pytest.raises(ValidationError, match=r"metadata\.name"):
            validate(case)
        return
    with pytest.raises(ValidationError) as info:
        validate(case)
    paths = _paths(info.value)
    assert any(p.startswith(case.field) for p in paths), paths


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_pydantic_admits_the_good_edge_cases(case: Case) -> None:
    validate(case)


@pytest.mark.parametrize("value", [math.nan, math.inf, 2.5, "3", True])
def test_integers_are_json_integers(value: Any) -> None:
    with pytest.raises(ValidationError, match="replicas"):
        ModelDeploymentSpec.model_validate({"model": {"id": "a/b"}, "replicas": value})


def test_integral_floats_are_integers_as_for_the_api_server() -> None:
    # YAML `2.0` reaches the API server as JSON 2, which an integer field takes.
    assert ModelDeploymentSpec.model_validate({"model": {"id": "a/b"}, "replicas": 2.0}).replicas == 2


def test_kv_cache_dtype_is_exactly_tgis() -> None:
    assert {d.value for d in api.KvCacheDtype} == {"fp8_e4m3fn", "fp8_e5m2"}


@pytest.mark.parametrize(
    ("text", "ok"),
    [("32Gi", True), ("500M", True), ("1.5", True), ("100m", True), (".5", True), ("1e3", True),
     ("1.", True), ("0", False), ("0.0Gi", False), ("32GB", False), ("-1", False), ("1 Gi", False),
     ("", False), ("Gi", False), ("1e99999999999", False)],
)  # fmt: skip
def test_positive_quantity(text: str, ok: bool) -> None:
    assert api.is_positive_quantity(text) is ok


def _schema_rules(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        out += [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        for v in node.values():
            out += _schema_rules(v)
    elif isinstance(node, list):
        for v in node:
            out += _schema_rules(v)
    return out


def _root() -> dict[str, Any]:
    root: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def test_root_rule_makes_the_name_a_dns_1035_label() -> None:
    rules = [r["rule"] for r in _root()["x-kubernetes-validations"]]
    assert any("self.metadata.name" in r for r in rules)


def test_every_cel_rule_names_its_field() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for r in node.get("x-kubernetes-validations", []):
                where = path + r.get("fieldPath", "")
                assert where in r["message"], (where, r)
            for key, sub in (node.get("properties") or {}).items():
                walk(sub, f"{path}.{key}" if path else key)
            if "items" in node:
                walk(node["items"], path + "[*]")
            if isinstance(node.get("additionalProperties"), dict):
                walk(node["additionalProperties"], path + "[*]")

    root = _root()
    walk(root["properties"]["spec"], "spec")
    for r in root["x-kubernetes-validations"]:
        assert "metadata.name" in r["message"]


def test_status_default_reads_in_progress_and_parses() -> None:
    default = _root()["properties"]["status"]["default"]
    assert default["observedGeneration"] == 0
    ready = [c for c in default["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "Unknown"
    ModelDeploymentStatus.model_validate(default)
    obj = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "m", "generation": 1}, "spec": {}, "status": default}  # fmt: skip
    assert kstatus.compute(obj).status == kstatus.Status.IN_PROGRESS


def test_status_default_is_valid_against_the_status_schema() -> None:
    status = _root()["properties"]["status"]
    conditions = status["properties"]["conditions"]["items"]
    for c in status["default"]["conditions"]:
        assert set(conditions["required"]) <= set(c)
        assert c["status"] in conditions["properties"]["status"]["enum"]


def test_crdgen_refuses_bounds_pydantic_could_not_express() -> None:
    # pydantic writes ge/le when a validator precedes the bounds; the API server would ignore them.
    with pytest.raises(ValueError, match="bounds"):
        convert({"type": "integer", "ge": 0, "le": 64}, {})


def test_every_integer_in_the_spec_is_bounded() -> None:
    unbounded: list[str] = []

    def walk(node: Any, path: str) -> None:
        if node.get("type") == "integer" and "maximum" not in node:
            unbounded.append(path)
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[*]")

    walk(_root()["properties"]["spec"], "spec")
    assert not unbounded
