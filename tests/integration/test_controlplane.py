"""The local control plane is a real one: the scheduler places GPU pods, the controller-manager
garbage-collects, and the API server enforces CRD CEL rules."""

from __future__ import annotations

from typing import Any

from tests.conftest import Cluster


def gpu_deployment(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "c",
                            "image": "example.invalid/none",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def test_two_gpu_pod_lands_on_h100_and_is_ready(cluster: Cluster, namespace: str) -> None:
    cluster.apply(gpu_deployment("two", 2), namespace)

    def ready_pod() -> dict[str, Any] | None:
        for pod in cluster.list("pods", namespace, "app=two"):
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conds.get("Ready") == "True":
                return pod
        return None

    pod = cluster.wait("GPU pod Ready", ready_pod)
    node = cluster.get("node", pod["spec"]["nodeName"])
    assert node is not None
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"


def test_nine_gpus_stay_pending_with_scheduler_reason(cluster: Cluster, namespace: str) -> None:
    cluster.apply(gpu_deployment("nine", 9), namespace)

    def unschedulable() -> str:
        for pod in cluster.list("pods", namespace, "app=nine"):
            for c in pod["status"].get("conditions", []):
                if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                    return str(c["message"])
        return ""

    message = cluster.wait("scheduler verdict", unschedulable)
    assert "Insufficient nvidia.com/gpu" in message
    assert "0/5 nodes are available" in message
    pods = cluster.list("pods", namespace, "app=nine")
    assert all(p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName") for p in pods)


def test_garbage_collector_removes_owned_children(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = cluster.get("configmap", "owner", namespace)
    assert owner is not None
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
    }
    cluster.apply(child, namespace)
    assert cluster.get("configmap", "child", namespace) is not None
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    cluster.wait("child garbage-collected", lambda: cluster.get("configmap", "child", namespace) is None)


def test_crd_cel_rule_rejects_bad_object(cluster: Cluster, namespace: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ranges.celtest.example.com"},
        "spec": {
            "group": "celtest.example.com",
            "names": {"kind": "Range", "plural": "ranges", "singular": "range", "listKind": "RangeList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"low": {"type": "integer"}, "high": {"type": "integer"}},
                    "x-kubernetes-validations": [
                        {"rule": "self.low <= self.high", "message": "low must not exceed high"}
                    ],
                }}}},
            }],
        },
    }  # fmt: skip
    cluster.apply(crd)
    cluster.wait_established("ranges.celtest.example.com")
    good = {"apiVersion": "celtest.example.com/v1", "kind": "Range", "metadata": {"name": "good"},
            "spec": {"low": 1, "high": 2}}  # fmt: skip
    assert cluster.apply(good, namespace).returncode == 0
    bad = {**good, "metadata": {"name": "bad"}, "spec": {"low": 3, "high": 2}}
    res = cluster.apply(bad, namespace, check=False)
    assert res.returncode != 0
    assert "low must not exceed high" in res.stderr
    assert cluster.get("range.celtest.example.com", "bad", namespace) is None
