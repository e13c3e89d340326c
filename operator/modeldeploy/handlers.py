"""kopf handlers. Every one of them ends in the same `Reconciler.reconcile` and returns None
(kopf would write a handler's return value into status, which holds only our schema).

No deletion handler and no kopf timer: both make kopf add a finalizer, and a finalizer would
block `kubectl delete` while the operator is down. Children go by garbage collection (owner
references); the periodic resync is a plain loop instead of a timer.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

import kopf

from modeldeploy import GROUP, PLURAL, VERSION, cache, metrics, peering, render
from modeldeploy.kube import Kube
from modeldeploy.reconcile import Reconciler, owner_of
from modeldeploy.settings import Settings

log = logging.getLogger("modeldeploy")
_state: dict[str, Any] = {}
_stop = threading.Event()


def reconciler() -> Reconciler:
    rec = _state.get("reconciler")
    if rec is None:
        rec = Reconciler(Kube(), Settings.from_env())
        _state["reconciler"] = rec
    assert isinstance(rec, Reconciler)
    return rec


def configure(
    settings: kopf.OperatorSettings, peering: bool, namespaced: bool = False, peering_lifetime: int = 60
) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # We post our own Events on condition transitions; kopf's per-handler ones are noise.
    settings.posting.enabled = False
    settings.peering.standalone = not peering
    settings.peering.name = "modeldeploy"
    settings.peering.mandatory = peering
    settings.peering.lifetime = peering_lifetime
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 8
    if namespaced:
        # Fixed namespaces: no need to watch namespaces and CRDs (and no RBAC to do so).
        settings.scanning.disabled = True


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    namespaces: list[str] = list(_state.get("namespaces") or [])
    configure(
        settings,
        peering=bool(_state.get("peering", False)),
        namespaced=bool(namespaces),
        peering_lifetime=int(_state.get("peering_lifetime", 60)),
    )
    rec = reconciler()
    scopes: list[str | None] = list(namespaces) or [None]  # None: every namespace

    roles: dict[str | None, bool] = {}

    def active(scope: str | None) -> bool:
        """Under peering, only the replica kopf lets work does the resync too."""
        if not _state.get("peering"):
            return True
        kind, ns = ("ClusterKopfPeering", None) if scope is None else ("KopfPeering", scope)
        body = rec.kube.get("kopf.dev/v1", kind, ns, "modeldeploy")
        now = dt.datetime.now(dt.UTC)
        is_active = peering.is_active((body or {}).get("status"), int(_state.get("priority", 0)), now)
        if roles.get(scope) != is_active:
            role = "active" if is_active else "standby (a peer with a higher priority works)"
            log.info("%s in %s", role, scope or "all namespaces")
        roles[scope] = is_active
        metrics.ACTIVE.labels(scope or "").set(int(is_active))
        return is_active

    def resync() -> None:
        for scope in scopes:
            try:
                metrics.ACTIVE.labels(scope or "").set(int(active(scope)))
            except Exception:
                log.exception("reading the peering of %s failed; will retry", scope or "all namespaces")
        while not _stop.wait(rec.settings.resync_seconds):
            for scope in scopes:
                try:
                    if not active(scope):
                        log.debug("standby: resync of %s left to the active peer", scope or "all namespaces")
                        continue
                    for body in rec.kube.list(f"{GROUP}/{VERSION}", "ModelDeployment", scope):
                        meta = body["metadata"]
                        rec.reconcile(meta["namespace"], meta["name"])
                    # Also catches models deleted while the operator was down (no finalizer).
                    pvcs = rec.kube.list("v1", "PersistentVolumeClaim", scope, cache.CACHE_KEY_LABEL)
                    for ns in sorted({p["metadata"]["namespace"] for p in pvcs}):
                        rec.caches.collect_garbage(ns)
                except Exception:
                    log.exception("periodic resync of %s failed; will retry", scope or "all namespaces")

    threading.Thread(target=resync, name="modeldeploy-resync", daemon=True).start()


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    _stop.set()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_model(name: str, namespace: str | None, **_: Any) -> None:
    if namespace:
        reconciler().reconcile(namespace, name)


def _on_child(meta: dict[str, Any], namespace: str, apply: bool) -> None:
    owner = owner_of(dict(meta))
    if owner is not None:
        reconciler().reconcile(namespace, owner, apply=apply)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "modeldeploy"})
@kopf.on.event("v1", "services", labels={"app.kubernetes.io/managed-by": "modeldeploy"})
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels={"app.kubernetes.io/managed-by": "modeldeploy"})
def on_child(meta: kopf.Meta, namespace: str | None, **_: Any) -> None:
    # A child changed (rollout progress, or someone edited it): re-apply and refresh status.
    if namespace:
        _on_child(dict(meta), namespace, apply=True)


@kopf.on.event("v1", "pods", labels={render.NAME_LABEL: kopf.PRESENT})
def on_pod(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
    # Pods carry causes (Unschedulable, CrashLoopBackOff ...): refresh status only.
    name = labels.get(render.NAME_LABEL)
    if name and namespace:
        reconciler().reconcile(namespace, name, apply=False)


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_model_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
    # A deleted model may leave a cache nobody uses; deletion needs no finalizer for this.
    if type == "DELETED" and namespace:
        metrics.forget(namespace, name)
        reconciler().caches.collect_garbage(namespace)


@kopf.on.event("batch", "v1", "jobs", labels={cache.CACHE_KEY_LABEL: kopf.PRESENT})
@kopf.on.event("v1", "persistentvolumeclaims", labels={cache.CACHE_KEY_LABEL: kopf.PRESENT})
def on_cache(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
    # Download progress or a bound volume: refresh every model sharing this cache.
    if not namespace:
        return
    rec = reconciler()
    key = labels.get(cache.CACHE_KEY_LABEL, "")
    models = rec.kube.list(f"{GROUP}/{VERSION}", "ModelDeployment", namespace)
    users = cache.users(models, key)
    for name in users:
        rec.reconcile(namespace, name)
    if not users:
        # A volume or Job nobody uses (e.g. re-created by a pass that raced a deletion).
        rec.caches.collect_garbage(namespace)
