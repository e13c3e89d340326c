"""Typed ModelDeployment API: the spec users write and the status the operator reports.

The CRD schema in `crds/` is generated from these models (see `crdgen.py`). Every rule is stated
once and checked twice: OpenAPI bounds and patterns by both pydantic and the API server, and each
CEL rule (`x-kubernetes-validations`) next to the same check in Python, so `kubectl apply`, the
operator and `modeldeploy render` refuse the same specs. What a child object (Deployment, Service,
PVC, HPA, Job, Secret reference) would refuse is refused here, at admission, naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

DEFAULT_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"

INT32_MAX = 2**31 - 1

# ---- patterns (Go RE2 on the API server, Rust regex in pydantic: no look-around) ---------------

# A Kubernetes quantity greater than zero (k8s.io/apimachinery resource.ParseQuantity's grammar,
# without a sign): the number needs a non-zero digit; suffix binary SI, decimal SI or exponent.
_POSITIVE_NUMBER = r"([0-9]*[1-9][0-9]*(\.[0-9]*)?|0*\.[0-9]*[1-9][0-9]*)"
_QUANTITY_SUFFIX = r"(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?"
POSITIVE_QUANTITY = f"^{_POSITIVE_NUMBER}{_QUANTITY_SUFFIX}$"
# RFC 1123 subdomain (Secret, PriorityClass, StorageClass names), at most 253 characters.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# RFC 1035 label: names of Services (and so of models), at most 63 characters.
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Label and annotation keys: an optional DNS subdomain prefix and a name of at most 63.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# Secret and ConfigMap keys; not "." and not starting with "..".
SECRET_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
# A git branch, tag or commit: components of [A-Za-z0-9_+-] joined by "/" or ".", so no "..",
# no leading "/", "-" or ".", no trailing "/" or ".", no spaces or control characters.
GIT_REVISION = r"^[A-Za-z0-9_][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+|/[A-Za-z0-9_][A-Za-z0-9_+-]*)*$"
# A container image reference (distribution/reference grammar): [host[:port]/]path[:tag][@digest].
_IMAGE_PATH_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
IMAGE = (
    r"^(([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?"
    f"{_IMAGE_PATH_COMPONENT}(/{_IMAGE_PATH_COMPONENT})*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
NO_CONTROL_CHARACTERS = r"^[^[:cntrl:]]*$"


def _full(pattern: str) -> re.Pattern[str]:
    # The patterns are anchored with ^...$; in Python `$` also matches before a final newline,
    # so match the whole string instead (as Go and Rust do).
    return re.compile(pattern.removeprefix("^").removesuffix("$"))


def is_positive_quantity(text: str) -> bool:
    """A Kubernetes quantity > 0, e.g. 32Gi, 500M, 1.5, 100m (32GB is not one: G or Gi)."""
    m = _full(POSITIVE_QUANTITY).fullmatch(text)
    return m is not None and Decimal(m.group(1)) > 0


def is_qualified_name(text: str) -> bool:
    """A label key: [DNS subdomain prefix (at most 253) "/"] name (at most 63)."""
    prefix, _, _ = text.rpartition("/")
    return _full(QUALIFIED_NAME).fullmatch(text) is not None and len(prefix) <= 253


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and _full(DNS_LABEL).fullmatch(text) is not None


# ---- rules --------------------------------------------------------------------------------


def _json_int(value: Any) -> Any:
    """An integer as JSON and the API server see it: integral numbers only (YAML `2.0` is 2);
    no booleans, no strings, no NaN."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be an integer")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise PydanticCustomError(
                "int_from_float", "Input should be an integer, got {value}", {"value": value}
            )
        return int(value)
    return value


# Last in an Annotated, after the bounds: a validator placed before them would keep pydantic from
# putting the bounds into the schema as minimum/maximum (crdgen refuses that).
JSON_INT = BeforeValidator(_json_int)
JsonInt = Annotated[int, JSON_INT]
JsonFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


