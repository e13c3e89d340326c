"""The Argo CD health check in manifests/argocd and kstatus, on the same ModelDeployment samples.
kstatus is the real library (sigs.k8s.io/cli-utils), run by hack/kstatus-check (tests/kstatus.py).

health.lua runs as Argo CD runs a check from argocd-cm: in Lua 5.1 (gopher-lua's dialect, and 5.4)
with only the base and table libraries, `obj` set to the object. The samples are the
cases of manifests/argocd/health_test.yaml, in Argo CD's own test layout.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.api import ModelDeployment
from tests.kstatus import Result, Status, compute

ARGOCD_DIR = Path(__file__).resolve().parents[2] / "manifests" / "argocd"
HEALTH_LUA = ARGOCD_DIR / "health.lua"
CM_PATCH = ARGOCD_DIR / "argocd-cm-patch.yaml"
CM_KEY = "resource.customizations.health.modeldeploy.dev_ModelDeployment"

# Lua 5.1 is what Argo CD implements; 5.4 catches reliance on 5.1-only behaviour.
RUNTIMES = ("lua51", "lua54")

# Argo CD opens base, package, table and a reduced os for argocd-cm checks (unless
# useOpenLibs is set): drop the rest, including the string metatable behind s:method().
_ARGOCD_SANDBOX = """
debug.setmetatable("", nil)
for _, name in ipairs({"string", "math", "io", "debug", "coroutine", "utf8", "bit32"}) do
  _G[name] = nil
end
"""

HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# The Argo CD verdict each kstatus status corresponds to.
AGREEING = {
    "Healthy": Status.CURRENT,
    "Progressing": Status.IN_PROGRESS,
    "Degraded": Status.FAILED,
}


def _load_cases() -> list[tuple[str, str, str]]:
    tests = yaml.safe_load((ARGOCD_DIR / "health_test.yaml").read_text())["tests"]
    return [
        (t["inputPath"], t["healthStatus"]["status"], t["healthStatus"].get("message", "")) for t in tests
    ]


CASES = _load_cases()
CASE_PATHS = [path for path, _, _ in CASES]


def load(input_path: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ARGOCD_DIR / input_path).read_text())
    return obj


def run_health(obj: dict[str, Any], runtime: str = "lua51") -> dict[str, str]:
    """health.lua's returned table, as Argo CD decodes it (a missing message is empty)."""
    # lupa is a dev dependency: a missing Lua runtime is an error, never a skip.
    lupa_runtime = importlib.import_module(f"lupa.{runtime}")
    lua = lupa_runtime.LuaRuntime(unpack_returned_tuples=False)
    lua.execute(_ARGOCD_SANDBOX)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(HEALTH_LUA.read_text())
    return {"status": str(hs["status"]), "message": str(hs["message"] or "")}


# ---- health.lua ---------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("input_path", "status", "message"), CASES, ids=CASE_PATHS)
def test_health_lua_cases(input_path: str, status: str, message: str, runtime: str) -> None:
    assert run_health(load(input_path), runtime) == {"status": status, "message": message}


def test_every_sample_is_a_case() -> None:
    samples = {f"testdata/{p.name}" for p in (ARGOCD_DIR / "testdata").glob("*.yaml")}
    assert samples == set(CASE_PATHS)


def test_cases_cover_every_verdict() -> None:
    assert {status for _, status, _ in CASES} == set(AGREEING)


@pytest.mark.parametrize("input_path", CASE_PATHS)
def test_samples_follow_the_api_and_condition_contract(input_path: str) -> None:
    obj = load(input_path)
    ModelDeployment.model_validate(obj)
    status = obj.get("status")
    if status is None:
        return
    conditions = {c["type"]: c for c in status["conditions"]}
    assert len(conditions) == len(status["conditions"]), "one condition per type"
    assert "Ready" in conditions
    # Reconciling and Stalled exist only while True, and never together: kstatus takes
    # whichever comes first in the list, health.lua takes Stalled.
    for abnormal in ("Reconciling", "Stalled"):
        if abnormal in conditions:
            assert conditions[abnormal]["status"] == "True"
    assert not {"Reconciling", "Stalled"} <= conditions.keys()


