"""kstatus for objects read as plain dicts, following sigs.k8s.io/cli-utils pkg/kstatus/status.

`compute` mirrors `status.Compute`: deletion, generation and the Reconciling/Stalled
conditions decide first; then the rules for built-in kinds (Deployment, StatefulSet, Pod,
...); then a Ready condition; anything else is Current. Results and messages match
upstream so that a test failure reads like `kstatus` output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

__all__ = ["SCHEDULE_WINDOW", "Condition", "Result", "Status", "compute"]


class Status(StrEnum):
    IN_PROGRESS = "InProgress"
    FAILED = "Failed"
    CURRENT = "Current"
    TERMINATING = "Terminating"
    NOT_FOUND = "NotFound"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Condition:
    """A standard kstatus condition (Reconciling or Stalled) derived from the object."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Result:
    status: Status
    message: str
    conditions: tuple[Condition, ...] = ()


# How long a pending pod may stay unscheduled before it counts as Failed.
SCHEDULE_WINDOW = timedelta(seconds=15)

# The deployment controller's value for "no progress deadline".
_MAX_INT32 = 2**31 - 1

_Rule = Callable[[Mapping[str, Any]], Result]


def compute(
    obj: Mapping[str, Any] | None,
    *,
    require_observed_generation: bool = False,
    now: datetime | None = None,
) -> Result:
    """Status of one object as the API server returned it (None when it does not exist).

    Upstream skips the generation check when status.observedGeneration is missing, so a
    custom resource its controller has not yet touched is Current.
    `require_observed_generation=True` applies the stricter check upstream keeps for
    DaemonSets, so waiting on a fresh object waits for its controller. `now` only
    matters for the Pod scheduling window.

    Raises ValueError where upstream returns an error (a non-integer generation, an
    unknown Pod phase).
    """
    if obj is None:
        return Result(Status.NOT_FOUND, "Resource not found")
    res = _generic(obj, require_observed_generation)
    if res is not None:
        return res
    key = _legacy_key(obj)
    if key == "Pod":
        return _pod(obj, now if now is not None else datetime.now(UTC))
    rule = _LEGACY_RULES.get(key)
    if rule is not None:
        return rule(obj)
    res = _ready_condition(obj)
    if res is not None:
        return res
    return Result(Status.CURRENT, "Resource is current")


# ---- generic rules ------------------------------------------------------------------------


def _generic(obj: Mapping[str, Any], require_observed_generation: bool) -> Result | None:
    # A client may hand over a datetime rather than the wire string; both mean "deleting".
    if _field(obj, "metadata", "deletionTimestamp") not in (None, ""):
        return Result(Status.TERMINATING, "Resource scheduled for deletion")
    if require_observed_generation:
        res = _check_generation_set(obj)
        if res is not None:
            return res
    res = _check_generation(obj)
    if res is not None:
        return res
    # First match in list order wins, as upstream: Reconciling and Stalled are not ranked.
    for c in _conditions(obj):
        if c.type == "Reconciling" and c.status == "True":
            return _in_progress(c.reason, c.message)
        if c.type == "Stalled" and c.status == "True":
            return _failed(c.reason, c.message)
    return None


def _check_generation(obj: Mapping[str, Any]) -> Result | None:
    generation = _nested_int(obj, "metadata", "generation")
    if generation is None:
        return None
    observed = _nested_int(obj, "status", "observedGeneration")
    if observed is not None and observed != generation:
        message = f"{_kind(obj)} generation is {generation}, but latest observed generation is {observed}"
        return Result(Status.IN_PROGRESS, message, (_reconciling("LatestGenerationNotObserved", message),))
    return None


def _check_generation_set(obj: Mapping[str, Any]) -> Result | None:
    if _nested_int(obj, "metadata", "generation") is None:
        message = f"{_kind(obj)} metadata.generation not found"
        return Result(Status.IN_PROGRESS, message, (_reconciling("NoGeneration", message),))
    if _nested_int(obj, "status", "observedGeneration") is None:
        message = f"{_kind(obj)} status.observedGeneration not found"
        return Result(Status.IN_PROGRESS, message, (_reconciling("NoObservedGeneration", message),))
    return None


def _ready_condition(obj: Mapping[str, Any]) -> Result | None:
    for c in _conditions(obj):
        if c.type != "Ready":
            continue
        if c.status == "True":
            return Result(Status.CURRENT, "Resource is Ready")
        if c.status in ("False", "Unknown"):
            return _in_progress(c.reason, c.message)
    return None


