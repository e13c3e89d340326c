"""Typed ModelDeployment API: the spec users write and the status the operator reports.

The CRD schema in `crds/` is generated from these models (see `crdgen.py`); CEL rules that
the API server enforces at admission live next to the fields they constrain.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

DEFAULT_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """json_schema_extra carrying x-kubernetes-validations (CEL rule, message)."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class Model(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Quantize(StrEnum):
    """TGI `--quantize` values."""

    awq = "awq"
    compressed_tensors = "compressed-tensors"
    eetq = "eetq"
    exl2 = "exl2"
    gptq = "gptq"
    marlin = "marlin"
    bitsandbytes = "bitsandbytes"
    bitsandbytes_nf4 = "bitsandbytes-nf4"
    bitsandbytes_fp4 = "bitsandbytes-fp4"
    fp8 = "fp8"


class Dtype(StrEnum):
    """TGI `--dtype` values."""

    float16 = "float16"
    bfloat16 = "bfloat16"


class KvCacheDtype(StrEnum):
    """TGI `--kv-cache-dtype` values."""

    fp8 = "fp8"
    fp8_e4m3fn = "fp8_e4m3fn"
    fp8_e5m2 = "fp8_e5m2"


class SecretKeyRef(Model):
    name: Annotated[str, Field(min_length=1, description="Secret in the same namespace.")]
    key: Annotated[str, Field(min_length=1, description="Key holding the Hugging Face token.")] = "token"


class ModelArchitecture(Model):
    """Architecture facts for GPU planning, as in the model's config.json."""

    parameters_billions: Annotated[
        float, Field(gt=0, description="Total parameters, in billions (all experts for MoE).")
    ]
    num_layers: Annotated[int, Field(ge=1, description="num_hidden_layers")]
    hidden_size: Annotated[int, Field(ge=1)]
    num_attention_heads: Annotated[int, Field(ge=1)]
    num_key_value_heads: Annotated[int, Field(ge=1, description="Equals attention heads without GQA.")]
    head_dim: Annotated[int | None, Field(ge=1, description="Defaults to hiddenSize/numAttentionHeads.")] = (
        None
    )
    max_position_embeddings: Annotated[int, Field(ge=1)]
    torch_dtype: Dtype = Dtype.bfloat16
    quantization: Annotated[
        Quantize | None, Field(description="Method the published weights are pre-quantized with.")
    ] = None


class ModelSource(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.id != '' || self.preset != ''", "spec.model: set id (a Hugging Face repo id) or preset"),
        )
    )

    id: Annotated[
        str,
        Field(
            max_length=256,
            pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
            description="Hugging Face repo id, e.g. mistralai/Mistral-7B-Instruct-v0.2.",
        ),
    ] = ""
    revision: Annotated[
        str, Field(min_length=1, max_length=256, description="Branch, tag or commit sha.")
    ] = "main"
    preset: Annotated[str, Field(max_length=128, description="Model catalog entry; fills id and facts.")] = ""
    token_secret_ref: Annotated[
        SecretKeyRef | None, Field(description="Secret with the Hugging Face token (gated models).")
    ] = None
    trust_remote_code: bool = False
    architecture: Annotated[
        ModelArchitecture | None, Field(description="Facts for planning a model outside the catalog.")
    ] = None


