"""Observe: what the cluster holds for one model, read once at the start of a pass.

All cluster reads of a pass happen here (or lazily through the callables this snapshot
carries, for the GPU accounting most passes never need), so planning, rendering and status
stay pure functions of this snapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError

from modeldeploy import catalog, render
from modeldeploy.resolve import TEMPLATE_HASH, ClusterFacts, NodeGpus, gpu_request
from modeldeploy.settings import Settings

if TYPE_CHECKING:
    from modeldeploy.kube import Kube

Obj = dict[str, Any]


def cluster_facts(kube: Kube, namespace: str, name: str, needs_keda: bool = False) -> ClusterFacts:
    """The model's Deployment, KEDA's presence, and (on first use) the cluster's GPU accounting.
    Discovery is asked again about a missing KEDA only for a model that needs it."""
    dep = kube.get("apps/v1", "Deployment", namespace, name)
    existing_hash = ""
    existing_strategy = None
    if dep is not None:
        existing_hash = (dep["metadata"].get("annotations") or {}).get(TEMPLATE_HASH, "")
        ru = (dep.get("spec", {}).get("strategy") or {}).get("rollingUpdate") or {}
        if isinstance(ru.get("maxSurge"), int) and isinstance(ru.get("maxUnavailable"), int):
            existing_strategy = (ru["maxSurge"], ru["maxUnavailable"])
    keda = kube.has_kind("keda.sh/v1alpha1", "ScaledObject", refresh=needs_keda)
    return ClusterFacts(
        (),
        existing_hash,
        existing_strategy,
        keda,
        load_nodes=lambda: gpu_accounting(kube),
        deployment=dep,
    )


def gpu_accounting(kube: Kube) -> tuple[NodeGpus, ...]:
    """GPU nodes with their allocatable GPUs and what bound, unfinished pods request."""
    nodes = []
    for n in kube.list("v1", "Node", None):
        alloc = int((n.get("status", {}).get("allocatable") or {}).get(render.GPU_RESOURCE, 0) or 0)
        if alloc <= 0 or n.get("spec", {}).get("unschedulable"):
            continue
        product = (n["metadata"].get("labels") or {}).get(render.GPU_PRODUCT_LABEL, "")
        nodes.append((n["metadata"]["name"], product, alloc))
    if not nodes:
        return ()
    used: dict[str, int] = {}
    try:
        pods = kube.list("v1", "Pod", None, field_selector="status.phase!=Succeeded,status.phase!=Failed")
    except (ApiException, DynamicApiError) as e:
        if e.status != 403:
            raise
        # Not allowed to see other namespaces' pods: assume every GPU is taken, so rollouts
        # replace in place rather than surge into a GPU that may be in use.
        return tuple(NodeGpus(n, p, a, a) for n, p, a in sorted(nodes))
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if node:
            used[node] = used.get(node, 0) + gpu_request(pod)
    return tuple(sorted((NodeGpus(n, p, a, used.get(n, 0)) for n, p, a in nodes), key=lambda x: x.name))


def labelled_children(
    kube: Kube, namespace: str, name: str, kinds: tuple[tuple[str, str], ...]
) -> dict[tuple[str, str], Obj]:
    """Every object of the child kinds that carries the model's label, by (kind, name): what
    the ownership check and the prune both work from. A kind the cluster does not have (or
    whose CRD was just deleted) has none."""
    out: dict[tuple[str, str], Obj] = {}
    selector = f"{render.NAME_LABEL}={name}"
    for api_version, kind in kinds:
        if not kube.has_kind(api_version, kind, refresh=False):
            continue
        try:
            found = kube.list(api_version, kind, namespace, selector)
        except (ApiException, DynamicApiError) as e:
            if e.status != 404:
                raise
            kube.forget_kind(api_version, kind)  # e.g. KEDA uninstalled
            continue
        for obj in found:
            out[(kind, obj["metadata"]["name"])] = {**obj, "apiVersion": api_version, "kind": kind}
    return out


def existing_children(
    kube: Kube, desired: list[Obj], labelled: dict[tuple[str, str], Obj], deployment: Obj | None
) -> dict[tuple[str, str], Obj]:
    """The objects that already hold the names of the desired children, ours or not: from the
    labelled list, and (for a name it lacks, e.g. someone else's object) read one by one."""
    out: dict[tuple[str, str], Obj] = {}
    for obj in desired:
        key = (obj["kind"], obj["metadata"]["name"])
        found = labelled.get(key)
        if found is None and key[0] == "Deployment":
            found = deployment
        elif found is None:
            found = kube.get(obj["apiVersion"], key[0], obj["metadata"]["namespace"], key[1])
        if found is not None:
            out[key] = found
    return out


def deployed_gpu_type(deployment: Obj | None, settings: Settings) -> str:
    """The GPU type the model's Deployment runs on, from its node affinity ("" if none): where
    the model is placed, whatever its status says (a refused spec clears status.plan)."""
    if deployment is None:
        return ""
    aff = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("affinity") or {}
    required = (aff.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == render.GPU_PRODUCT_LABEL and expr.get("values"):
                gpu = catalog.find_gpu_for_node(
                    {render.GPU_PRODUCT_LABEL: expr["values"][0]}, settings.extra_gpu_types
                )
                return gpu.name if gpu is not None else ""
    return ""