def _md(generation: int | None = 2, status: dict[str, Any] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "m", "namespace": "models"}
    if generation is not None:
        metadata["generation"] = generation
    obj: dict[str, Any] = {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": metadata,
        "spec": {"model": {"id": "org/model"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            _md(generation=None),
            {"status": "Progressing", "message": "Waiting for the operator to observe the resource"},
            id="no-generation",
        ),
        pytest.param(
            _md(status={"conditions": [_cond("Ready", "True", "Available", "ready")]}),
            {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"},
            id="no-observedGeneration",
        ),
        pytest.param(
            _md(status={"observedGeneration": 2, "conditions": []}),
            {"status": "Progressing", "message": "Waiting for the Ready condition"},
            id="no-ready",
        ),
        pytest.param(
            _md(status={"observedGeneration": 2, "conditions": [_cond("Ready", "True", "Available")]}),
            {"status": "Healthy", "message": "Available"},
            id="empty-message-falls-back-to-reason",
        ),
        pytest.param(
            _md(
                status={
                    "observedGeneration": 2,
                    "conditions": [_cond("Ready", "False", "ImagePullBackOff", "cannot pull image")],
                }
            ),
            {"status": "Degraded", "message": "cannot pull image"},
            id="image-pull-backoff",
        ),
        pytest.param(
            _md(
                status={
                    "observedGeneration": 2,
                    "conditions": [_cond("Ready", "False", "Progressing", "loading weights")],
                }
            ),
            {"status": "Progressing", "message": "loading weights"},
            id="ready-false-other-reason",
        ),
        pytest.param(
            _md(
                status={
                    "observedGeneration": 2,
                    "conditions": [
                        _cond("Reconciling", "True", "Progressing", "rolling out"),
                        _cond("Stalled", "True", "ProgressDeadlineExceeded", "no progress for 1h"),
                    ],
                }
            ),
            {"status": "Degraded", "message": "no progress for 1h"},
            id="stalled-outranks-reconciling",
        ),
        pytest.param(
            _md(
                status={
                    "observedGeneration": 2,
                    "conditions": [
                        _cond("Ready", "True", "Available", "ready"),
                        _cond("Reconciling", "False", "Progressing", "stale"),
                        _cond("Stalled", "False", "CacheFailed", "stale"),
                    ],
                }
            ),
            {"status": "Healthy", "message": "ready"},
            id="false-abnormal-conditions-ignored",
        ),
    ],
)
def test_health_lua_edges(obj: dict[str, Any], expected: dict[str, str]) -> None:
    assert run_health(obj) == expected


def test_sandbox_withholds_string_library() -> None:
    lupa_runtime = importlib.import_module("lupa.lua51")
    lua = lupa_runtime.LuaRuntime(unpack_returned_tuples=False)
    lua.execute(_ARGOCD_SANDBOX)
    assert lua.execute("return string") is None
    assert lua.execute("return table.insert") is not None


def test_configmap_patch_embeds_health_lua() -> None:
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert (patch["apiVersion"], patch["kind"], patch["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    assert patch["data"][CM_KEY] == HEALTH_LUA.read_text(), (
        "argocd-cm-patch.yaml must embed health.lua unchanged, indented by four spaces"
    )


# ---- kstatus on the samples ---------------------------------------------------------------

READY_MESSAGE_UNSCHEDULABLE = (
    "1/2 replicas ready; 1 pod unschedulable: 0/6 nodes are available: 6 Insufficient nvidia.com/gpu"
)
READY_MESSAGE_OOM = (
    "0/1 replicas ready: container text-generation-inference was OOMKilled (memory limit 16Gi)"
)

KSTATUS_EXPECTED: dict[str, tuple[Status, str]] = {
    "testdata/healthy.yaml": (Status.CURRENT, "Resource is Ready"),
    "testdata/healthy_scaledToZero.yaml": (Status.CURRENT, "Resource is Ready"),
    # Upstream skips the generation check without status.observedGeneration.
    "testdata/progressing_noStatus.yaml": (Status.CURRENT, "Resource is current"),
    "testdata/progressing_oldGeneration.yaml": (
        Status.IN_PROGRESS,
        "ModelDeployment generation is 4, but latest observed generation is 3",
    ),
    "testdata/progressing_reconciling.yaml": (Status.IN_PROGRESS, "Rolling out: 1/2 replicas updated"),
    "testdata/progressing_unschedulable.yaml": (
        Status.IN_PROGRESS,
        "Waiting for GPUs: 0/1 replicas scheduled",
    ),
    "testdata/progressing_unschedulableNotReconciling.yaml": (
        Status.IN_PROGRESS,
        READY_MESSAGE_UNSCHEDULABLE,
    ),
    "testdata/progressing_readyUnknown.yaml": (Status.IN_PROGRESS, "Waiting for pods to report readiness"),
    "testdata/degraded_stalled.yaml": (
        Status.FAILED,
        "Needs about 141 GiB of GPU memory per replica; 1x nvidia-l4-24gb has 24 GiB",
    ),
    "testdata/degraded_crashLoopBackOff.yaml": (
        Status.FAILED,
        "Container text-generation-inference keeps crashing (restarts: 5); see its logs",
    ),
    # kstatus reads Ready, not its reason: without Stalled a pod failure is InProgress.
    "testdata/degraded_oomKilledNotStalled.yaml": (Status.IN_PROGRESS, READY_MESSAGE_OOM),
}

# Where the two verdicts part by design: (Argo CD, kstatus).
KNOWN_DIVERGENCES: dict[str, tuple[str, Status]] = {
    # kstatus skips the generation check without status.observedGeneration: this is why the CRD
    # gives status a default (observedGeneration 0), so no live object ever reads like this.
    "testdata/progressing_noStatus.yaml": ("Progressing", Status.CURRENT),
    "testdata/degraded_oomKilledNotStalled.yaml": ("Degraded", Status.IN_PROGRESS),
}


def test_kstatus_expectations_cover_every_case() -> None:
    assert set(KSTATUS_EXPECTED) == set(CASE_PATHS)


@pytest.mark.parametrize("input_path", CASE_PATHS)
def test_kstatus_on_samples(input_path: str) -> None:
    res = compute(load(input_path))
    assert (res.status, res.message) == KSTATUS_EXPECTED[input_path]


@pytest.mark.parametrize("input_path", CASE_PATHS)
def test_argocd_and_kstatus_agree(input_path: str) -> None:
    argo = run_health(load(input_path))["status"]
    kstatus = compute(load(input_path)).status
    if input_path in KNOWN_DIVERGENCES:
        assert (argo, kstatus) == KNOWN_DIVERGENCES[input_path]
    else:
        assert AGREEING[argo] is kstatus


# ---- kstatus rules ------------------------------------------------------------------------


def test_kstatus_not_found_and_terminating() -> None:
    assert compute(None).status is Status.NOT_FOUND
    obj = load("testdata/degraded_stalled.yaml")
    obj["metadata"]["deletionTimestamp"] = "2025-06-05T00:00:00Z"
    assert compute(obj) == Result(Status.TERMINATING, "Resource scheduled for deletion")


def test_kstatus_condition_order_decides() -> None:
    reconciling = _cond("Reconciling", "True", "Progressing", "rolling out")
    stalled = _cond("Stalled", "True", "CacheFailed", "download failed")
    both = _md(status={"observedGeneration": 2, "conditions": [reconciling, stalled]})
    assert compute(both).status is Status.IN_PROGRESS
    both["status"]["conditions"].reverse()
    assert compute(both).status is Status.FAILED


def test_kstatus_rejects_non_integer_generation() -> None:
    obj = _md()
    obj["metadata"]["generation"] = "2"
    with pytest.raises(ValueError, match=r"metadata\.generation"):
        compute(obj)


def _deployment(
    *,
    spec_replicas: int = 2,
    generation: int = 1,
    observed: int = 1,
    replicas: int = 2,
    updated: int = 2,
    ready: int = 2,
    available: int = 2,
    progressing: tuple[str, str] | None = ("True", "NewReplicaSetAvailable"),
    available_condition: str = "True",
    deadline: int | None = 600,
) -> dict[str, Any]:
    conditions = [_cond("Available", available_condition, "MinimumReplicasAvailable")]
    if progressing is not None:
        conditions.append(_cond("Progressing", progressing[0], progressing[1]))
    spec: dict[str, Any] = {"replicas": spec_replicas}
    if deadline is not None:
        spec["progressDeadlineSeconds"] = deadline
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m", "generation": generation},
        "spec": spec,
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "conditions": conditions,
        },
    }


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        pytest.param(_deployment(), Status.CURRENT, "Deployment is available. Replicas: 2", id="available"),
        pytest.param(
            _deployment(generation=2),
            Status.IN_PROGRESS,
            "Deployment generation is 2, but latest observed generation is 1",
            id="generation-not-observed",
        ),
        pytest.param(
            _deployment(replicas=1, updated=1, ready=1, available=1),
            Status.IN_PROGRESS,
            "Replicas: 1/2",
            id="too-few-replicas",
        ),
        pytest.param(
            _deployment(replicas=3, updated=1), Status.IN_PROGRESS, "Updated: 1/2", id="rolling-update"
        ),
        pytest.param(
            _deployment(replicas=3), Status.IN_PROGRESS, "Pending termination: 1", id="old-pods-terminating"
        ),
        pytest.param(
            _deployment(available=1, ready=1), Status.IN_PROGRESS, "Available: 1/2", id="not-yet-available"
        ),
        pytest.param(
            _deployment(progressing=("True", "ReplicaSetUpdated")),
            Status.IN_PROGRESS,
            "ReplicaSet not Available",
            id="replicaset-not-available",
        ),
        pytest.param(
            _deployment(available_condition="False"),
            Status.IN_PROGRESS,
            "Deployment not Available",
            id="deployment-not-available",
        ),
        pytest.param(
            _deployment(progressing=None, deadline=None),
            Status.CURRENT,
            "Deployment is available. Replicas: 2",
            id="no-progress-deadline",
        ),
        pytest.param(
            _deployment(
                replicas=2, updated=1, available=1, progressing=("False", "ProgressDeadlineExceeded")
            ),
            Status.FAILED,
            "Progress deadline exceeded",
            id="progress-deadline-exceeded",
        ),
    ],
)
def test_kstatus_deployment(obj: dict[str, Any], status: Status, message: str) -> None:
    res = compute(obj)
    assert (res.status, res.message) == (status, message)


