"""Status you can trust under change, on the real control plane: observedGeneration only for
applied or refused generations, apply failures in status, changes that always go through.

The failures here are made by the real API server: a ValidatingAdmissionPolicy refuses a
change for good, a validating webhook that cannot be reached fails a write for a while (as a
down admission webhook does), a ResourceQuota refuses pods."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import config

from modeldeploy.kube import Kube
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import Settings
from tests.conftest import Cluster, condition
from tests.integration.test_reconcile import (
    get_model,
    hub_model,
    in_process_reconciler,
    model,
    wait_condition,
    wait_ready,
)

H100 = {"gpus": 1, "gpuType": "nvidia-h100-80gb"}
MODEL_ID = "cognitivecomputations/dolphin-2.8-mistral-7b-v02"


def patch(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> int:
    """Merge-patch the model's spec; return the new generation."""
    cluster.kubectl("patch", "mdep", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))
    obj = get_model(cluster, ns, name)
    assert obj is not None
    return int(obj["metadata"]["generation"])


def observed(cluster: Cluster, ns: str, name: str) -> int:
    obj = get_model(cluster, ns, name)
    return int(((obj or {}).get("status") or {}).get("observedGeneration") or 0)


def events(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.list("events", ns)
        if e["involvedObject"].get("kind") == "ModelDeployment" and e["involvedObject"]["name"] == name
    ]


@contextlib.contextmanager
def unreachable_webhook(cluster: Cluster, ns: str) -> Iterator[None]:
    """A validating webhook for Deployment updates in `ns` whose server does not answer: the API
    server fails every such write with 500 until it is removed (failurePolicy Fail)."""
    name = f"{ns}-down"
    cluster.apply({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "down.modeldeploy.test",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 1,
            "clientConfig": {"url": "https://127.0.0.1:9/validate"},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["UPDATE"],
                       "resources": ["deployments"]}],
        }],
    })  # fmt: skip
    try:
        yield
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")


@contextlib.contextmanager
def replicas_policy(cluster: Cluster, ns: str, most: int) -> Iterator[None]:
    """A ValidatingAdmissionPolicy refusing Deployments of more than `most` replicas in `ns`."""
    name = f"{ns}-max-replicas"
    cluster.apply([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                          "operations": ["CREATE", "UPDATE"],
                                                          "resources": ["deployments"]}]},
                  "validations": [{"expression": f"object.spec.replicas <= {most}",
                                   "message": f"at most {most} replicas per model in this namespace"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {
                      "matchLabels": {"kubernetes.io/metadata.name": ns}}}}},
    ])  # fmt: skip
    probe = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "policy-probe", "namespace": ns},
        "spec": {"replicas": most + 1, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}}},
    }  # fmt: skip

    def enforced() -> bool:
        res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(probe), check=False)
        return res.returncode != 0 and "replicas per model" in res.stderr

    try:
        cluster.wait("admission policy enforced", enforced, timeout=60)
        yield
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", name, "--ignore-not-found")
        cluster.kubectl("delete", "validatingadmissionpolicy", name, "--ignore-not-found")


