"""Pure status computation: from what the operator observed to kstatus-style conditions.

`Ready` is always present. `Reconciling` and `Stalled` are present only while True, as
kstatus expects. Pod-level causes (scheduling, image pulls, crash loops, OOM kills) are lifted
into the conditions with their numbers so `kubectl get mdep` says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modeldeploy import probes
from modeldeploy.api import Condition, ModelDeploymentSpec, ModelDeploymentStatus, PlanStatus
from modeldeploy.cache import STALLED, CacheVerdict
from modeldeploy.errors import SpecError

Obj = dict[str, Any]

# Waiting reasons that will not clear without a change by someone.
FATAL_WAITING = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                 "CrashLoopBackOff")  # fmt: skip


# Stalled reasons that come from what pods, the Deployment or the cache do, as opposed to a
# refusal of the spec (which only a full pass can clear).
RUNTIME_STALLED = frozenset(
    {*FATAL_WAITING, "OOMKilled", "ProgressDeadlineExceeded", "ReplicaFailure", *(r.value for r in STALLED)}
)


@dataclass(frozen=True)
class PodProblem:
    reason: str
    message: str
    fatal: bool


@dataclass(frozen=True)
class Blocked:
    """A reason the rollout waits that is not visible on a pod (e.g. no free GPU to surge)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    desired_replicas: int
    deployment: Obj | None
    pods: list[Obj]
    plan: PlanStatus | None = None
    blocked: Blocked | None = None
    model_id: str = ""
    cache: CacheVerdict | None = None
    # Warning Events of the model's pods (read only while a scheduled pod has not started).
    pod_events: tuple[Obj, ...] = ()
    # What the prober found that holds Ready at False (see verification_gate): the pods are up,
    # but the model they serve is not the one asked for, or a gated probe fails.
    gate: tuple[str, str] | None = None


@dataclass(frozen=True)
class Transition:
    type: str
    status: str
    reason: str
    message: str
    warning: bool


# Volume problems the kubelet and the attach/detach controller report only as pod Events
# (a ReadWriteOnce cache wanted on a second node, a volume that will not mount).
VOLUME_EVENT_REASONS = ("FailedAttachVolume", "FailedMount")


def waiting_to_start(pod: Obj) -> bool:
    """Scheduled, not deleted, and its containers not started yet (volumes come first)."""
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return bool(spec.get("nodeName")) and not meta.get("deletionTimestamp") and st.get("phase") == "Pending"