def _pod(phase: str, *, created: str = "2025-06-05T11:00:00Z", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "creationTimestamp": created},
        "status": {"phase": phase, **status},
    }


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        pytest.param(
            _pod("Running", conditions=[_cond("Ready", "True", "")]),
            Status.CURRENT,
            "Pod is Ready",
            id="pod-ready",
        ),
        pytest.param(
            _pod(
                "Running",
                conditions=[_cond("Ready", "False", "ContainersNotReady")],
                containerStatuses=[{"name": "tgi", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
            ),
            Status.FAILED,
            "Containers in CrashLoop state: tgi",
            id="pod-crashloop",
        ),
        pytest.param(
            _pod("Pending", conditions=[_cond("PodScheduled", "False", "Unschedulable")]),
            Status.FAILED,
            "Pod could not be scheduled",
            id="pod-unschedulable",
        ),
        pytest.param(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {},
                "status": {"phase": "Pending"},
            },
            Status.IN_PROGRESS,
            "PVC is not Bound. phase: Pending",
            id="pvc-pending",
        ),
        pytest.param(
            {"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": {"type": "LoadBalancer"}},
            Status.IN_PROGRESS,
            "ClusterIP not set. Service type: LoadBalancer",
            id="service-lb-without-ip",
        ),
        pytest.param(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {},
                "spec": {"completions": 1},
                "status": {"failed": 3, "conditions": [_cond("Failed", "True", "BackoffLimitExceeded")]},
            },
            Status.FAILED,
            "Job Failed. failed: 3/1",
            id="job-failed",
        ),
        pytest.param(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}},
            Status.CURRENT,
            "Resource is always ready",
            id="configmap",
        ),
        pytest.param(
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1}, "status": {}},
            Status.IN_PROGRESS,
            "DaemonSet status.observedGeneration not found",
            id="daemonset-not-observed",
        ),
    ],
)
def test_kstatus_builtin_kinds(obj: dict[str, Any], status: Status, message: str) -> None:
    res = compute(obj)
    assert (res.status, res.message) == (status, message)