def test_refused_change_is_stalled_with_the_api_servers_words_and_keeps_serving(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    cluster.apply(model("vap", resources=H100), namespace)
    wait_ready(cluster, namespace, "vap")
    dep_before = cluster.get("deployment", "vap", namespace)
    assert dep_before is not None
    with replicas_policy(cluster, namespace, 2):
        gen = patch(cluster, namespace, "vap", {"replicas": 3})
        stalled = wait_condition(cluster, namespace, "vap", "Stalled", status="True")
        assert stalled["reason"] == "ApplyRefused", stalled
        # A policy names no field; the message says which child was refused and why.
        assert "the API server refused Deployment vap" in stalled["message"], stalled
        assert "at most 2 replicas per model" in stalled["message"]
        # Refused with a reason: that generation was handled, so kstatus says Failed, not InProgress.
        assert observed(cluster, namespace, "vap") == gen
        assert stalled["observedGeneration"] == gen
        # The last good children keep serving, untouched.
        dep = cluster.get("deployment", "vap", namespace)
        assert dep is not None and dep["spec"]["replicas"] == 1
        assert dep["metadata"]["generation"] == dep_before["metadata"]["generation"]
        warned = [e for e in events(cluster, namespace, "vap") if e["type"] == "Warning"]
        assert any("at most 2 replicas per model" in e["message"] for e in warned), warned
        # A revert goes through at once (no retry delay of the refused generation in the way).
        gen = patch(cluster, namespace, "vap", {"replicas": 1})
        obj = wait_ready(cluster, namespace, "vap", timeout=30)
        assert obj["status"]["observedGeneration"] == gen
        assert condition(obj, "Stalled") is None


def test_transient_apply_failure_never_advances_observed_generation(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    cluster.apply(model("hook", resources=H100), namespace)
    wait_ready(cluster, namespace, "hook")
    applied = observed(cluster, namespace, "hook")
    with unreachable_webhook(cluster, namespace):
        gen = patch(cluster, namespace, "hook", {"engine": {"maxConcurrentRequests": 64}})
        reconciling = wait_condition(cluster, namespace, "hook", "Reconciling", reason="ApplyFailed")
        assert "Deployment hook" in reconciling["message"], reconciling
        assert observed(cluster, namespace, "hook") == applied < gen
        # A status refresh (a pod event) applies nothing: the generation stays where it was.
        pod = cluster.list("pods", namespace, "modeldeploy.dev/name=hook")[0]["metadata"]["name"]
        cluster.kubectl("annotate", "pod", pod, "-n", namespace, "touched=1")
        in_process_reconciler(cluster).reconcile(namespace, "hook", apply=False)
        obj = get_model(cluster, namespace, "hook")
        assert obj is not None and obj["status"]["observedGeneration"] == applied
        assert all(c["observedGeneration"] == applied for c in obj["status"]["conditions"])
        dep = cluster.get("deployment", "hook", namespace)
        assert dep is not None
        assert "--max-concurrent-requests" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    # The webhook is gone: the retry (with backoff) applies the generation.
    obj = wait_ready(cluster, namespace, "hook", timeout=60)
    assert obj["status"]["observedGeneration"] == gen
    dep = cluster.get("deployment", "hook", namespace)
    assert dep is not None and "64" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_same_named_object_that_is_not_ours_is_never_taken_over(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    cluster.kubectl("create", "service", "clusterip", "taken", "--tcp=8080:8080", "-n", namespace)
    before = cluster.get("service", "taken", namespace)
    assert before is not None
    cluster.apply(model("taken", resources=H100), namespace)
    stalled = wait_condition(cluster, namespace, "taken", "Stalled", status="True")
    assert stalled["reason"] == "NotOwned"
    assert "Service" in stalled["message"] and "not managed by this model" in stalled["message"]
    after = cluster.get("service", "taken", namespace)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "ownerReferences" not in after["metadata"]
    assert cluster.get("deployment", "taken", namespace) is None  # nothing half-applied


def test_children_carry_no_argo_cd_tracking_label(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(model("tracked", resources=H100), namespace)
    wait_ready(cluster, namespace, "tracked")
    for kind in ("deployment", "service"):
        obj = cluster.get(kind, "tracked", namespace)
        assert obj is not None
        assert "app.kubernetes.io/instance" not in obj["metadata"]["labels"], kind
        assert obj["metadata"]["labels"]["modeldeploy.dev/name"] == "tracked"


def test_explicit_rollout_strategy_edits_go_through(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(model("strat", resources=H100, rollout={"maxSurge": 0, "maxUnavailable": 1}), namespace)
    wait_ready(cluster, namespace, "strat")
    gen = patch(cluster, namespace, "strat", {"rollout": {"maxSurge": 1, "maxUnavailable": 0}})
    wait_ready(cluster, namespace, "strat")
    assert observed(cluster, namespace, "strat") == gen
    dep = cluster.get("deployment", "strat", namespace)
    assert dep is not None
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_replica_failure_reaches_status(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-gpus"},
                   "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}}, namespace)  # fmt: skip
    cluster.wait(
        "quota counted", lambda: (cluster.get("resourcequota", "no-gpus", namespace) or {}).get("status")
    )
    cluster.apply(model("quota", resources=H100), namespace)
    stalled = wait_condition(cluster, namespace, "quota", "Stalled", status="True")
    assert stalled["reason"] == "ReplicaFailure", stalled
    assert "exceeded quota" in stalled["message"]
    ready = condition(get_model(cluster, namespace, "quota"), "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "ReplicaFailure"


def test_stale_status_fields_disappear_and_unchanged_status_writes_nothing(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    cluster.apply(model("stale", resources=H100, cache={"enabled": True, "prefetch": False}), namespace)
    obj = wait_ready(cluster, namespace, "stale")
    assert "cache" in obj["status"] and condition(obj, "CacheReady") is not None
    gen = patch(cluster, namespace, "stale", {"cache": {"enabled": False}})

    def cache_gone() -> dict[str, Any] | None:
        o = get_model(cluster, namespace, "stale")
        st = (o or {}).get("status") or {}
        return o if st.get("observedGeneration") == gen and "cache" not in st else None

    obj = cluster.wait("status.cache removed", cache_gone)
    assert condition(obj, "CacheReady") is None
    # Settled: the rollout that dropped the volume is over (nothing left to report).
    cluster.wait(
        "rollout settled",
        lambda: (
            (o := get_model(cluster, namespace, "stale"))
            and condition(o, "Reconciling") is None
            and (condition(o, "Ready") or {}).get("status") == "True"
        ),
    )
    # Two more full passes of an unchanged model: the object is not written at all.
    before = get_model(cluster, namespace, "stale")
    assert before is not None
    rec = in_process_reconciler(cluster)
    rec.reconcile(namespace, "stale")
    rec.reconcile(namespace, "stale")
    after = get_model(cluster, namespace, "stale")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_refused_spec_leaves_no_stale_plan(cluster: Cluster, namespace: str, operator: Any) -> None:
    cluster.apply(model("noplan", resources={"gpus": "auto", "gpuType": "nvidia-l4"}), namespace)
    obj = wait_ready(cluster, namespace, "noplan")
    assert obj["status"]["plan"]["gpuType"] == "nvidia-l4"
    # Admitted, but refused by the operator: the preset does not exist.
    gen = patch(cluster, namespace, "noplan", {"model": {"id": "", "preset": "no-such-preset"}})
    stalled = wait_condition(cluster, namespace, "noplan", "Stalled", status="True")
    assert stalled["message"].startswith("spec.model.preset")
    obj2 = get_model(cluster, namespace, "noplan")
    assert obj2 is not None and obj2["status"]["observedGeneration"] == gen
    assert "plan" not in obj2["status"]


@pytest.fixture()
def cordoned_l4(cluster: Cluster) -> Iterator[None]:
    nodes = ["gpu-l4-0", "gpu-l4-1"]
    try:
        yield None
    finally:
        for n in nodes:
            cluster.kubectl("uncordon", n)


def test_planned_gpu_type_is_sticky(
    cluster: Cluster, namespace: str, operator: Any, cordoned_l4: None
) -> None:
    cluster.apply(model("sticky", resources={"gpus": "auto"}), namespace)

    def planned() -> dict[str, Any] | None:
        o = get_model(cluster, namespace, "sticky")
        return o if ((o or {}).get("status") or {}).get("observedGeneration") == 1 else None

    obj = cluster.wait("first pass", planned)
    assert obj["status"]["plan"]["gpuType"] == "nvidia-l4"
    dep_before = cluster.get("deployment", "sticky", namespace)
    assert dep_before is not None
    # The L4 pool is drained (cordoned): the running model must not re-plan onto H100s.
    for n in ("gpu-l4-0", "gpu-l4-1"):
        cluster.kubectl("cordon", n)
    rec = in_process_reconciler(cluster)
    rec.reconcile(namespace, "sticky")
    rec.reconcile(namespace, "sticky")
    obj = get_model(cluster, namespace, "sticky")
    assert obj is not None and obj["status"]["plan"]["gpuType"] == "nvidia-l4"
    dep = cluster.get("deployment", "sticky", namespace)
    assert dep is not None
    assert dep["spec"]["template"] == dep_before["spec"]["template"]

    # A refused spec clears status.plan; its revert still lands where the pods run. (The
    # operator runs too: wait for each generation's status rather than read it once.)
    def handled(generation: int) -> dict[str, Any] | None:
        o = get_model(cluster, namespace, "sticky")
        return o if ((o or {}).get("status") or {}).get("observedGeneration") == generation else None

    # A spec change that still fits keeps the type too.
    gen = patch(cluster, namespace, "sticky", {"engine": {"maxConcurrentRequests": 16}})
    rec.reconcile(namespace, "sticky")
    obj = cluster.wait("changed", lambda: (o := handled(gen)) and "plan" in o["status"] and o)
    assert obj["status"]["plan"]["gpuType"] == "nvidia-l4"
    gen = patch(cluster, namespace, "sticky", {"model": {"id": "", "preset": "no-such-preset"}})
    rec.reconcile(namespace, "sticky")
    obj = cluster.wait("refused", lambda: (o := handled(gen)) and "plan" not in o["status"] and o)
    assert condition(obj, "Stalled") is not None
    gen = patch(cluster, namespace, "sticky", {"model": {"id": MODEL_ID, "preset": ""}})
    rec.reconcile(namespace, "sticky")
    obj = cluster.wait("reverted", lambda: (o := handled(gen)) and "plan" in o["status"] and o)
    assert obj["status"]["plan"]["gpuType"] == "nvidia-l4"


def test_strings_reach_the_api_server_intact(cluster: Cluster, namespace: str, operator: Any) -> None:
    """Characters outside the Basic Multilingual Plane survive a server-side apply (its body is
    parsed as YAML, which refuses JSON's surrogate-pair escapes): here in the status the
    operator writes, which quotes the offending flag (the prober's output excerpts take the
    same path)."""
    flag = "--svc-\U0001f600-\u00e9\u4e2d"
    body = model("emoji", resources=H100, engine={"extraArgs": [flag]})
    cluster.apply(body, namespace)
    stalled = wait_condition(cluster, namespace, "emoji", "Stalled", status="True")
    assert flag in stalled["message"]


def test_cached_model_takes_image_and_scheduling_changes(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    body = model("cimg", resources=H100, cache={"enabled": True, "accessMode": "ReadWriteOnce"})
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "cimg", timeout=120)
    (job,) = cluster.list("jobs", namespace, "modeldeploy.dev/cache-key")
    image = "ghcr.io/huggingface/text-generation-inference:3.3.6"
    gen = patch(cluster, namespace, "cimg", {
        "engine": {"image": image},
        "scheduling": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm",
                                        "effect": "NoSchedule"}]},
        "cache": {"accessMode": "ReadWriteMany"},
    })  # fmt: skip
    obj = wait_ready(cluster, namespace, "cimg", timeout=60)
    assert obj["status"]["observedGeneration"] == gen
    assert condition(obj, "Stalled") is None
    dep = cluster.get("deployment", "cimg", namespace)
    assert dep is not None and dep["spec"]["template"]["spec"]["containers"][0]["image"] == image
    # The finished download is done: its Job is the same one, never re-applied.
    (job_after,) = cluster.list("jobs", namespace, "modeldeploy.dev/cache-key")
    assert job_after["metadata"]["uid"] == job["metadata"]["uid"]
    assert job_after["metadata"]["resourceVersion"] == job["metadata"]["resourceVersion"]
    # A second model sharing the cache with another image is served from the same volume.
    other = model("cimg2", resources=H100, cache={"enabled": True, "accessMode": "ReadWriteOnce"})
    other["spec"]["engine"] = {"image": "ghcr.io/huggingface/text-generation-inference:3.3.5"}
    cluster.apply(other, namespace)
    obj2 = wait_ready(cluster, namespace, "cimg2", timeout=60)
    assert obj2["status"]["cache"]["claimName"] == obj["status"]["cache"]["claimName"]
    assert len(cluster.list("jobs", namespace, "modeldeploy.dev/cache-key")) == 1


def test_status_written_by_an_older_version_is_taken_over(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    # Earlier versions wrote status by merge patch (an update): those fields would be co-owned,
    # and server-side apply alone would never remove the stale ones.
    cluster.apply(model("legacy", resources=H100), namespace)
    obj = wait_ready(cluster, namespace, "legacy")
    stale = {"status": {
        "conditions": [*obj["status"]["conditions"],
                       {"type": "Reconciling", "status": "True", "reason": "Progressing", "message": "old",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "cache": {"claimName": "mdcache-old", "phase": "Ready"},
    }}  # fmt: skip
    cluster.kubectl("patch", "mdep", "legacy", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(stale))  # fmt: skip
    cluster.kubectl("annotate", "mdep", "legacy", "-n", namespace, "touched=1")  # an event: a pass

    def clean() -> dict[str, Any] | None:
        o = get_model(cluster, namespace, "legacy")
        st = (o or {}).get("status") or {}
        return o if "cache" not in st and condition(o, "Reconciling") is None else None

    cluster.wait("stale status fields removed", clean)
    live = cluster.get("mdep", "legacy", namespace, managed_fields=True)
    assert live is not None
    entries = live["metadata"]["managedFields"]
    owners = {(m["manager"], m["operation"]) for m in entries if m.get("subresource") == "status"}
    assert owners == {("modeldeploy-status", "Apply")}, owners


def test_cache_changes_a_volume_cannot_take_are_reported(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    body = model(
        "drift", resources=H100, cache={"enabled": True, "accessMode": "ReadWriteOnce", "size": "20Gi"}
    )
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "drift", timeout=120)
    # The host-path storage class does not allow expansion: the API server refuses the resize.
    gen = patch(cluster, namespace, "drift", {"cache": {"accessMode": "ReadWriteMany", "size": "40Gi"}})

    def reported() -> dict[str, Any] | None:
        c = condition(get_model(cluster, namespace, "drift"), "CacheReady")
        return c if c and "cannot grow" in c["message"] and "accessMode" in c["message"] else None

    c = cluster.wait("the cache says what it cannot take", reported)
    assert c["status"] == "True"  # the weights are there: the model keeps serving
    assert "spec.cache.accessMode ReadWriteMany differs from the volume's ReadWriteOnce" in c["message"]
    obj = wait_ready(cluster, namespace, "drift")
    assert obj["status"]["observedGeneration"] == gen
    (pvc,) = cluster.list("pvc", namespace, "modeldeploy.dev/cache-key")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_a_hub_outage_never_replans_a_model_without_its_facts(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    cluster.apply(hub_model("facts"), namespace)
    obj = wait_ready(cluster, namespace, "facts")
    assert obj["status"]["plan"]["estimatedGiBPerGpu"] > 0
    dep_before = cluster.get("deployment", "facts", namespace)
    assert dep_before is not None
    # A replica that starts while the Hub is unreachable (nothing listens on port 9).
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    outage = Reconciler(Kube(api), Settings(hf_endpoint="http://127.0.0.1:9"))
    assert outage.reconcile(namespace, "facts") is True  # to be retried, with backoff
    assert outage.reconcile(namespace, "facts") is True  # and again: the plan is kept meanwhile
    dep = cluster.get("deployment", "facts", namespace)
    assert dep is not None
    assert dep["metadata"]["generation"] == dep_before["metadata"]["generation"]
    assert dep["spec"]["template"] == dep_before["spec"]["template"]
