"""Status computation is pure: conditions from observed objects, kstatus shape."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import status
from modeldeploy.errors import SpecError


def dep(replicas: int, ready: int, updated: int, generation: int = 1, observed: int = 1,
        deadline: bool = False) -> dict[str, Any]:  # fmt: skip
    conds = []
    if deadline:
        conds.append({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                      "message": 'ReplicaSet "m-1" has timed out progressing.'})  # fmt: skip
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                   "updatedReplicas": updated, "availableReplicas": ready, "conditions": conds},
    }  # fmt: skip


def pod(name: str = "p", **container: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"containerStatuses": [{"name": "server", **container}]}}


UNSCHED = {
    "metadata": {"name": "p"},
    "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                               "message": "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."}]},
}  # fmt: skip


def compute(observed: status.Observed | None, error: SpecError | None = None,
            prior: Any = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    st = status.compute("m", "ns", 1, "sel", "http://m.ns.svc:80", observed, error, prior, "T")
    return {c.type: c.model_dump(by_alias=True) for c in st.conditions}


def test_ready_when_all_replicas_ready() -> None:
    conds = compute(status.Observed(2, dep(2, 2, 2), []))
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "Available"
    assert "Reconciling" not in conds and "Stalled" not in conds


@pytest.mark.parametrize(
    ("container", "reason"),
    [
        ({"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}, "restartCount": 7},
         "CrashLoopBackOff"),
        ({"state": {"waiting": {"reason": "ImagePullBackOff", "message": "denied"}}}, "ImagePullBackOff"),
        ({"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 3,
          "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}, "OOMKilled"),
    ],
)  # fmt: skip
def test_fatal_pod_causes_stall_with_numbers(container: dict[str, Any], reason: str) -> None:
    conds = compute(status.Observed(1, dep(1, 0, 1), [pod(**container)]))
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == reason
    assert conds["Stalled"]["reason"] == reason
    assert "1 pod" in conds["Stalled"]["message"]
    assert "Reconciling" not in conds


def test_unschedulable_is_reconciling_with_scheduler_message() -> None:
    conds = compute(status.Observed(1, dep(1, 0, 1), [UNSCHED]))
    assert conds["Ready"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in conds["Ready"]["message"]
    assert conds["Reconciling"]["status"] == "True"
    assert "Stalled" not in conds


def test_progress_deadline_is_stalled() -> None:
    conds = compute(status.Observed(1, dep(1, 0, 1, deadline=True), [UNSCHED]))
    assert conds["Stalled"]["reason"] == "ProgressDeadlineExceeded"
    assert "Reconciling" not in conds


def test_spec_error_is_stalled_and_names_field() -> None:
    conds = compute(None, SpecError("spec.engine.extraArgs[0]", "--x is not a flag"))
    assert conds["Stalled"]["reason"] == "InvalidSpec"
    assert conds["Stalled"]["message"].startswith("spec.engine.extraArgs[0]: ")
    assert conds["Ready"]["status"] == "False"


def test_rollout_in_progress_is_reconciling() -> None:
    conds = compute(status.Observed(2, dep(2, 1, 1, generation=2, observed=2), []))
    assert conds["Reconciling"]["reason"] == "Progressing"
    assert "1/2 replicas ready" in conds["Reconciling"]["message"]


def test_transition_time_kept_while_status_unchanged() -> None:
    first = status.compute("m", "ns", 1, "s", "e", status.Observed(1, dep(1, 1, 1), []), None, None, "T1")
    second = status.compute("m", "ns", 1, "s", "e", status.Observed(1, dep(1, 1, 1), []), None, first, "T2")
    assert second.conditions[0].last_transition_time == "T1"
    assert status.transitions(first, second) == []
    broken = status.compute(
        "m", "ns", 1, "s", "e", status.Observed(1, dep(1, 0, 1), [UNSCHED]), None, second, "T3"
    )
    assert broken.conditions[0].last_transition_time == "T3"
    assert {t.type for t in status.transitions(second, broken)} == {"Ready", "Reconciling"}


def test_fatal_pod_cause_wins_over_a_lagging_ready_count() -> None:
    crash = pod(state={"waiting": {"reason": "ImagePullBackOff", "message": "denied"}})
    conds = compute(status.Observed(1, dep(1, 1, 1), [crash]))
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ImagePullBackOff"
    assert conds["Stalled"]["reason"] == "ImagePullBackOff"


def test_crash_looping_surge_pod_does_not_fail_a_serving_model() -> None:
    # Two replicas serve; the one surge pod of a rollout crash-loops. The model serves all it
    # was asked for: Ready stays True (the rollout is reported as Reconciling, not Stalled).
    crashing = pod("surge", state={"waiting": {"reason": "CrashLoopBackOff"}}, restartCount=4)
    serving = [pod(n, ready=True) for n in ("a", "b")]
    for p in serving:
        p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    conds = compute(status.Observed(2, dep(3, 2, 1), [*serving, crashing]))
    assert conds["Ready"]["status"] == "True", conds
    assert "Stalled" not in conds
    assert conds["Reconciling"]["reason"] == "CrashLoopBackOff"


def test_replica_failure_reaches_status() -> None:
    # The Deployment controller copies the ReplicaSet's FailedCreate (quota, Pod Security
    # admission, LimitRange, missing PriorityClass) into a ReplicaFailure condition.
    d = dep(1, 0, 0)
    d["status"]["replicas"] = 0
    d["status"]["conditions"].append({
        "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
        "message": 'pods "m-1-x" is forbidden: exceeded quota: gpu, requested: requests.nvidia.com/gpu=1',
    })  # fmt: skip
    conds = compute(status.Observed(1, d, []))
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ReplicaFailure"
    assert conds["Stalled"]["reason"] == "ReplicaFailure"
    assert "exceeded quota" in conds["Stalled"]["message"]


def test_transient_apply_failure_is_reconciling_and_keeps_observed_generation() -> None:
    st = status.compute(
        "m", "ns", 3, "sel", "http://m.ns.svc:80", status.Observed(1, dep(1, 1, 1), []), None, None, "T",
        observed_generation=2, transient=status.Blocked("ApplyFailed", "Deployment m: 503 unavailable"),
    )  # fmt: skip
    conds = {c.type: c for c in st.conditions}
    assert st.observed_generation == 2
    assert conds["Reconciling"].reason == "ApplyFailed"
    assert all(c.observed_generation == 2 for c in st.conditions)


# The attach/detach controller's words for a ReadWriteOnce volume wanted on a second node.
MULTI_ATTACH = 'Multi-Attach error for volume "pvc-4f1c" Volume is already used by pod(s) m-6d9f-abcde'


def scheduled_pending(name: str, uid: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid}, "spec": {"nodeName": "gpu-h100-1"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "server", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}  # fmt: skip


def test_volume_attach_failures_reach_status() -> None:
    stuck = scheduled_pending("m-6d9f-xyz", "u2")
    events = (
        {"involvedObject": {"kind": "Pod", "name": "m-6d9f-xyz", "uid": "u2"}, "reason": "FailedAttachVolume",
         "message": MULTI_ATTACH, "lastTimestamp": "2026-11-30T10:00:00Z", "type": "Warning"},
        # Another pod's event, and a pod that runs: neither is this pod's problem.
        {"involvedObject": {"kind": "Pod", "name": "other", "uid": "u9"}, "reason": "FailedMount",
         "message": "MountVolume.SetUp failed", "type": "Warning"},
    )  # fmt: skip
    st = status.compute(
        "m", "ns", 1, "sel", "e", status.Observed(2, dep(2, 1, 2), [pod("a"), stuck], pod_events=events),
        None, None, "T",
    )  # fmt: skip
    conds = {c.type: c for c in st.conditions}
    assert conds["Ready"].status == "False" and conds["Ready"].reason == "FailedAttachVolume"
    assert "Multi-Attach error" in conds["Ready"].message
    assert conds["Reconciling"].reason == "FailedAttachVolume"
    assert "Stalled" not in conds  # the kubelet keeps trying; it can clear by itself


def test_volume_events_of_a_started_pod_are_history() -> None:
    running = scheduled_pending("m-1", "u1")
    running["status"]["phase"] = "Running"
    events = ({"involvedObject": {"name": "m-1", "uid": "u1"}, "reason": "FailedMount", "message": "old"},)
    assert status.diagnose_pods([running], events) == []


def _of(template: str, created: str, p: dict[str, Any]) -> dict[str, Any]:
    p["metadata"] = {**p["metadata"], "labels": {"pod-template-hash": template}, "creationTimestamp": created}
    return p


def test_a_fix_rolling_out_is_not_stalled_by_the_old_pods() -> None:
    crash = {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 9}
    old = _of("old", "2026-11-30T10:00:00Z", pod("m-old-1", **crash))
    new = _of(
        "new", "2026-11-30T10:05:00Z", pod("m-new-1", state={"waiting": {"reason": "ContainerCreating"}})
    )
    conds = compute(status.Observed(1, dep(2, 0, 1, generation=2, observed=2), [old, new]))
    assert "Stalled" not in conds, conds
    assert conds["Reconciling"]["status"] == "True"
    # The new template crash-loops too: now it is this generation's failure.
    new_crash = _of("new", "2026-11-30T10:05:00Z", pod("m-new-1", **crash))
    conds = compute(status.Observed(1, dep(2, 0, 1, generation=2, observed=2), [old, new_crash]))
    assert conds["Stalled"]["reason"] == "CrashLoopBackOff"


def test_nothing_is_stalled_before_the_deployment_controller_saw_the_change() -> None:
    crash = {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 9}
    conds = compute(
        status.Observed(1, dep(1, 0, 1, generation=3, observed=2, deadline=True), [pod("p", **crash)])
    )
    assert "Stalled" not in conds, conds


def test_a_model_serving_from_its_cache_stays_ready_while_the_download_runs_again() -> None:
    from modeldeploy import cache as cache_mod
    from modeldeploy.api import Cache

    claim = cache_mod.claim_name("org/m", "main")
    pvc = cache_mod.render_pvc("org/m", "main", "ns", Cache(enabled=True), "20Gi")
    pvc["status"] = {"phase": "Bound"}
    verdict = cache_mod.cache_status(claim, pvc, None)  # its Job was deleted: a new one starts
    assert not verdict.ready
    serving = dep(1, 1, 1)
    serving["spec"]["template"] = {
        "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}
    }
    conds = compute(status.Observed(1, serving, [], cache=verdict))
    assert conds["Ready"]["status"] == "True"
    # A Deployment of another revision (another volume) does not serve this generation.
    other = dep(1, 1, 1)
    other["spec"]["template"] = {
        "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}]}
    }
    conds = compute(status.Observed(1, other, [], cache=verdict))
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "WaitingForCache"