@dataclass(frozen=True)
class Rule:
    """A CEL rule on an object: the API server checks `rule`, pydantic checks `holds`.

    `field` (the wire name) is the field the rule is about: the error points there."""

    rule: str
    message: str
    holds: Callable[[Any], bool]
    field: str = ""

    def crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field:
            out["fieldPath"] = f".{self.field}"
        return out


@dataclass(frozen=True)
class Cel:
    """A CEL rule on one field's value, as an `Annotated` marker: the API server checks `rule`
    (with `self` the value), pydantic checks `holds`."""

    rule: str
    message: str
    holds: Callable[[Any], bool]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        def check(value: Any) -> Any:
            if not self.holds(value):
                raise PydanticCustomError("cel", self.message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        target = handler.resolve_ref_schema(out)
        target.setdefault("x-kubernetes-validations", []).append({"rule": self.rule, "message": self.message})
        return out


def _positive_quantity(field: str, example: str, *, allow: str | None = None) -> Cel:
    """Kubernetes' own quantity parser (CEL quantity library, API server 1.29+) on top of the
    pattern: > 0, and a quantity the children's validation parses."""
    check = "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))"
    rule = f"self == '{allow}' || ({check})" if allow is not None else check
    also = {None: "", "": " (or empty: not set)"}.get(allow, f" or {allow!r}")
    return Cel(
        rule,
        f"{field}: must be a Kubernetes quantity greater than 0{also}, e.g. {example} (units: Ki Mi Gi Ti, "
        "or k M G T for powers of 10; GB is not a unit)",
        lambda v: (allow is not None and v == allow) or is_positive_quantity(v),
    )


class Model(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown keys refused, CEL rules checked."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    # Object-level CEL rules: in the CRD as x-kubernetes-validations, checked here after fields.
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        errors: list[InitErrorDetails] = []
        for r in type(self).cel_rules:
            if not r.holds(self):
                detail = InitErrorDetails(type=PydanticCustomError("cel", r.message), input=self)
                if r.field:
                    detail["loc"] = (r.field,)
                errors.append(detail)
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        if cls.cel_rules:
            target = handler.resolve_ref_schema(out)
            target["x-kubernetes-validations"] = [r.crd() for r in cls.cel_rules]
        return out


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

    fp8_e4m3fn = "fp8_e4m3fn"
    fp8_e5m2 = "fp8_e5m2"


class SecretKeyRef(Model):
    name: Annotated[
        str,
        Field(
            min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret in the same namespace."
        ),
    ]
    key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            pattern=SECRET_KEY,
            description="Key holding the Hugging Face token.",
        ),
    ] = "token"


class ModelArchitecture(Model):
    """Architecture facts for GPU planning, as in the model's config.json."""

    parameters_billions: Annotated[
        JsonFloat, Field(gt=0, le=100_000, description="Total parameters, in billions (all experts for MoE).")
    ]
    num_layers: Annotated[int, Field(ge=1, le=10_000, description="num_hidden_layers"), JSON_INT]
    hidden_size: Annotated[int, Field(ge=1, le=1_000_000), JSON_INT]
    num_attention_heads: Annotated[int, Field(ge=1, le=100_000), JSON_INT]
    num_key_value_heads: Annotated[
        int, Field(ge=1, le=100_000, description="Equals attention heads without GQA."), JSON_INT
    ]
    head_dim: Annotated[
        int | None, Field(ge=1, le=100_000, description="Defaults to hiddenSize/numAttentionHeads."), JSON_INT
    ] = None
    max_position_embeddings: Annotated[int, Field(ge=1, le=INT32_MAX), JSON_INT]
    torch_dtype: Dtype = Dtype.bfloat16
    quantization: Annotated[
        Quantize | None, Field(description="Method the published weights are pre-quantized with.")
    ] = None