# ---- built-in kinds -----------------------------------------------------------------------


def _always_ready(obj: Mapping[str, Any]) -> Result:
    return Result(Status.CURRENT, "Resource is always ready")


def _deployment(obj: Mapping[str, Any]) -> Result:
    # Without a deadline the controller never sets Progressing, so it cannot be required.
    progressing = _int(obj, "spec.progressDeadlineSeconds", _MAX_INT32) == _MAX_INT32
    available = False
    for c in _conditions(obj):
        if c.type == "Progressing":
            if c.reason == "ProgressDeadlineExceeded":
                return Result(
                    Status.FAILED,
                    "Progress deadline exceeded",
                    (Condition("Stalled", "True", c.reason, c.message),),
                )
            if c.status == "True" and c.reason == "NewReplicaSetAvailable":
                progressing = True
        elif c.type == "Available" and c.status == "True":
            available = True

    spec = _int(obj, "spec.replicas", 1)
    replicas = _int(obj, "status.replicas", 0)
    updated = _int(obj, "status.updatedReplicas", 0)
    ready = _int(obj, "status.readyReplicas", 0)
    available_replicas = _int(obj, "status.availableReplicas", 0)

    if spec > replicas:
        return _in_progress("LessReplicas", f"Replicas: {replicas}/{spec}")
    if spec > updated:
        return _in_progress("LessUpdated", f"Updated: {updated}/{spec}")
    if replicas > spec:
        return _in_progress("ExtraPods", f"Pending termination: {replicas - spec}")
    if updated > available_replicas:
        return _in_progress("LessAvailable", f"Available: {available_replicas}/{updated}")
    if spec > ready:
        return _in_progress("LessReady", f"Ready: {ready}/{spec}")
    if not progressing:
        return _in_progress("ReplicaSetNotAvailable", "ReplicaSet not Available")
    if not available:
        return _in_progress("DeploymentNotAvailable", "Deployment not Available")
    return Result(Status.CURRENT, f"Deployment is available. Replicas: {replicas}")


def _replicaset(obj: Mapping[str, Any]) -> Result:
    for c in _conditions(obj):
        if c.type == "ReplicaFailure" and c.status == "True":
            return _in_progress("ReplicaFailure", "Replica Failure condition. Check Pods")

    spec = _int(obj, "spec.replicas", 1)
    replicas = _int(obj, "status.replicas", 0)
    ready = _int(obj, "status.readyReplicas", 0)
    available = _int(obj, "status.availableReplicas", 0)
    labelled = _int(obj, "status.fullyLabeledReplicas", 0)

    if spec > labelled:
        return _in_progress("LessLabelled", f"Labelled: {labelled}/{spec}")
    if spec > available:
        return _in_progress("LessAvailable", f"Available: {available}/{spec}")
    if spec > ready:
        return _in_progress("LessReady", f"Ready: {ready}/{spec}")
    if replicas > spec:
        return _in_progress("ExtraPods", f"Pending termination: {replicas - spec}")
    return Result(Status.CURRENT, f"ReplicaSet is available. Replicas: {replicas}")


def _statefulset(obj: Mapping[str, Any]) -> Result:
    # The StatefulSet controller sets no conditions, so only the counters tell.
    if _str(obj, "spec.updateStrategy.type", "") == "OnDelete":
        return Result(Status.CURRENT, "StatefulSet is using the ondelete update strategy")

    spec = _int(obj, "spec.replicas", 1)
    ready = _int(obj, "status.readyReplicas", 0)
    current = _int(obj, "status.currentReplicas", 0)
    updated = _int(obj, "status.updatedReplicas", 0)
    replicas = _int(obj, "status.replicas", 0)
    partition = _int(obj, "spec.updateStrategy.rollingUpdate.partition", -1)

    if spec > replicas:
        return _in_progress("LessReplicas", f"Replicas: {replicas}/{spec}")
    if spec > ready:
        return _in_progress("LessReady", f"Ready: {ready}/{spec}")
    if replicas > spec:
        return _in_progress("ExtraPods", f"Pending termination: {replicas - spec}")
    if partition != -1:
        if updated < spec - partition:
            return _in_progress("PartitionRollout", f"updated: {updated}/{spec - partition}")
        return Result(Status.CURRENT, f"Partition rollout complete. updated: {updated}")
    if spec > current:
        return _in_progress("LessCurrent", f"current: {current}/{spec}")
    if _str(obj, "status.currentRevision", "") != _str(obj, "status.updateRevision", ""):
        return _in_progress("RevisionMismatch", "Waiting for updated revision to match current")
    return Result(Status.CURRENT, f"All replicas scheduled as expected. Replicas: {replicas}")


