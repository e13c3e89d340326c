"""Hostile input: a property-based run (hypothesis) of generated specs (tests/drills/specgen.py,
from the CRD's schema), valid and invalid, through the real API server. Each one is sent as a
server-side dry run first (admission: schema and CEL); a refusal must carry a message. Admitted
ones are created for real (all of them, up to a cap) in a namespace whose ResourceQuota allows no
pods (the children are made, no pod runs: the drill is about the operator, not the scheduler),
and each must end reconciled (children applied at its generation, or waiting for its cache) or
Stalled with a condition naming the field, with no child made. Meanwhile a valid canary model in
another namespace serves, and must not be touched. Then over a window the operator's passes per
refused object (its log has one line per pass of a failing model) and writes per object (the
audit log) are counted: no hot loop. The operator must never exit or log an unhandled error."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mdlocal.audit import AuditLog
from mdlocal.localcluster import OPERATOR_TOKEN_USER
from modeldeploy.status import RUNTIME_STALLED
from tests.conftest import Cluster, condition
from tests.drills import specgen
from tests.drills.kit import Obj, Operators, Report, api_client, mdep, size, wait_all_converged

# The long form runs longer than the suite's 10-minute limit per test.
pytestmark = pytest.mark.timeout(1800)

GROUP, VERSION, PLURAL = "modeldeploy.dev", "v1alpha1", "modeldeployments"
# The resync puts every model back into the queue: with hundreds of models on two cores a short
# one would itself be the load. The hot-loop bound scales with it.
RESYNC = float(size(10, 30))
NAMES_FIELD = re.compile(r"\b(spec|metadata)(\.[A-Za-z]|: )")


def verdict(obj: Obj, deployments: dict[str, Obj]) -> str | None:
    """reconciled / cache / stalled for a model the operator has judged; None while not yet."""
    st_ = obj.get("status") or {}
    stalled = condition(obj, "Stalled")
    if st_.get("observedGeneration") == obj["metadata"]["generation"]:
        if stalled and stalled["status"] == "True" and stalled["reason"] not in RUNTIME_STALLED:
            return "stalled"
        dep = deployments.get(obj["metadata"]["name"])
        if dep is not None and any(
            r["uid"] == obj["metadata"]["uid"] for r in dep["metadata"]["ownerReferences"]
        ):
            return "reconciled"
        return None
    if condition(obj, "CacheReady") is not None and "cache" in st_:
        return "cache"
    return None


def test_hostile(
    cluster: Cluster, namespace: str, operators: Operators, gpu_pool: int, report: Report
) -> None:

    ns = namespace
    canary_ns = f"{ns}-canary"
    cluster.kubectl("create", "namespace", canary_ns)
    try:
        run(cluster, ns, canary_ns, operators, report)
    finally:
        cluster.kubectl("delete", "namespace", canary_ns, "--wait=false", check=False)


def run(cluster: Cluster, ns: str, canary_ns: str, operators: Operators, report: Report) -> None:
    examples, cap = size(150, 1000), size(40, 200)
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
                   "spec": {"hard": {"pods": "0"}}}, ns)  # fmt: skip
    cluster.wait("quota counted", lambda: (cluster.get("resourcequota", "no-pods", ns) or {}).get("status"))
    op = operators.new("hostile", [ns, canary_ns], {"MODELDEPLOY_RESYNC_SECONDS": str(RESYNC)}).start()
    cluster.wait(
        "default ServiceAccount", lambda: cluster.get("serviceaccount", "default", canary_ns), timeout=60
    )
    cluster.apply(mdep("canary", replicas=2), canary_ns)
    wait_all_converged(cluster, canary_ns, ["canary"], timeout=90)
    before = {k: cluster.get(k, "canary", canary_ns) for k in ("deployment", "service", "pdb", "mdep")}
    report.did(f"canary model Ready in {canary_ns}; operator pid {op.pid} (resync {RESYNC:.0f}s) on {ns} too")

    api = client.CustomObjectsApi(api_client(cluster))
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    refusals_without_field: list[str] = []
    created: dict[str, Obj] = {}
    reasons: Counter[str] = Counter()
    counter = iter(range(10**6))

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(spec=specgen.specs(), hostile_name=specgen.names(), extra=st.booleans())
    def send(spec: Any, hostile_name: str | None, extra: bool) -> None:
        name = hostile_name or f"h{next(counter):04d}"
        body: Obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                     "metadata": {"name": name}, "spec": spec}  # fmt: skip
        if extra:
            body["unknownTopLevel"] = {"x": 1}  # unknown fields: pruned or refused, never kept
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body, dry_run="All")
        except ApiException as e:
            message = ""
            try:
                message = str(json.loads(e.body or "{}").get("message", ""))
            except ValueError:
                message = str(e.body)
            if e.status in (400, 409, 422) and message:
                outcomes["refused at admission"] += 1
                reasons[message.split(" is invalid: ")[-1][:70]] += 1
                if not NAMES_FIELD.search(message):
                    refusals_without_field.append(message[:200])
            else:
                outcomes[f"API status {e.status}"] += 1
                problems.append(f"{name}: dry run answered {e.status} {message[:300]!r}")
            return
        except Exception as e:  # the client could not even send it
            outcomes["client error"] += 1
            problems.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
            return
        outcomes["admitted"] += 1
        if len(created) < cap and name not in created:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
            created[name] = spec

    started = time.monotonic()
    send()
    sent = time.monotonic() - started
    report.figure("specs generated and sent (dry run)", sum(outcomes.values()))
    report.figure("outcomes at admission", dict(outcomes))
    report.figure("created for real", len(created))
    report.figure("most common admission refusals", dict(reasons.most_common(8)))
    report.did(
        f"{sum(outcomes.values())} specs through admission in {sent:.0f}s; {len(created)} created for real"
    )

    verdicts: dict[str, str | None] = {}

    def judged() -> bool:
        objs = {m["metadata"]["name"]: m for m in cluster.list("modeldeployment", ns)}
        deps = {d["metadata"]["name"]: d for d in cluster.list("deployment", ns)}
        for n in created:
            verdicts[n] = verdict(objs[n], deps) if n in objs else "missing"
        return all(v is not None for v in verdicts.values())

    try:
        cluster.wait(f"a verdict on all {len(created)} created models", judged, timeout=size(180, 600))
    except TimeoutError:
        pending = [n for n, v in verdicts.items() if v is None]
        objs = {m["metadata"]["name"]: m for m in cluster.list("modeldeployment", ns)}
        problems += [f"{n}: no verdict: {json.dumps(objs[n].get('status'))[:400]}" for n in pending[:10]]
    report.figure("verdicts on created models", dict(Counter(str(v) for v in verdicts.values())))
    objs = {m["metadata"]["name"]: m for m in cluster.list("modeldeployment", ns)}
    deps = {d["metadata"]["name"] for d in cluster.list("deployment", ns)}
    stalled_names = [n for n, v in verdicts.items() if v == "stalled"]
    for n in stalled_names:
        c = condition(objs[n], "Stalled") or {}
        if not NAMES_FIELD.search(c.get("message", "")):
            problems.append(f"{n}: Stalled without naming a field: {c}")
        if n in deps:
            problems.append(f"{n}: refused, yet a Deployment was made")
    for n, v in verdicts.items():
        if v == "missing":
            problems.append(f"{n}: admitted and created, then gone")

    # No hot loop: passes per refused object and writes per object over a window.
    window = int(3 * RESYNC)
    mark, audit_mark = op.mark(), AuditLog(cluster.lc.audit_log).mark()
    time.sleep(window)  # the check is how much happens in this window with nothing changing
    log = op.text(mark)
    passes = {n: len(re.findall(rf"{re.escape(ns)}/{re.escape(n)}: ", log)) for n in stalled_names}
    quiet = [
        r for r in AuditLog(cluster.lc.audit_log).since(audit_mark, OPERATOR_TOKEN_USER)
        if r.write and r.namespace == ns and r.resource != "events"
    ]  # fmt: skip
    writes = Counter(r.name for r in quiet)
    kinds = Counter(f"{r.verb} {r.resource}" for r in quiet)
    most_passes = max(passes.values(), default=0)
    bound = int(window / RESYNC) + 2
    report.figure(f"max passes per refused object in {window}s (resync {RESYNC:.0f}s)", most_passes)
    report.figure(f"max operator writes per object in {window}s", max(writes.values(), default=0))
    report.figure(f"operator writes to refused objects in {window}s", sum(writes[n] for n in stalled_names))
    report.figure(f"operator writes in {window}s", dict(kinds.most_common(5)))
    if most_passes > bound:
        problems.append(f"hot loop: {most_passes} passes in {window}s (bound {bound}): {passes}")
    # A refused object has nothing new to say: its passes write nothing. A reconciled one may
    # have its status rewritten when its Deployment's words change (here: the quota refusing a
    # pod with a new random name on each of the ReplicaSet controller's backed-off retries).
    refused_writes = {n: writes[n] for n in stalled_names if writes[n]}
    if refused_writes:
        problems.append(f"refused objects written in a quiet window: {refused_writes}")
    if writes and max(writes.values()) > bound:
        problems.append(f"hot loop: writes in a quiet window: {writes.most_common(5)} (bound {bound})")

    after = {k: cluster.get(k, "canary", canary_ns) for k in ("deployment", "service", "pdb", "mdep")}
    for k, was in before.items():
        b, a = was or {}, after[k] or {}
        if a.get("metadata", {}).get("resourceVersion") != b.get("metadata", {}).get("resourceVersion"):
            problems.append(f"the canary's {k} changed: {json.dumps(a)[:300]}")
    unhandled = op.unhandled()
    report.figure("unhandled errors in the operator's log", len(unhandled))
    report.figure("admission refusals whose message names no field", len(refusals_without_field))
    for m in sorted(set(refusals_without_field))[:5]:
        report.did(f"refused at admission, naming no field: {m}")
    op.assert_alive()
    assert not unhandled, "\n".join(unhandled[:20])
    assert not problems, "\n".join(problems[:40])
    report.checked(
        f"every spec refused at admission with a message, reconciled, or Stalled naming the field; "
        f"operator alive; at most {most_passes} passes per refused object in {window}s; canary untouched"
    )
