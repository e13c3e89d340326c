"""Pure rendering: a validated spec plus resolved facts in, the desired child objects out.

No I/O. The same input gives the same objects (and the same YAML bytes) every time; the
operator, `modeldeploy render` and the golden-file tests all call this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from modeldeploy import FIELD_MANAGER, GROUP, KIND, VERSION, tgi
from modeldeploy.api import AutoscalingEngine, AutoscalingMetric, ModelDeploymentSpec

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
NAME_LABEL = f"{GROUP}/name"
ENGINE_NAME = "text-generation-inference"
CONTAINER = "server"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    name: str
    uid: str


@dataclass(frozen=True)
class CacheMount:
    """A ready weight cache at /data: offline once prefetched, and read-only unless the server
    must write into it (no prefetch: the first pod downloads; .bin-only weights: TGI converts
    them to safetensors next to them)."""

    claim_name: str
    prefetched: bool = True
    writable: bool = False


@dataclass(frozen=True)
class PodSecurity:
    """The security context of every pod the operator makes (serving and prefetch): no
    privilege escalation, no capabilities, RuntimeDefault seccomp, a read-only root filesystem,
    and a non-root user when the image can run as one (run_as_user; TGI's image runs as root)."""

    run_as_user: int | None = None
    read_only_root_filesystem: bool = True

    def pod(self) -> Obj:
        ctx: Obj = {"seccompProfile": {"type": "RuntimeDefault"}}
        if self.run_as_user is not None:
            uid = self.run_as_user
            # fsGroup: volumes (the weight cache) writable by that user where the driver allows.
            ctx = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid, **ctx}
        return ctx

    def container(self) -> Obj:
        return {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": self.read_only_root_filesystem,
        }

    def env(self) -> list[Obj]:
        # Caches under HOME (triton, outlines, torch, CUDA) land in the writable /tmp; a uid
        # without a passwd entry needs USER too (Python's getpass, torch's cache paths).
        env: list[Obj] = [{"name": "HOME", "value": tgi.HOME_DIR}]
        if self.run_as_user is not None:
            env.append({"name": "USER", "value": f"uid{self.run_as_user}"})
        return env