def _daemonset(obj: Mapping[str, Any]) -> Result:
    # The DaemonSet controller always writes observedGeneration, so its absence means "not yet".
    res = _check_generation_set(obj)
    if res is not None:
        return res

    desired = _int(obj, "status.desiredNumberScheduled", -1)
    current = _int(obj, "status.currentNumberScheduled", 0)
    updated = _int(obj, "status.updatedNumberScheduled", 0)
    available = _int(obj, "status.numberAvailable", 0)
    ready = _int(obj, "status.numberReady", 0)

    if desired == -1:
        return _in_progress("NoDesiredNumber", "Missing .status.desiredNumberScheduled")
    if desired > current:
        return _in_progress("LessCurrent", f"Current: {current}/{desired}")
    if desired > updated:
        return _in_progress("LessUpdated", f"Updated: {updated}/{desired}")
    if desired > available:
        return _in_progress("LessAvailable", f"Available: {available}/{desired}")
    if desired > ready:
        return _in_progress("LessReady", f"Ready: {ready}/{desired}")
    return Result(Status.CURRENT, f"All replicas scheduled as expected. Replicas: {desired}")


def _pvc(obj: Mapping[str, Any]) -> Result:
    phase = _str(obj, "status.phase", "unknown")
    if phase != "Bound":
        return _in_progress("NotBound", f"PVC is not Bound. phase: {phase}")
    return Result(Status.CURRENT, "PVC is Bound")


def _pod(obj: Mapping[str, Any], now: datetime) -> Result:
    conditions = _conditions(obj)
    phase = _str(obj, "status.phase", "")
    if phase == "Succeeded":
        return Result(Status.CURRENT, "Pod has completed successfully")
    if phase == "Failed":
        return Result(Status.CURRENT, "Pod has completed, but not successfully")
    if phase == "Running":
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            return Result(Status.CURRENT, "Pod is Ready")
        crashing = _crash_looping_containers(obj)
        if crashing:
            return _failed("ContainerCrashLooping", f"Containers in CrashLoop state: {','.join(crashing)}")
        return _in_progress("PodRunningNotReady", "Pod is running but is not Ready")
    if phase == "Pending":
        unschedulable = any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in conditions
        )
        if unschedulable:
            if now - SCHEDULE_WINDOW < _creation_time(obj):
                return _in_progress("PodNotScheduled", "Pod has not been scheduled")
            return _failed("PodUnschedulable", "Pod could not be scheduled")
        return _in_progress("PodPending", "Pod is in the Pending phase")
    if phase == "":
        return _in_progress("PodNotObserved", "Pod phase not available")
    raise ValueError(f"unknown phase {phase}")


def _crash_looping_containers(obj: Mapping[str, Any]) -> list[str]:
    statuses = _field(obj, "status", "containerStatuses")
    names: list[str] = []
    if not isinstance(statuses, list):
        return names
    for cs in statuses:
        if not isinstance(cs, Mapping):
            continue
        name = cs.get("name")
        reason = _field(cs, "state", "waiting", "reason")
        if isinstance(name, str) and reason == "CrashLoopBackOff":
            names.append(name)
    return names


def _creation_time(obj: Mapping[str, Any]) -> datetime:
    value = _field(obj, "metadata", "creationTimestamp")
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value)
    # Go's zero time: an object without a creation time is long past any window.
    return datetime.min.replace(tzinfo=UTC)


def _pdb(obj: Mapping[str, Any]) -> Result:
    # Reaching this rule means observedGeneration is current, i.e. disruptions are computed.
    return Result(Status.CURRENT, "AllowedDisruptions has been computed.")


