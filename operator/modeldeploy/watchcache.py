"""Reads from memory: kopf's watches keep indices of what a pass reads (models, their
children and pods, the weight caches, GPU nodes and GPU pods), and `CachedKube` answers a
pass's gets and lists from them, so a pass that changes nothing makes no API request and the
cost of a pass does not grow with the cluster.

kopf fills every index from a full listing before it calls any handler, and passes only start
from handlers, so a pass never sees a half-filled index. Until the first handler runs (and for
any query the indices do not cover) reads go to the API server as before. A name missing from
an index is read from the API server too: it may be someone else's object (the ownership
check), or one this pass just created and whose watch event has not arrived yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes import client

from modeldeploy import GROUP, VERSION, cache, render
from modeldeploy.kube import Kube
from modeldeploy.resolve import gpu_request

Obj = dict[str, Any]
Objs = list[Obj]  # (inside CachedKube, `list` is the method)
Key = tuple[str, ...]
# Labels whose values the indices are keyed by: the model a child belongs to, the cache a
# volume, Job or prefetch pod belongs to.
INDEXED_LABELS = (render.NAME_LABEL, cache.CACHE_KEY_LABEL)
ALL: Key = ("*",)

# (apiVersion, kind) -> the index (a kopf index handler's id) holding that kind.
INDEX_OF: dict[tuple[str, str], str] = {
    (f"{GROUP}/{VERSION}", "ModelDeployment"): "md_models",
    ("apps/v1", "Deployment"): "md_deployments",
    ("v1", "Service"): "md_services",
    ("policy/v1", "PodDisruptionBudget"): "md_pdbs",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "md_hpas",
    ("v1", "Pod"): "md_pods",
    ("v1", "PersistentVolumeClaim"): "md_pvcs",
    ("batch/v1", "Job"): "md_jobs",
    ("v1", "Node"): "md_nodes",
}
GPU_PODS = "md_gpu_pods"
UNFINISHED_PODS = "status.phase!=Succeeded,status.phase!=Failed"


def object_keys(body: Mapping[str, Any]) -> dict[Key, Obj]:
    """Where one object goes in its kind's index: by name, by each indexed label's value, by
    namespace, and in the list of all. An empty mapping drops it (kopf keeps the previous
    values of an object whose index function returns None)."""
    obj = dict(body)
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    keys: dict[Key, Obj] = {("name", ns, name): obj, ("ns", ns): obj, ALL: obj}
    labels = meta.get("labels") or {}
    for label in INDEXED_LABELS:
        if label in labels:
            keys[("label", ns, label, str(labels[label]))] = obj
            keys[("has", ns, label)] = obj
    return keys


def gpu_pod_keys(body: Mapping[str, Any]) -> dict[Key, Obj]:
    """A bound, unfinished pod that requests GPUs, reduced to what the GPU accounting reads."""
    spec = body.get("spec") or {}
    phase = (body.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed") or gpu_request(dict(body)) <= 0:
        return {}
    meta = body.get("metadata") or {}
    slim: Obj = {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "spec": {"nodeName": spec["nodeName"], "containers": spec.get("containers") or []},
    }
    if spec.get("initContainers"):
        slim["spec"]["initContainers"] = spec["initContainers"]
    return {ALL: slim}


def parse_selector(selector: str) -> tuple[dict[str, str], set[str]] | None:
    """Equality (`a=b`) and existence (`a`) terms; None for anything else (sets, negations)."""
    equal: dict[str, str] = {}
    present: set[str] = set()
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!" in term or "(" in term or " " in term:
            return None
        if "=" in term:
            k, _, v = term.partition("=")
            equal[k.rstrip("=")] = v.lstrip("=")
        else:
            present.add(term)
    return equal, present


def matches(obj: Obj, equal: dict[str, str], present: set[str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in equal.items()) and all(k in labels for k in present)


class Indices:
    """kopf's indices, as the startup handler hands them over, and whether they are filled."""

    def __init__(self) -> None:
        self._indices: Mapping[str, Any] = {}
        self._ready = threading.Event()
        # False when the operator watches only some namespaces: the GPU pods of the others are
        # not in the indices.
        self.cluster_wide = True
        self.ready_since = 0.0
        # uids of objects the indices hold but the API server no longer has (see audit).
        self._ghosts: set[str] = set()

    def attach(self, indices: Mapping[str, Any], cluster_wide: bool) -> None:
        self._indices = indices
        self.cluster_wide = cluster_wide

    def mark_ready(self) -> None:
        """Called from handlers: kopf runs none before every index holds its full listing."""
        if not self._ready.is_set() and self._indices:
            self.ready_since = time.monotonic()
            self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def values(self, index: str, key: Key) -> list[Obj] | None:
        """The objects under `key` (a copy of the list), or None when the index is not there."""
        if not self.ready:
            return None
        try:
            idx = self._indices[index]
        except KeyError:
            return None
        store = idx.get(key)
        # list() of kopf's store runs in C without releasing the GIL: a consistent copy even
        # while kopf's event loop thread updates the index.
        found = list(store) if store is not None else []
        if self._ghosts:
            found = [o for o in found if _uid(o) not in self._ghosts]
        return found

    def audit(self, live: Reads, scopes: list[str | None]) -> int:
        """Find what the indices hold that the API server no longer has, and hide it; returns
        how many were found. kopf re-lists after a watch it cannot resume (410 Gone, a paused
        peer resuming) without dropping what the new listing lacks, so an object deleted in
        that gap would stay in the index for good: a deleted child never re-created, a gone
        node still planned on. One list per indexed kind (and scope); a candidate missing from
        it is confirmed by name (it may have been created after the list)."""
        if not self.ready:
            return 0
        found = 0
        for (api_version, kind), index in INDEX_OF.items():
            cluster_scoped = kind == "Node"
            for scope in [None] if cluster_scoped else scopes:
                live_uids: set[str] = set()
                for selector in AUDIT_SELECTORS.get(index, ("",)):
                    live_uids |= {_uid(o) for o in live.list(api_version, kind, scope, selector)}
                key: Key = ALL if scope is None else ("ns", scope)
                found += self._hide_gone(live, api_version, kind, index, key, live_uids)
        if self.cluster_wide:
            live_uids = {_uid(o) for o in live.list("v1", "Pod", None, field_selector=UNFINISHED_PODS)}
            found += self._hide_gone(live, "v1", "Pod", GPU_PODS, ALL, live_uids)
        return found

    def _hide_gone(
        self, live: Reads, api_version: str, kind: str, index: str, key: Key, live_uids: set[str]
    ) -> int:
        found = 0
        for obj in self.values(index, key) or []:
            uid = _uid(obj)
            if not uid or uid in live_uids:
                continue
            meta = obj.get("metadata") or {}
            now = live.get(api_version, kind, meta.get("namespace") or None, str(meta.get("name")))
            if now is None or _uid(now) != uid:
                self._ghosts.add(uid)
                found += 1
        return found


