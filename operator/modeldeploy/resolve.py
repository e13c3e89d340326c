"""Resolve a spec into the concrete facts the renderer needs: the model id, the GPU plan, the
image, and the rollout strategy. Pure: `ClusterFacts` is the small amount of cluster state it
looks at, read by `observe`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from modeldeploy import catalog, planner, policy, render
from modeldeploy.api import AutoscalingEngine, ModelArchitecture, ModelDeploymentSpec, PlanStatus, Quantize
from modeldeploy.catalog import GpuType
from modeldeploy.errors import DoesNotFitError, SpecError
from modeldeploy.settings import Settings

TEMPLATE_HASH = "modeldeploy.dev/template-hash"
Obj = dict[str, Any]


def gpu_request(pod: Obj) -> int:
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
    """Cluster state the resolution depends on.

    GPU accounting (every node and every bound pod) is the expensive part, and most passes do
    not need it (no rollout starting, nothing unschedulable), so it is read on first use."""

    gpu_nodes: tuple[NodeGpus, ...] = ()
    existing_template_hash: str = ""
    existing_strategy: tuple[int, int] | None = None  # (maxSurge, maxUnavailable)
    # Offline (render), KEDA is assumed present so the ScaledObject can be previewed.
    keda: bool = True
    load_nodes: Callable[[], tuple[NodeGpus, ...]] | None = None
    # The existing Deployment, so the reconcile reads it once per pass.
    deployment: Obj | None = field(default=None, compare=False, repr=False)

    @cached_property
    def nodes(self) -> tuple[NodeGpus, ...]:
        return self.gpu_nodes if self.load_nodes is None else self.load_nodes()


def template_hash(dep: Obj) -> str:
    blob = json.dumps(dep["spec"]["template"], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def surge_slots(facts: ClusterFacts, gpus: int, products: tuple[str, ...]) -> int:
    """How many extra pods of `gpus` GPUs each could be scheduled right now."""
    if gpus <= 0:
        return 1 << 10
    return sum(n.free // gpus for n in facts.nodes if not products or n.product in products)


def strategy(
    spec: ModelDeploymentSpec, gpus: int, products: tuple[str, ...], facts: ClusterFacts
) -> tuple[int, int]:
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


def _gpu_for(spec: ModelDeploymentSpec, settings: Settings) -> GpuType | None:
    if not spec.resources.gpu_type:
        return None
    try:
        return catalog.find_gpu(spec.resources.gpu_type, settings.extra_gpu_types)
    except catalog.CatalogError as e:
        raise SpecError("spec.resources.gpuType", str(e)) from e


def _cluster_gpu_types(facts: ClusterFacts, settings: Settings) -> list[GpuType]:
    """GPU types present on the cluster's nodes, smallest first; the whole catalog offline."""
    types: dict[str, GpuType] = {}
    for node in facts.nodes:
        gpu = catalog.find_gpu_for_node({render.GPU_PRODUCT_LABEL: node.product}, settings.extra_gpu_types)
        if gpu is not None:
            types[gpu.name] = gpu
    found = list(types.values()) or catalog.gpu_types(settings.extra_gpu_types)
    return sorted(found, key=lambda g: (g.memory_mib, g.name))


def _plan_error(spec: ModelDeploymentSpec, err: planner.PlanError) -> SpecError:
    field = {
        planner.PlanFailure.unsupported_quantization: "spec.engine.quantize",
        planner.PlanFailure.invalid_settings: "spec.engine",
    }.get(err.reason, "spec.resources.gpus")
    cls = DoesNotFitError if err.reason == planner.PlanFailure.does_not_fit else SpecError
    out = cls(field, err.message)
    out.reason = str(err.reason)
    return out


def pod_security(settings: Settings) -> render.PodSecurity:
    return render.PodSecurity(settings.run_as_user, settings.read_only_root_filesystem)


def static_rules(spec: ModelDeploymentSpec) -> None:
    """Rules that need no architecture facts: every path (operator, `render`, `plan`) applies them."""
    gpus = spec.resources.gpus
    if spec.engine.quantize == Quantize.exl2 and gpus != "auto" and int(gpus) > 1:
        raise SpecError("spec.resources.gpus", "exl2 weights cannot be sharded: use gpus 1")


