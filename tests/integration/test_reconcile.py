"""The core reconcile on the real control plane: children, ownership, server-side apply,
rollouts, no-op re-applies, CEL admission, honest status and garbage collection."""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from modeldeploy.kube import Kube
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import Settings
from tests.conftest import OPERATOR_METRICS_PORT, REPO, Cluster, condition

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ModelDeployment"]
    assert len(docs) == 1
    return dict(docs[0])


def model(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"id": "cognitivecomputations/dolphin-2.8-mistral-7b-v02"}}
    body.update(spec)
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": body}  # fmt: skip


def hub_model(name: str) -> dict[str, Any]:
    """A model outside the catalog, planned from its config.json on the Hub stand-in."""
    body = model(name, resources={"gpus": "auto", "gpuType": "nvidia-l4"})
    body["spec"]["model"] = {"id": "acme/tiny-llm"}
    return body


def in_process_reconciler(cluster: Cluster) -> Reconciler:
    """The operator's own reconcile, called directly, to run passes on demand."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return Reconciler(Kube(api), Settings())


def get_model(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.get("modeldeployment", name, ns)


def wait_ready(
    cluster: Cluster, ns: str, name: str, status: str = "True", timeout: float = 90
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_model(cluster, ns, name)
        c = condition(obj, "Ready")
        gen = (obj or {}).get("metadata", {}).get("generation")
        if c and c["status"] == status and (obj or {}).get("status", {}).get("observedGeneration") == gen:
            return obj
        return None

    out: dict[str, Any] = cluster.wait(f"{name} Ready={status}", check, timeout=timeout)
    return out


def wait_condition(
    cluster: Cluster,
    ns: str,
    name: str,
    type_: str,
    *,
    status: str | None = None,
    reason: str | None = None,
    timeout: float = 90,
) -> dict[str, Any]:
    """Wait until the model's condition `type_` has this status and/or reason; return it."""

    def check() -> dict[str, Any] | None:
        c = condition(get_model(cluster, ns, name), type_)
        if c and status in (None, c["status"]) and reason in (None, c["reason"]):
            return c
        return None

    out: dict[str, Any] = cluster.wait(
        f"{name} {type_} status={status} reason={reason}", check, timeout=timeout
    )
    return out