def _volume_problem(pod: Obj, events: tuple[Obj, ...]) -> tuple[str, str, bool] | None:
    if not waiting_to_start(pod):
        return None
    meta = pod.get("metadata") or {}
    mine = [
        e
        for e in events
        if (e.get("involvedObject") or {}).get("name") == meta.get("name")
        and (e.get("involvedObject") or {}).get("uid") in (None, meta.get("uid"))
        and e.get("reason") in VOLUME_EVENT_REASONS
    ]
    if not mine:
        return None
    last = max(mine, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return str(last["reason"]), str(last.get("message") or ""), False


def diagnose_pods(pods: list[Obj], events: tuple[Obj, ...] = ()) -> list[PodProblem]:
    """The first problem of each pod, most telling first (OOMKilled before CrashLoopBackOff)."""
    found: dict[str, list[str]] = {}
    fatal: dict[str, bool] = {}
    for pod in pods:
        meta = pod.get("metadata", {})
        if meta.get("deletionTimestamp"):
            continue
        name = meta.get("name", "?")
        status = pod.get("status", {})
        problem: tuple[str, str, bool] | None = _volume_problem(pod, events)
        for cond in status.get("conditions", []) or []:
            scheduled = cond.get("type") == "PodScheduled" and cond.get("status") == "False"
            if scheduled and cond.get("reason") == "Unschedulable":
                problem = ("Unschedulable", cond.get("message", ""), False)
        for cs in status.get("containerStatuses", []) or []:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            now = (cs.get("state") or {}).get("terminated") or {}
            waiting = (cs.get("state") or {}).get("waiting") or {}
            restarts = cs.get("restartCount", 0)
            if "OOMKilled" in (last.get("reason"), now.get("reason")):
                problem = (
                    "OOMKilled",
                    f"container {cs.get('name')} was OOMKilled (restarts: {restarts}); "
                    "raise spec.resources.memory or lower maxTotalTokens/maxBatchPrefillTokens",
                    True,
                )
                break
            if waiting.get("reason") in FATAL_WAITING:
                detail = waiting.get("message", "")
                msg = f"container {cs.get('name')}: {waiting['reason']}"
                if restarts:
                    msg += f" (restarts: {restarts})"
                if detail:
                    msg += f": {detail}"
                problem = (waiting["reason"], msg, True)
        if problem is not None:
            reason, message, is_fatal = problem
            found.setdefault(reason, []).append(
                f"{name}: {message}" if reason != "Unschedulable" else message
            )
            fatal[reason] = is_fatal
    order = ["OOMKilled", "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
             "CreateContainerConfigError", "FailedAttachVolume", "FailedMount", "Unschedulable"]  # fmt: skip
    out: list[PodProblem] = []
    for reason in sorted(found, key=lambda r: order.index(r) if r in order else len(order)):
        msgs = found[reason]
        n = len(msgs)
        lead = (
            f"{n} pod{'s' if n != 1 else ''} {'cannot be scheduled' if reason == 'Unschedulable' else reason}"
        )
        out.append(PodProblem(reason, f"{lead}: {msgs[0]}", fatal[reason]))
    return out


def mounts_claim(dep: Obj | None, claim: str) -> bool:
    """Whether the Deployment's pods mount this volume (serve this revision's weights)."""
    volumes = (((dep or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes") or []
    return any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim for v in volumes)


TEMPLATE_HASH_LABEL = "pod-template-hash"  # set by the Deployment controller on each pod


def newest_template_pods(pods: list[Obj]) -> list[Obj]:
    """The pods of the most recently created pod template (ReplicaSet) among `pods`."""
    newest: dict[str, str] = {}
    for p in pods:
        meta = p.get("metadata") or {}
        h = (meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL, "")
        newest[h] = max(newest.get(h, ""), str(meta.get("creationTimestamp") or ""))
    if len(newest) <= 1:
        return pods
    latest = max(newest, key=lambda h: newest[h])
    return [
        p
        for p in pods
        if ((p.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_HASH_LABEL, "") == latest
    ]


def _ready_pods(pods: list[Obj]) -> int:
    return sum(
        1
        for p in pods
        if not (p.get("metadata") or {}).get("deletionTimestamp")
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    )


def _cond(type_: str, status: str, reason: str, message: str) -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message)


@dataclass(frozen=True)
class DeploymentNumbers:
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    observed: bool = False  # the Deployment controller saw its latest generation
    deadline: str = ""  # ProgressDeadlineExceeded message
    replica_failure: str = ""  # ReplicaFailure message: pods the API server refuses to create


def _deployment_numbers(dep: Obj | None) -> DeploymentNumbers:
    if dep is None:
        return DeploymentNumbers()
    st = dep.get("status", {}) or {}
    deadline = failure = ""
    for c in st.get("conditions", []) or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            deadline = c.get("message", "")
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            failure = c.get("message", "") or c.get("reason", "")
    return DeploymentNumbers(
        st.get("replicas", 0),
        st.get("readyReplicas", 0),
        st.get("updatedReplicas", 0),
        st.get("observedGeneration", 0) >= dep.get("metadata", {}).get("generation", 1),
        deadline,
        failure,
    )


def compute(
    name: str,
    namespace: str,
    generation: int,
    selector: str,
    endpoint: str,
    observed: Observed | None,
    error: SpecError | None,
    prior: ModelDeploymentStatus | None,
    now: str,
    *,
    observed_generation: int | None = None,
    transient: Blocked | None = None,
) -> ModelDeploymentStatus:
    """The whole status. With `error` set this generation was refused and nothing was applied.

    observed_generation: the generation whose children this pass applied (or refused); a pass
    that applied nothing passes the prior one. transient: an apply that failed for a reason
    that may pass (retried with backoff): reported as Reconciling."""
    observed_generation = generation if observed_generation is None else observed_generation
    dep = observed.deployment if observed else None
    numbers = _deployment_numbers(dep)
    replicas, ready, updated = numbers.replicas, numbers.ready, numbers.updated
    dep_observed, deadline = numbers.observed, numbers.deadline
    conds: list[Condition] = []
    if error is not None:
        conds.append(_cond("Ready", "False", error.reason, error.message))
        conds.append(_cond("Stalled", "True", error.reason, f"{error.field}: {error.message}"))
    else:
        assert observed is not None
        desired = observed.desired_replicas
        problems = diagnose_pods(observed.pods, observed.pod_events)
        # Stalled is judged on the current template only: until the Deployment controller has
        # seen the latest spec, and for pods of an older ReplicaSet (still crash-looping while a
        # fix rolls out), a failure is the past, not this generation's.
        current = newest_template_pods(observed.pods)
        fatal_now = [p for p in diagnose_pods(current, observed.pod_events) if p.fatal]
        # A fatal pod matters only while the model lacks ready replicas: one crash-looping surge
        # pod beside a full set of serving ones is a rollout problem, not a dead model.
        fatal = None
        if dep_observed and fatal_now and _ready_pods(observed.pods) < desired:
            fatal = fatal_now[0]
        if dep_observed and numbers.replica_failure and ready < desired:
            fatal = PodProblem("ReplicaFailure", f"pods cannot be created: {numbers.replica_failure}", True)
        if not dep_observed:
            deadline = ""
        done = (
            dep is not None
            and dep_observed
            and updated >= desired
            and ready >= desired
            and replicas == desired
        )
        counts = f"{ready}/{desired} replicas ready, {updated} updated"
        cv = observed.cache
        waiting_cache = cv is not None and not cv.ready
        if cv is not None and waiting_cache and not mounts_claim(dep, cv.status.claim_name):
            # No serving pods are started before the weights are on the volume; pods of an
            # earlier revision may serve meanwhile, but this generation does not. (Pods that
            # already serve from this very volume, say while a deleted Job runs again, do.)
            reason = cv.reason if cv.stalled else "WaitingForCache"
            earlier = "; the previous revision's pods keep serving" if dep is not None else ""
            msg = f"weight cache {cv.status.phase}: {cv.message}{earlier}"
            conds.append(_cond("Ready", "False", reason, msg))
        elif desired == 0 and done:
            conds.append(_cond("Ready", "True", "ScaledToZero", "scaled to zero replicas"))
        elif fatal is not None:
            # The pods say so before the Deployment's ready count catches up.
            conds.append(_cond("Ready", "False", fatal.reason, f"{counts}; {fatal.message}"))
        elif ready >= desired > 0 and observed.gate is not None:
            conds.append(_cond("Ready", "False", observed.gate[0], f"{counts}; {observed.gate[1]}"))
        elif ready >= desired > 0:
            conds.append(_cond("Ready", "True", "Available", f"{counts}; serving at {endpoint}"))
        elif problems:
            conds.append(_cond("Ready", "False", problems[0].reason, f"{counts}; {problems[0].message}"))
        else:
            conds.append(_cond("Ready", "False", "Progressing", f"{counts}; waiting for pods"))
        if cv is not None:
            ok = "True" if cv.ready else "False"
            conds.append(_cond("CacheReady", ok, cv.reason, cv.message))
        if deadline:
            conds.append(_cond("Stalled", "True", "ProgressDeadlineExceeded", deadline))
        elif cv is not None and cv.stalled:
            conds.append(_cond("Stalled", "True", cv.reason, cv.message))
        elif fatal is not None:
            conds.append(_cond("Stalled", "True", fatal.reason, fatal.message))
        elif waiting_cache and cv is not None:
            conds.append(_cond("Reconciling", "True", "WaitingForCache", f"{cv.status.phase}: {cv.message}"))
        elif not done or transient is not None:
            if transient is not None:
                conds.append(_cond("Reconciling", "True", transient.reason, transient.message))
            elif observed.blocked is not None:
                conds.append(_cond("Reconciling", "True", observed.blocked.reason, observed.blocked.message))
            elif problems:
                conds.append(_cond("Reconciling", "True", problems[0].reason, problems[0].message))
            else:
                conds.append(_cond("Reconciling", "True", "Progressing", f"rolling out: {counts}"))
    prior_by_type = {c.type: c for c in (prior.conditions if prior else [])}
    for c in conds:
        c.observed_generation = observed_generation
        old = prior_by_type.get(c.type)
        same = old is not None and old.status == c.status
        c.last_transition_time = old.last_transition_time if same and old else now
    return ModelDeploymentStatus(
        observed_generation=observed_generation,
        model=(observed.model_id if observed and observed.model_id else (prior.model if prior else "")),
        conditions=conds,
        replicas=replicas,
        ready_replicas=ready,
        updated_replicas=updated,
        selector=selector,
        endpoint=endpoint,
        plan=observed.plan if observed else (prior.plan if prior else None),
        cache=(observed.cache.status if observed.cache else None)
        if observed
        else (prior.cache if prior else None),
    )


def transitions(prior: ModelDeploymentStatus | None, new: ModelDeploymentStatus) -> list[Transition]:
    """Conditions whose status or reason changed: these, and only these, get an Event."""
    old = {c.type: (c.status, c.reason) for c in (prior.conditions if prior else [])}
    out: list[Transition] = []
    for c in new.conditions:
        if old.get(c.type) == (c.status, c.reason):
            continue
        warning = (c.type == "Stalled") or (
            c.type == "Ready" and c.status == "False" and c.reason != "Progressing"
        )
        out.append(Transition(c.type, c.status, c.reason, c.message, warning))
    return out


def verification_gate(raw_status: Obj, spec: ModelDeploymentSpec, generation: int) -> tuple[str, str] | None:
    """(reason, message) when the prober's findings for this generation must hold Ready at
    False, else None. Only facts checked for `generation` count: until the prober has looked at
    a new generation, nothing is held (an older check says nothing about the new pods).

    ModelMismatch: TGI's /info names another model id, or a commit other than a pinned revision
    or the one the weight cache was filled from. ProbeFailed: a probe with `gate: true` failed."""
    runtime = raw_status.get("runtime") or {}
    if runtime.get("generation") == generation:
        # Facts kept through an /info failure (runtime.reason) still hold.
        wrong = probes.mismatch(runtime, spec, raw_status)
        if wrong:
            return "ModelMismatch", wrong
    found = raw_status.get("probes") or {}
    if found.get("generation") == generation:
        gated = [r for r in found.get("results") or [] if r.get("gate") and r.get("passed") is False]
        if gated:
            first = gated[0]
            also = f" (also failing: {', '.join(r['name'] for r in gated[1:])})" if len(gated) > 1 else ""
            return "ProbeFailed", f"gated probe {first['name']} failed: {first.get('message', '')}{also}"
    return None