class Engine(Model):
    """Typed TGI launcher settings: each field maps to exactly one launcher flag."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.dtype) || !has(self.quantize)",
                "spec.engine: dtype and quantize are exclusive (TGI refuses --dtype with --quantize)",
            ),
            (
                "!has(self.maxInputTokens) || !has(self.maxTotalTokens)"
                " || self.maxInputTokens < self.maxTotalTokens",
                "spec.engine: maxInputTokens must be less than maxTotalTokens",
            ),
        )
    )

    image: Annotated[str, Field(description="TGI image; empty uses the operator's default.")] = ""
    quantize: Quantize | None = None
    dtype: Dtype | None = None
    kv_cache_dtype: KvCacheDtype | None = None
    max_input_tokens: Annotated[int | None, Field(ge=1)] = None
    max_total_tokens: Annotated[int | None, Field(ge=2)] = None
    max_batch_prefill_tokens: Annotated[int | None, Field(ge=1)] = None
    max_concurrent_requests: Annotated[int | None, Field(ge=1)] = None
    extra_args: Annotated[
        list[str],
        Field(
            max_length=64, description="Other TGI launcher flags; unknown or typed-field flags are refused."
        ),
    ] = []
    startup_timeout_seconds: Annotated[
        int | None,
        Field(
            ge=60,
            le=86400,
            description="How long download, load and warmup may take before the pod is restarted.",
        ),
    ] = None


class Resources(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "type(self.gpus) == string ? self.gpus == 'auto' : (self.gpus >= 1 && self.gpus <= 8)",
                "spec.resources.gpus: must be 'auto' or an integer from 1 to 8",
            ),
        )
    )

    gpus: Annotated[
        int | Literal["auto"],
        Field(description="GPUs per replica, or auto to let the planner choose."),
    ] = "auto"
    gpu_type: Annotated[
        str, Field(max_length=63, description="GPU catalog name (e.g. nvidia-h100-80gb); selects nodes.")
    ] = ""
    shm_size: Annotated[str, Field(pattern=r"^[0-9]+(Ki|Mi|Gi)?$", description="/dev/shm size.")] = "1Gi"
    cpu: Annotated[str, Field(description="CPU request, e.g. 4.")] = ""
    memory: Annotated[str, Field(description="Memory request and limit, e.g. 32Gi.")] = ""


class Toleration(Model):
    key: str = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: int | None = None


class Scheduling(Model):
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    priority_class_name: str = ""


class AutoscalingMetric(StrEnum):
    queue_size = "queue-size"
    cpu = "cpu"


class AutoscalingEngine(StrEnum):
    hpa = "hpa"
    keda = "keda"


class Autoscaling(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.minReplicas <= self.maxReplicas", "spec.autoscaling: minReplicas must be <= maxReplicas"),
            (
                "self.minReplicas >= 1 || self.engine == 'keda'",
                "spec.autoscaling.minReplicas: 0 (scale to zero) needs engine keda",
            ),
            (
                "self.engine != 'keda' || self.metric == 'queue-size'",
                "spec.autoscaling.metric: engine keda scales on queue-size",
            ),
        )
    )

    enabled: bool = False
    engine: Annotated[
        AutoscalingEngine,
        Field(
            description="hpa: a HorizontalPodAutoscaler; keda: a KEDA ScaledObject (allows scale to zero)."
        ),
    ] = AutoscalingEngine.hpa
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 4
    metric: AutoscalingMetric = AutoscalingMetric.queue_size
    target: Annotated[int, Field(ge=1, description="Queue size per pod, or CPU utilisation percent.")] = 8


class AccessMode(StrEnum):
    rwx = "ReadWriteMany"
    rwo = "ReadWriteOnce"


class Cache(Model):
    enabled: bool = False
    size: Annotated[str, Field(pattern=r"^(auto|[0-9]+(Mi|Gi|Ti))$")] = "auto"
    storage_class_name: str = ""
    access_mode: AccessMode = AccessMode.rwx
    prefetch: bool = True
    retain: bool = True


class Rollout(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "type(self.maxSurge) == string ? self.maxSurge == 'auto' : self.maxSurge >= 0",
                "spec.rollout.maxSurge: must be 'auto' or an integer >= 0",
            ),
            (
                "type(self.maxUnavailable) == string ? self.maxUnavailable == 'auto'"
                " : self.maxUnavailable >= 0",
                "spec.rollout.maxUnavailable: must be 'auto' or an integer >= 0",
            ),
        )
    )

    max_surge: Annotated[
        int | Literal["auto"], Field(description="Surge pods; auto surges only when a GPU is free.")
    ] = "auto"
    max_unavailable: int | Literal["auto"] = "auto"
    progress_deadline_seconds: Annotated[int, Field(ge=60)] = 3600


class ModelDeploymentSpec(Model):
    model: ModelSource
    engine: Engine = Engine()
    resources: Resources = Resources()
    scheduling: Scheduling = Scheduling()
    replicas: Annotated[int, Field(ge=0, le=64)] = 1
    autoscaling: Autoscaling = Autoscaling()
    cache: Cache = Cache()
    rollout: Rollout = Rollout()


# ---- status -------------------------------------------------------------------------------


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int | None = None


class PlanStatus(Model):
    gpus_per_replica: int
    num_shard: int
    estimated_gi_b_per_gpu: float | None = Field(default=None, alias="estimatedGiBPerGpu")
    gpu_type: str = ""


class CacheStatus(Model):
    claim_name: str = ""
    phase: Literal["Pending", "Downloading", "Ready", "Failed", ""] = ""
    revision: str = ""
    message: str = ""


class ModelDeploymentStatus(Model):
    observed_generation: int | None = None
    model: Annotated[
        str, Field(description="Hugging Face repo id being served (resolved from a preset).")
    ] = ""
    conditions: list[Condition] = []
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    selector: str = ""
    endpoint: str = ""
    plan: PlanStatus | None = None
    cache: CacheStatus | None = None


class ModelDeployment(Model):
    """A whole object as read from the API server (metadata kept loose)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = "modeldeploy.dev/v1alpha1"
    kind: str = "ModelDeployment"
    metadata: dict[str, Any]
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
