"""Kubernetes API I/O: server-side apply, reads, deletes, status patches and Events.

Everything that talks to the API server goes through `Kube`, so the render, plan and status
modules stay pure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError, ResourceNotFoundError

from modeldeploy import FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION

Obj = dict[str, Any]
DISCOVERY_RETRY_SECONDS = float(os.environ.get("MODELDEPLOY_DISCOVERY_RETRY_SECONDS", "30"))
# (connect, read) seconds for every request: a half-open connection must never hold a worker
# (and the model it works on) forever.
REQUEST_TIMEOUT = (5.0, float(os.environ.get("MODELDEPLOY_REQUEST_TIMEOUT_SECONDS", "30")))
STATUS_FIELD_MANAGER = f"{FIELD_MANAGER}-status"


def apply_body(obj: Obj) -> bytes:
    """An apply body as UTF-8 JSON. Apply bodies are parsed as YAML, which has no surrogate
    pairs: json.dumps' default `\\ud83d\\ude00` escapes of characters outside the Basic
    Multilingual Plane would be refused, so they are sent as they are."""
    return json.dumps(obj, ensure_ascii=False).encode()


def load_config() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_default_timeout(api: client.ApiClient) -> client.ApiClient:
    """Give every request of this client a timeout, including the ones the client library
    makes itself (API discovery), which take none: a half-open connection must not hang a
    worker, or the discovery lock every worker shares."""
    rest: Any = api.rest_client
    plain = rest.request

    def request(*args: Any, **kwargs: Any) -> Any:
        kwargs["_request_timeout"] = kwargs.get("_request_timeout") or REQUEST_TIMEOUT
        return plain(*args, **kwargs)

    rest.request = request
    return api


def updates_status(entry: Obj) -> bool:
    """A managedFields entry of a status written by update (not by apply)."""
    return bool(entry.get("subresource") == "status" and entry.get("operation") == "Update")


class Kube:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = with_default_timeout(api or load_config())
        self.dyn = DynamicClient(self.api)  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self._missing: dict[tuple[str, str], float] = {}
        self._discovery = threading.RLock()

    def _resource(self, api_version: str, kind: str) -> Any:
        # The discovery cache is shared and not thread-safe; handlers run in a thread pool.
        with self._discovery:
            return self.dyn.resources.get(api_version=api_version, kind=kind)

    def has_kind(self, api_version: str, kind: str, *, refresh: bool = True) -> bool:
        """Whether the cluster serves the kind. Discovery is cached; with refresh, a kind it
        lacks is looked up again (a CRD installed since), at most once per retry period."""
        with self._discovery:
            return self._has_kind(api_version, kind, refresh)

    def _has_kind(self, api_version: str, kind: str, refresh: bool) -> bool:
        key = (api_version, kind)
        missing_since = self._missing.get(key)
        if missing_since is not None and (
            not refresh or time.monotonic() - missing_since < DISCOVERY_RETRY_SECONDS
        ):
            # The client walks every API group again on each lookup of a kind it lacks, so a
            # kind known to be missing is looked up again only when a pass needs it, and at
            # most once per retry period.
            return False
        try:
            self._resource(api_version, kind)
        except ResourceNotFoundError:
            self._missing[key] = time.monotonic()
            return False
        self._missing.pop(key, None)
        return True

    def forget_kind(self, api_version: str, kind: str) -> None:
        """A kind answered 404 (its CRD was deleted): look it up afresh next time."""
        with self._discovery:
            self.dyn.resources.invalidate_cache()
            self._missing[(api_version, kind)] = time.monotonic()

    # -- generic objects ----------------------------------------------------------------------

    def apply(
        self, obj: Obj, field_manager: str = FIELD_MANAGER, *, force: bool = True, dry_run: bool = False
    ) -> Obj:
        """Server-side apply. `force` takes over fields another manager holds: only for objects
        this model controls."""
        res = self._resource(obj["apiVersion"], obj["kind"])
        out = res.server_side_apply(
            body=apply_body(obj),
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=field_manager,
            force_conflicts=force,
            dry_run="All" if dry_run else None,
        )
        return dict(out.to_dict())

    def create_if_absent(self, obj: Obj) -> bool:
        """Create the object unless it exists (a plain create: never touches an existing one)."""
        try:
            self._resource(obj["apiVersion"], obj["kind"]).create(
                body=obj, namespace=obj["metadata"].get("namespace")
            )
        except ConflictError:
            return False
        return True

    def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str, patch: Obj) -> Obj:
        out = self._resource(api_version, kind).patch(
            body=patch,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )
        return dict(out.to_dict())

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            out = self._resource(api_version, kind).get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        return dict(out.to_dict())

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[Obj]:
        out = self._resource(api_version, kind).get(
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
        )
        return [dict(i) for i in out.to_dict().get("items", [])]

    def delete(self, obj: Obj) -> None:
        meta = obj["metadata"]
        with contextlib.suppress(NotFoundError):
            self._resource(obj["apiVersion"], obj["kind"]).delete(
                name=meta["name"],
                namespace=meta.get("namespace"),
                body={"propagationPolicy": "Background", "preconditions": {"uid": meta.get("uid")}},
            )

    # -- ModelDeployments ---------------------------------------------------------------------

    def get_model(self, namespace: str, name: str) -> Obj | None:
        try:
            out = cast(
                Obj,
                self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return out

    def apply_status(
        self, namespace: str, name: str, status: Obj, field_manager: str = STATUS_FIELD_MANAGER
    ) -> Obj:
        """Server-side apply of the status subresource with a status field manager: what this
        manager set before and leaves out now is removed; the spec is never written. Each writer
        of status (the reconcile, the prober) has its own manager, so none removes another's."""
        res = self._resource(f"{GROUP}/{VERSION}", KIND).status
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name},
            "status": status,
        }
        out = res.server_side_apply(
            body=apply_body(body),
            name=name,
            namespace=namespace,
            field_manager=field_manager,
            force_conflicts=True,
        )
        return dict(out.to_dict())

    def take_over_status(self, namespace: str, name: str, status: Obj) -> None:
        """Make the status this manager's alone, once, for objects whose status an older version
        (or anyone) wrote by update: server-side apply never removes fields that another manager
        also owns, so stale ones would stay. A merge patch writes `status` (None deletes a field;
        lists are replaced whole), then those update entries are dropped from managedFields, so
        the next apply owns exactly what it sends."""
        res = self._resource(f"{GROUP}/{VERSION}", KIND)
        out = res.status.patch(
            body={"status": status},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            field_manager=STATUS_FIELD_MANAGER,
        ).to_dict()
        meta = out["metadata"]
        kept = [m for m in meta.get("managedFields") or [] if not updates_status(m)]
        res.patch(
            body=[
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                {"op": "replace", "path": "/metadata/managedFields", "value": kept},
            ],
            name=name,
            namespace=namespace,
            content_type="application/json-patch+json",
        )

    def pod_log_tail(self, namespace: str, name: str, container: str, lines: int) -> str:
        out = self.core.read_namespaced_pod_log(
            name, namespace, container=container, tail_lines=lines, _request_timeout=5
        )
        return str(out)

    def event(self, owner: Obj, type_: str, reason: str, message: str) -> None:
        meta = owner["metadata"]
        ts = now_rfc3339()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            source=client.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
            reporting_instance=FIELD_MANAGER,
            first_timestamp=ts,
            last_timestamp=ts,
            count=1,
        )
        self.core.create_namespaced_event(meta["namespace"], body)
