"""Conflicts: other field managers edit a model's children. What the operator applied (replicas,
an env var's value, the image, a deleted Service or PodDisruptionBudget) is restored by one
apply, from the child's watch event alone (the resync is an hour); what others added (a label,
an annotation, an env var of their own) stays, and costs the operator no write at all. The API
server's audit log counts the operator's writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from mdlocal.audit import AuditLog
from mdlocal.localcluster import OPERATOR_TOKEN_USER
from tests.conftest import Cluster
from tests.drills.kit import (
    Obj,
    Operator,
    Operators,
    Report,
    mdep,
    poll,
    render,
    subset_diff,
    wait_all_converged,
)

CHILDREN = ("deployments", "services", "poddisruptionbudgets")
QUIET = 3.0  # seconds with nothing to do, after a step, in which the operator must write nothing more


def container(dep: Obj) -> Obj:
    out: Obj = dep["spec"]["template"]["spec"]["containers"][0]
    return out


def env_of(dep: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(dep).get("env") or []}


def test_conflicts(
    cluster: Cluster, namespace: str, operators: Operators, gpu_pool: int, report: Report
) -> None:
    ns = namespace
    op: Operator = operators.new("conflicts", [ns], {"MODELDEPLOY_RESYNC_SECONDS": "3600"}).start()
    body = mdep("conf", replicas=2)
    cluster.apply(body, ns)
    wait_all_converged(cluster, ns, ["conf"], timeout=90)
    audit = AuditLog(cluster.lc.audit_log)
    report.did(
        f"model conf (2 replicas: Deployment, Service, PodDisruptionBudget) Ready; operator pid {op.pid}"
    )

    def writes(mark: int) -> list[str]:
        return [
            f"{r.verb} {r.resource}/{r.name}"
            for r in audit.since(mark, OPERATOR_TOKEN_USER)
            if r.write and r.namespace == ns and r.resource in CHILDREN
        ]

    def dep() -> Obj:
        out: Obj = cluster.get("deployment", "conf", ns) or {}
        return out

    def settle(seen: float) -> None:
        """Until the operator has run a pass after the edit, and then QUIET seconds."""
        cluster.wait("a pass after the edit", lambda: op.passes() > seen, timeout=30)
        time.sleep(QUIET)  # the check is that nothing more happens in this window

    figures: dict[str, Any] = {}

    def step(
        what: str, edits: list[tuple[str, ...]], restored: Callable[[], bool] | None, expect: int
    ) -> None:
        """Run the kubectl commands `edits` (another field manager); wait for `restored` (None:
        the edit stays); the operator must have written its children exactly `expect` times."""
        mark, seen = audit.mark(), op.passes()
        for args in edits:
            cluster.kubectl(*args)
        took = 0.0
        if restored is not None:
            _, took = poll(f"restored after: {what}", restored, timeout=30)
        settle(seen)
        w = writes(mark)
        figures[what] = {"restore seconds": round(took, 1), "operator writes": len(w)}
        assert len(w) == expect, f"{what}: the operator wrote {w}, expected {expect} write(s)"
        report.checked(
            f"{what}: "
            + (f"restored in {took:.1f}s" if restored else "left alone")
            + f", operator writes: {w}"
        )

    def recreated(kind: str) -> Callable[[], bool]:
        uid = (cluster.get(kind, "conf", ns) or {})["metadata"]["uid"]
        return lambda: (cluster.get(kind, "conf", ns) or {}).get("metadata", {}).get("uid") not in (None, uid)

    on_both = ("deployment,service", "conf", "-n", ns)
    # Others' additions: no write by the operator, and they stay.
    step(
        "label and annotation added to the Deployment and the Service",
        [("label", *on_both, "team=ml"), ("annotate", *on_both, "example.com/owner=platform")],
        None,
        0,
    )
    step(
        "env var FOREIGN added to the container",
        [("set", "env", "deployment/conf", "-n", ns, "FOREIGN=1")],
        None,
        0,
    )
    # Changes to what the operator owns: one apply restores each.
    step(
        "kubectl scale deployment --replicas=5",
        [("scale", "deployment", "conf", "-n", ns, "--replicas=5")],
        lambda: dep()["spec"]["replicas"] == 2,
        1,
    )
    step(
        "kubectl set env HF_HOME=/elsewhere (an env var the operator sets)",
        [("set", "env", "deployment/conf", "-n", ns, "HF_HOME=/elsewhere")],
        lambda: env_of(dep()).get("HF_HOME") == "/data",
        1,
    )
    image = container(dep())["image"]
    patch = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "example.com/evil:1"}
    ]
    step(
        "JSON patch of the container image",
        [("patch", "deployment", "conf", "-n", ns, "--type=json", "-p", json.dumps(patch))],
        lambda: container(dep())["image"] == image,
        1,
    )
    step("Service deleted", [("delete", "service", "conf", "-n", ns)], recreated("service"), 1)
    step("PodDisruptionBudget deleted", [("delete", "pdb", "conf", "-n", ns)], recreated("pdb"), 1)

    # In the end: what the operator owns is as rendered; what others added is still there.
    final = dep()
    rendered = render([{**body, "metadata": {"name": "conf", "namespace": ns}}])
    want = json.loads(json.dumps(rendered[("Deployment", "conf")]))
    want["spec"].pop("strategy", None)
    theirs = json.loads(json.dumps(final))
    c = container(theirs)
    c["env"] = [e for e in c["env"] if e["name"] != "FOREIGN"]  # theirs: checked below
    assert not subset_diff(want, theirs), subset_diff(want, theirs)
    svc = cluster.get("service", "conf", ns) or {}
    assert not subset_diff(rendered[("Service", "conf")], svc), subset_diff(
        rendered[("Service", "conf")], svc
    )
    assert final["metadata"]["labels"].get("team") == "ml"
    assert final["metadata"]["annotations"].get("example.com/owner") == "platform"
    assert env_of(final).get("FOREIGN") == "1"
    report.checked(
        "the Deployment and Service match `modeldeploy render`; the label, annotation and FOREIGN env var "
        "others added are still on the Deployment"
    )
    wait_all_converged(cluster, ns, ["conf"], timeout=60)
    for k, v in figures.items():
        report.figure(k, v)
    op.assert_alive()
    assert not op.unhandled(), op.unhandled()[:10]
