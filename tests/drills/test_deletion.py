"""Deletion safety: models are deleted while the operator is down (SIGKILL). `kubectl delete`
completes at once (no finalizer), the garbage collector of the real kube-controller-manager
removes their children, both weight caches outlive the deletion while the operator is down, and
at its next start the operator removes the cache whose model said `retain: false` and keeps the
retained one."""

from __future__ import annotations

import json
import time

from tests.conftest import Cluster
from tests.drills.kit import Operators, Report, mdep, poll, wait_all_converged

RESYNC = 3.0
CACHE_LABEL = "modeldeploy.dev/cache-key"
NAME_LABEL = "modeldeploy.dev/name"


def test_deletion(
    cluster: Cluster, namespace: str, operators: Operators, gpu_pool: int, report: Report
) -> None:
    ns = namespace
    # At debug level the operator logs each resync ("resync of ..."): the drill counts them.
    op = operators.new(
        "deletion", [ns], {"MODELDEPLOY_RESYNC_SECONDS": str(RESYNC)}, args=("--log-level=debug",)
    ).start()
    cache = {"enabled": True, "accessMode": "ReadWriteOnce"}
    keeper = mdep("keeper", replicas=2, cache={**cache, "retain": True})
    dropper = mdep("dropper", cache={**cache, "retain": False})
    dropper["spec"]["model"]["id"] = "mistralai/Mistral-7B-Instruct-v0.2"  # a cache of its own
    cluster.apply([keeper, dropper], ns)
    wait_all_converged(cluster, ns, ["keeper", "dropper"], timeout=120)
    claims = {m: cluster.get("mdep", m, ns)["status"]["cache"]["claimName"] for m in ("keeper", "dropper")}  # type: ignore[index]
    assert claims["keeper"] != claims["dropper"]
    pvc_uid = {m: cluster.get("pvc", c, ns)["metadata"]["uid"] for m, c in claims.items()}  # type: ignore[index]
    for m in ("keeper", "dropper"):
        assert not (cluster.get("mdep", m, ns) or {})["metadata"].get("finalizers"), f"{m} has finalizers"
    kinds = "deployment,service,poddisruptionbudget,replicaset,pod"
    children = cluster.kubectl("get", kinds, "-n", ns, "-l", NAME_LABEL, "-o", "name").stdout.split()
    report.did(f"two cached models Ready with {len(children)} children; caches {claims}; no finalizers")

    op.kill9()
    report.did("SIGKILL to the operator")
    started = time.monotonic()
    res = cluster.kubectl("delete", "mdep", "keeper", "dropper", "-n", ns, "--timeout=30s", check=False)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert took < 10, f"kubectl delete took {took:.1f}s"
    assert cluster.list("modeldeployment", ns) == []
    report.figure("seconds kubectl delete took with the operator down", round(took, 1))
    report.checked(f"`kubectl delete` of both models returned in {took:.1f}s and they are gone")

    def collected() -> bool:
        # Pods count once deleted (their grace period, spent by the simulated kubelet, is not ours).
        out = cluster.kubectl("get", kinds, "-n", ns, "-l", NAME_LABEL, "-o", "json").stdout
        return all(
            o["metadata"].get("deletionTimestamp") and o["kind"] == "Pod" for o in json.loads(out)["items"]
        )

    _, gc = poll("children garbage-collected", collected, timeout=120)
    report.figure("seconds until the garbage collector removed every child", round(gc, 1))
    pvcs = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.list("pvc", ns, CACHE_LABEL)}
    assert pvcs == {claims["keeper"]: pvc_uid["keeper"], claims["dropper"]: pvc_uid["dropper"]}, pvcs
    report.checked(
        f"{len(children)} children collected in {gc:.1f}s; both caches still there (operator down)"
    )

    restarted = time.monotonic()
    op.start()

    def dropped() -> bool:
        names = {p["metadata"]["name"] for p in cluster.list("pvc", ns, CACHE_LABEL)}
        jobs = {j["metadata"]["name"] for j in cluster.list("job", ns, CACHE_LABEL)}
        return claims["dropper"] not in names and claims["dropper"] not in jobs

    poll("the unretained cache removed", dropped, timeout=60)
    removed = time.monotonic() - restarted
    report.figure("seconds from the restart to the unretained cache removed", round(removed, 1))
    # Two more resyncs (each collects unused caches): the retained cache must not go in them.
    mark = op.mark()
    poll("two more resyncs", lambda: op.text(mark).count("resync of ") >= 2, timeout=10 * RESYNC)
    (kept,) = cluster.list("pvc", ns, CACHE_LABEL)
    assert kept["metadata"]["uid"] == pvc_uid["keeper"] and not kept["metadata"].get("deletionTimestamp")
    report.checked(
        f"the unretained cache {claims['dropper']} (PVC and prefetch Job) went {removed:.1f}s after the "
        f"restart; the retained {claims['keeper']} is still there two resyncs later"
    )
    op.assert_alive()
    assert not op.unhandled(), op.unhandled()[:10]
