"""The one reconcile: read the ModelDeployment, resolve and render its children, apply them all
with server-side apply, delete what is no longer desired, and write status from what was
observed. Safe to run any number of times; an unchanged object causes no writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError
from pydantic import ValidationError

from modeldeploy import FIELD_MANAGER, GROUP, KIND, VERSION, cache, metrics, render, status
from modeldeploy.api import ModelArchitecture, ModelDeploymentSpec, ModelDeploymentStatus
from modeldeploy.cache_sync import CacheSync
from modeldeploy.errors import SpecError
from modeldeploy.hubfacts import FactsUnavailableError, HubFacts
from modeldeploy.kube import Kube, now_rfc3339
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

DEFAULT_HUB = "https://huggingface.co"
HANDOVER_MANAGER = f"{FIELD_MANAGER}-autoscaling-handover"

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(namespace, name)]


def _gone(e: ApiException | DynamicApiError) -> bool:
    body = str(getattr(e, "body", "") or "")
    return e.status == 404 or (e.status == 403 and "NamespaceTerminating" in body)


def spec_error_from_validation(err: ValidationError) -> SpecError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return SpecError(f"spec.{loc}", first["msg"])


def _prior_status(body: Obj) -> ModelDeploymentStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return ModelDeploymentStatus.model_validate(raw)
    except ValidationError:
        return None


def _controlled_by(obj: Obj, uid: str) -> bool:
    refs = (
        obj.get("metadata", {}).get("owner_references")
        or obj.get("metadata", {}).get("ownerReferences")
        or []
    )
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


@dataclass
class Reconciler:
    kube: Kube
    settings: Settings
    caches: CacheSync = field(init=False)
    hub: HubFacts = field(init=False)

    def __post_init__(self) -> None:
        self.caches = CacheSync(self.kube, self.settings)
        self.hub = HubFacts(self.settings.hf_endpoint or DEFAULT_HUB)

    def reconcile(self, namespace: str, name: str, apply: bool = True) -> None:
        """Full pass (apply + status), or with apply=False only a status refresh."""
        with _lock(namespace, name):
            body = self.kube.get_model(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            started = time.perf_counter()
            try:
                outcome = self._reconcile(body, apply)
            except (ApiException, DynamicApiError) as e:
                if _gone(e):
                    # Deleted (or its namespace is going) while this pass ran: nothing to do.
                    log.debug("%s/%s went away during reconcile: %s", namespace, name, e.reason)
                    metrics.forget(namespace, name)
                    return
                metrics.RECONCILES.labels("error").inc()
                raise
            metrics.RECONCILES.labels(outcome).inc()
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _reconcile(self, body: Obj, apply: bool) -> str:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        generation = int(meta.get("generation", 1))
        prior = _prior_status(body)
        error: SpecError | None = None
        desired: list[Obj] | None = None
        plan = None
        facts: ClusterFacts | None = None
        resolved: render.Resolved | None = None
        model_id = ""
        fixed_replicas: int | None = None  # the spec's replicas, when no autoscaler owns them
        autoscaled_min = 0
        verdict: cache.CacheVerdict | None = None
        hold = False
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
            facts = ClusterFacts.gather(self.kube, namespace, name)
            read_arch = self._read_arch(spec)
            resolved, plan = resolve(spec, self.settings, facts, read_arch)
            owner = render.Owner(name=name, uid=uid)
            if spec.cache.enabled:
                arch = model_facts(spec)[1] or read_arch
                verdict = self.caches.ensure(
                    namespace, spec, resolved.model_id, arch, resolved.image, render.affinity(resolved)
                )
                if verdict.ready and arch is None:
                    # Facts the prefetch read from the downloaded files (gated models too, as the
                    # Job has the token): plan now, before any serving pod exists.
                    prefetched = self.caches.prefetched_architecture(namespace, resolved.model_id, spec)
                    if prefetched is not None:
                        resolved, plan = resolve(spec, self.settings, facts, prefetched)
                if verdict.ready:
                    # Without prefetch the first pod fills the volume, so it must write and go online.
                    mount = render.CacheMount(verdict.status.claim_name, prefetched=spec.cache.prefetch)
                    resolved = with_strategy(spec, replace(resolved, cache=mount), facts)
            if verdict is None or verdict.ready:
                desired = render.render(name, namespace, spec, resolved, owner)
            else:
                # No GPU pod waits on a download: only the Service until the cache is ready;
                # a Deployment already serving (say, the previous revision) is left as it is.
                desired = [render.service(name, namespace, owner)]
                hold = True
            model_id = resolved.model_id
            if spec.autoscaling.enabled:
                autoscaled_min = spec.autoscaling.min_replicas
            else:
                fixed_replicas = spec.replicas
        except ValidationError as e:
            error = spec_error_from_validation(e)
        except SpecError as e:
            error = e

        # The Deployment as this pass last saw it: read once (with the facts), or as applied.
        dep = (
            facts.deployment if facts is not None else self.kube.get("apps/v1", "Deployment", namespace, name)
        )
        if desired is not None and apply:
            # Nothing is applied for a refused spec: the last good children keep serving.
            if desired[0]["kind"] == "Deployment" and "replicas" not in desired[0]["spec"]:
                self._hand_over_replicas(dep)
            for obj in desired:
                out = self.kube.apply(obj)
                if obj["kind"] == "Deployment":
                    dep = out
            self._prune(namespace, name, uid, desired, hold)

        if dep is not None and not _controlled_by(dep, uid):
            dep = None
        pods = self.kube.list("v1", "Pod", namespace, render.selector_string(name)) if dep else []
        blocked = None
        if facts is not None and resolved is not None:
            why = rollout_blocked(dep, pods, facts, resolved.gpus, resolved.gpu_products)
            blocked = status.Blocked(*why) if why else None
        if fixed_replicas is not None:
            desired_replicas = fixed_replicas
        else:
            # An autoscaler (or, for a refused spec, the last good spec) decides: read it back.
            desired_replicas = int((dep or {}).get("spec", {}).get("replicas") or autoscaled_min)
        observed = status.Observed(
            desired_replicas=desired_replicas,
            deployment=dep,
            pods=pods,
            plan=plan,
            model_id=model_id,
            blocked=blocked,
            cache=verdict,
        )
        new = status.compute(
            name=name,
            namespace=namespace,
            generation=generation,
            selector=render.selector_string(name),
            endpoint=render.endpoint(name, namespace),
            observed=observed,
            error=error,
            prior=prior,
            now=now_rfc3339(),
        )
        new_raw = new.model_dump(by_alias=True, exclude_none=True)
        prior_raw = prior.model_dump(by_alias=True, exclude_none=True) if prior else None
        if new_raw != prior_raw:
            self.kube.patch_status(namespace, name, new_raw)
        for t in status.transitions(prior, new):
            self._event(body, t)
        metrics.record_conditions(namespace, name, [(c.type, c.status) for c in new.conditions])
        return "refused" if error is not None else "ok"

    def _read_arch(self, spec: ModelDeploymentSpec) -> ModelArchitecture | None:
        """Facts from the model's config.json when neither spec nor catalog has them."""
        model_id, arch = model_facts(spec)
        if arch is not None or not model_id or not self.settings.read_model_config:
            return None
        try:
            return self.hub.read(model_id, spec.model.revision)
        except FactsUnavailableError as e:
            # Gated, private or unreachable: serve as asked, without a plan.
            log.debug("no architecture facts for %s: %s", model_id, e)
            return None

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

    def _prune(self, namespace: str, name: str, uid: str, desired: list[Obj], hold: bool) -> None:
        keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
        for api_version, kind in CHILD_KINDS:
            if hold and kind != "Service":
                continue
            if not self.kube.has_kind(api_version, kind):
                continue
            for obj in self.kube.list(api_version, kind, namespace, f"{render.NAME_LABEL}={name}"):
                obj_name = obj["metadata"]["name"]
                if (kind, obj_name) in keep or not _controlled_by(obj, uid):
                    continue
                log.info("deleting %s %s/%s: no longer desired", kind, namespace, obj_name)
                self.kube.delete({"apiVersion": api_version, "kind": kind, "metadata": obj["metadata"]})

    def _event(self, body: Obj, t: status.Transition) -> None:
        reason = t.reason
        try:
            self.kube.event(
                body, "Warning" if t.warning else "Normal", reason, f"{t.type}={t.status}: {t.message}"
            )
        except Exception:  # an Event is best effort; never fail a reconcile over it
            log.warning(
                "could not post event for %s/%s", body["metadata"]["namespace"], body["metadata"]["name"]
            )


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
