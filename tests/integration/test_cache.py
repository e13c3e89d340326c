"""The weight cache on the real control plane: KWOK completes or fails the prefetch Job's pod
(hack/kwok-stages), kube-controller-manager's host-path provisioner serves the volume."""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import Cluster, condition
from tests.integration.test_reconcile import get_model, model, wait_condition, wait_ready

H100 = {"gpus": 1, "gpuType": "nvidia-h100-80gb"}


def cached(name: str, model_id: str = "cognitivecomputations/dolphin-2.8-mistral-7b-v02",
           **cache: Any) -> dict[str, Any]:  # fmt: skip
    body = model(name, resources=H100, cache={"enabled": True, "accessMode": "ReadWriteOnce", **cache})
    body["spec"]["model"]["id"] = model_id
    return body


def cache_phase(cluster: Cluster, ns: str, name: str) -> str:
    obj = get_model(cluster, ns, name)
    return str(((obj or {}).get("status") or {}).get("cache", {}).get("phase", ""))


def pvcs(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return cluster.list("pvc", ns, "modeldeploy.dev/cache-key")


def test_cache_downloads_before_any_serving_pod(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(cached("cold"), namespace)
    seen: list[str] = []

    def ready() -> bool:
        phase = cache_phase(cluster, namespace, "cold")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        return phase == "Ready"

    cluster.wait("cache Ready", ready)
    assert "Downloading" in seen and seen[-1] == "Ready", seen
    assert seen.index("Downloading") < seen.index("Ready")
    obj = wait_ready(cluster, namespace, "cold")
    # The serving Deployment was created only once the download had finished.
    (job,) = cluster.list("jobs", namespace, "modeldeploy.dev/cache-key")
    dep = cluster.get("deployment", "cold", namespace)
    assert dep is not None
    assert dep["metadata"]["creationTimestamp"] >= job["status"]["completionTime"]
    ready_cond = condition(obj, "CacheReady")
    assert ready_cond is not None and ready_cond["status"] == "True"
    claim = obj["status"]["cache"]["claimName"]
    assert obj["status"]["cache"]["revision"] == "main"
    pod = cluster.list("pods", namespace, "modeldeploy.dev/name=cold")[0]
    spec = pod["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in spec["volumes"]
    c = spec["containers"][0]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]
    pvc = cluster.get("pvc", claim, namespace)
    assert pvc is not None and pvc["status"]["phase"] == "Bound"
    assert "ownerReferences" not in pvc["metadata"]


def test_same_model_shares_one_volume_and_one_job(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply([cached("one"), cached("two")], namespace)
    wait_ready(cluster, namespace, "one")
    wait_ready(cluster, namespace, "two")
    assert len(pvcs(cluster, namespace)) == 1
    assert len(cluster.list("jobs", namespace, "modeldeploy.dev/cache-key")) == 1
    a, b = get_model(cluster, namespace, "one"), get_model(cluster, namespace, "two")
    assert a and b and a["status"]["cache"]["claimName"] == b["status"]["cache"]["claimName"]


def test_failed_download_reports_reason_and_starts_no_pod(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    cluster.apply(cached("gated", model_id="example-org/gated-model", size="10Gi"), namespace)

    c = wait_condition(cluster, namespace, "gated", "CacheReady", reason="GatedModel")
    assert c["status"] == "False"
    assert "tokenSecretRef" in c["message"]
    obj = get_model(cluster, namespace, "gated")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["reason"] == "GatedModel"
    assert cache_phase(cluster, namespace, "gated") == "Failed"
    assert cluster.get("deployment", "gated", namespace) is None
    assert cluster.list("pods", namespace, "modeldeploy.dev/name=gated") == []


def test_missing_storage_class_is_reported(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(cached("nosc", storageClassName="no-such-class"), namespace)

    c = wait_condition(cluster, namespace, "nosc", "CacheReady", reason="StorageClassNotFound")
    assert "no-such-class" in c["message"] and "spec.cache.storageClassName" in c["message"]
    assert cluster.get("deployment", "nosc", namespace) is None


def test_retain_keeps_volume_for_the_next_model(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(cached("keep"), namespace)
    wait_ready(cluster, namespace, "keep")
    (pvc,) = pvcs(cluster, namespace)
    cluster.kubectl("delete", "mdep", "keep", "-n", namespace)
    cluster.wait("model gone", lambda: get_model(cluster, namespace, "keep") is None)
    assert [p["metadata"]["uid"] for p in pvcs(cluster, namespace)] == [pvc["metadata"]["uid"]]
    cluster.apply(cached("again"), namespace)
    wait_ready(cluster, namespace, "again")
    assert [p["metadata"]["uid"] for p in pvcs(cluster, namespace)] == [pvc["metadata"]["uid"]]


def test_no_retain_deletes_volume_with_last_user(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply([cached("d1", retain=False), cached("d2", retain=False)], namespace)
    wait_ready(cluster, namespace, "d1")
    wait_ready(cluster, namespace, "d2")
    cluster.kubectl("delete", "mdep", "d1", "-n", namespace)
    cluster.wait("d1 gone", lambda: get_model(cluster, namespace, "d1") is None)
    wait_ready(cluster, namespace, "d2")
    assert len(pvcs(cluster, namespace)) == 1  # still used by d2
    cluster.kubectl("delete", "mdep", "d2", "-n", namespace)
    cluster.wait("cache deleted with its last user", lambda: not pvcs(cluster, namespace))
    cluster.wait(
        "prefetch Job deleted", lambda: not cluster.list("jobs", namespace, "modeldeploy.dev/cache-key")
    )


def test_revision_change_makes_new_cache_and_releases_old(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    body = cached("rev", retain=False)
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "rev")
    (old,) = pvcs(cluster, namespace)
    changed = copy.deepcopy(body)
    changed["spec"]["model"]["revision"] = "v2"
    cluster.apply(changed, namespace)

    def moved() -> bool:
        obj = get_model(cluster, namespace, "rev")
        st = (obj or {}).get("status") or {}
        return bool(st.get("cache", {}).get("revision") == "v2" and condition(obj, "Ready"))

    cluster.wait("new cache in use", moved)
    obj = wait_ready(cluster, namespace, "rev")
    assert obj["status"]["cache"]["claimName"] != old["metadata"]["name"]
    cluster.wait("old cache released", lambda: old["metadata"]["uid"] not in
                 [p["metadata"]["uid"] for p in pvcs(cluster, namespace)], timeout=60)  # fmt: skip


def test_model_is_planned_from_facts_the_prefetch_read(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    # Not in the catalog and not on the Hub stand-in: only the finished prefetch knows its shape
    # (as for a gated model, whose token only the Job has).
    body = cached("learned", model_id="example-org/prefetched-model", size="20Gi")
    body["spec"]["resources"] = {"gpus": "auto", "gpuType": "nvidia-h100-80gb"}
    cluster.apply(body, namespace)
    obj = wait_ready(cluster, namespace, "learned")
    plan = obj["status"]["plan"]
    assert plan["gpusPerReplica"] == 1 and plan["gpuType"] == "nvidia-h100-80gb"
    # 7.24e9 params x 2 bytes = 13.5 GiB of weights alone, so the estimate is at least that.
    assert plan["estimatedGiBPerGpu"] > 13.5
    (pod,) = cluster.list("pods", namespace, "modeldeploy.dev/name=learned")
    args = pod["spec"]["containers"][0]["args"]
    assert "--max-total-tokens" in args  # the planned context went to TGI