def _job(obj: Mapping[str, Any]) -> Result:
    parallelism = _int(obj, "spec.parallelism", 1)
    completions = _int(obj, "spec.completions", parallelism)
    succeeded = _int(obj, "status.succeeded", 0)
    active = _int(obj, "status.active", 0)
    failed = _int(obj, "status.failed", 0)
    suspended = _bool(obj, "spec.suspend", False)

    for c in _conditions(obj):
        if c.status != "True":
            continue
        if c.type == "Complete":
            return Result(Status.CURRENT, f"Job Completed. succeeded: {succeeded}/{completions}")
        if c.type == "Failed":
            return _failed("JobFailed", f"Job Failed. failed: {failed}/{completions}")
        if c.type == "Suspended" and suspended:
            return Result(Status.CURRENT, "Job is suspended")

    if _str(obj, "status.startTime", "") == "":
        return _in_progress("JobNotStarted", "Job not started")
    return Result(Status.CURRENT, f"Job in progress. success:{succeeded}, active: {active}, failed: {failed}")


def _service(obj: Mapping[str, Any]) -> Result:
    if _str(obj, "spec.type", "ClusterIP") == "LoadBalancer" and _str(obj, "spec.clusterIP", "") == "":
        return _in_progress("NoIPAssigned", "ClusterIP not set. Service type: LoadBalancer")
    return Result(Status.CURRENT, "Service is ready")


def _crd(obj: Mapping[str, Any]) -> Result:
    for c in _conditions(obj):
        if c.type == "NamesAccepted" and c.status == "False":
            return _failed(c.reason, c.message)
        if c.type == "Established":
            if c.status == "False" and c.reason != "Installing":
                return _failed(c.reason, c.message)
            if c.status == "True":
                return Result(Status.CURRENT, "CRD is established")
    return _in_progress("Installing", "Install in progress")


# Keys are "group/Kind", or "Kind" for the core group; Pod is handled in `compute`.
_LEGACY_RULES: dict[str, _Rule] = {
    "Service": _service,
    "Secret": _always_ready,
    "ConfigMap": _always_ready,
    "PersistentVolumeClaim": _pvc,
    "apps/StatefulSet": _statefulset,
    "apps/DaemonSet": _daemonset,
    "extensions/DaemonSet": _daemonset,
    "apps/Deployment": _deployment,
    "extensions/Deployment": _deployment,
    "apps/ReplicaSet": _replicaset,
    "extensions/ReplicaSet": _replicaset,
    "policy/PodDisruptionBudget": _pdb,
    "batch/CronJob": _always_ready,
    "batch/Job": _job,
    "apiextensions.k8s.io/CustomResourceDefinition": _crd,
}


# ---- helpers ------------------------------------------------------------------------------


def _in_progress(reason: str, message: str) -> Result:
    return Result(Status.IN_PROGRESS, message, (_reconciling(reason, message),))


def _failed(reason: str, message: str) -> Result:
    return Result(Status.FAILED, message, (Condition("Stalled", "True", reason, message),))


def _reconciling(reason: str, message: str) -> Condition:
    return Condition("Reconciling", "True", reason, message)


def _kind(obj: Mapping[str, Any]) -> str:
    kind = obj.get("kind")
    return kind if isinstance(kind, str) else ""


def _legacy_key(obj: Mapping[str, Any]) -> str:
    api_version = obj.get("apiVersion")
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    return f"{group}/{_kind(obj)}" if group else _kind(obj)


def _field(obj: Mapping[str, Any], *path: str) -> object:
    value: object = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _nested_int(obj: Mapping[str, Any], *path: str) -> int | None:
    """Like unstructured.NestedInt64: missing is None, any other type is an error."""
    value = _field(obj, *path)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"looking up {'.'.join(path)}: {value!r} is not an integer")
    return value


def _int(obj: Mapping[str, Any], path: str, default: int) -> int:
    """Like GetIntField: a missing or non-integer field gives the default."""
    value = _field(obj, *path.split("."))
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(obj: Mapping[str, Any], path: str, default: str) -> str:
    value = _field(obj, *path.split("."))
    return value if isinstance(value, str) else default


def _bool(obj: Mapping[str, Any], path: str, default: bool) -> bool:
    value = _field(obj, *path.split("."))
    return value if isinstance(value, bool) else default


def _conditions(obj: Mapping[str, Any]) -> list[Condition]:
    raw = _field(obj, "status", "conditions")
    if not isinstance(raw, list):
        return []
    out: list[Condition] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        fields = [item.get(k) for k in ("type", "status", "reason", "message")]
        out.append(Condition(*(f if isinstance(f, str) else "" for f in fields)))
    return out