def plan_model(
    spec: ModelDeploymentSpec,
    arch: ModelArchitecture,
    settings: Settings,
    facts: ClusterFacts,
    sticky_gpu_type: str = "",
) -> planner.Plan:
    """Plan on the asked GPU type, or on the smallest GPU type present that fits.

    sticky_gpu_type: the type an earlier pass chose (status.plan.gpuType) when the spec names
    none. It is kept while the model still fits it, whatever the nodes do now, so a cordoned
    pool or a new smaller one never moves a running model; only a spec change that no longer
    fits it re-plans."""
    static_rules(spec)
    engine = spec.engine
    all_types = catalog.gpu_types(settings.extra_gpu_types)
    kwargs = {
        "quantize": engine.quantize,
        "dtype": engine.dtype,
        "kv_cache_dtype": engine.kv_cache_dtype,
        "max_total_tokens": engine.max_total_tokens,
        "gpus": spec.resources.gpus,
        "catalog": all_types,
    }
    gpu = _gpu_for(spec, settings)
    if gpu is not None:
        try:
            return planner.plan(arch, gpu, **kwargs)  # type: ignore[arg-type]
        except planner.PlanError as e:
            raise _plan_error(spec, e) from e
    if sticky_gpu_type:
        try:
            sticky = catalog.find_gpu(sticky_gpu_type, settings.extra_gpu_types)
            return planner.plan(arch, sticky, **kwargs)  # type: ignore[arg-type]
        except (catalog.CatalogError, planner.PlanError):
            pass  # no longer fits (or no longer known): choose afresh
    first_error: planner.PlanError | None = None
    best: planner.Plan | None = None
    for candidate in _cluster_gpu_types(facts, settings):
        try:
            p = planner.plan(arch, candidate, **kwargs)  # type: ignore[arg-type]
        except planner.PlanError as e:
            first_error = first_error or e
            if e.reason != planner.PlanFailure.does_not_fit:
                raise _plan_error(spec, e) from e
            continue
        if best is None or p.gpus_per_replica < best.gpus_per_replica:
            best = p
    if best is None:
        assert first_error is not None
        raise _plan_error(spec, first_error)
    return best


def model_facts(spec: ModelDeploymentSpec) -> tuple[str, ModelArchitecture | None]:
    """The repo id and architecture facts, from the spec or its catalog preset."""
    preset = None
    if spec.model.preset:
        try:
            preset = catalog.get_preset(spec.model.preset)
        except catalog.CatalogError as e:
            raise SpecError("spec.model.preset", str(e)) from e
    model_id = spec.model.id or (preset.id if preset else "")
    if preset is None and model_id:
        # A catalog model named by its repo id gets the same facts as its preset.
        preset = next((p for p in catalog.list_presets() if p.id == model_id), None)
    arch = spec.model.architecture
    if arch is None and preset is not None and model_id == preset.id:
        arch = preset.architecture
    return model_id, arch


