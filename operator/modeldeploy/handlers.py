"""kopf handlers. They only mark models dirty in the keyed work queue and return None (kopf
would write a handler's return value into status, which holds only our schema); the queue's
workers run `Reconciler.reconcile`. A handler never raises, so kopf never delays a new
generation behind the retry of an old one: failures are retried by the queue, with backoff.

No deletion handler and no kopf timer: both make kopf add a finalizer, and a finalizer would
block `kubectl delete` while the operator is down. Children go by garbage collection (owner
references); the periodic resync is a plain loop instead of a timer.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from typing import Any

import kopf

from modeldeploy import GROUP, PLURAL, VERSION, cache, metrics, peering, render, watchcache
from modeldeploy.reconcile import Reconciler, owner_of
from modeldeploy.settings import Settings
from modeldeploy.watchcache import CachedKube, Indices
from modeldeploy.workqueue import WorkQueue

log = logging.getLogger("modeldeploy")
_state: dict[str, Any] = {}
_stop = threading.Event()
WORKERS = int(os.environ.get("MODELDEPLOY_WORKERS", "4"))


_indices = Indices()
_audit_due = threading.Event()
# Listing events this soon after the first handler are the first listing's, not a re-list.
RELIST_GRACE_SECONDS = 60.0
# The indices are audited this often anyway (nodes and autoscalers have no handler to tell).
AUDIT_SECONDS = float(os.environ.get("MODELDEPLOY_INDEX_AUDIT_SECONDS", "600"))
# Per model, the generation and the prober's findings last seen (see on_model_event).
_generations: dict[tuple[str, str], tuple[str, int]] = {}
_verified: dict[tuple[str, str], str] = {}


def verification_digest(status_: dict[str, Any]) -> str:
    return json.dumps([status_.get("runtime"), status_.get("probes")], sort_keys=True, default=str)


def reconciler() -> Reconciler:
    rec = _state.get("reconciler")
    if rec is None:
        rec = Reconciler(CachedKube(_indices), Settings.from_env(), events_in_background=True)
        _state["reconciler"] = rec
    assert isinstance(rec, Reconciler)
    return rec


_queue_lock = threading.Lock()


def acting() -> bool:
    """False on a standby replica (kopf peering): the active one does the work."""
    return not _state.get("peering") or bool(_state.get("active", False))


def _work(key: tuple[str, str], apply: bool) -> bool:
    if not acting():
        return False  # a standby runs no passes, retries included: the active replica does
    return reconciler().reconcile(key[0], key[1], apply=apply)


def queue() -> WorkQueue:
    """The one work queue (kopf calls handlers from a thread pool: created under a lock)."""
    with _queue_lock:
        q = _state.get("queue")
        if q is None:
            q = WorkQueue(_work, workers=WORKERS)
            q.start()
            _state["queue"] = q
    assert isinstance(q, WorkQueue)
    return q


def configure(
    settings: kopf.OperatorSettings,
    peered: bool,
    namespaced: bool = False,
    peering_lifetime: int = peering.DEFAULT_LIFETIME,
) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # We post our own Events on condition transitions; kopf's per-handler ones are noise.
    settings.posting.enabled = False
    settings.peering.standalone = not peered
    settings.peering.name = peering.NAME
    settings.peering.mandatory = peered
    settings.peering.lifetime = peering_lifetime
    settings.watching.server_timeout = 300
    # A half-open watch must end too, or the operator goes deaf to events until a restart.
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 8
    if namespaced:
        # Fixed namespaces: no need to watch namespaces and CRDs (and no RBAC to do so).
        settings.scanning.disabled = True


# -- indices: what a pass reads, kept in memory by kopf's watches (see watchcache) -----------------


def _index(body: kopf.Body, **_: Any) -> dict[watchcache.Key, Any]:
    return watchcache.object_keys(body)


def _ours(labels: kopf.Labels, **_: Any) -> bool:
    return any(label in labels for label in watchcache.INDEXED_LABELS)


_named = {render.NAME_LABEL: kopf.PRESENT}
_cached = {cache.CACHE_KEY_LABEL: kopf.PRESENT}
kopf.index(GROUP, VERSION, PLURAL, id="md_models")(_index)
kopf.index("apps", "v1", "deployments", labels=_named, id="md_deployments")(_index)
kopf.index("v1", "services", labels=_named, id="md_services")(_index)
kopf.index("policy", "v1", "poddisruptionbudgets", labels=_named, id="md_pdbs")(_index)
kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=_named, id="md_hpas")(_index)
kopf.index("v1", "pods", when=_ours, id="md_pods")(_index)
kopf.index("v1", "persistentvolumeclaims", labels=_cached, id="md_pvcs")(_index)
kopf.index("batch", "v1", "jobs", labels=_cached, id="md_jobs")(_index)


@kopf.index("v1", "nodes", id="md_nodes")
def _nodes(body: kopf.Body, **_: Any) -> dict[watchcache.Key, Any]:
    return watchcache.node_keys(body)


@kopf.index("v1", "pods", id=watchcache.GPU_PODS)
def _gpu_pods(body: kopf.Body, **_: Any) -> dict[watchcache.Key, Any]:
    return watchcache.gpu_pod_keys(body)


def _ready(event_type: str | None = "") -> None:
    # kopf calls no handler before every index holds its first full listing.
    if (
        event_type is None
        and _indices.ready
        and time.monotonic() - _indices.ready_since > RELIST_GRACE_SECONDS
    ):
        # A listing again (a watch kopf could not resume): the indices may hold objects
        # deleted in the gap. The resync loop audits them.
        _audit_due.set()
    _indices.mark_ready()


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    namespaces: list[str] = list(_state.get("namespaces") or [])
    _indices.attach({k: v for k, v in kwargs.items() if k.startswith("md_")}, cluster_wide=not namespaces)
    configure(
        settings,
        peered=bool(_state.get("peering", False)),
        namespaced=bool(namespaces),
        peering_lifetime=int(_state.get("peering_lifetime", peering.DEFAULT_LIFETIME)),
    )
    scopes: list[str | None] = list(namespaces) or [None]  # None: every namespace
    if _state.get("peering"):
        # kopf keeps every replica paused while its peering object is missing. Created here, not
        # by the chart, so no install or upgrade (or GitOps sync) ever deletes and recreates it.
        for scope in scopes:
            try:
                created = reconciler().kube.create_if_absent(peering.peering_object(scope))
            except Exception as e:
                # E.g. kopf's peering CRDs not installed yet: kopf runs the startup again.
                raise kopf.TemporaryError(f"cannot create the peering object: {e}", delay=10) from e
            if created:
                log.info("created the peering object for %s", scope or "all namespaces")
    queue()
    threading.Thread(
        target=_resync_loop, args=(reconciler(), scopes), name="modeldeploy-resync", daemon=True
    ).start()
    threading.Thread(
        target=_audit_loop, args=(reconciler(), scopes), name="modeldeploy-audit", daemon=True
    ).start()


def _active(rec: Reconciler, scopes: list[str | None]) -> bool:
    """Under peering, only the replica kopf lets work does the resync too. kopf pauses a
    replica everywhere when any one of its peering objects says so."""
    if not _state.get("peering"):
        return True
    now = dt.datetime.now(dt.UTC)
    for scope in scopes:
        ref = peering.peering_object(scope)
        body = rec.kube.get(ref["apiVersion"], ref["kind"], scope, peering.NAME)
        if not peering.is_active(body, str(_state.get("identity")), int(_state.get("priority", 0)), now):
            return False
    return True


def _resync(rec: Reconciler, scopes: list[str | None], collect: bool = True) -> None:
    """Every model back into the queue, and caches nobody uses collected: each step on its own,
    so one failure skips nothing else."""
    for scope in scopes:
        try:
            models = rec.kube.list(f"{GROUP}/{VERSION}", "ModelDeployment", scope)
        except Exception as e:
            log.warning("resync of %s: cannot list models: %s", scope or "all namespaces", e)
            continue
        log.debug("resync of %s: %d models", scope or "all namespaces", len(models))
        for body in models:
            meta = body["metadata"]
            queue().add((meta["namespace"], meta["name"]))
        if not collect:
            continue
        # Also catches models deleted while the operator was down (no finalizer).
        try:
            pvcs = rec.kube.list("v1", "PersistentVolumeClaim", scope, cache.CACHE_KEY_LABEL)
        except Exception as e:
            log.warning("resync of %s: cannot list caches: %s", scope or "all namespaces", e)
            continue
        for ns in sorted({p["metadata"]["namespace"] for p in pvcs}):
            try:
                rec.caches.collect_garbage(ns)
            except Exception as e:
                log.warning("%s: collecting unused caches failed: %s", ns, e)


def _audit(rec: Reconciler, scopes: list[str | None]) -> bool:
    """One audit of the indices; False if it failed (it is tried again later, not at once)."""
    kube = rec.kube
    if not isinstance(kube, CachedKube):
        return True
    try:
        gone = _indices.audit(kube.live, scopes)
    except Exception as e:
        log.warning("auditing the watch-fed indices failed: %s", e)
        return False
    if gone:
        log.info("%d objects in the watch-fed indices were deleted while a watch was away: hidden", gone)
        # Their models' passes read the indices afresh (what was hidden may need re-creating).
        _resync(rec, scopes, collect=False)
    return True


def _audit_loop(rec: Reconciler, scopes: list[str | None]) -> None:
    """Audits beside the role checks and resyncs (an audit lists whole kinds: it may be slow),
    when a re-list was seen, when this replica becomes active, and every AUDIT_SECONDS; a
    failed one again after a minute."""
    next_at = time.monotonic() + AUDIT_SECONDS
    while not _stop.is_set():
        if _audit_due.wait(5.0) or time.monotonic() >= next_at:
            _audit_due.clear()
            if acting():
                ok = _audit(rec, scopes)
                next_at = time.monotonic() + (AUDIT_SECONDS if ok else min(60.0, AUDIT_SECONDS))


def _resync_loop(rec: Reconciler, scopes: list[str | None]) -> None:
    """The periodic resync, and under peering this replica's role, checked more often than the
    resync runs so the log and the modeldeploy_active gauge follow a takeover within seconds."""
    period = rec.settings.resync_seconds
    tick = min(period, peering.ROLE_CHECK_SECONDS)
    role: bool | None = None
    last_resync = time.monotonic()
    while True:
        try:
            now_active = _active(rec, scopes)
        except Exception:
            log.exception("reading the peering objects failed; standing by until it works")
            now_active = False
        if now_active != role and _state.get("peering"):
            log.info("active" if now_active else "standby: a live peer has the same or a higher priority")
            if now_active:
                # Another replica (maybe another version) worked meanwhile.
                rec.reset_memory()
        became_active = bool(now_active and role is False)
        role = now_active
        _state["active"] = role
        metrics.ACTIVE.set(int(role))
        if became_active:
            # Changes made while the other replica was going were not ours to handle: now they
            # are. And the indices may hold what was deleted while this one's watches were paused.
            _audit_due.set()
            last_resync = -period
        if time.monotonic() - last_resync >= period:
            last_resync = time.monotonic()
            if role:
                _resync(rec, scopes)
            else:
                log.debug("standby: resync left to the active peer")
        if _stop.wait(tick):
            return


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    _stop.set()
    q = _state.get("queue")
    if isinstance(q, WorkQueue):
        q.stop()
    rec = _state.get("reconciler")
    if isinstance(rec, Reconciler):
        rec.close()


@kopf.on.event("apps", "v1", "deployments", labels={render.NAME_LABEL: kopf.PRESENT})
@kopf.on.event("v1", "services", labels={render.NAME_LABEL: kopf.PRESENT})
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels={render.NAME_LABEL: kopf.PRESENT})
def on_child(meta: kopf.Meta, namespace: str | None, type: str | None, **_: Any) -> None:
    _ready(type)
    # A child changed (rollout progress, or someone edited it): re-apply and refresh status.
    owner = owner_of(dict(meta))
    if namespace and owner is not None:
        queue().add((namespace, owner))


@kopf.on.event("v1", "pods", labels={render.NAME_LABEL: kopf.PRESENT})
def on_pod(labels: kopf.Labels, namespace: str | None, type: str | None, **_: Any) -> None:
    _ready(type)
    # Pods carry causes (Unschedulable, CrashLoopBackOff ...): refresh status only.
    name = labels.get(render.NAME_LABEL)
    if name and namespace:
        queue().add((namespace, name), apply=False)


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_model_event(type: str | None, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    _ready(type)
    if not namespace:
        return
    if type == "DELETED":
        # A deleted model may leave a cache nobody uses; deletion needs no finalizer for this.
        metrics.forget(namespace, name)
        queue().forget((namespace, name))
        reconciler().forget(namespace, name)
        _verified.pop((namespace, name), None)
        _generations.pop((namespace, name), None)
        try:
            reconciler().caches.collect_garbage(namespace)
        except Exception as e:
            log.warning("%s: collecting unused caches after %s was deleted failed: %s", namespace, name, e)
        return
    key = (namespace, name)
    meta = body.get("metadata") or {}
    # By uid too: a model deleted and made again under its name (its DELETED event missed in
    # a watch gap) is new, even at the same generation.
    generation = (str(meta.get("uid") or ""), int(meta.get("generation") or 0))
    if _generations.get(key) != generation:
        # New, listed at start, or a new generation: a new reason to try, which runs now
        # whatever the backoff. (Not kopf's change handlers: they would write a diff-base
        # annotation on every model and every change.)
        _generations[key] = generation
        queue().add(key, reset=True)
    # The prober writes its own part of status; Ready follows what it found (status only).
    found = verification_digest(dict(body.get("status") or {}))
    if _verified.get(key, found) != found:
        queue().add(key, apply=False)
    _verified[key] = found


@kopf.on.event("batch", "v1", "jobs", labels={cache.CACHE_KEY_LABEL: kopf.PRESENT})
@kopf.on.event("v1", "persistentvolumeclaims", labels={cache.CACHE_KEY_LABEL: kopf.PRESENT})
def on_cache(labels: kopf.Labels, namespace: str | None, type: str | None, **_: Any) -> None:
    _ready(type)
    # Download progress or a bound volume: refresh every model sharing this cache.
    if not namespace:
        return
    rec = reconciler()
    key = labels.get(cache.CACHE_KEY_LABEL, "")
    try:
        models = rec.kube.list(f"{GROUP}/{VERSION}", "ModelDeployment", namespace)
        users = cache.users(models, key)
        for name in users:
            queue().add((namespace, name))
        if not users:
            # A volume or Job nobody uses (e.g. re-created by a pass that raced a deletion).
            rec.caches.collect_garbage(namespace)
    except Exception as e:
        log.warning("%s: cache %s event not handled: %s", namespace, key, e)