class Reads(Protocol):
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None: ...

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> Objs: ...


def newest(found: Objs) -> Obj:
    """Of the objects indexed under one name, the latest: after a re-list an object deleted and
    made again under its name can sit beside its successor until the audit hides it."""

    def rv(o: Obj) -> int:
        v = str((o.get("metadata") or {}).get("resourceVersion") or "")
        return int(v) if v.isdigit() else 0

    return max(found, key=rv)


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


# The selectors the indices are filtered by (kopf's label filters and `when` in handlers.py).
AUDIT_SELECTORS: dict[str, tuple[str, ...]] = {
    "md_deployments": (render.NAME_LABEL,),
    "md_services": (render.NAME_LABEL,),
    "md_pdbs": (render.NAME_LABEL,),
    "md_hpas": (render.NAME_LABEL,),
    "md_pods": (render.NAME_LABEL, cache.CACHE_KEY_LABEL),
    "md_pvcs": (cache.CACHE_KEY_LABEL,),
    "md_jobs": (cache.CACHE_KEY_LABEL,),
}


class CachedKube(Kube):
    """`Kube` whose gets and lists come from the watch-fed indices when they cover the query."""

    def __init__(self, indices: Indices, api: client.ApiClient | None = None) -> None:
        super().__init__(api)
        self.indices = indices
        # Reads that always go to the API server (the audit of the indices). Its own discovery
        # cache: the client's is not shared between instances.
        self.live = Kube(self.api)

    def _index(self, api_version: str, kind: str) -> str | None:
        return INDEX_OF.get((api_version, kind))

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        index = self._index(api_version, kind)
        if index is not None:
            found = self.indices.values(index, ("name", namespace or "", name))
            if found:
                return newest(found)
        return super().get(api_version, kind, namespace, name)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[Obj]:
        found = self._list(api_version, kind, namespace, label_selector, field_selector)
        if found is not None:
            return found
        return super().list(api_version, kind, namespace, label_selector, field_selector)

    def _list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str, field_selector: str
    ) -> Objs | None:
        if kind == "Pod" and namespace is None and field_selector == UNFINISHED_PODS and not label_selector:
            # The GPU accounting: only GPU pods matter to it, and only if every namespace is seen.
            return self.indices.values(GPU_PODS, ALL) if self.indices.cluster_wide else None
        index = self._index(api_version, kind)
        parsed = parse_selector(label_selector)
        if index is None or field_selector or parsed is None:
            return None
        equal, present = parsed
        ns = namespace or ""
        key: Key = ALL if namespace is None else ("ns", ns)
        if namespace is not None:
            for label in INDEXED_LABELS:
                if label in equal:
                    key = ("label", ns, label, equal[label])
                    break
                if label in present:
                    key = ("has", ns, label)
                    break
        found = self.indices.values(index, key)
        return None if found is None else [o for o in found if matches(o, equal, present)]

    def get_model(self, namespace: str, name: str) -> Obj | None:
        found = self.indices.values("md_models", ("name", namespace, name))
        if found:
            return newest(found)
        return super().get_model(namespace, name)


def node_keys(body: Mapping[str, Any]) -> dict[Key, Obj]:
    """A node, reduced to what the GPU accounting reads (its images and conditions are large)."""
    meta = body.get("metadata") or {}
    slim: Obj = {
        "metadata": {"name": meta.get("name"), "uid": meta.get("uid"), "labels": meta.get("labels") or {}},
        "spec": {"unschedulable": (body.get("spec") or {}).get("unschedulable", False)},
        "status": {"allocatable": (body.get("status") or {}).get("allocatable") or {}},
    }
    return object_keys(slim)