class ModelSource(Model):
    cel_rules = (
        Rule(
            "self.id != '' || self.preset != ''",
            "spec.model: set id (a Hugging Face repo id) or preset",
            lambda m: m.id != "" or m.preset != "",
        ),
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
        str,
        Field(
            min_length=1,
            max_length=256,
            pattern=GIT_REVISION,
            description="Branch, tag or commit sha (e.g. main, v1.0, refs/pr/2).",
        ),
        Cel(
            "!self.endsWith('.lock')",
            "spec.model.revision: must not end with .lock (not a git branch or tag name)",
            lambda v: not v.endswith(".lock"),
        ),
    ] = "main"
    preset: Annotated[str, Field(max_length=128, description="Model catalog entry; fills id and facts.")] = ""
    token_secret_ref: Annotated[
        SecretKeyRef | None, Field(description="Secret with the Hugging Face token (gated models).")
    ] = None
    trust_remote_code: StrictBool = False
    architecture: Annotated[
        ModelArchitecture | None, Field(description="Facts for planning a model outside the catalog.")
    ] = None


class Engine(Model):
    """Typed TGI launcher settings: each field maps to exactly one launcher flag."""

    cel_rules = (
        Rule(
            "!has(self.dtype) || !has(self.quantize)",
            "spec.engine: dtype and quantize are exclusive (TGI refuses --dtype with --quantize)",
            lambda e: e.dtype is None or e.quantize is None,
        ),
        Rule(
            "!has(self.maxInputTokens) || !has(self.maxTotalTokens)"
            " || self.maxInputTokens < self.maxTotalTokens",
            "spec.engine: maxInputTokens must be less than maxTotalTokens",
            lambda e: (
                e.max_input_tokens is None
                or e.max_total_tokens is None
                or e.max_input_tokens < e.max_total_tokens
            ),
        ),
        Rule(
            "!has(self.maxInputTokens) || !has(self.maxBatchPrefillTokens)"
            " || self.maxBatchPrefillTokens >= self.maxInputTokens",
            "spec.engine.maxBatchPrefillTokens: must be >= maxInputTokens (TGI refuses a prefill budget"
            " below the longest input)",
            lambda e: (
                e.max_input_tokens is None
                or e.max_batch_prefill_tokens is None
                or e.max_batch_prefill_tokens >= e.max_input_tokens
            ),
            field="maxBatchPrefillTokens",
        ),
    )

    image: Annotated[
        str,
        Field(
            max_length=512,
            pattern=f"^$|{IMAGE}",
            description="TGI image reference; empty uses the operator's default.",
        ),
    ] = ""
    quantize: Quantize | None = None
    dtype: Dtype | None = None
    kv_cache_dtype: KvCacheDtype | None = None
    max_input_tokens: Annotated[int | None, Field(ge=1, le=INT32_MAX), JSON_INT] = None
    max_total_tokens: Annotated[int | None, Field(ge=2, le=INT32_MAX), JSON_INT] = None
    max_batch_prefill_tokens: Annotated[int | None, Field(ge=1, le=INT32_MAX), JSON_INT] = None
    max_concurrent_requests: Annotated[int | None, Field(ge=1, le=1_000_000), JSON_INT] = None
    extra_args: Annotated[
        list[Annotated[str, Field(max_length=1024, pattern=NO_CONTROL_CHARACTERS)]],
        Field(
            max_length=64,
            description=(
                "Other TGI launcher flags: only those safe for any namespace user (docs/security.md); "
                "unknown, typed-field, credential, egress, path and port flags are refused."
            ),
        ),
    ] = []
    startup_timeout_seconds: Annotated[
        int | None,
        Field(
            ge=60,
            le=86400,
            description="How long download, load and warmup may take before the pod is restarted.",
        ),
        JSON_INT,
    ] = None


def _gpus_ok(gpus: int | str) -> bool:
    return gpus == "auto" if isinstance(gpus, str) else 1 <= gpus <= 8


