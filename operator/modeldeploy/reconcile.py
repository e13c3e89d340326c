"""The one reconcile pass for a model, in its phases: observe what the cluster holds, plan
(pure: GPU fit, quantization rules, sticky GPU type), ensure the weight cache, render the
children (pure), apply them, and write status. Safe to run any number of times; an unchanged
model causes no writes.

What status promises: `observedGeneration` is the generation whose children were applied, or
which was refused with Stalled naming the field. A pass that applied nothing (a status refresh,
a transient failure) leaves it where it was, so GitOps tools never read an old rollout as the
new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError
from pydantic import ValidationError

from modeldeploy import FIELD_MANAGER, GROUP, KIND, VERSION, cache, metrics, observe, render, status
from modeldeploy.api import (
    AutoscalingEngine,
    ModelArchitecture,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    PlanStatus,
)
from modeldeploy.apierrors import RefusedError, TransientError, classify
from modeldeploy.cache_sync import CacheSync
from modeldeploy.errors import SpecError
from modeldeploy.hubfacts import FactsUnavailableError, HubFacts
from modeldeploy.kube import Kube, now_rfc3339, updates_status
from modeldeploy.resolve import ClusterFacts, model_facts, resolve, rollout_blocked, with_strategy
from modeldeploy.settings import Settings

log = logging.getLogger("modeldeploy.reconcile")
Obj = dict[str, Any]

# Kinds the operator may create for a model; anything of these kinds it controls and no longer
# renders is deleted.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
)
# Status fields and condition types this pass owns (others' are left alone).
OWN_STATUS_FIELDS = frozenset(ModelDeploymentStatus.model_json_schema(by_alias=True)["properties"])
OWN_CONDITIONS = frozenset({"Ready", "Reconciling", "Stalled", "CacheReady"})

DEFAULT_HUB = "https://huggingface.co"
HANDOVER_MANAGER = f"{FIELD_MANAGER}-autoscaling-handover"
MAX_PENDING_EVENTS = 1000


def spec_error_from_validation(err: ValidationError) -> SpecError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return SpecError(f"spec.{loc}", first["msg"])


def _prior_status(body: Obj) -> ModelDeploymentStatus | None:
    raw = own_status(body.get("status") or {})
    if not raw:
        return None
    try:
        return ModelDeploymentStatus.model_validate(raw)
    except ValidationError:
        return None


def own_status(raw: Obj) -> Obj:
    """The part of a status this pass writes: what its next write is compared with."""
    out = {k: v for k, v in raw.items() if k in OWN_STATUS_FIELDS}
    if "conditions" in out:
        out["conditions"] = [c for c in out["conditions"] or [] if c.get("type") in OWN_CONDITIONS]
    return out


def merge_patch_to(old: Obj, new: Obj) -> Obj:
    """A JSON merge patch that turns `old` into `new`: keys gone from `new` become None at every
    depth of nested objects (lists are replaced whole)."""
    out: Obj = {k: None for k in old if k not in new}
    for k, v in new.items():
        prev = old.get(k)
        out[k] = merge_patch_to(prev, v) if isinstance(v, dict) and isinstance(prev, dict) else v
    return out


def _controlled_by(obj: Obj, uid: str) -> bool:
    refs = (
        obj.get("metadata", {}).get("owner_references")
        or obj.get("metadata", {}).get("ownerReferences")
        or []
    )
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


@dataclass
class Snapshot:
    """What `observe` read for one model."""

    namespace: str
    name: str
    uid: str
    generation: int
    prior: ModelDeploymentStatus | None
    spec: ModelDeploymentSpec | None
    error: SpecError | None
    facts: ClusterFacts | None = None
    read_arch: ModelArchitecture | None = None
    # Someone (an older operator version) wrote status by update: see Kube.take_over_status.
    status_updated_by_others: bool = False
    prior_raw: Obj = field(default_factory=dict)  # status as read, for the take-over's deletions
    # The whole status as read, the prober's part included (what the Ready gate reads).
    full_status: Obj = field(default_factory=dict)
    facts_error: str = ""  # why the model's config could not be read (if it could not)

    @property
    def applied_generation(self) -> int:
        return (self.prior.observed_generation or 0) if self.prior else 0

    @property
    def stalled(self) -> bool:
        return self.prior is not None and any(
            c.type == "Stalled" and c.status == "True" for c in self.prior.conditions
        )

    @property
    def refused(self) -> bool:
        """The current generation was refused (by the operator or the API server), as opposed to
        stalled by what its pods or its cache do."""
        return (
            self.prior is not None
            and self.applied_generation == self.generation
            and any(
                c.type == "Stalled" and c.status == "True" and c.reason not in status.RUNTIME_STALLED
                for c in self.prior.conditions
            )
        )


@dataclass
class Planned:
    """The plan and what to render from it."""

    resolved: render.Resolved
    plan: PlanStatus
    verdict: cache.CacheVerdict | None = None
    desired: list[Obj] = field(default_factory=list)
    hold: bool = False  # waiting for the cache: only the Service is desired


@dataclass(frozen=True)
class AppliedMemo:
    """A child as this operator last applied it: the configuration sent, and the fields the
    API server then recorded as ours."""

    digest: str
    owned: str
    uid: str  # the object applied to (one recreated under the same name is another)


def config_digest(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def owned_fields(obj: Obj) -> str:
    """Our apply's entry in the object's managedFields. Another manager that changes a field
    we own takes it over (an update) or forces it (an apply), which changes this entry; a
    deleted object has none. So an unchanged entry means nobody undid what we applied."""
    meta = obj.get("metadata") or {}
    entries = meta.get("managedFields") or meta.get("managed_fields") or []
    ours = [
        (m.get("apiVersion") or m.get("api_version"), m.get("fieldsV1") or m.get("fields_v1"))
        for m in entries
        if m.get("manager") == FIELD_MANAGER and m.get("operation") == "Apply" and not m.get("subresource")
    ]
    return json.dumps(ours, sort_keys=True)


@dataclass
class Reconciler:
    kube: Kube
    settings: Settings
    caches: CacheSync = field(init=False)
    hub: HubFacts = field(init=False)
    # The last failure logged in full per model: repeats are logged in one line.
    _logged: dict[tuple[str, str], str] = field(default_factory=dict)
    # What was last applied per child, to skip an apply that would change nothing.
    _applied: dict[tuple[str, str, str], AppliedMemo] = field(default_factory=dict)
    # Each model as this operator last wrote its status (see _fresher).
    _written: dict[tuple[str, str], Obj] = field(default_factory=dict)
    # Post Events from a thread of their own (the operator) rather than in the pass (tests).
    events_in_background: bool = False
    _event_poster: ThreadPoolExecutor | None = field(default=None, init=False)
    _events_pending: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.events_in_background:
            self._event_poster = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modeldeploy-events")
        self.caches = CacheSync(self.kube, self.settings)
        self.hub = HubFacts(self.settings.hf_endpoint or DEFAULT_HUB)

    # -- the pass -------------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str, apply: bool = True) -> bool:
        """One pass: with apply=False only a status refresh. Returns True when it should be
        retried later (a transient failure); every other outcome is in the model's status."""
        started = time.perf_counter()
        try:
            outcome = self._pass(namespace, name, apply)
        except (ApiException, DynamicApiError) as e:
            if _gone(e):
                # Deleted (or its namespace is going) while this pass ran: nothing to do.
                log.debug("%s/%s went away during the pass: %s", namespace, name, e.reason)
                metrics.forget(namespace, name)
                return False
            self._log_failure(namespace, name, f"{e.status} {e.reason}", exc=True)
            outcome = "error"
        except (urllib3.exceptions.HTTPError, OSError) as e:
            # The API server away or slow (a restart, a timeout): retried with backoff, and
            # said in one line (a traceback per model per retry would bury the log).
            self._log_failure(namespace, name, f"cannot reach the API server: {type(e).__name__}", exc=False)
            outcome = "error"
        except Exception as e:  # bugs: never lose the model
            self._log_failure(namespace, name, f"{type(e).__name__}: {e}", exc=True)
            outcome = "error"
        metrics.RECONCILES.labels(outcome).inc()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return outcome in ("error", "retry")

    def _pass(self, namespace: str, name: str, apply: bool) -> str:
        snap = self.observe(namespace, name)
        if snap is None:
            return "gone"
        if not apply and snap.refused:
            # A refusal is cleared only by a full pass that applies the generation (say, once
            # KEDA is installed or GPUs of the type appear); a refresh must not clear it and
            # call the old children this generation's.
            return "refused"
        error = snap.error
        planned: Planned | None = None
        transient: TransientError | None = None
        applied = False
        dep = snap.facts.deployment if snap.facts else None
        if error is None:
            assert snap.spec is not None and snap.facts is not None
            try:
                planned = self.plan(snap)
                try:
                    planned = self.ensure_cache(snap, planned, write=apply)
                except (ApiException, DynamicApiError) as e:
                    if _gone(e):
                        raise
                    raise classify(e, "the weight cache") from e
                self._keep_planned_facts(snap, planned)
                planned.desired = self.render(snap, planned)
                if apply:
                    dep = self.apply(snap, planned.desired, planned.hold) or dep
                    # While the cache fills only the Service goes out: the generation's serving
                    # children are not applied yet, so it is not stamped as observed, unless the
                    # cache failed for good (then it is refused with that reason, like a spec).
                    cache_failed = planned.verdict is not None and planned.verdict.stalled
                    applied = not planned.hold or cache_failed
            except SpecError as e:
                error = e
            except RefusedError as e:
                error = e.spec_error()
            except TransientError as e:
                transient = e
        outcome = self.write_status(snap, planned, dep, error, transient, applied)
        if error is not None:
            self._log_failure(namespace, name, f"{error.field}: {error.message}", exc=False)
        elif transient is not None:
            self._log_failure(namespace, name, transient.message, exc=False)
        else:
            self._logged.pop((namespace, name), None)
        return outcome

    # -- observe --------------------------------------------------------------------------------

    def observe(self, namespace: str, name: str) -> Snapshot | None:
        body = self._fresher(self.kube.get_model(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        meta = body["metadata"]
        snap = Snapshot(
            namespace=namespace,
            name=name,
            uid=meta["uid"],
            generation=int(meta.get("generation", 1)),
            prior=_prior_status(body),
            spec=None,
            error=None,
            status_updated_by_others=any(updates_status(m) for m in meta.get("managedFields") or []),
            prior_raw=own_status(body.get("status") or {}),
            full_status=dict(body.get("status") or {}),
        )
        try:
            snap.spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            snap.error = spec_error_from_validation(e)
            snap.facts = ClusterFacts(deployment=self.kube.get("apps/v1", "Deployment", namespace, name))
            return snap
        auto = snap.spec.autoscaling
        needs_keda = auto.enabled and auto.engine == AutoscalingEngine.keda
        snap.facts = observe.cluster_facts(self.kube, namespace, name, needs_keda)
        try:
            snap.read_arch = self._read_arch(snap)
        except SpecError as e:
            snap.error = e
        return snap

    def _read_arch(self, snap: Snapshot) -> ModelArchitecture | None:
        """Facts from the model's config.json when neither spec nor catalog has them."""
        assert snap.spec is not None
        model_id, arch = model_facts(snap.spec)
        if arch is not None or not model_id or not self.settings.read_model_config:
            return None
        try:
            return self.hub.read(model_id, snap.spec.model.revision)
        except FactsUnavailableError as e:
            # Gated, private or unreachable: serve as asked, without a plan (or with the facts
            # the prefetch reads from the files).
            log.debug("%s/%s: no architecture facts for %s: %s", snap.namespace, snap.name, model_id, e)
            snap.facts_error = str(e)
            return None

    def _keep_planned_facts(self, snap: Snapshot, planned: Planned) -> None:
        """A model planned from facts read off the Hub is never re-planned without them because
        the Hub did not answer this time (an outage, a restart that lost the memory of them):
        that would change its GPUs and token limits. It waits, serving as it is."""
        if planned.hold:
            return  # waiting for the cache: the Deployment is left as it is anyway
        had = snap.prior is not None and snap.prior.plan is not None
        had_facts = had and snap.prior.plan.estimated_gi_b_per_gpu is not None  # type: ignore[union-attr]
        if snap.facts_error and had_facts and planned.plan.estimated_gi_b_per_gpu is None:
            raise TransientError(
                f"the model's architecture facts could not be read ({snap.facts_error[:300]}); "
                "it keeps its current plan until they can"
            )

    # -- plan (pure) ----------------------------------------------------------------------------

    def plan(self, snap: Snapshot, arch: ModelArchitecture | None = None) -> Planned:
        assert snap.spec is not None and snap.facts is not None
        sticky = ""
        if not snap.spec.resources.gpu_type:
            # The type chosen before: from status, or (after a refused spec cleared the plan)
            # from where the model's pods run.
            if snap.prior is not None and snap.prior.plan is not None:
                sticky = snap.prior.plan.gpu_type
            sticky = sticky or observe.deployed_gpu_type(snap.facts.deployment, self.settings)
        resolved, plan = resolve(snap.spec, self.settings, snap.facts, arch or snap.read_arch, sticky)
        return Planned(resolved, plan)

    # -- cache ----------------------------------------------------------------------------------

    def ensure_cache(self, snap: Snapshot, planned: Planned, write: bool) -> Planned:
        spec, facts = snap.spec, snap.facts
        assert spec is not None and facts is not None
        if not spec.cache.enabled:
            return planned
        resolved = planned.resolved
        arch = model_facts(spec)[1] or snap.read_arch
        verdict = self.caches.ensure(
            snap.namespace,
            spec,
            resolved.model_id,
            arch,
            resolved.image,
            render.affinity(resolved),
            write=write,
            requester=snap.name,
        )
        planned.verdict = verdict
        if not verdict.ready:
            planned.hold = True
            return planned
        if arch is None:
            # Facts the prefetch read from the downloaded files (gated models too, as the Job has
            # the token): plan now, before any serving pod exists.
            prefetched = self.caches.prefetched_architecture(snap.namespace, resolved.model_id, spec)
            if prefetched is not None:
                replanned = self.plan(snap, prefetched)
                planned.resolved, planned.plan = replanned.resolved, replanned.plan
        mount = cache.mount(verdict, spec.cache.prefetch)
        planned.resolved = with_strategy(spec, replace(planned.resolved, cache=mount), facts)
        return planned

    # -- render (pure) --------------------------------------------------------------------------

    def render(self, snap: Snapshot, planned: Planned) -> list[Obj]:
        assert snap.spec is not None
        owner = render.Owner(name=snap.name, uid=snap.uid)
        if planned.hold:
            # No GPU pod waits on a download: only the Service until the cache is ready; a
            # Deployment already serving (say, the previous revision) is left as it is.
            return [render.service(snap.name, snap.namespace, owner)]
        return render.render(snap.name, snap.namespace, snap.spec, planned.resolved, owner)

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, snap: Snapshot, desired: list[Obj], hold: bool) -> Obj | None:
        """Apply the children; returns the Deployment as applied (None if not rendered).

        The first pass of a generation applies everything as a dry run first, so a change the
        API server refuses leaves the last good children whole, never half-applied. Raises
        RefusedError (permanent: reported as Stalled) or TransientError (retried with backoff)."""
        assert snap.facts is not None
        dep_before = snap.facts.deployment
        try:
            labelled = observe.labelled_children(self.kube, snap.namespace, snap.name, CHILD_KINDS)
            existing = observe.existing_children(self.kube, desired, labelled, dep_before)
        except (ApiException, DynamicApiError) as e:
            raise classify(e, "reading the children") from e
        ours: dict[tuple[str, str], bool] = {}
        for obj in desired:
            key = (obj["kind"], obj["metadata"]["name"])
            found = existing.get(key)
            if found is not None and not _controlled_by(found, snap.uid):
                raise SpecError(
                    "metadata.name",
                    f"{key[0]} {snap.namespace}/{key[1]} exists and is not managed by this model: "
                    f"delete or rename that {key[0]}, or give the ModelDeployment another name",
                    reason="NotOwned",
                )
            ours[key] = found is not None
        if desired and desired[0]["kind"] == "Deployment" and "replicas" not in desired[0]["spec"]:
            try:
                self._hand_over_replicas(dep_before)
            except (ApiException, DynamicApiError) as e:
                if _gone(e):
                    raise
                raise classify(e, "handing the Deployment's replicas to the autoscaler") from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise TransientError(f"handing over replicas: {type(e).__name__}: {e}"[:900]) from e
        # A refused generation is "observed" too: it is dry-run again until it goes through.
        first = snap.generation > snap.applied_generation or snap.stalled
        passes = (True, False) if first else (False,)
        dep: Obj | None = None
        # Children exactly as last applied, and untouched since: no request for them.
        todo = [o for o in desired if not self._unchanged(snap.namespace, o, existing)]
        for dry_run in passes:
            for obj in todo:
                key = (obj["kind"], obj["metadata"]["name"])
                try:
                    out = self.kube.apply(obj, force=ours[key], dry_run=dry_run)
                except (ApiException, DynamicApiError) as e:
                    if _gone(e):
                        raise  # the model's namespace is going: nothing to report
                    raise classify(e, f"{key[0]} {key[1]}") from e
                except (urllib3.exceptions.HTTPError, OSError) as e:  # timeouts, resets
                    raise TransientError(f"{key[0]} {key[1]}: {type(e).__name__}: {e}"[:900]) from e
                if not dry_run:
                    uid = str((out.get("metadata") or {}).get("uid") or "")
                    memo = AppliedMemo(config_digest(obj), owned_fields(out), uid)
                    self._applied[(key[0], snap.namespace, key[1])] = memo
                if obj["kind"] == "Deployment" and not dry_run:
                    dep = out
        try:
            self._prune(snap, desired, labelled, hold)
        except (ApiException, DynamicApiError) as e:
            raise classify(e, "deleting children no longer desired") from e
        return dep

    def _unchanged(self, namespace: str, obj: Obj, existing: dict[tuple[str, str], Obj]) -> bool:
        key = (obj["kind"], obj["metadata"]["name"])
        memo = self._applied.get((key[0], namespace, key[1]))
        found = existing.get(key)
        return (
            memo is not None
            and found is not None
            and memo.uid == (found.get("metadata") or {}).get("uid")
            and memo.digest == config_digest(obj)
            and memo.owned == owned_fields(found)
        )

    def forget(self, namespace: str, name: str) -> None:
        """A model is gone: drop what was remembered of it."""
        self._logged.pop((namespace, name), None)
        self._written.pop((namespace, name), None)
        for key in [k for k in list(self._applied) if k[1] == namespace and k[2] == name]:
            self._applied.pop(key, None)

    def reset_memory(self) -> None:
        """Forget what was applied and written (a replica that becomes active again: another
        replica, maybe another version, worked meanwhile)."""
        self._applied.clear()
        self._written.clear()

    def _remember(self, written: Obj) -> None:
        meta = written.get("metadata") or {}
        self._written[(meta.get("namespace", ""), meta.get("name", ""))] = written

    def _fresher(self, body: Obj | None) -> Obj | None:
        """The model as read, or as this operator last wrote its status if that is newer: the
        watch-fed index may not have seen the last write yet, and a pass that built on the
        status before it would undo it (observedGeneration back, a refusal cleared)."""
        if body is None:
            return None
        meta = body.get("metadata") or {}
        written = self._written.get((meta.get("namespace", ""), meta.get("name", "")))
        if written is None or written["metadata"].get("uid") != meta.get("uid"):
            return body
        newer_spec = int(meta.get("generation") or 0) > int(written["metadata"].get("generation") or 0)
        if not newer_spec and _resource_version(written) > _resource_version(body):
            return written
        # The index has caught up (or holds a newer spec): it is the truth from now on.
        self._written.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        return body

    def _hand_over_replicas(self, dep: Obj | None) -> None:
        """Autoscaling on: stop owning the Deployment's replicas without resetting them.

        Dropping a field from an apply configuration deletes it when no other manager owns it
        (so replicas would fall back to 1). Another manager takes the current value first, as the
        server-side apply docs describe; the autoscaler then owns it through the scale subresource.
        """
        if dep is None:
            return
        ours = any(
            m.get("manager") == FIELD_MANAGER
            and m.get("operation") == "Apply"
            and "f:replicas" in ((m.get("fieldsV1") or {}).get("f:spec") or {})
            for m in dep["metadata"].get("managedFields") or []
        )
        if not ours:
            return
        self.kube.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": dep["metadata"]["name"], "namespace": dep["metadata"]["namespace"]},
                "spec": {"replicas": dep["spec"].get("replicas", 1)},
            },
            field_manager=HANDOVER_MANAGER,
        )

    def _prune(
        self, snap: Snapshot, desired: list[Obj], labelled: dict[tuple[str, str], Obj], hold: bool
    ) -> None:
        keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
        for (kind, obj_name), obj in labelled.items():
            if (hold and kind != "Service") or (kind, obj_name) in keep or not _controlled_by(obj, snap.uid):
                continue
            log.info("%s/%s: deleting %s %s: no longer desired", snap.namespace, snap.name, kind, obj_name)
            self.kube.delete(obj)

    # -- status ---------------------------------------------------------------------------------

    def write_status(
        self,
        snap: Snapshot,
        planned: Planned | None,
        dep: Obj | None,
        error: SpecError | None,
        transient: TransientError | None,
        applied: bool,
    ) -> str:
        spec = snap.spec
        if dep is not None and not _controlled_by(dep, snap.uid):
            dep = None
        pods = self.kube.list("v1", "Pod", snap.namespace, render.selector_string(snap.name)) if dep else []
        pod_events: list[Obj] = []
        if any(status.waiting_to_start(p) for p in pods):
            # Volume attach and mount failures are only ever said in pod Events.
            pod_events = self.kube.list(
                "v1", "Event", snap.namespace, field_selector="involvedObject.kind=Pod,type=Warning"
            )
        blocked = None
        if snap.facts is not None and planned is not None and error is None:
            why = rollout_blocked(dep, pods, snap.facts, planned.resolved.gpus, planned.resolved.gpu_products)
            blocked = status.Blocked(*why) if why else None
        if spec is not None and not spec.autoscaling.enabled:
            desired_replicas = spec.replicas
        else:
            # An autoscaler (or, for a refused spec, the last good spec) decides: read it back.
            floor = spec.autoscaling.min_replicas if spec is not None else 0
            desired_replicas = int((dep or {}).get("spec", {}).get("replicas") or floor)
        observed = status.Observed(
            desired_replicas=desired_replicas,
            deployment=dep,
            pods=pods,
            # A pass that must be retried keeps the plan the children were made with.
            plan=(snap.prior.plan if snap.prior else None)
            if transient is not None
            else (planned.plan if planned is not None and error is None else None),
            model_id=planned.resolved.model_id if planned is not None else "",
            blocked=blocked,
            cache=planned.verdict if planned is not None else None,
            pod_events=tuple(pod_events),
            gate=status.verification_gate(snap.full_status, spec, snap.generation)
            if spec is not None and error is None
            else None,
        )
        # This generation was applied, or refused with a reason; anything else leaves the
        # last applied generation standing.
        done = applied or error is not None
        new = status.compute(
            name=snap.name,
            namespace=snap.namespace,
            generation=snap.generation,
            selector=render.selector_string(snap.name),
            endpoint=render.endpoint(snap.name, snap.namespace),
            observed=observed,
            error=error,
            prior=snap.prior,
            now=now_rfc3339(),
            observed_generation=snap.generation if done else snap.applied_generation,
            transient=status.Blocked(transient.reason, transient.message) if transient else None,
        )
        new_raw = new.model_dump(by_alias=True, exclude_none=True)
        prior_raw = snap.prior.model_dump(by_alias=True, exclude_none=True) if snap.prior else None
        if snap.status_updated_by_others:
            # A merge patch replaces lists whole: the prober's conditions go in with ours.
            theirs = [
                c for c in snap.full_status.get("conditions") or [] if c.get("type") not in OWN_CONDITIONS
            ]
            patch = merge_patch_to(snap.prior_raw, new_raw)
            patch["conditions"] = [*new_raw.get("conditions", []), *theirs]
            self.kube.take_over_status(snap.namespace, snap.name, patch)
            self._remember(self.kube.apply_status(snap.namespace, snap.name, new_raw))
        elif new_raw != prior_raw:
            self._remember(self.kube.apply_status(snap.namespace, snap.name, new_raw))
        for t in status.transitions(snap.prior, new):
            self._event(snap, t)
        metrics.record_conditions(snap.namespace, snap.name, [(c.type, c.status) for c in new.conditions])
        if transient is not None:
            return "retry"
        return "refused" if error is not None else "ok"

    def _event(self, snap: Snapshot, t: status.Transition) -> None:
        owner = {"metadata": {"name": snap.name, "namespace": snap.namespace, "uid": snap.uid}}
        args = (owner, "Warning" if t.warning else "Normal", t.reason, f"{t.type}={t.status}: {t.message}")
        if self._event_poster is not None:
            # Best effort, in order, off the worker: the next model need not wait for it. A
            # backlog (the API server slow to take Events) is bounded: the oldest news goes.
            if self._events_pending >= MAX_PENDING_EVENTS:
                log.warning("%s/%s: Event %s not posted: %d waiting", snap.namespace, snap.name, t.reason,
                            self._events_pending)  # fmt: skip
                return
            self._events_pending += 1
            try:
                self._event_poster.submit(self._post, snap, args)
            except RuntimeError:  # shutting down
                self._events_pending -= 1
        else:
            self._post(snap, args)

    def _post(self, snap: Snapshot, args: tuple[Obj, str, str, str]) -> None:
        try:
            self.kube.event(*args)
        except Exception as e:  # an Event is best effort; never fail a pass over it
            log.warning("%s/%s: could not post an event: %s", snap.namespace, snap.name, str(e)[:200])
        finally:
            if self._event_poster is not None:
                self._events_pending -= 1

    def close(self) -> None:
        """Stop posting Events (at shutdown: what is still waiting is dropped, not waited for)."""
        if self._event_poster is not None:
            self._event_poster.shutdown(wait=False, cancel_futures=True)

    def _log_failure(self, namespace: str, name: str, what: str, exc: bool) -> None:
        """In full the first time a model fails this way, then one short line per pass."""
        key = (namespace, name)
        if self._logged.get(key) == what:
            log.warning("%s/%s: still failing: %s", namespace, name, what[:200])
            return
        self._logged[key] = what
        if exc:
            log.exception("%s/%s: pass failed: %s", namespace, name, what)
        else:
            log.warning("%s/%s: %s", namespace, name, what)


def _resource_version(obj: Obj) -> int:
    """etcd's revision behind a resourceVersion: comparable between two reads of one object
    from the same API server (0 if it is not a number)."""
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else 0


def _gone(e: ApiException | DynamicApiError) -> bool:
    body = str(getattr(e, "body", "") or "")
    return e.status == 404 or (e.status == 403 and "NamespaceTerminating" in body)


def owner_of(obj_meta: Obj) -> str | None:
    """Name of the ModelDeployment controlling a child, from its owner references."""
    for ref in obj_meta.get("ownerReferences") or []:
        if (
            ref.get("kind") == KIND
            and ref.get("apiVersion") == f"{GROUP}/{VERSION}"
            and ref.get("controller")
        ):
            return str(ref["name"])
    return None
