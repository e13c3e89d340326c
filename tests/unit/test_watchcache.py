"""The watch-fed reads: what each object is indexed under, which queries the indices answer,
and when a skipped apply would hide someone else's change."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import FIELD_MANAGER, cache, render
from modeldeploy.reconcile import owned_fields
from modeldeploy.watchcache import (
    ALL,
    GPU_PODS,
    UNFINISHED_PODS,
    CachedKube,
    Indices,
    gpu_pod_keys,
    object_keys,
    parse_selector,
)

Obj = dict[str, Any]


def obj(kind: str, name: str, ns: str = "team", **labels: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": ns, "labels": labels}}


def pod(name: str, node: str | None, gpus: int, phase: str = "Running", **labels: str) -> dict[str, Any]:
    body = obj("Pod", name, **labels)
    limits = {render.GPU_RESOURCE: str(gpus)} if gpus else {}
    body["spec"] = {"containers": [{"name": "c", "resources": {"limits": limits}}]}
    if node:
        body["spec"]["nodeName"] = node
    body["status"] = {"phase": phase}
    return body


class FakeIndex(dict[Any, list[dict[str, Any]]]):
    """kopf's Index as the handlers see it: key -> store of the objects' values."""


def indices_of(**kinds: list[dict[str, Any]]) -> Indices:
    built: dict[str, FakeIndex] = {}
    for index, bodies in kinds.items():
        idx = FakeIndex()
        for body in bodies:
            keys = gpu_pod_keys(body) if index == GPU_PODS else object_keys(body)
            for k, v in keys.items():
                idx.setdefault(k, []).append(v)
        built[index] = idx
    out = Indices()
    out.attach(built, cluster_wide=True)
    out.mark_ready()
    return out


class NoAPI(CachedKube):
    """Every read the indices do not answer fails the test."""

    def __init__(self, indices: Indices) -> None:
        self.indices = indices

    def _resource(self, api_version: str, kind: str) -> Any:
        raise AssertionError(f"went to the API server for {kind}")


def test_children_are_found_by_model_label_and_by_name() -> None:
    mine = obj("Deployment", "m1", **{render.NAME_LABEL: "m1"})
    other = obj("Deployment", "m2", **{render.NAME_LABEL: "m2"})
    kube = NoAPI(indices_of(md_deployments=[mine, other]))
    assert kube.list("apps/v1", "Deployment", "team", f"{render.NAME_LABEL}=m1") == [mine]
    assert kube.get("apps/v1", "Deployment", "team", "m2") == other
    assert kube.list("apps/v1", "Deployment", "elsewhere", f"{render.NAME_LABEL}=m1") == []


def test_caches_are_found_by_key_and_by_label_presence() -> None:
    pvc = obj("PersistentVolumeClaim", "c1", **{cache.CACHE_KEY_LABEL: "k1"})
    kube = NoAPI(indices_of(md_pvcs=[pvc]))
    assert kube.list("v1", "PersistentVolumeClaim", "team", cache.CACHE_KEY_LABEL) == [pvc]
    assert kube.list("v1", "PersistentVolumeClaim", None, cache.CACHE_KEY_LABEL) == [pvc]
    assert kube.list("v1", "PersistentVolumeClaim", "team", cache.selector_string("k2")) == []


def test_gpu_accounting_sees_only_bound_unfinished_gpu_pods() -> None:
    pods = [
        pod("serving", "n1", 2),
        pod("cpu-only", "n1", 0),
        pod("pending", None, 1, phase="Pending"),
        pod("done", "n1", 1, phase="Succeeded"),
    ]
    kube = NoAPI(indices_of(md_gpu_pods=pods))
    found = kube.list("v1", "Pod", None, field_selector=UNFINISHED_PODS)
    assert [p["metadata"]["name"] for p in found] == ["serving"]
    assert found[0]["spec"]["nodeName"] == "n1"


def test_gpu_accounting_of_a_namespaced_operator_goes_to_the_api_server() -> None:
    # It cannot see other namespaces' GPU pods: the API server answers (and may refuse).
    indices = indices_of(md_gpu_pods=[pod("serving", "n1", 2)])
    indices.cluster_wide = False
    with pytest.raises(AssertionError, match="went to the API server"):
        NoAPI(indices).list("v1", "Pod", None, field_selector=UNFINISHED_PODS)


def test_reads_before_the_indices_are_filled_go_to_the_api_server() -> None:
    indices = Indices()
    with pytest.raises(AssertionError, match="went to the API server"):
        NoAPI(indices).get("apps/v1", "Deployment", "team", "m1")


def test_a_name_missing_from_the_index_is_read_from_the_api_server() -> None:
    # Someone else's object of that name, or one just created: never assumed absent.
    kube = NoAPI(indices_of(md_services=[]))
    with pytest.raises(AssertionError, match="went to the API server"):
        kube.get("v1", "Service", "team", "m1")


@pytest.mark.parametrize("selector", ["a!=b", "a in (b)", "!a"])
def test_selectors_the_indices_cannot_answer(selector: str) -> None:
    assert parse_selector(selector) is None


def test_an_object_that_stops_matching_is_dropped() -> None:
    # An empty mapping: kopf keeps an object's old values when the index function returns None.
    assert gpu_pod_keys(pod("done", "n1", 1, phase="Failed")) == {}
    assert ALL in gpu_pod_keys(pod("serving", "n1", 1))


def managed(manager: str, fields: dict[str, Any], operation: str = "Apply") -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "apiVersion": "apps/v1", "fieldsV1": fields}


def test_owned_fields_change_when_another_manager_takes_one_of_ours() -> None:
    ours = {"f:spec": {"f:replicas": {}, "f:template": {}}}
    before = {"metadata": {"managedFields": [managed(FIELD_MANAGER, ours)]}}
    # `kubectl scale` (an update) takes spec.replicas from us.
    after = {
        "metadata": {
            "managedFields": [
                managed(FIELD_MANAGER, {"f:spec": {"f:template": {}}}),
                managed("kubectl", {"f:spec": {"f:replicas": {}}}, "Update"),
            ]
        }
    }
    # Someone else adding a field of their own leaves our entry as it was.
    beside = {
        "metadata": {
            "managedFields": [
                managed(FIELD_MANAGER, ours),
                managed("someone", {"f:metadata": {"f:labels": {"f:team": {}}}}, "Update"),
            ]
        }
    }
    assert owned_fields(before) != owned_fields(after)
    assert owned_fields(before) == owned_fields(beside)


class LiveAPI:
    """What the API server holds, for the audit's lists and gets."""

    def __init__(self, objs: list[dict[str, Any]]) -> None:
        self.objs = objs

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        for o in self.objs:
            meta = o["metadata"]
            if o["kind"] == kind and meta["name"] == name and (meta.get("namespace") or None) == namespace:
                return o
        return None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[dict[str, Any]]:
        return [
            o for o in self.objs if o["kind"] == kind and namespace in (None, o["metadata"].get("namespace"))
        ]