class Resources(Model):
    cel_rules = (
        Rule(
            "type(self.gpus) == string ? self.gpus == 'auto' : (self.gpus >= 1 && self.gpus <= 8)",
            "spec.resources.gpus: must be 'auto' or an integer from 1 to 8",
            lambda r: _gpus_ok(r.gpus),
            field="gpus",
        ),
    )

    gpus: Annotated[
        JsonInt | Literal["auto"],
        Field(description="GPUs per replica, or auto to let the planner choose."),
    ] = "auto"
    gpu_type: Annotated[
        str, Field(max_length=63, description="GPU catalog name (e.g. nvidia-h100-80gb); selects nodes.")
    ] = ""
    shm_size: Annotated[
        str,
        Field(max_length=64, pattern=POSITIVE_QUANTITY, description="/dev/shm size (a quantity, e.g. 1Gi)."),
        _positive_quantity("spec.resources.shmSize", "1Gi"),
    ] = "1Gi"
    cpu: Annotated[
        str,
        Field(max_length=64, pattern=f"^$|{POSITIVE_QUANTITY}", description="CPU request, e.g. 4 or 500m."),
        _positive_quantity("spec.resources.cpu", "4 or 500m", allow=""),
    ] = ""
    memory: Annotated[
        str,
        Field(
            max_length=64,
            pattern=f"^$|{POSITIVE_QUANTITY}",
            description="Memory request and limit, e.g. 32Gi.",
        ),
        _positive_quantity("spec.resources.memory", "32Gi", allow=""),
    ] = ""


_TOL = "spec.scheduling.tolerations[*]"


class Toleration(Model):
    """A Pod toleration, with the Pod's own validation."""

    cel_rules = (
        Rule(
            "self.key != '' || self.operator == 'Exists'",
            f"{_TOL}.operator: must be Exists when key is empty (a toleration of every taint)",
            lambda t: t.key != "" or t.operator == "Exists",
            field="operator",
        ),
        Rule(
            "self.operator != 'Exists' || self.value == ''",
            f"{_TOL}.value: must be empty when operator is Exists",
            lambda t: t.operator != "Exists" or t.value == "",
            field="value",
        ),
        Rule(
            "!has(self.tolerationSeconds) || self.effect == 'NoExecute'",
            f"{_TOL}.tolerationSeconds: only allowed with effect NoExecute",
            lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field="tolerationSeconds",
        ),
    )

    key: Annotated[
        str,
        Field(
            max_length=317, pattern=f"^$|{QUALIFIED_NAME}", description="Taint key; empty matches all keys."
        ),
        Cel(
            "!self.contains('/') || self.indexOf('/') <= 253",
            f"{_TOL}.key: the prefix before '/' must be at most 253 characters",
            lambda v: is_qualified_name(v) or v == "",
        ),
    ] = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)] = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: Annotated[int | None, Field(ge=0, le=31_536_000), JSON_INT] = None


class Scheduling(Model):
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]],
        Field(max_length=64, description="Node labels the pods require (keys and values as for labels)."),
        Cel(
            r"self.all(k, k.matches(r'"
            + QUALIFIED_NAME
            + r"') && (!k.contains('/') || k.indexOf('/') <= 253))",
            "spec.scheduling.nodeSelector: keys must be label keys ([DNS subdomain/]name, name at most 63"
            " characters of [-A-Za-z0-9_.])",
            lambda d: all(is_qualified_name(k) for k in d),
        ),
    ] = {}
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = []
    priority_class_name: Annotated[str, Field(max_length=253, pattern=f"^$|{DNS_SUBDOMAIN}")] = ""


class AutoscalingMetric(StrEnum):
    queue_size = "queue-size"
    cpu = "cpu"


class AutoscalingEngine(StrEnum):
    hpa = "hpa"
    keda = "keda"


MAX_AUTOSCALED_REPLICAS = 1000


