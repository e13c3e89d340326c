"""Autoscaling hand-over, KEDA, GPU-aware rollouts and GitOps-readable status, on the real
control plane. Tests that count GPUs bring their own simulated nodes (a GPU product no other
test uses) so the numbers are theirs alone."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from mdlocal.localcluster import NodeShape, node_manifest
from tests import kstatus
from tests.conftest import Cluster, condition
from tests.integration.test_reconcile import (
    get_model,
    in_process_reconciler,
    model,
    wait_condition,
    wait_ready,
)
from tests.unit.test_argocd_health import run_health

A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}


@pytest.fixture()
def a100_node(cluster: Cluster, namespace: str) -> Iterator[str]:
    """One 2-GPU A100 node for this test only (no other test asks for A100s)."""
    name = f"a100-{namespace}"
    cluster.apply(node_manifest(NodeShape(name, "64", "512Gi", 2, A100)))

    def ready() -> bool:
        node = cluster.get("node", name)
        return condition(node, "Ready") is not None and condition(node, "Ready")["status"] == "True"  # type: ignore[index]

    cluster.wait("A100 node Ready", ready)
    yield name
    cluster.kubectl("delete", "node", name, "--wait=false")


def replicas_owner(dep: dict[str, Any]) -> set[str]:
    return {
        m["manager"]
        for m in dep["metadata"].get("managedFields", [])
        if "f:replicas" in (m.get("fieldsV1", {}).get("f:spec") or {})
    }


def test_autoscaling_toggle_hands_replicas_over(cluster: Cluster, namespace: str, operator: Any) -> None:
    body = model("auto", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}, replicas=2)
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "auto")
    # Turn autoscaling on: an HPA appears; the Deployment keeps 2 replicas (never reset to 1).
    on = copy.deepcopy(body)
    on["spec"]["autoscaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 4, "metric": "queue-size"}
    cluster.apply(on, namespace)
    hpa = cluster.wait("HPA created", lambda: cluster.get("hpa", "auto", namespace))
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auto"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "tgi_queue_size"
    dep = cluster.get("deployment", "auto", namespace, managed_fields=True)
    assert dep is not None and dep["spec"]["replicas"] == 2
    assert "modeldeploy" not in replicas_owner(dep)
    # The autoscaler scales through the scale subresource; further passes leave its value alone.
    cluster.kubectl("scale", "deployment/auto", "-n", namespace, "--replicas=3")
    rec = in_process_reconciler(cluster)
    rec.reconcile(namespace, "auto")
    rec.reconcile(namespace, "auto")
    dep = cluster.get("deployment", "auto", namespace)
    assert dep is not None and dep["spec"]["replicas"] == 3
    obj = wait_ready(cluster, namespace, "auto")
    assert obj["status"]["readyReplicas"] == 3
    # Turn it off: the HPA goes and replicas come back to the spec.
    cluster.apply(body, namespace)
    cluster.wait("HPA removed", lambda: cluster.get("hpa", "auto", namespace) is None)
    cluster.wait(
        "replicas back to spec", lambda: cluster.get("deployment", "auto", namespace)["spec"]["replicas"] == 2
    )  # type: ignore[index]
    dep = cluster.get("deployment", "auto", namespace, managed_fields=True)
    assert dep is not None and "modeldeploy" in replicas_owner(dep)


def test_kubectl_scale_through_scale_subresource(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(model("scaled", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}), namespace)
    wait_ready(cluster, namespace, "scaled")
    cluster.kubectl("scale", "mdep/scaled", "-n", namespace, "--replicas=2")
    cluster.wait(
        "Deployment scaled", lambda: cluster.get("deployment", "scaled", namespace)["spec"]["replicas"] == 2
    )  # type: ignore[index]
    obj = wait_ready(cluster, namespace, "scaled")
    assert obj["status"]["readyReplicas"] == 2
    path = f"/apis/modeldeploy.dev/v1alpha1/namespaces/{namespace}/modeldeployments/scaled/scale"
    scale = yaml.safe_load(cluster.kubectl("get", "--raw", path).stdout)
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "modeldeploy.dev/name=scaled"


KEDA_CRD = "scaledobjects.keda.sh"


def delete_crd(cluster: Cluster, name: str) -> None:
    """Delete a CRD and wait until it is gone (its objects are deleted with it)."""
    cluster.kubectl("delete", "crd", name, "--ignore-not-found", "--wait=false")
    cluster.wait(f"CRD {name} gone", lambda: cluster.get("crd", name) is None, timeout=120)


def test_keda_refused_without_crd_then_rendered_with_it(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    # Whatever ran before: the cluster starts without KEDA here, and is left without it.
    delete_crd(cluster, KEDA_CRD)
    try:
        body = model("keda", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"})
        body["spec"]["autoscaling"] = {"enabled": True, "engine": "keda", "minReplicas": 0, "maxReplicas": 3}
        cluster.apply(body, namespace)

        c = wait_condition(cluster, namespace, "keda", "Stalled", status="True")
        assert "spec.autoscaling.engine" in c["message"] and "KEDA" in c["message"]
        assert cluster.get("deployment", "keda", namespace) is None  # nothing half-applied
        # Install KEDA's own CRD (from the github.com/kedacore/keda/v2 Go module).
        cluster.kubectl("apply", "--server-side", "-f", str(cluster.lc.bins.keda_crd))
        cluster.wait_established(KEDA_CRD)
        so = cluster.wait(
            "ScaledObject", lambda: cluster.get("scaledobject.keda.sh", "keda", namespace), timeout=60
        )
        assert so["spec"]["minReplicaCount"] == 0
        assert so["spec"]["triggers"][0]["type"] == "prometheus"
        assert "tgi_queue_size" in so["spec"]["triggers"][0]["metadata"]["query"]
        cluster.wait(
            "Stalled cleared", lambda: condition(get_model(cluster, namespace, "keda"), "Stalled") is None
        )
    finally:
        cluster.kubectl("delete", "mdep", "keda", "-n", namespace, "--ignore-not-found")
        delete_crd(cluster, KEDA_CRD)
    # KEDA going away must not stop the operator: a model without KEDA autoscaling still gets
    # served (nothing else in the suite needs KEDA).
    cluster.apply(model("after-keda", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}), namespace)
    wait_ready(cluster, namespace, "after-keda")


def test_surge_when_a_gpu_is_free_in_place_when_not(cluster: Cluster, namespace: str, operator: Any,
                                                    a100_node: str) -> None:  # fmt: skip
    body = model(
        "gpuroll", resources={"gpus": 1, "gpuType": "nvidia-a100-80gb"}, engine={"maxTotalTokens": 4096}
    )
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "gpuroll")
    # One of the node's two GPUs is free: a spec change surges.
    body["spec"]["engine"]["maxTotalTokens"] = 2048
    cluster.apply(body, namespace)
    cluster.wait(
        "rolled with surge", lambda: _strategy(cluster, namespace) == {"maxSurge": 1, "maxUnavailable": 0}
    )
    wait_ready(cluster, namespace, "gpuroll")
    cluster.wait(
        "old pod gone", lambda: len(cluster.list("pods", namespace, "modeldeploy.dev/name=gpuroll")) == 1
    )
    # Occupy the other GPU: the next change replaces in place.
    _occupy_gpu(cluster, namespace, a100_node)
    body["spec"]["engine"]["maxTotalTokens"] = 3072
    cluster.apply(body, namespace)
    cluster.wait(
        "rolled in place", lambda: _strategy(cluster, namespace) == {"maxSurge": 0, "maxUnavailable": 1}
    )

    # The in-place rollout completes: Ready (the old pod may serve while the new one starts, with
    # Reconciling=True) is not enough; the new template's pod is the one ready at the end.
    def rolled_out() -> bool:
        obj = get_model(cluster, namespace, "gpuroll") or {}
        st = obj.get("status") or {}
        reconciling = condition(obj, "Reconciling")
        return (
            st.get("observedGeneration") == obj["metadata"]["generation"]
            and st.get("updatedReplicas") == 1
            and st.get("readyReplicas") == 1
            and (condition(obj, "Ready") or {}).get("status") == "True"
            and (reconciling is None or reconciling["status"] != "True")
        )

    cluster.wait("rolled out in place", rolled_out, timeout=90)


def test_rollout_blocked_then_progress_deadline(cluster: Cluster, namespace: str, operator: Any,
                                                a100_node: str) -> None:  # fmt: skip
    _occupy_gpu(cluster, namespace, a100_node)
    body = model(
        "stuck", resources={"gpus": 1, "gpuType": "nvidia-a100-80gb"}, rollout={"progressDeadlineSeconds": 60}
    )
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "stuck")
    # The new template needs 2 GPUs; only the 1 freed by replacing in place will ever be there.
    body["spec"]["resources"]["gpus"] = 2
    cluster.apply(body, namespace)

    c = wait_condition(cluster, namespace, "stuck", "Reconciling", reason="RolloutBlocked")
    assert "need 2 nvidia.com/gpu" in c["message"] and "free of 2 allocatable" in c["message"]
    obj = get_model(cluster, namespace, "stuck")
    assert kstatus.compute(obj).status == kstatus.Status.IN_PROGRESS
    assert run_health(obj)["status"] == "Progressing"  # type: ignore[arg-type]

    wait_condition(cluster, namespace, "stuck", "Stalled", reason="ProgressDeadlineExceeded", timeout=150)
    obj = get_model(cluster, namespace, "stuck")
    assert condition(obj, "Reconciling") is None
    assert kstatus.compute(obj).status == kstatus.Status.FAILED
    assert run_health(obj)["status"] == "Degraded"  # type: ignore[arg-type]


def test_kstatus_and_argocd_agree_on_live_objects(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(model("fine", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}), namespace)
    bad = model("badargs", resources={"gpus": 1})
    bad["spec"]["engine"] = {"extraArgs": ["--nope"]}
    cluster.apply(bad, namespace)
    cluster.apply(model("nofit", resources={"gpus": 8, "gpuType": "nvidia-l4"}), namespace)
    fine = wait_ready(cluster, namespace, "fine")
    cluster.wait("badargs stalled", lambda: condition(get_model(cluster, namespace, "badargs"), "Stalled"))
    cluster.wait(
        "nofit reconciling", lambda: condition(get_model(cluster, namespace, "nofit"), "Reconciling")
    )
    expected = {
        "fine": ("Current", "Healthy"),
        "badargs": ("Failed", "Degraded"),
        "nofit": ("InProgress", "Progressing"),
    }
    for name, (ks, argo) in expected.items():
        obj = get_model(cluster, namespace, name)
        assert obj is not None
        assert kstatus.compute(obj).status.value == ks, name
        assert run_health(obj)["status"] == argo, name
    assert fine["status"]["observedGeneration"] == fine["metadata"]["generation"]


def _strategy(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    dep = cluster.get("deployment", "gpuroll", namespace)
    return dep["spec"]["strategy"]["rollingUpdate"] if dep else None


def _occupy_gpu(cluster: Cluster, namespace: str, node: str) -> None:
    """Another workload holding one GPU on the test's node; returns once it runs."""
    cluster.apply(_blocker(node, 1), namespace)

    def running() -> bool:
        pods = cluster.list("pods", namespace, "app=blocker")
        return bool(pods) and all(p["status"].get("phase") == "Running" for p in pods)

    cluster.wait("blocker running", running)


def _blocker(node: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "blocker", "labels": {"app": "blocker"}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "c",
                    "image": "example.invalid/blocker",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }
