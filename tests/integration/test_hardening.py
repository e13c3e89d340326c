"""The pods the operator makes, judged by the real kube-apiserver's Pod Security admission: the
"restricted" profile takes them when the non-root setting is on, "baseline" takes them as they
are by default, and a namespace that refuses them shows it in the model's status."""

from __future__ import annotations

from typing import Any

import yaml

from modeldeploy import cache, render
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.resolve import ClusterFacts, resolve
from modeldeploy.settings import Settings
from tests.conftest import Cluster, condition
from tests.integration.test_reconcile import model, wait_condition, wait_ready

L4 = {"gpus": 1, "gpuType": "nvidia-l4"}
NON_ROOT = Settings(run_as_user=1000)

Obj = dict[str, Any]


def enforce(cluster: Cluster, namespace: str, level: str) -> None:
    cluster.kubectl("label", "namespace", namespace, f"pod-security.kubernetes.io/enforce={level}")
    # The admission is really on: a pod in the host's network is refused by either level.
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"hostNetwork": True, "containers": [{"name": "c", "image": "example.invalid/none:1"}]},
    }
    res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(bare), check=False)
    assert res.returncode != 0 and "violates PodSecurity" in res.stderr, res.stderr


def rendered_deployment(name: str, namespace: str, settings: Settings) -> Obj:
    """The serving Deployment exactly as the operator renders it (no owner: no model owns it,
    so the running operator leaves it alone)."""
    spec = ModelDeploymentSpec.model_validate(model(name, resources=L4)["spec"])
    res, _ = resolve(spec, settings, ClusterFacts())
    return render.deployment(name, namespace, spec, res, None)


def pods_created(cluster: Cluster, namespace: str, selector: str) -> list[Obj]:
    return cluster.wait(
        f"pods {selector} created", lambda: cluster.list("pods", namespace, selector), timeout=60
    )


def no_refusals(cluster: Cluster, namespace: str) -> None:
    failed = [e["message"] for e in cluster.list("events", namespace) if e.get("reason") == "FailedCreate"]
    assert not failed, failed
    for rs in cluster.list("replicasets", namespace):
        assert not condition(rs, "ReplicaFailure"), rs["status"]


def test_restricted_namespace_takes_non_root_serving_and_prefetch_pods(
    cluster: Cluster, namespace: str
) -> None:
    enforce(cluster, namespace, "restricted")
    dep = rendered_deployment("nonroot", namespace, NON_ROOT)
    cluster.apply(dep, namespace)
    pods = pods_created(cluster, namespace, f"{render.NAME_LABEL}=nonroot")
    assert pods[0]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pods[0]["spec"]["automountServiceAccountToken"] is False
    # The prefetch Job's pod too (its volume need not exist for admission). As a bare pod of the
    # Job's template: a Job of a cache no model uses is the running operator's to collect.
    job = cache.render_job(
        "org/model", "main", namespace, image="example.invalid/tgi:1", security=render.PodSecurity(1000)
    )
    template = job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "prefetch", "namespace": namespace, "labels": {"app": "prefetch-admission"}},
        "spec": {**template["spec"], "restartPolicy": "Never"},
    }
    created = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pod), check=False)
    assert created.returncode == 0, created.stderr  # refused at admission otherwise
    assert cluster.get("pod", "prefetch", namespace) is not None
    no_refusals(cluster, namespace)


def test_restricted_namespace_refuses_root_pods(cluster: Cluster, namespace: str) -> None:
    # Without the non-root setting the pods run as the image's user (root): restricted says no,
    # and the Deployment says why. The next test shows the model's status carrying it.
    enforce(cluster, namespace, "restricted")
    cluster.apply(rendered_deployment("root", namespace, Settings()), namespace)

    def failure() -> Obj | None:
        dep = cluster.get("deployment", "root", namespace)
        c = condition(dep, "ReplicaFailure")
        return c if c and c["status"] == "True" else None

    refused = cluster.wait("ReplicaFailure", failure, timeout=60)
    assert "violates PodSecurity" in refused["message"]
    assert "runAsNonRoot" in refused["message"]
    # Everything but the user is already what restricted asks for.
    for other in ("allowPrivilegeEscalation", "capabilities", "seccompProfile"):
        assert other not in refused["message"], refused["message"]


def test_model_in_a_restricted_namespace_says_admission_refuses_its_pods(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    enforce(cluster, namespace, "restricted")
    cluster.apply(model("refused", resources=L4), namespace)
    stalled = wait_condition(cluster, namespace, "refused", "Stalled", status="True")
    assert stalled["reason"] == "ReplicaFailure", stalled
    assert "violates PodSecurity" in stalled["message"] and "restricted" in stalled["message"]
    ready = condition(cluster.get("modeldeployment", "refused", namespace), "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "ReplicaFailure"
    cluster.kubectl("delete", "modeldeployment", "refused", "-n", namespace, "--timeout=60s")


def test_baseline_namespace_takes_the_default_pods(cluster: Cluster, namespace: str, operator: Any) -> None:
    enforce(cluster, namespace, "baseline")
    cluster.apply(model("base", resources=L4), namespace)
    wait_ready(cluster, namespace, "base")
    pod = cluster.list("pods", namespace, f"{render.NAME_LABEL}=base")[0]
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    no_refusals(cluster, namespace)
    # Hand the simulated GPU back before the next test.
    cluster.kubectl("delete", "modeldeployment", "base", "-n", namespace, "--timeout=60s")