class Autoscaling(Model):
    cel_rules = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "spec.autoscaling: minReplicas must be <= maxReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
        ),
        Rule(
            "self.minReplicas >= 1 || self.engine == 'keda'",
            "spec.autoscaling.minReplicas: 0 (scale to zero) needs engine keda",
            lambda a: a.min_replicas >= 1 or a.engine == AutoscalingEngine.keda,
            field="minReplicas",
        ),
        Rule(
            "self.engine != 'keda' || self.metric == 'queue-size'",
            "spec.autoscaling.metric: engine keda scales on queue-size",
            lambda a: a.engine != AutoscalingEngine.keda or a.metric == AutoscalingMetric.queue_size,
            field="metric",
        ),
    )

    enabled: StrictBool = False
    engine: Annotated[
        AutoscalingEngine,
        Field(
            description="hpa: a HorizontalPodAutoscaler; keda: a KEDA ScaledObject (allows scale to zero)."
        ),
    ] = AutoscalingEngine.hpa
    min_replicas: Annotated[int, Field(ge=0, le=MAX_AUTOSCALED_REPLICAS), JSON_INT] = 1
    max_replicas: Annotated[int, Field(ge=1, le=MAX_AUTOSCALED_REPLICAS), JSON_INT] = 4
    metric: AutoscalingMetric = AutoscalingMetric.queue_size
    target: Annotated[
        int, Field(ge=1, le=10_000, description="Queue size per pod, or CPU utilisation percent."), JSON_INT
    ] = 8


class AccessMode(StrEnum):
    rwx = "ReadWriteMany"
    rwo = "ReadWriteOnce"


class Cache(Model):
    enabled: StrictBool = False
    size: Annotated[
        str,
        Field(
            max_length=64,
            pattern=f"^auto$|{POSITIVE_QUANTITY}",
            description="Volume size (a quantity, e.g. 100Gi), or auto: the weights with headroom.",
        ),
        _positive_quantity("spec.cache.size", "100Gi", allow="auto"),
    ] = "auto"
    storage_class_name: Annotated[str, Field(max_length=253, pattern=f"^$|{DNS_SUBDOMAIN}")] = ""
    access_mode: AccessMode = AccessMode.rwx
    prefetch: StrictBool = True
    retain: StrictBool = True


def _surge_ok(value: int | str) -> bool:
    return value == "auto" if isinstance(value, str) else 0 <= value <= MAX_AUTOSCALED_REPLICAS


class Rollout(Model):
    cel_rules = (
        Rule(
            "type(self.maxSurge) == string ? self.maxSurge == 'auto'"
            f" : (self.maxSurge >= 0 && self.maxSurge <= {MAX_AUTOSCALED_REPLICAS})",
            f"spec.rollout.maxSurge: must be 'auto' or an integer from 0 to {MAX_AUTOSCALED_REPLICAS}",
            lambda r: _surge_ok(r.max_surge),
            field="maxSurge",
        ),
        Rule(
            "type(self.maxUnavailable) == string ? self.maxUnavailable == 'auto'"
            f" : (self.maxUnavailable >= 0 && self.maxUnavailable <= {MAX_AUTOSCALED_REPLICAS})",
            f"spec.rollout.maxUnavailable: must be 'auto' or an integer from 0 to {MAX_AUTOSCALED_REPLICAS}",
            lambda r: _surge_ok(r.max_unavailable),
            field="maxUnavailable",
        ),
        Rule(
            "!(type(self.maxSurge) == int && type(self.maxUnavailable) == int"
            " && self.maxSurge == 0 && self.maxUnavailable == 0)",
            "spec.rollout: maxSurge and maxUnavailable cannot both be 0 (a Deployment refuses it)",
            lambda r: not (r.max_surge == 0 and r.max_unavailable == 0),
        ),
    )

    max_surge: Annotated[
        JsonInt | Literal["auto"], Field(description="Surge pods; auto surges only when a GPU is free.")
    ] = "auto"
    max_unavailable: JsonInt | Literal["auto"] = "auto"
    progress_deadline_seconds: Annotated[
        int, Field(ge=60, le=7 * 86400, description="Seconds a rollout may make no progress."), JSON_INT
    ] = 3600


# ---- behaviour probes ----------------------------------------------------------------------


class ProbeExpect(StrEnum):
    answer = "answer"
    refusal = "refusal"


class ProbeApi(StrEnum):
    """How prompts are sent: auto (the chat route, falling back to plain generation when the
    model has no chat template), chat (/v1/chat/completions) or generate (TGI's `/`)."""

    auto = "auto"
    chat = "chat"
    generate = "generate"


def _compiles(pattern: str) -> str:
    # Python's re syntax (the prober's); the API server has no regex check to share.
    try:
        re.compile(pattern)
    except re.error as e:
        raise PydanticCustomError(
            "regex", "not a valid regular expression: {error}", {"error": str(e)}
        ) from e
    return pattern


_REGEX = AfterValidator(_compiles)
PROBE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_PROBES = 32


class Probe(Model):
    """A named prompt and what the model is expected to do with it."""

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=PROBE_NAME, description="Unique within the set.")
    ]
    prompt: Annotated[str, Field(min_length=1, max_length=4096)]
    expect: Annotated[
        ProbeExpect, Field(description="answer: the output must not be a refusal; refusal: it must be.")
    ] = ProbeExpect.answer
    contains: Annotated[
        str, Field(max_length=256, description="Text the output must contain (case-insensitive).")
    ] = ""
    regex: Annotated[
        str, Field(max_length=512, description="Regular expression the output must match (searched)."), _REGEX
    ] = ""
    refusal_regex: Annotated[
        str,
        Field(
            max_length=512,
            description="Replaces the built-in refusal heuristic for this probe: a refusal is an "
            "output this regular expression matches (searched).",
        ),
        _REGEX,
    ] = ""
    system: Annotated[
        str,
        Field(max_length=4096, description="System prompt (for plain generation: put before the prompt)."),
    ] = ""
    language: Annotated[
        str,
        Field(max_length=35, pattern=r"^$|^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$", description="BCP 47 tag."),
    ] = ""
    max_new_tokens: Annotated[int, Field(ge=1, le=2048), JSON_INT] = 96
    gate: Annotated[
        StrictBool, Field(description="While this probe fails, Ready is False with reason ProbeFailed.")
    ] = False


class ProbeConfigMapRef(Model):
    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            pattern=SECRET_KEY,
            description="Key holding a YAML list of probes (same fields as spec.probes.items).",
        ),
    ] = "probes.yaml"


def _unique_names(items: list[Probe]) -> list[Probe]:
    seen: set[str] = set()
    for p in items:
        if p.name in seen:
            raise PydanticCustomError(
                "unique", "spec.probes.items: duplicate probe name '{name}'", {"name": p.name}
            )
        seen.add(p.name)
    return items


class Probes(Model):
    """Behaviour probes: run once after each rollout and then every intervalSeconds."""

    items: Annotated[
        list[Probe],
        Field(
            max_length=MAX_PROBES,
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
        AfterValidator(_unique_names),
    ] = []
    config_map_ref: Annotated[
        ProbeConfigMapRef | None,
        Field(description="Probes shared through a ConfigMap in the model's namespace (run after items)."),
    ] = None
    interval_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=7 * 86400,
            description="Seconds between runs (the operator may enforce a longer minimum).",
        ),
        JSON_INT,
    ] = 300
    timeout_seconds: Annotated[int, Field(ge=1, le=600, description="Per prompt."), JSON_INT] = 60
    api: ProbeApi = ProbeApi.auto
    smoke_prompt: Annotated[
        str, Field(max_length=1024, description="Prompt of the smoke generation (empty: a built-in one).")
    ] = ""


class ModelDeploymentSpec(Model):
    model: ModelSource
    engine: Engine = Engine()
    resources: Resources = Resources()
    scheduling: Scheduling = Scheduling()
    replicas: Annotated[int, Field(ge=0, le=64), JSON_INT] = 1
    autoscaling: Autoscaling = Autoscaling()
    cache: Cache = Cache()
    rollout: Rollout = Rollout()
    probes: Probes | None = None


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
    # The prober's keys (VerificationStatus) sit beside these in the same status: ignored here.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

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


# ---- the prober's part of status (its own field manager; not the reconcile's) -----------------

EXCERPT_CHARS = 240  # bound of every output excerpt kept in status


class SmokeStatus(Model):
    ok: bool = False
    api: str = ""
    latency_ms: int | None = None
    generated_tokens: int | None = None
    reason: str = ""
    message: str = ""


class RuntimeStatus(Model):
    """What TGI said about itself (`/info`) and how a short generation went."""

    generation: Annotated[int, Field(description="metadata.generation these facts were checked for.")] = 0
    checked_at: str = ""
    model_id: str = ""
    model_sha: str = ""
    version: str = ""
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    reason: Annotated[str, Field(description="Why /info could not be read (empty: it was).")] = ""
    message: str = ""
    smoke: SmokeStatus | None = None


class ProbeResult(Model):
    name: str
    passed: bool
    expect: str = ""
    gate: bool = False
    source: Annotated[str, Field(description="spec, or configmap/NAME.")] = "spec"
    refused: bool | None = None
    excerpt: Annotated[str, Field(max_length=EXCERPT_CHARS + 3)] = ""
    latency_ms: int | None = None
    last_run: str = ""
    reason: str = ""
    message: str = ""


class ProbesStatus(Model):
    generation: Annotated[int, Field(description="metadata.generation these results were run for.")] = 0
    last_run: str = ""
    passed: int = 0
    failed: int = 0
    refusal_rate: Annotated[
        float | None, Field(description="Share of the probes run whose output was a refusal.")
    ] = None
    message: Annotated[str, Field(description="A problem with the probe set (e.g. a missing ConfigMap).")] = (
        ""
    )
    results: Annotated[
        list[ProbeResult],
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = []


class VerificationStatus(Model):
    """The prober's part of status: `runtime`, `probes` and the `Verified` condition. Written by
    server-side apply under its own field manager, beside (never as) ModelDeploymentStatus."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    runtime: RuntimeStatus | None = None
    probes: ProbesStatus | None = None
    conditions: list[Condition] = []


# What a new object reads as until the operator's first pass writes status: a CRD schema default
# on `status` (the API server applies it to objects without a status, even with the status
# subresource on). observedGeneration 0 is behind generation 1, so kstatus (and Flux, Argo CD)
# count a new model InProgress from its first moment instead of Current.
STATUS_DEFAULT: dict[str, Any] = {
    "observedGeneration": 0,
    "conditions": [
        {
            "type": "Ready",
            "status": "Unknown",
            "reason": "Pending",
            "message": "waiting for the operator",
            # A default cannot carry the creation time; the Unix epoch is a valid RFC 3339 time.
            "lastTransitionTime": "1970-01-01T00:00:00Z",
        }
    ],
}


class ModelDeployment(Model):
    """A whole object as read from the API server (metadata kept loose)."""

    model_config = ConfigDict(extra="ignore")

    # On the CRD's root schema: the model's name is its children's.
    cel_rules = (
        Rule(
            f"self.metadata.name.matches(r'{DNS_LABEL}') && size(self.metadata.name) <= 63",
            "metadata.name: must be a DNS-1035 label: at most 63 lowercase letters, digits and '-',"
            " starting with a letter and ending with a letter or digit, no dots (the model's Deployment"
            " and Service take its name)",
            lambda md: md.metadata.get("name") is None or is_dns_label(md.metadata["name"]),
            field="metadata.name",
        ),
    )

    api_version: str = "modeldeploy.dev/v1alpha1"
    kind: str = "ModelDeployment"
    metadata: dict[str, Any]
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
