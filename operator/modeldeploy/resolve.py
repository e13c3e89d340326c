"""Resolve a spec into the concrete facts the renderer needs: the model id, the GPU plan, the
image, and the rollout strategy. The decision itself is pure (`resolve`); `ClusterFacts`
is the small amount of cluster state it looks at, gathered separately.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from modeldeploy import render
from modeldeploy.api import ModelDeploymentSpec, PlanStatus
from modeldeploy.errors import SpecError
from modeldeploy.settings import Settings

if TYPE_CHECKING:
    from modeldeploy.kube import Kube

TEMPLATE_HASH = "modeldeploy.dev/template-hash"
Obj = dict[str, Any]


def _gpu_request(pod: Obj) -> int:
    total = 0
    for c in pod.get("spec", {}).get("containers", []) or []:
        req = ((c.get("resources") or {}).get("requests") or {}).get(render.GPU_RESOURCE)
        lim = ((c.get("resources") or {}).get("limits") or {}).get(render.GPU_RESOURCE)
        total += int(req or lim or 0)
    return total


@dataclass(frozen=True)
class NodeGpus:
    name: str
    product: str
    allocatable: int
    used: int

    @property
    def free(self) -> int:
        return self.allocatable - self.used


@dataclass(frozen=True)
class ClusterFacts:
    """Cluster state the resolution depends on."""

    nodes: tuple[NodeGpus, ...] = ()
    existing_template_hash: str = ""
    existing_strategy: tuple[int, int] | None = None  # (maxSurge, maxUnavailable)

    @classmethod
    def gather(cls, kube: Kube, namespace: str, name: str) -> ClusterFacts:
        dep = kube.get("apps/v1", "Deployment", namespace, name)
        existing_hash = ""
        existing_strategy = None
        if dep is not None:
            existing_hash = (dep["metadata"].get("annotations") or {}).get(TEMPLATE_HASH, "")
            ru = (dep.get("spec", {}).get("strategy") or {}).get("rollingUpdate") or {}
            if isinstance(ru.get("maxSurge"), int) and isinstance(ru.get("maxUnavailable"), int):
                existing_strategy = (ru["maxSurge"], ru["maxUnavailable"])
        used: dict[str, int] = {}
        for pod in kube.list("v1", "Pod", None):
            node = pod.get("spec", {}).get("nodeName")
            phase = pod.get("status", {}).get("phase")
            if node and phase not in ("Succeeded", "Failed"):
                used[node] = used.get(node, 0) + _gpu_request(pod)
        nodes = []
        for n in kube.list("v1", "Node", None):
            alloc = int((n.get("status", {}).get("allocatable") or {}).get(render.GPU_RESOURCE, 0) or 0)
            if alloc <= 0 or n.get("spec", {}).get("unschedulable"):
                continue
            product = (n["metadata"].get("labels") or {}).get(render.GPU_PRODUCT_LABEL, "")
            name_ = n["metadata"]["name"]
            nodes.append(NodeGpus(name_, product, alloc, used.get(name_, 0)))
        return cls(tuple(sorted(nodes, key=lambda x: x.name)), existing_hash, existing_strategy)


def template_hash(dep: Obj) -> str:
    blob = json.dumps(dep["spec"]["template"], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def surge_slots(facts: ClusterFacts, gpus: int, products: tuple[str, ...]) -> int:
    """How many extra pods of `gpus` GPUs each could be scheduled right now."""
    if gpus <= 0:
        return 1 << 10
    return sum(n.free // gpus for n in facts.nodes if not products or n.product in products)


def strategy(spec: ModelDeploymentSpec, gpus: int, products: tuple[str, ...], facts: ClusterFacts) -> tuple[int, int]:
    """(maxSurge, maxUnavailable): surge only into GPUs that are free, else replace in place."""
    surge_auto = spec.rollout.max_surge == "auto"
    unavail_auto = spec.rollout.max_unavailable == "auto"
    slots = surge_slots(facts, gpus, products)
    surge = min(1, slots) if surge_auto else int(spec.rollout.max_surge)
    unavailable = (0 if surge > 0 else 1) if unavail_auto else int(spec.rollout.max_unavailable)
    if surge == 0 and unavailable == 0:
        # A Deployment with both at zero is rejected by the API server; never deadlock either.
        unavailable = 1
    return surge, unavailable


def resolve(spec: ModelDeploymentSpec, settings: Settings, facts: ClusterFacts) -> tuple[render.Resolved, PlanStatus]:
    model_id = spec.model.id
    if not model_id:
        raise SpecError("spec.model.preset", f"unknown preset {spec.model.preset!r}")
    gpus = 1 if spec.resources.gpus == "auto" else int(spec.resources.gpus)
    products: tuple[str, ...] = ()
    res = render.Resolved(
        model_id=model_id,
        gpus=gpus,
        num_shard=gpus,
        gpu_products=products,
        image=spec.engine.image or settings.default_image,
        startup_timeout_seconds=spec.engine.startup_timeout_seconds or settings.startup_timeout_seconds,
    )
    plan = PlanStatus(gpus_per_replica=gpus, num_shard=gpus, gpu_type=spec.resources.gpu_type)
    return with_strategy(spec, res, facts), plan


def with_strategy(spec: ModelDeploymentSpec, res: render.Resolved, facts: ClusterFacts) -> render.Resolved:
    """Keep the strategy while the pod template is unchanged; decide afresh when it changes."""
    probe = render.deployment("x", "x", spec, res, None)
    new_hash = template_hash(probe)
    if new_hash == facts.existing_template_hash and facts.existing_strategy is not None:
        surge, unavailable = facts.existing_strategy
    else:
        surge, unavailable = strategy(spec, res.gpus, res.gpu_products, facts)
    return replace(res, max_surge=surge, max_unavailable=unavailable, template_hash=new_hash)