def with_uid(body: dict[str, Any], uid: str) -> dict[str, Any]:
    body["metadata"]["uid"] = uid
    return body


def test_audit_hides_objects_deleted_while_a_watch_was_away() -> None:
    # kopf re-lists after a watch it cannot resume, and keeps what the new listing lacks.
    gone = with_uid(obj("Service", "m1", **{render.NAME_LABEL: "m1"}), "old")
    kept = with_uid(obj("Service", "m2", **{render.NAME_LABEL: "m2"}), "u2")
    # Made after the audit's list was taken: confirmed by name, never hidden.
    new = with_uid(obj("Service", "m3", **{render.NAME_LABEL: "m3"}), "u3")
    indices = indices_of(md_services=[gone, kept, new])
    live = LiveAPI([kept])

    def get_after_list(
        api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        return new if name == "m3" else LiveAPI.get(live, api_version, kind, namespace, name)

    live.get = get_after_list  # type: ignore[method-assign]
    assert indices.audit(live, ["team"]) == 1
    kube = NoAPI(indices)
    assert kube.list("v1", "Service", "team", f"{render.NAME_LABEL}=m2") == [kept]
    assert kube.list("v1", "Service", "team", f"{render.NAME_LABEL}=m3") == [new]
    # The ghost is hidden: a read of m1 goes to the API server (and a pass re-creates it).
    assert kube.list("v1", "Service", "team", f"{render.NAME_LABEL}=m1") == []
    with pytest.raises(AssertionError, match="went to the API server"):
        kube.get("v1", "Service", "team", "m1")


def test_a_name_taken_again_by_another_object_is_the_new_one() -> None:
    old = with_uid(obj("Service", "m1", **{render.NAME_LABEL: "m1"}), "old")
    successor = with_uid(obj("Service", "m1", **{render.NAME_LABEL: "m1"}), "new")
    indices = indices_of(md_services=[old, successor])
    assert indices.audit(LiveAPI([successor]), ["team"]) == 1
    assert NoAPI(indices).get("v1", "Service", "team", "m1") == successor


def test_nodes_are_indexed_with_only_what_the_accounting_reads() -> None:
    from modeldeploy.watchcache import node_keys

    node = {
        "metadata": {"name": "n1", "uid": "u", "labels": {"nvidia.com/gpu.product": "L4"}},
        "spec": {"unschedulable": True},
        "status": {"allocatable": {render.GPU_RESOURCE: "1"}, "images": [{"names": ["x"] * 100}]},
    }
    (slim,) = {id(v): v for v in node_keys(node).values()}.values()
    assert slim["status"] == {"allocatable": {render.GPU_RESOURCE: "1"}}
    assert slim["spec"] == {"unschedulable": True}
    assert slim["metadata"]["labels"] == {"nvidia.com/gpu.product": "L4"}


def test_a_pass_builds_on_the_status_it_wrote_when_the_index_lags() -> None:
    """The index may not have seen this operator's last status write yet: a pass building on
    the status before it would set observedGeneration back, or clear a refusal."""
    from modeldeploy.reconcile import Reconciler
    from modeldeploy.settings import Settings

    rec = Reconciler(kube=None, settings=Settings())  # type: ignore[arg-type]

    def model(rv: str, observed: int, uid: str = "u1") -> Obj:
        meta = {"name": "m", "namespace": "team", "uid": uid, "resourceVersion": rv, "generation": 2}
        return {"metadata": meta, "status": {"observedGeneration": observed}}

    written = model("120", 2)
    rec._remember(written)
    assert rec._fresher(model("118", 1)) is written  # the index lags: the write is newer
    newer = model("125", 2)
    assert rec._fresher(newer) is newer  # the index caught up (and maybe the prober wrote)
    other = model("90", 0, uid="u2")
    assert rec._fresher(other) is other  # a model re-created under the same name


def test_before_the_audit_a_name_taken_again_reads_as_its_newest_object() -> None:
    old = with_uid(obj("Service", "m1", **{render.NAME_LABEL: "m1"}), "old")
    old["metadata"]["resourceVersion"] = "90"
    successor = with_uid(obj("Service", "m1", **{render.NAME_LABEL: "m1"}), "new")
    successor["metadata"]["resourceVersion"] = "120"
    assert NoAPI(indices_of(md_services=[old, successor])).get("v1", "Service", "team", "m1") == successor


def test_a_newer_spec_in_the_index_wins_over_the_status_written() -> None:
    """resourceVersions are etcd revisions; an etcd restored from a snapshot can take them back.
    A newer generation in the index is never hidden behind the status this operator wrote."""
    from modeldeploy.reconcile import Reconciler
    from modeldeploy.settings import Settings

    rec = Reconciler(kube=None, settings=Settings())  # type: ignore[arg-type]
    written: Obj = {"metadata": {"name": "m", "namespace": "team", "uid": "u", "resourceVersion": "500",
                                 "generation": 2}}  # fmt: skip
    rec._remember(written)
    edited: Obj = {"metadata": {"name": "m", "namespace": "team", "uid": "u", "resourceVersion": "40",
                                "generation": 3}}  # fmt: skip
    assert rec._fresher(edited) is edited
    assert rec._written == {}  # from now on the index is the truth
