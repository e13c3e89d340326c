"""Crash: the operator is killed with SIGKILL while models are being created, more models are
created and some changed while it is down, and it is started again. Every model converges, and
its children are exactly what `modeldeploy render` makes of its current spec: none missing,
duplicated, orphaned or left at an older spec, none Stalled."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.drills.kit import (
    Obj,
    Operators,
    Report,
    mdep,
    models,
    render,
    size,
    subset_diff,
    wait_all_converged,
)

# The long form runs longer than the suite's 10-minute limit per test.
pytestmark = pytest.mark.timeout(1800)


NAME_LABEL = "modeldeploy.dev/name"
CHILD_KINDS = {"deployment": "Deployment", "service": "Service", "poddisruptionbudget": "PodDisruptionBudget"}


def body(i: int) -> Obj:
    # Every fifth model runs two replicas, so it has a PodDisruptionBudget too.
    return mdep(f"m{i:03d}", replicas=2 if i % 5 == 0 else 1, engine={"maxTotalTokens": 4096})


def controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return None


def test_crash(cluster: Cluster, namespace: str, operators: Operators, gpu_pool: int, report: Report) -> None:
    n = size(30, 100)
    bodies = [body(i) for i in range(n)]
    gpus = sum(b["spec"]["replicas"] for b in bodies)
    assert gpus <= gpu_pool, f"{gpus} GPUs needed, {gpu_pool} in the cluster"
    op = operators.new("crash", [namespace]).start()
    report.did(
        f"started the operator (pid {op.pid}) on namespace {namespace}; creating {n} models ({gpus} GPUs)"
    )

    created: list[str] = []
    failures: list[str] = []

    def create() -> None:
        try:
            for b in bodies:  # one at a time, as a GitOps sync or a script would
                cluster.apply(b, namespace)
                created.append(b["metadata"]["name"])
        except Exception as e:  # reported by the drill, not lost in a thread
            failures.append(repr(e))

    creator = threading.Thread(target=create, name="creator")
    creator.start()
    target = n // 4

    def deployments() -> int:
        return len(cluster.list("deployment", namespace))

    cluster.wait(f"{target} Deployments made", lambda: deployments() >= target, timeout=180)
    op.kill9()
    at_kill = (len(created), deployments())
    report.did(f"SIGKILL to the operator with {at_kill[0]} models created and {at_kill[1]} Deployments made")
    creator.join(timeout=300)
    assert not failures, failures
    assert len(created) == n
    report.did(f"created the other {n - at_kill[0]} models while the operator was down")

    # Change some models that already have children: the restarted operator must roll them.
    have = {d["metadata"]["name"] for d in cluster.list("deployment", namespace)}
    changed = sorted(have)[: max(3, n // 10)]
    for name in changed:
        cluster.kubectl("patch", "mdep", name, "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"engine": {"maxTotalTokens": 2048}}}))  # fmt: skip
        b = next(b for b in bodies if b["metadata"]["name"] == name)
        b["spec"]["engine"]["maxTotalTokens"] = 2048
    report.did(f"changed spec.engine.maxTotalTokens of {len(changed)} models with children while it was down")

    mark = op.mark()
    restarted = time.monotonic()
    op.start()
    report.did(f"started the operator again (pid {op.pid})")
    took = wait_all_converged(cluster, namespace, created, timeout=size(240, 480))
    took_total = time.monotonic() - restarted
    report.figure("models", n)
    report.figure("killed at (models created, Deployments made)", list(at_kill))
    report.figure("changed while down", len(changed))
    report.figure("seconds from restart to all converged", round(took_total, 1))
    report.checked(
        f"all {n} models Ready at their generation, none Stalled or Reconciling ({took:.1f}s of waiting)"
    )

    # The children, against what `modeldeploy render` makes of each model's current spec.
    live = models(cluster, namespace)
    assert sorted(live) == sorted(created), "models lost or added"
    uids = {name: m["metadata"]["uid"] for name, m in live.items()}
    rendered = render([{**b, "metadata": {**b["metadata"], "namespace": namespace}} for b in bodies])
    problems: list[str] = []
    counts: Counter[str] = Counter()
    for kind_arg, kind in CHILD_KINDS.items():
        items = cluster.list(kind_arg, namespace)
        per_model = Counter(i["metadata"]["labels"].get(NAME_LABEL, "") for i in items)
        for obj in items:
            name = obj["metadata"]["name"]
            owner = controller_uid(obj)
            if owner not in uids.values():
                problems.append(f"orphan {kind} {name} (controller {owner})")
                counts["orphaned"] += 1
                continue
            if owner != uids.get(name):
                problems.append(f"{kind} {name} controlled by another model's uid {owner}")
            want = rendered.get((kind, name))
            if want is None:
                problems.append(f"{kind} {name} is not rendered for its spec")
                counts["unwanted"] += 1
                continue
            want = json.loads(json.dumps(want))
            want.get("spec", {}).pop("strategy", None)  # offline render: the no-free-GPU strategy
            diff = subset_diff(want, obj)
            if diff:
                problems.append(f"{kind} {name} differs from its render: {diff[:5]}")
                counts["half-updated"] += 1
        for name, c in per_model.items():
            if c != 1:
                problems.append(f"{c} {kind}s labelled for {name}")
                counts["duplicated"] += 1
        for (rkind, rname), _ in rendered.items():
            if rkind == kind and rname not in per_model:
                problems.append(f"{kind} {rname} missing")
                counts["missing"] += 1
    # Pods: as many as replicas, all of the Deployment's current template.
    replica_sets = cluster.list("replicaset", namespace)
    current: dict[str, str] = {}
    for rs in replica_sets:
        owner = controller_uid(rs)
        if owner is None:
            problems.append(f"orphan ReplicaSet {rs['metadata']['name']}")
            counts["orphaned"] += 1
        if rs["spec"].get("replicas"):
            current[rs["metadata"]["labels"][NAME_LABEL]] = rs["metadata"]["labels"]["pod-template-hash"]
    pods = Counter()
    for pod in cluster.list("pod", namespace, NAME_LABEL):
        name = pod["metadata"]["labels"][NAME_LABEL]
        if pod["metadata"].get("deletionTimestamp"):
            continue
        pods[name] += 1
        if pod["metadata"]["labels"].get("pod-template-hash") != current.get(name):
            problems.append(f"pod {pod['metadata']['name']} of an old template of {name}")
            counts["half-updated"] += 1
    for b in bodies:
        name = b["metadata"]["name"]
        if pods[name] != b["spec"]["replicas"]:
            problems.append(f"{name}: {pods[name]} pods for {b['spec']['replicas']} replicas")
    for name in changed:
        dep: dict[str, Any] = cluster.get("deployment", name, namespace) or {}
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[args.index("--max-total-tokens") + 1] != "2048":
            problems.append(f"{name}: the change made while the operator was down is not in its Deployment")
    unhandled = op.unhandled(mark)
    report.figure("objects lost (missing children)", counts["missing"])
    report.figure("duplicated / orphaned / half-updated children", [counts["duplicated"], counts["orphaned"],
                                                                     counts["half-updated"]])  # fmt: skip
    report.figure("unhandled errors in the restarted operator's log", len(unhandled))
    assert not problems, "\n".join(problems[:40])
    assert not unhandled, "\n".join(unhandled[:20])
    report.checked(
        f"{sum(1 for k in rendered)} children match `modeldeploy render` of their model's current spec; "
        f"one of each per model, each controlled by its model; {sum(pods.values())} pods, all of the "
        f"current template; the {len(changed)} changes made while down are in their Deployments"
    )
    op.assert_alive()
