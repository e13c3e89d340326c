"""The weight cache on the real control plane; kube-controller-manager's host-path provisioner
serves the volume.

For the Hub stand-in's models (acme/..., tests/standins/hf_hub.py) the test plays the kubelet
(tests/standins/kubelet.py): it runs the real prefetch program with the prefetch pod's own command,
args and environment against the stand-in, and writes the exit code and termination message the
program actually produced into the pod's status. For the other models KWOK completes the prefetch
pod with a made-up summary (hack/kwok-stages/pod-complete.yaml); those tests are about the volume's
life cycle, not the download.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from tests.conftest import Cluster, condition
from tests.integration.test_reconcile import get_model, model, wait_condition, wait_ready
from tests.standins.hf_hub import GRANTED_TOKEN, HubStandIn
from tests.standins.kubelet import Kubelet, Termination

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


def running_prefetch_pod(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    """The Running pod of the namespace's (one) prefetch Job, once the scheduler bound it."""
    for job in cluster.list("jobs", ns, "modeldeploy.dev/cache-key"):
        assert job["metadata"]["name"].startswith("mdcache-"), job["metadata"]["name"]
        for pod in cluster.list("pods", ns, f"batch.kubernetes.io/job-name={job['metadata']['name']}"):
            st = pod.get("status") or {}
            if st.get("phase") == "Running" and pod["spec"].get("nodeName"):
                return pod
    return None


def play_kubelet(cluster: Cluster, ns: str, hub: HubStandIn, root: Path) -> Termination:
    """Run the prefetch pod's program for real, then report its end in the pod's status."""
    pod = cluster.wait("prefetch pod Running", lambda: running_prefetch_pod(cluster, ns))
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_ENDPOINT"] == hub.url  # the operator pointed its Job at the stand-in
    kubelet = Kubelet(cluster, root)
    term = kubelet.run(pod)
    kubelet.report(pod, term)
    return term


def test_cache_downloads_before_any_serving_pod(
    cluster: Cluster, namespace: str, operator: Any, hub: HubStandIn, tmp_path: Path
) -> None:
    repo = hub.repos["acme/tiny-llm"]
    cluster.apply(cached("cold", model_id=repo.id, size="1Gi"), namespace)
    # The pod is Running and nothing has been downloaded yet: the cache says so, and no serving
    # pod exists.
    cluster.wait("cache Downloading", lambda: cache_phase(cluster, namespace, "cold") == "Downloading")
    assert cluster.get("deployment", "cold", namespace) is None
    assert cluster.list("pods", namespace, "modeldeploy.dev/name=cold") == []

    term = play_kubelet(cluster, namespace, hub, tmp_path)
    assert term.exit_code == 0, term.log
    summary = json.loads(term.message)
    assert summary["commit"] == repo.sha and summary["format"] == "safetensors"
    snapshot = tmp_path / "volumes" / "data" / "hub" / "models--acme--tiny-llm" / "snapshots" / repo.sha
    assert (snapshot / "model.safetensors").read_bytes() == repo.files["model.safetensors"].content

    obj = wait_ready(cluster, namespace, "cold")
    # The serving Deployment was created only once the download had finished.
    (job,) = cluster.list("jobs", namespace, "modeldeploy.dev/cache-key")
    dep = cluster.get("deployment", "cold", namespace)
    assert dep is not None
    assert dep["metadata"]["creationTimestamp"] >= job["status"]["completionTime"]
    ready_cond = condition(obj, "CacheReady")
    assert ready_cond is not None and ready_cond["status"] == "True"
    assert repo.sha[:12] in ready_cond["message"]
    assert obj["status"]["cache"]["phase"] == "Ready"
    # The revision is the commit the program resolved "main" to, as it reported it.
    assert obj["status"]["cache"]["revision"] == repo.sha
    claim = obj["status"]["cache"]["claimName"]
    assert claim == job["metadata"]["name"] and claim.startswith("mdcache-")
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


def test_gated_model_without_token_fails_with_the_programs_reason(
    cluster: Cluster, namespace: str, operator: Any, hub: HubStandIn, tmp_path: Path
) -> None:
    cluster.apply(cached("gated", model_id="acme/tiny-llm-gated", size="1Gi"), namespace)

    term = play_kubelet(cluster, namespace, hub, tmp_path)
    assert term.exit_code == 10, term.log  # the program's EXIT_ACCESS
    assert json.loads(term.message)["error"] == "GatedRepo"
    c = wait_condition(cluster, namespace, "gated", "CacheReady", reason="GatedModel")
    assert c["status"] == "False"
    assert "tokenSecretRef" in c["message"]
    obj = get_model(cluster, namespace, "gated")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["reason"] == "GatedModel"
    assert cache_phase(cluster, namespace, "gated") == "Failed"
    assert cluster.get("deployment", "gated", namespace) is None
    assert cluster.list("pods", namespace, "modeldeploy.dev/name=gated") == []


def test_unknown_model_fails_with_the_programs_reason(
    cluster: Cluster, namespace: str, operator: Any, hub: HubStandIn, tmp_path: Path
) -> None:
    cluster.apply(cached("nosuch", model_id="acme/no-such-model", size="1Gi"), namespace)

    term = play_kubelet(cluster, namespace, hub, tmp_path)
    assert term.exit_code == 11, term.log  # the program's EXIT_NOT_FOUND
    assert json.loads(term.message)["error"] == "RepositoryNotFound"
    c = wait_condition(cluster, namespace, "nosuch", "CacheReady", reason="ModelNotFound")
    assert c["status"] == "False"
    assert "acme/no-such-model" in c["message"] and "spec.model.id" in c["message"]
    assert cache_phase(cluster, namespace, "nosuch") == "Failed"
    assert cluster.get("deployment", "nosuch", namespace) is None


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
    cluster: Cluster, namespace: str, operator: Any, hub: HubStandIn, tmp_path: Path
) -> None:
    # Gated, and the operator never holds the token: only the prefetch, which reads the token
    # from the Secret, can read the model's files and so its shape.
    repo = hub.repos["acme/tiny-llm-gated"]
    token = base64.b64encode(GRANTED_TOKEN.encode()).decode()
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
                   "data": {"token": token}}, namespace)  # fmt: skip
    body = cached("learned", model_id=repo.id, size="1Gi")
    body["spec"]["model"]["tokenSecretRef"] = {"name": "hf-token", "key": "token"}
    body["spec"]["resources"] = {"gpus": "auto", "gpuType": "nvidia-h100-80gb"}
    cluster.apply(body, namespace)

    term = play_kubelet(cluster, namespace, hub, tmp_path)
    assert term.exit_code == 0, term.log
    facts = json.loads(term.message)["architecture"]
    assert facts["parameters"] > 0 and facts["num_hidden_layers"] == 2
    obj = wait_ready(cluster, namespace, "learned")
    assert obj["status"]["cache"]["revision"] == repo.sha
    plan = obj["status"]["plan"]
    assert plan["gpusPerReplica"] == 1 and plan["gpuType"] == "nvidia-h100-80gb"
    assert plan["estimatedGiBPerGpu"] > 0  # planned: without facts there is no estimate
    (pod,) = cluster.list("pods", namespace, "modeldeploy.dev/name=learned")
    args = pod["spec"]["containers"][0]["args"]
    # The planned context went to TGI: the model's 512 positions from its config.json.
    assert args[args.index("--max-total-tokens") + 1] == "512"