def resolve(
    spec: ModelDeploymentSpec,
    settings: Settings,
    facts: ClusterFacts,
    read_arch: ModelArchitecture | None = None,
    sticky_gpu_type: str = "",
) -> tuple[render.Resolved, PlanStatus]:
    """Everything the renderer needs, or a SpecError saying which field to fix.

    read_arch: facts read from the model's repository, used when neither the spec nor the
    catalog has any. sticky_gpu_type: see plan_model."""
    static_rules(spec)
    policy.check(spec, settings)
    model_id, arch = model_facts(spec)
    arch = arch or read_arch
    if not model_id:
        raise SpecError("spec.model", "set id (a Hugging Face repo id) or a known preset")
    engine = spec.engine
    max_total = engine.max_total_tokens
    max_input = engine.max_input_tokens
    if arch is not None:
        p = plan_model(spec, arch, settings, facts, sticky_gpu_type)
        gpu = catalog.find_gpu(p.gpu_type, settings.extra_gpu_types)
        gpus, products = p.gpus_per_replica, tuple(gpu.products)
        status = p.to_status()
        if max_total is None:
            # TGI would otherwise size for the model's full context, which the plan did not.
            max_total = p.max_total_tokens
            if max_input is None or max_input >= max_total:
                max_input = max_total - 1
    else:
        # No facts (not in the catalog, none given): trust the spec, and say nothing was planned.
        gpu_type = _gpu_for(spec, settings)
        gpus = 1 if spec.resources.gpus == "auto" else int(spec.resources.gpus)
        products = tuple(gpu_type.products) if gpu_type else ()
        status = PlanStatus(gpus_per_replica=gpus, num_shard=gpus, gpu_type=gpu_type.name if gpu_type else "")
    res = render.Resolved(
        model_id=model_id,
        gpus=gpus,
        num_shard=gpus,
        gpu_products=products,
        image=engine.image or settings.default_image,
        startup_timeout_seconds=engine.startup_timeout_seconds or settings.startup_timeout_seconds,
        max_total_tokens=max_total,
        max_input_tokens=max_input,
        prometheus_url=settings.prometheus_url,
        security=pod_security(settings),
    )
    if spec.autoscaling.enabled and spec.autoscaling.engine == AutoscalingEngine.keda and not facts.keda:
        raise SpecError(
            "spec.autoscaling.engine",
            "keda needs KEDA's ScaledObject CRD (keda.sh/v1alpha1), which this cluster does not have: "
            "install KEDA or use engine hpa",
        )
    return with_strategy(spec, res, facts), status


def with_strategy(spec: ModelDeploymentSpec, res: render.Resolved, facts: ClusterFacts) -> render.Resolved:
    """Keep the strategy while the pod template is unchanged; decide afresh when it changes."""
    probe = render.deployment("x", "x", spec, res, None)
    new_hash = template_hash(probe)
    if new_hash == facts.existing_template_hash and facts.existing_strategy is not None:
        # Only the "auto" parts are kept (so free GPUs coming and going cause no churn); a
        # value the spec sets always goes through.
        surge, unavailable = facts.existing_strategy
        if spec.rollout.max_surge != "auto":
            surge = int(spec.rollout.max_surge)
        if spec.rollout.max_unavailable != "auto":
            unavailable = int(spec.rollout.max_unavailable)
        if surge == 0 and unavailable == 0:
            unavailable = 1
    else:
        surge, unavailable = strategy(spec, res.gpus, res.gpu_products, facts)
    return replace(res, max_surge=surge, max_unavailable=unavailable, template_hash=new_hash)


def rollout_blocked(
    dep: Obj | None, pods: list[Obj], facts: ClusterFacts, gpus: int, products: tuple[str, ...]
) -> tuple[str, str] | None:
    """(reason, message) when a rollout waits for GPUs: new pods unschedulable mid-rollout."""
    if dep is None or gpus <= 0:
        return None
    st = dep.get("status") or {}
    desired = (dep.get("spec") or {}).get("replicas", 1)
    # Unfinished while new pods are not all available or old ones remain (updatedReplicas
    # counts new pods even when they are still Pending).
    done = (
        st.get("updatedReplicas", 0) >= desired
        and st.get("availableReplicas", 0) >= desired
        and st.get("replicas", 0) == desired
    )
    if done:
        return None
    pending = [
        p
        for p in pods
        if not (p.get("spec") or {}).get("nodeName")
        and any(
            c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]
    if not pending:
        return None
    nodes = [n for n in facts.nodes if not products or n.product in products]
    free = sum(n.free for n in nodes)
    alloc = sum(n.allocatable for n in nodes)
    kind = f" of product {'/'.join(products)}" if products else ""
    return (
        "RolloutBlocked",
        f"rollout waits for GPUs: {len(pending)} new pod(s) need {gpus} nvidia.com/gpu each{kind}; "
        f"{free} free of {alloc} allocatable on {len(nodes)} matching node(s), no node has {gpus} free",
    )