def tmp_volume() -> tuple[Obj, Obj]:
    """The writable /tmp (and HOME) a read-only root filesystem leaves the pod."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": tgi.TMP_DIR}


@dataclass(frozen=True)
class Resolved:
    """What the operator worked out before rendering (planner, catalog, cluster facts)."""

    model_id: str
    gpus: int
    num_shard: int
    gpu_products: tuple[str, ...] = ()
    image: str = ""
    startup_timeout_seconds: int = tgi.DEFAULT_STARTUP_TIMEOUT_SECONDS
    max_surge: int = 0
    max_unavailable: int = 1
    cache: CacheMount | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)
    template_hash: str = ""
    max_total_tokens: int | None = None
    max_input_tokens: int | None = None
    prometheus_url: str = ""
    security: PodSecurity = PodSecurity()


def labels(name: str) -> dict[str, str]:
    # Children are selected by NAME_LABEL, our own domain's. The app.kubernetes.io/* labels are
    # informational, and app.kubernetes.io/instance is left out on purpose: Argo CD's
    # label-based tracking uses it, and an Application of the model's name would claim (and
    # could prune) the model's children.
    return {
        "app.kubernetes.io/name": ENGINE_NAME,
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/part-of": "modeldeploy",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        NAME_LABEL: name,
    }


def selector(name: str) -> dict[str, str]:
    # Immutable on a Deployment: keep it to the one label that identifies the owner.
    return {NAME_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(name).items()))


def endpoint(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc:{tgi.PORT}"


def _meta(name: str, namespace: str, owner: Owner | None, extra: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": {**labels(name), **(extra or {})}}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def _env(spec: ModelDeploymentSpec, res: Resolved) -> list[Obj]:
    env: list[Obj] = [{"name": "HF_HOME", "value": tgi.DATA_DIR}, *res.security.env()]
    if res.cache is not None and res.cache.prefetched:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if spec.model.trust_remote_code:
        # transformers writes a model's remote code under HF_HOME/modules by default; /data is
        # read-only once the cache is prefetched, and the root filesystem is read-only too.
        env.append({"name": "HF_MODULES_CACHE", "value": f"{tgi.TMP_DIR}/modules"})
    ref = spec.model.token_secret_ref
    if ref is not None:
        # Only a reference: the token value never passes through the operator.
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _resources(spec: ModelDeploymentSpec, res: Resolved) -> Obj:
    limits: Obj = {}
    requests: Obj = {}
    if res.gpus > 0:
        limits[GPU_RESOURCE] = str(res.gpus)
        requests[GPU_RESOURCE] = str(res.gpus)
    if spec.resources.cpu:
        requests["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        requests["memory"] = spec.resources.memory
        limits["memory"] = spec.resources.memory
    return {"limits": limits, "requests": requests}


def _probes(timeout_seconds: int) -> Obj:
    http = {"path": tgi.HEALTH_PATH, "port": "http"}
    period = 10
    return {
        # Nothing listens until download, load and warmup finish: allow the whole budget.
        "startupProbe": {
            "httpGet": http,
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, math.ceil(timeout_seconds / period)),
        },
        "readinessProbe": {
            "httpGet": http,
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        # Tolerant: a busy server answering slowly must not be killed mid-batch.
        "livenessProbe": {"httpGet": http, "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 6},
    }


def affinity(res: Resolved) -> Obj | None:
    if not res.gpu_products:
        return None
    # A GPU type has several product label values (SXM, PCIe ...): nodeAffinity, not nodeSelector.
    term = {
        "matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(res.gpu_products)}]
    }
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def _tolerations(spec: ModelDeploymentSpec, res: Resolved) -> list[Obj]:
    out: list[Obj] = []
    if res.gpus > 0:
        out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    for t in spec.scheduling.tolerations:
        tol = t.model_dump(by_alias=True, exclude_defaults=True)
        tol["operator"] = t.operator
        out.append(tol)
    return out


def _volumes(spec: ModelDeploymentSpec, res: Resolved) -> tuple[list[Obj], list[Obj]]:
    volumes: list[Obj] = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}}
    ]
    mounts: list[Obj] = [{"name": "shm", "mountPath": tgi.SHM_DIR}]
    tmp, tmp_mount = tmp_volume()
    volumes.append(tmp)
    mounts.append(tmp_mount)
    if res.cache is not None:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": res.cache.claim_name}})
        read_only = res.cache.prefetched and not res.cache.writable
        mounts.append({"name": "data", "mountPath": tgi.DATA_DIR, "readOnly": read_only})
    else:
        volumes.append({"name": "data", "emptyDir": {}})
        mounts.append({"name": "data", "mountPath": tgi.DATA_DIR})
    return volumes, mounts


def deployment(
    name: str, namespace: str, spec: ModelDeploymentSpec, res: Resolved, owner: Owner | None
) -> Obj:
    volumes, mounts = _volumes(spec, res)
    container: Obj = {
        "name": CONTAINER,
        "image": res.image,
        "args": tgi.launcher_args(
            spec.model,
            spec.engine,
            tgi.LaunchPlan(res.model_id, res.num_shard, res.max_input_tokens, res.max_total_tokens),
        ),
        "env": _env(spec, res),
        "ports": [{"name": "http", "containerPort": tgi.PORT, "protocol": "TCP"}],
        "resources": _resources(spec, res),
        "volumeMounts": mounts,
        **_probes(res.startup_timeout_seconds),
        "securityContext": res.security.container(),
    }
    pod_spec: Obj = {
        "containers": [container],
        "volumes": volumes,
        "tolerations": _tolerations(spec, res),
        "terminationGracePeriodSeconds": tgi.TERMINATION_GRACE_SECONDS,
        "enableServiceLinks": False,
        # TGI needs no API access; trustRemoteCode code must not find a token beside it.
        "automountServiceAccountToken": False,
        "securityContext": res.security.pod(),
    }
    if spec.scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.scheduling.node_selector.items()))
    if (aff := affinity(res)) is not None:
        pod_spec["affinity"] = aff
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    dep_spec: Obj = {}
    if not spec.autoscaling.enabled:
        # With autoscaling on, replicas is left out so the autoscaler owns it (SSA hand-over).
        dep_spec["replicas"] = spec.replicas
    dep_spec |= {
        "selector": {"matchLabels": selector(name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": res.max_surge, "maxUnavailable": res.max_unavailable},
        },
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": 3,
        "template": {"metadata": {"labels": {**labels(name), **res.extra_labels}}, "spec": pod_spec},
    }
    meta = _meta(name, namespace, owner, res.extra_labels)
    if res.template_hash:
        # Lets the next pass tell a real rollout from a re-apply (see resolve.with_strategy).
        meta["annotations"] = {f"{GROUP}/template-hash": res.template_hash}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": dep_spec}


def service(name: str, namespace: str, owner: Owner | None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(name),
            "ports": [{"name": "http", "port": tgi.PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(name: str, namespace: str, owner: Owner | None) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}},
    }


def _scale_target(name: str) -> Obj:
    # Autoscalers scale the Deployment, never the ModelDeployment: git keeps spec.replicas.
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


# TGI's Prometheus metric for requests waiting in its queue (served on the main port at /metrics).
QUEUE_METRIC = "tgi_queue_size"


def hpa(name: str, namespace: str, spec: ModelDeploymentSpec, owner: Owner | None) -> Obj:
    a = spec.autoscaling
    if a.metric == AutoscalingMetric.cpu:
        metric: Obj = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.target}},
        }
    else:
        # A Pods metric through the custom metrics API (e.g. Prometheus Adapter, see manifests/).
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(a.target)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, namespace, owner),
        "spec": {
            "scaleTargetRef": _scale_target(name),
            "minReplicas": max(1, a.min_replicas),
            "maxReplicas": a.max_replicas,
            "metrics": [metric],
            # A GPU pod takes minutes to load weights: scale down slowly, never flap.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def scaled_object(
    name: str, namespace: str, spec: ModelDeploymentSpec, prometheus_url: str, owner: Owner | None
) -> Obj:
    a = spec.autoscaling
    query = f'sum(tgi_queue_size{{namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"}})'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(name, namespace, owner),
        "spec": {
            "scaleTargetRef": _scale_target(name),
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {"serverAddress": prometheus_url, "query": query, "threshold": str(a.target)},
                }
            ],
        },
    }


def render(
    name: str, namespace: str, spec: ModelDeploymentSpec, res: Resolved, owner: Owner | None
) -> list[Obj]:
    """Every desired child, in apply order."""
    children = [deployment(name, namespace, spec, res, owner), service(name, namespace, owner)]
    if spec.autoscaling.enabled:
        if spec.autoscaling.engine == AutoscalingEngine.keda:
            children.append(scaled_object(name, namespace, spec, res.prometheus_url, owner))
        else:
            children.append(hpa(name, namespace, spec, owner))
    most = spec.autoscaling.max_replicas if spec.autoscaling.enabled else spec.replicas
    if most > 1:
        children.append(pod_disruption_budget(name, namespace, owner))
    return children


class NoAliasDumper(yaml.SafeDumper):
    """Plain YAML for humans and GitOps diffs: repeated sub-objects are written out, not aliased."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(objs: list[Obj]) -> str:
    return yaml.dump_all(objs, Dumper=NoAliasDumper, sort_keys=False, default_flow_style=False)