def children(cluster: Cluster, ns: str, name: str) -> dict[str, dict[str, Any]]:
    out = {}
    for kind in ("deployment", "service", "poddisruptionbudget"):
        obj = cluster.get(kind, name, ns, managed_fields=True)
        if obj is not None:
            out[kind] = obj
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_yields_owned_children(cluster: Cluster, namespace: str, operator: Any, path: Path) -> None:
    if "tokenSecretRef" in path.read_text():
        cluster.kubectl(
            "create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=token=placeholder"
        )
    body = load(path)
    name = body["metadata"]["name"]
    cluster.apply(body, namespace)
    obj = wait_ready(cluster, namespace, name)
    kids = children(cluster, namespace, name)
    assert {"deployment", "service"} <= set(kids)
    if body["spec"].get("replicas", 1) > 1:
        assert "poddisruptionbudget" in kids
    for kind, child in kids.items():
        refs = child["metadata"]["ownerReferences"]
        assert refs == [
            {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "name": name,
             "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        ], kind  # fmt: skip
        managers = {m["manager"] for m in child["metadata"]["managedFields"] if m["operation"] == "Apply"}
        assert "modeldeploy" in managers, kind
    st = obj["status"]
    assert st["endpoint"] == f"http://{name}.{namespace}.svc:80"
    assert st["selector"] == f"modeldeploy.dev/name={name}"
    assert st["readyReplicas"] == body["spec"].get("replicas", 1)
    dep = kids["deployment"]
    gpus = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert st["plan"]["gpusPerReplica"] == int(gpus)
    # Pods landed on nodes with the planned GPU type.
    for pod in cluster.list("pods", namespace, st["selector"]):
        node = cluster.get("node", pod["spec"]["nodeName"])
        assert node is not None
        products = dep["spec"]["template"]["spec"].get("affinity", {}).get("nodeAffinity", {})
        if products:
            allowed = products["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
                "matchExpressions"][0]["values"]  # fmt: skip
            assert node["metadata"]["labels"]["nvidia.com/gpu.product"] in allowed


def test_spec_change_rolls_and_noop_reapply_writes_nothing(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    body = model(
        "roll", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}, engine={"maxTotalTokens": 4096}
    )
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "roll")
    before = children(cluster, namespace, "roll")
    md_before = get_model(cluster, namespace, "roll")
    assert md_before is not None

    # No-op re-apply, then two full reconcile passes run right here: nothing anywhere changes.
    cluster.apply(body, namespace)
    rec = in_process_reconciler(cluster)
    rec.reconcile(namespace, "roll")
    rec.reconcile(namespace, "roll")
    after = children(cluster, namespace, "roll")
    for kind in before:
        assert after[kind]["metadata"]["resourceVersion"] == before[kind]["metadata"]["resourceVersion"], kind
    md_after = get_model(cluster, namespace, "roll")
    assert md_after is not None
    assert md_after["metadata"]["resourceVersion"] == md_before["metadata"]["resourceVersion"]

    # A real change rolls the Deployment to a new template.
    changed = copy.deepcopy(body)
    changed["spec"]["engine"]["maxTotalTokens"] = 2048
    cluster.apply(changed, namespace)

    def rolled() -> bool:
        dep = cluster.get("deployment", "roll", namespace)
        assert dep is not None
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        return (
            "2048" in args and dep["metadata"]["generation"] > before["deployment"]["metadata"]["generation"]
        )

    cluster.wait("deployment rolled", rolled)

    def rollout_done() -> dict[str, Any] | None:
        obj = wait_ready(cluster, namespace, "roll")
        done = condition(obj, "Reconciling") is None and obj["status"]["updatedReplicas"] == 1
        return obj if done else None

    obj = cluster.wait("rollout finished", rollout_done)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2


INVALID = [
    ({"engine": {"dtype": "bfloat16", "quantize": "awq"}}, "dtype and quantize are exclusive"),
    (
        {"engine": {"maxInputTokens": 4096, "maxTotalTokens": 4096}},
        "maxInputTokens must be less than maxTotalTokens",
    ),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must be <= maxReplicas"),
    ({"resources": {"gpus": 9}}, "must be 'auto' or an integer from 1 to 8"),
    ({"resources": {"gpus": "many"}}, "must be 'auto' or an integer from 1 to 8"),
    ({"engine": {"quantize": "int3"}}, 'Unsupported value: "int3"'),
]


@pytest.mark.parametrize(("spec", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_manifest_rejected_at_apply(cluster: Cluster, namespace: str, spec: dict[str, Any],
                                            message: str) -> None:  # fmt: skip
    res = cluster.apply(model("bad", **spec), namespace, check=False)
    assert res.returncode != 0
    assert message in res.stderr
    assert get_model(cluster, namespace, "bad") is None


def test_model_id_or_preset_required(cluster: Cluster, namespace: str) -> None:
    body = model("noid")
    body["spec"]["model"] = {"revision": "main"}
    res = cluster.apply(body, namespace, check=False)
    assert res.returncode != 0
    assert "set id (a Hugging Face repo id) or preset" in res.stderr


def test_unknown_extra_arg_stalls_without_touching_children(cluster: Cluster, namespace: str,
                                                            operator: Any) -> None:  # fmt: skip
    body = model("xargs", resources={"gpus": 1})
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "xargs")
    dep_before = cluster.get("deployment", "xargs", namespace)
    assert dep_before is not None
    bad = copy.deepcopy(body)
    bad["spec"]["engine"] = {"extraArgs": ["--not-a-flag=1"]}
    cluster.apply(bad, namespace)

    def stalled() -> dict[str, Any] | None:
        obj = get_model(cluster, namespace, "xargs")
        c = condition(obj, "Stalled")
        return c if c and c["status"] == "True" and obj and obj["status"]["observedGeneration"] == 2 else None

    c = cluster.wait("Stalled", stalled)
    assert c["reason"] == "InvalidSpec"
    assert "spec.engine.extraArgs[0]" in c["message"] and "--not-a-flag" in c["message"]
    ready = condition(get_model(cluster, namespace, "xargs"), "Ready")
    assert ready is not None and ready["status"] == "False"
    dep_after = cluster.get("deployment", "xargs", namespace)
    assert dep_after is not None
    assert dep_after["metadata"]["resourceVersion"] == dep_before["metadata"]["resourceVersion"]
    events = cluster.list("events", namespace)
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" and
               e["involvedObject"]["name"] == "xargs" for e in events)  # fmt: skip
    # Fixing the spec clears Stalled (kstatus: present only while true).
    cluster.apply(body, namespace)
    obj = wait_ready(cluster, namespace, "xargs")
    assert condition(obj, "Stalled") is None


def test_more_gpus_than_any_node_reports_scheduler_reason(cluster: Cluster, namespace: str,
                                                          operator: Any) -> None:  # fmt: skip
    # 8 GPUs of an L4 node type: the L4 nodes have 1 each, so nothing can ever place it.
    body = model("huge", resources={"gpus": 8, "gpuType": "nvidia-l4"})
    body["spec"]["model"] = {"id": "example-org/unlisted-model"}
    cluster.apply(body, namespace)

    c = wait_condition(cluster, namespace, "huge", "Ready", status="False", reason="Unschedulable")
    assert "Insufficient nvidia.com/gpu" in c["message"]
    assert "0/5 nodes are available" in c["message"]
    rec = condition(get_model(cluster, namespace, "huge"), "Reconciling")
    assert rec is not None and rec["status"] == "True"


def test_deleting_model_removes_children(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(model("gone", resources={"gpus": 1}, replicas=2), namespace)
    wait_ready(cluster, namespace, "gone")
    assert set(children(cluster, namespace, "gone")) == {"deployment", "service", "poddisruptionbudget"}
    cluster.kubectl("delete", "modeldeployment", "gone", "-n", namespace)
    cluster.wait("children garbage-collected", lambda: not children(cluster, namespace, "gone"))


def test_scaling_down_prunes_pdb(cluster: Cluster, namespace: str, operator: Any) -> None:
    body = model("pdb", resources={"gpus": 1}, replicas=2)
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "pdb")
    assert cluster.get("poddisruptionbudget", "pdb", namespace) is not None
    body["spec"]["replicas"] = 1
    cluster.apply(body, namespace)
    cluster.wait("PDB pruned", lambda: cluster.get("poddisruptionbudget", "pdb", namespace) is None)


def test_gpus_auto_schedules_planned_count(cluster: Cluster, namespace: str, operator: Any) -> None:
    body = model(
        "falcon", resources={"gpus": "auto", "gpuType": "nvidia-h100-80gb"}, engine={"maxTotalTokens": 2048}
    )
    body["spec"]["model"] = {"preset": "falcon-40b"}
    cluster.apply(body, namespace)
    obj = wait_ready(cluster, namespace, "falcon")
    assert obj["status"]["plan"]["gpusPerReplica"] == 2
    assert obj["status"]["plan"]["numShard"] == 2
    assert obj["status"]["plan"]["gpuType"] == "nvidia-h100-80gb"
    (pod,) = cluster.list("pods", namespace, "modeldeploy.dev/name=falcon")
    c = pod["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["args"][c["args"].index("--num-shard") + 1] == "2"
    node = cluster.get("node", pod["spec"]["nodeName"])
    assert (
        node is not None and node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    )


def test_model_that_cannot_fit_is_stalled_before_any_pod(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    body = model("toobig", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"})
    body["spec"]["model"] = {"preset": "qwen2.5-72b-instruct"}
    cluster.apply(body, namespace)

    c = wait_condition(cluster, namespace, "toobig", "Stalled", status="True")
    assert c["reason"] == "DoesNotFit"
    assert "spec.resources.gpus" in c["message"] and "gpus 2 on nvidia-h100-80gb" in c["message"]
    assert cluster.get("deployment", "toobig", namespace) is None
    assert cluster.list("pods", namespace, "modeldeploy.dev/name=toobig") == []


CRASH = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}
PULL = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "ghcr.io/x"'}}
OOM = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
POD_FAILURES = [
    (CRASH, {}, 4, "CrashLoopBackOff"),
    (PULL, {}, 0, "ImagePullBackOff"),
    ({"waiting": {"reason": "CrashLoopBackOff"}}, OOM, 2, "OOMKilled"),
]


@pytest.mark.parametrize(
    ("state", "last", "restarts", "reason"), POD_FAILURES, ids=[f[3] for f in POD_FAILURES]
)
def test_pod_failures_are_lifted_into_conditions(cluster: Cluster, namespace: str, operator: Any,
                                                 state: dict[str, Any], last: dict[str, Any], restarts: int,
                                                 reason: str) -> None:  # fmt: skip
    cluster.apply(model("sick", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}), namespace)
    wait_ready(cluster, namespace, "sick")
    (pod,) = cluster.list("pods", namespace, "modeldeploy.dev/name=sick")
    # KWOK plays the kubelet; here the test does, reporting what a kubelet would.
    container = {
        "name": "server", "image": pod["spec"]["containers"][0]["image"], "ready": False,
        "restartCount": restarts, "state": state, "lastState": last, "imageID": "", "containerID": "",
    }  # fmt: skip
    patch = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "ContainersReady", "status": "False"},
            ],
            "containerStatuses": [container],
        }
    }  # fmt: skip
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", namespace, "--subresource=status",
                    "--type=strategic", "-p", json.dumps(patch))  # fmt: skip

    c = wait_condition(cluster, namespace, "sick", "Stalled", reason=reason)
    assert "1 pod" in c["message"]
    if restarts:
        assert f"restarts: {restarts}" in c["message"]
    ready = condition(get_model(cluster, namespace, "sick"), "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == reason
    events = cluster.list("events", namespace)
    assert any(e["reason"] == reason and e["involvedObject"]["name"] == "sick" for e in events)


def test_model_outside_catalog_is_planned_from_its_config(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    # acme/tiny-llm is served by the Hub stand-in; the operator reads its config.json and
    # safetensors header, so `gpus: auto` is planned and the plan carries an estimate.
    cluster.apply(hub_model("tiny"), namespace)
    obj = wait_ready(cluster, namespace, "tiny")
    plan = obj["status"]["plan"]
    assert plan["gpusPerReplica"] == 1 and plan["gpuType"] == "nvidia-l4"
    assert plan["estimatedGiBPerGpu"] > 0


def test_operator_exports_prometheus_metrics(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(model("watched", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}), namespace)
    wait_ready(cluster, namespace, "watched")
    labels = f'name="watched",namespace="{namespace}",status="True",type="Ready"'
    ready = f"modeldeploy_model_condition{{{labels}}} 1.0"

    def scraped() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics", timeout=5) as r:
            text = r.read().decode()
        return text if ready in text else None

    text = cluster.wait("metrics show the model Ready", scraped)
    ok = [ln for ln in text.splitlines() if ln.startswith('modeldeploy_reconcile_total{outcome="ok"}')]
    assert ok and float(ok[0].split()[-1]) >= 1
    assert "modeldeploy_reconcile_duration_seconds_bucket" in text
