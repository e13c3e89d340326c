"""GPU planner: how many GPUs of a type one TGI replica needs, and why.

Pure functions, no I/O. All sizes are GiB (2**30 bytes); GPU memory is what NVML reports
(see GpuType.memory_gib).

Memory model, per GPU, for a replica sharded over N GPUs (TGI tensor parallelism, one shard per
GPU, so gpus_per_replica == num_shard):

    weights  = parameters * bytes_per_parameter / N
    kv_cache = 2 (K and V) * layers * kv_heads * head_dim * kv_bytes
               * max_total_tokens * concurrent_sequences / N
    overhead = OVERHEAD_FIXED_GIB + OVERHEAD_WEIGHT_FRACTION * weights
    total    = weights + kv_cache + overhead  <=  USABLE_FRACTION * GPU memory

Bytes per parameter (weight_bytes_per_parameter):
    bfloat16 / float16                                  2
    fp8, eetq, bitsandbytes (8-bit)                     1    + 5%  (EIGHT_BIT_EXTRA)
    bitsandbytes-nf4/-fp4, awq, gptq, marlin, exl2,
    compressed-tensors (taken as 4-bit)                 0.5  + 15% (FOUR_BIT_EXTRA)
The extras cover what stays larger than the nominal width: per-group scales and zero points
(about 3% at group size 128), and embeddings, lm_head and norms, which TGI keeps in 16 bits.
That matches published checkpoints: Qwen2.5-72B-Instruct-AWQ is ~41.6 GB on disk against
72.7e9 * 0.575 = 41.8e9 bytes here. exl2 is variable-width; 4 bits is its common build.
compressed-tensors checkpoints can also be 8-bit; those need about twice the planned weights.

KV cache elements are 2 bytes in the model dtype and 1 byte with any fp8 kvCacheDtype, so an fp8
KV cache halves KV memory.

Defaults, and why:
    USABLE_FRACTION 0.95: headroom for allocator fragmentation and driver reservations; with the
        overhead below it still lets a 70B-class bfloat16 model run on 2x 80 GB GPUs at 8k
        tokens, a configuration TGI serves in practice.
    OVERHEAD_FIXED_GIB 1.0: CUDA context, NCCL communicator and CUDA graphs, per GPU.
    OVERHEAD_WEIGHT_FRACTION 0.02: prefill activations, which grow with the model's width.
    DEFAULT_MAX_TOTAL_TOKENS 8192 (capped at maxPositionEmbeddings): enough for chat and RAG
        prompts; planning every model at its full context (up to 131072) would over-provision.
        The operator should pass the planned max_total_tokens to TGI.
    DEFAULT_CONCURRENT_SEQUENCES 4: TGI needs room for one full-length sequence to pass warmup;
        four lets continuous batching work even when every request is full length (typical
        requests are shorter, and TGI hands all memory left after warmup to the KV cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from modeldeploy.api import Dtype, KvCacheDtype, Model, ModelArchitecture, PlanStatus, Quantize
from modeldeploy.catalog import GpuType

GIB = 1024**3
USABLE_FRACTION = 0.95
OVERHEAD_FIXED_GIB = 1.0
OVERHEAD_WEIGHT_FRACTION = 0.02
DEFAULT_MAX_TOTAL_TOKENS = 8192
DEFAULT_CONCURRENT_SEQUENCES = 4
SHARD_COUNTS = (1, 2, 4, 8)
MAX_GPUS = 8
EIGHT_BIT_EXTRA = 0.05
FOUR_BIT_EXTRA = 0.15

PREQUANTIZED = frozenset(
    {Quantize.awq, Quantize.gptq, Quantize.marlin, Quantize.exl2, Quantize.compressed_tensors}
)
"""Methods that need weights published pre-quantized with that method."""
ON_THE_FLY = frozenset(
    {
        Quantize.bitsandbytes,
        Quantize.bitsandbytes_nf4,
        Quantize.bitsandbytes_fp4,
        Quantize.eetq,
        Quantize.fp8,
    }
)
"""Methods TGI applies to 16-bit weights while loading them."""
EIGHT_BIT = frozenset({Quantize.fp8, Quantize.eetq, Quantize.bitsandbytes})
UNSHARDABLE = frozenset({Quantize.exl2})
"""TGI's exllamav2 path does not support tensor parallelism."""
FLOAT16_ONLY = frozenset({Quantize.awq, Quantize.gptq, Quantize.marlin, Quantize.exl2})
"""TGI runs these kernels in float16 only; it picks float16 itself when dtype is unset."""
MIN_COMPUTE_CAPABILITY: dict[Quantize, tuple[int, int]] = {
    # Marlin kernels need Ampere; TGI refuses `marlin` below 8.0.
    Quantize.marlin: (8, 0),
    # TGI runs fp8 weight-only (Marlin FP8) on 8.x and natively from 8.9/9.0; nothing below 8.0.
    Quantize.fp8: (8, 0),
}
# gptq stays allowed below 8.0: TGI falls back from exllama/Marlin kernels to its triton kernel.

_ON_THE_FLY_TEXT = "bitsandbytes, bitsandbytes-nf4, bitsandbytes-fp4, eetq or fp8"
_MIN_SUGGESTED_TOKENS = 1024
_MAX_OTHER_GPU_SUGGESTIONS = 3


class PlanFailure(StrEnum):
    """Why a plan was refused; usable as a Kubernetes condition reason."""

    invalid_settings = "InvalidSettings"
    unsupported_quantization = "UnsupportedQuantization"
    invalid_shard_count = "InvalidShardCount"
    does_not_fit = "DoesNotFit"


class Candidate(Model):
    """One row of the shard-count table: the estimate for `num_shard` GPUs."""

    num_shard: int
    valid: Annotated[bool, Field(description="TGI can shard the model this way.")]
    fits: bool
    reason: Annotated[str, Field(description="Why the count is invalid or does not fit.")] = ""
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    overhead_gib_per_gpu: float
    total_gib_per_gpu: float


class Plan(Model):
    """A GPU plan for one replica, with the table it was chosen from."""

    gpu_type: str
    gpu_memory_gib: float
    usable_gib_per_gpu: float
    gpus_per_replica: int
    num_shard: int
    quantize: Annotated[
        Quantize | None, Field(description="Effective method: the spec's, or the weights' own.")
    ]
    prequantized: Annotated[bool, Field(description="Weights are published pre-quantized.")]
    weights_format: Annotated[str, Field(description="e.g. bfloat16, fp8, awq (pre-quantized).")]
    bytes_per_parameter: float
    kv_cache_dtype: KvCacheDtype | None
    max_total_tokens: int
    concurrent_sequences: int
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    overhead_gib_per_gpu: float
    total_gib_per_gpu: float
    candidates: list[Candidate]

    def to_status(self) -> PlanStatus:
        return PlanStatus(
            gpus_per_replica=self.gpus_per_replica,
            num_shard=self.num_shard,
            estimated_gi_b_per_gpu=round(self.total_gib_per_gpu, 1),
            gpu_type=self.gpu_type,
        )


class Alternative(Model):
    """A change to the request that fits; `plan` is the plan it gives."""

    gpu_type: str
    gpus: int
    quantize: Quantize | None = None
    kv_cache_dtype: KvCacheDtype | None = None
    max_total_tokens: int | None = None
    needs_prequantized_weights: bool = False
    plan: Plan

    def describe(self) -> str:
        changes: list[str] = []
        if self.quantize is not None:
            note = " (pre-quantized weights needed)" if self.needs_prequantized_weights else ""
            changes.append(f"quantize {self.quantize}{note}")
        if self.kv_cache_dtype is not None:
            changes.append(f"kvCacheDtype {self.kv_cache_dtype}")
        if self.max_total_tokens is not None:
            changes.append(f"maxTotalTokens {self.max_total_tokens}")
        if not changes:
            return f"gpus {self.gpus} on {self.gpu_type}"
        return f"{', '.join(changes)} on {self.gpus}x {self.gpu_type}"


class PlanError(Exception):
    """The request cannot be planned; `message` says why and what would fit instead."""

    def __init__(
        self, message: str, *, reason: PlanFailure, alternatives: Sequence[Alternative] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.alternatives = list(alternatives)


@dataclass(frozen=True)
class _Request:
    quantize: Quantize | None
    dtype: Dtype | None
    kv_cache_dtype: KvCacheDtype | None
    max_total_tokens: int
    concurrent_sequences: int
    gpus: int | Literal["auto"]


class _NoFitError(Exception):
    """A GPU-specific refusal; plan() turns it into a PlanError with alternatives."""

    def __init__(self, message: str, reason: PlanFailure) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


# ---- figures --------------------------------------------------------------------------------


def weight_bytes_per_parameter(method: Quantize | None) -> float:
    """Bytes per parameter for weights stored with `method` (None: 16-bit), extras included."""
    if method is None:
        return 2.0
    if method in EIGHT_BIT:
        return 1.0 * (1 + EIGHT_BIT_EXTRA)
    return 0.5 * (1 + FOUR_BIT_EXTRA)


def head_dim(facts: ModelArchitecture) -> int:
    return facts.head_dim if facts.head_dim is not None else facts.hidden_size // facts.num_attention_heads


def kv_cache_bytes_per_token(facts: ModelArchitecture, kv_cache_dtype: KvCacheDtype | None = None) -> int:
    """K and V for one token across all layers, on one unsharded replica."""
    element_bytes = 1 if kv_cache_dtype is not None else 2
    return 2 * facts.num_layers * facts.num_key_value_heads * head_dim(facts) * element_bytes


def usable_gib(gpu: GpuType) -> float:
    return gpu.memory_gib * USABLE_FRACTION


def default_max_total_tokens(facts: ModelArchitecture) -> int:
    return min(facts.max_position_embeddings, DEFAULT_MAX_TOTAL_TOKENS)


def effective_quantization(facts: ModelArchitecture, quantize: Quantize | None) -> Quantize | None:
    """The method TGI will run: the requested one, else the weights' own (TGI detects it)."""
    return quantize if quantize is not None else facts.quantization


# ---- rules ----------------------------------------------------------------------------------


def _settings_problem(facts: ModelArchitecture, req: _Request) -> str:
    """GPU-independent refusals (empty string when the settings are consistent)."""
    q, pre = req.quantize, facts.quantization
    if q is not None and req.dtype is not None:
        return "dtype and quantize are exclusive (TGI refuses --dtype with --quantize); set only one"
    if q in PREQUANTIZED:
        if pre == q:
            return ""
        if q == Quantize.marlin and pre in (Quantize.gptq, Quantize.awq):
            return (
                f"quantize marlin needs weights in Marlin format, but these are pre-quantized with {pre}; "
                f"set quantize {pre} or leave it unset (TGI uses Marlin kernels for {pre} weights "
                "on compute capability 8.0 and newer)"
            )
        if pre is None:
            return (
                f"quantize {q} needs weights pre-quantized with {q}, but this model's weights are not "
                f"pre-quantized; use a build of the model pre-quantized with {q}, or quantize on the fly "
                f"with {_ON_THE_FLY_TEXT}"
            )
        return (
            f"quantize {q} needs weights pre-quantized with {q}, but these are pre-quantized with {pre}; "
            f"set quantize {pre} or leave it unset"
        )
    if q in ON_THE_FLY and pre is not None and pre != q:
        return (
            f"quantize {q} quantizes 16-bit weights while loading, but these weights are already "
            f"pre-quantized with {pre}; leave quantize unset (TGI detects {pre})"
        )
    method = effective_quantization(facts, q)
    if req.dtype == Dtype.bfloat16 and method in FLOAT16_ONLY:
        return (
            f"dtype bfloat16 does not work with {method} weights (TGI runs {method} kernels in float16); "
            "leave dtype unset"
        )
    return ""


def _gpu_problem(method: Quantize | None, gpu: GpuType) -> str:
    if method is None or method not in MIN_COMPUTE_CAPABILITY:
        return ""
    need = MIN_COMPUTE_CAPABILITY[method]
    if gpu.capability >= need:
        return ""
    why = {
        Quantize.marlin: "Marlin kernels need Ampere or newer",
        Quantize.fp8: "TGI runs fp8 as weight-only Marlin FP8 on 8.x and natively from 8.9",
    }[method]
    return (
        f"quantize {method} needs compute capability {need[0]}.{need[1]} or newer ({why}); "
        f"{gpu.name} has {gpu.compute_capability}"
    )


def _shard_problem(facts: ModelArchitecture, method: Quantize | None, n: int) -> tuple[str, PlanFailure]:
    if n > 1 and method in UNSHARDABLE:
        return (
            f"{method} cannot be sharded (TGI refuses num_shard > 1 with {method})",
            PlanFailure.unsupported_quantization,
        )
    # TGI splits attention heads, and key/value heads, evenly across shards.
    if facts.num_attention_heads % n:
        return (
            f"{facts.num_attention_heads} attention heads do not divide by {n} shards",
            PlanFailure.invalid_shard_count,
        )
    if facts.num_key_value_heads % n:
        return (
            f"{facts.num_key_value_heads} key/value heads do not divide by {n} shards",
            PlanFailure.invalid_shard_count,
        )
    return "", PlanFailure.invalid_shard_count


def check_quantization(
    facts: ModelArchitecture,
    *,
    quantize: Quantize | None = None,
    dtype: Dtype | None = None,
    gpu: GpuType | None = None,
    num_shard: int = 1,
) -> None:
    """Raise PlanError if TGI would refuse these quantization settings (on `gpu`, if given)."""
    req = _Request(quantize, dtype, None, 2, 1, num_shard)
    problem = _settings_problem(facts, req)
    if problem:
        raise PlanError(problem, reason=PlanFailure.invalid_settings)
    method = effective_quantization(facts, quantize)
    if gpu is not None:
        problem = _gpu_problem(method, gpu)
        if problem:
            raise PlanError(problem, reason=PlanFailure.unsupported_quantization)
    problem, reason = _shard_problem(facts, method, num_shard)
    if problem:
        raise PlanError(problem, reason=reason)


# ---- planning -------------------------------------------------------------------------------


def _weights_format(facts: ModelArchitecture, req: _Request) -> str:
    method = effective_quantization(facts, req.quantize)
    if method is None:
        return str(req.dtype or facts.torch_dtype)
    if req.quantize is None or facts.quantization == method:
        return f"{method} (pre-quantized)"
    return str(method)


def _estimate(facts: ModelArchitecture, req: _Request, gpu: GpuType, n: int) -> Candidate:
    method = effective_quantization(facts, req.quantize)
    weights = facts.parameters_billions * 1e9 * weight_bytes_per_parameter(method) / GIB / n
    kv_tokens = req.max_total_tokens * req.concurrent_sequences
    kv = kv_cache_bytes_per_token(facts, req.kv_cache_dtype) * kv_tokens / GIB / n
    overhead = OVERHEAD_FIXED_GIB + OVERHEAD_WEIGHT_FRACTION * weights
    total = weights + kv + overhead
    problem, _ = _shard_problem(facts, method, n)
    valid = not problem
    fits = valid and total <= usable_gib(gpu)
    if valid and not fits:
        problem = f"needs {total:.1f} GiB per GPU, {usable_gib(gpu):.1f} GiB usable"
    return Candidate(
        num_shard=n,
        valid=valid,
        fits=fits,
        reason=problem,
        weights_gib_per_gpu=weights,
        kv_cache_gib_per_gpu=kv,
        overhead_gib_per_gpu=overhead,
        total_gib_per_gpu=total,
    )


def _make_plan(
    facts: ModelArchitecture, req: _Request, gpu: GpuType, chosen: Candidate, candidates: list[Candidate]
) -> Plan:
    method = effective_quantization(facts, req.quantize)
    return Plan(
        gpu_type=gpu.name,
        gpu_memory_gib=gpu.memory_gib,
        usable_gib_per_gpu=usable_gib(gpu),
        gpus_per_replica=chosen.num_shard,
        num_shard=chosen.num_shard,
        quantize=method,
        prequantized=facts.quantization is not None and facts.quantization == method,
        weights_format=_weights_format(facts, req),
        bytes_per_parameter=weight_bytes_per_parameter(method),
        kv_cache_dtype=req.kv_cache_dtype,
        max_total_tokens=req.max_total_tokens,
        concurrent_sequences=req.concurrent_sequences,
        weights_gib_per_gpu=chosen.weights_gib_per_gpu,
        kv_cache_gib_per_gpu=chosen.kv_cache_gib_per_gpu,
        overhead_gib_per_gpu=chosen.overhead_gib_per_gpu,
        total_gib_per_gpu=chosen.total_gib_per_gpu,
        candidates=candidates,
    )


def _no_fit_detail(facts: ModelArchitecture, req: _Request, gpu: GpuType, c: Candidate) -> str:
    fmt = _weights_format(facts, req)
    usable = usable_gib(gpu)
    where = f"{c.num_shard}x {gpu.name}"
    pct = f"{USABLE_FRACTION:.0%} of {gpu.memory_gib:.1f} GiB"
    if c.weights_gib_per_gpu > usable:
        weights_total = c.weights_gib_per_gpu * c.num_shard
        bpp = weight_bytes_per_parameter(effective_quantization(facts, req.quantize))
        return (
            f"needs ~{weights_total:.1f} GiB in {fmt} for weights alone "
            f"({facts.parameters_billions:g}B parameters x {bpp:g} bytes); "
            f"{where} has ~{usable * c.num_shard:.1f} GiB usable ({pct} per GPU)"
        )
    return (
        f"needs ~{c.total_gib_per_gpu:.1f} GiB per GPU on {where} (weights {c.weights_gib_per_gpu:.1f} GiB "
        f"in {fmt} + KV cache {c.kv_cache_gib_per_gpu:.1f} GiB for {req.concurrent_sequences} x "
        f"{req.max_total_tokens} tokens + overhead {c.overhead_gib_per_gpu:.1f} GiB), "
        f"but has ~{usable:.1f} GiB usable per GPU ({pct})"
    )


def _plan_on(facts: ModelArchitecture, req: _Request, gpu: GpuType) -> Plan:
    """Plan on one GPU type, assuming the settings passed _settings_problem; raises _NoFitError."""
    method = effective_quantization(facts, req.quantize)
    problem = _gpu_problem(method, gpu)
    if problem:
        raise _NoFitError(problem, PlanFailure.unsupported_quantization)
    counts = sorted(set(SHARD_COUNTS) | ({req.gpus} if req.gpus != "auto" else set()))
    candidates = [_estimate(facts, req, gpu, n) for n in counts]
    if req.gpus != "auto":
        chosen = next(c for c in candidates if c.num_shard == req.gpus)
        if not chosen.valid:
            problem, reason = _shard_problem(facts, method, chosen.num_shard)
            raise _NoFitError(f"gpus {chosen.num_shard} is not possible: {problem}", reason)
        if not chosen.fits:
            raise _NoFitError(_no_fit_detail(facts, req, gpu, chosen), PlanFailure.does_not_fit)
        return _make_plan(facts, req, gpu, chosen, candidates)
    for c in candidates:
        if c.fits:
            return _make_plan(facts, req, gpu, c, candidates)
    valid = [c for c in candidates if c.valid]
    largest = valid[-1]
    counts_text = ", ".join(str(c.num_shard) for c in valid)
    detail = _no_fit_detail(facts, req, gpu, largest)
    if largest.num_shard > 1 or len(valid) < len(candidates):
        detail = f"does not fit {gpu.name} with any valid shard count ({counts_text}): {detail}"
    raise _NoFitError(detail, PlanFailure.does_not_fit)


def _try(facts: ModelArchitecture, req: _Request, gpu: GpuType) -> Plan | None:
    if _settings_problem(facts, req):
        return None
    try:
        return _plan_on(facts, req, gpu)
    except _NoFitError:
        return None


def _shorter_context(facts: ModelArchitecture, req: _Request, gpu: GpuType) -> Alternative | None:
    """The longest maxTotalTokens (a multiple of 1024) that fits the fewest GPUs the weights allow."""
    method = effective_quantization(facts, req.quantize)
    counts = [req.gpus] if req.gpus != "auto" else list(SHARD_COUNTS)
    per_token = kv_cache_bytes_per_token(facts, req.kv_cache_dtype)
    for n in counts:
        if _shard_problem(facts, method, n)[0]:
            continue
        c = _estimate(facts, replace(req, max_total_tokens=2), gpu, n)
        room_gib = usable_gib(gpu) - c.weights_gib_per_gpu - c.overhead_gib_per_gpu
        if room_gib <= 0:
            continue
        tokens = int(room_gib * GIB * n / per_token / req.concurrent_sequences)
        tokens = tokens // _MIN_SUGGESTED_TOKENS * _MIN_SUGGESTED_TOKENS
        if tokens < _MIN_SUGGESTED_TOKENS or tokens >= req.max_total_tokens:
            return None
        shorter = replace(req, max_total_tokens=tokens, gpus=n)
        plan = _try(facts, shorter, gpu)
        if plan is None:
            return None
        return Alternative(gpu_type=gpu.name, gpus=n, max_total_tokens=tokens, plan=plan)
    return None


def _alternatives(
    facts: ModelArchitecture, req: _Request, gpu: GpuType, catalog: Sequence[GpuType]
) -> list[Alternative]:
    out: list[Alternative] = []
    auto = replace(req, gpus="auto")

    same = _try(facts, auto, gpu)
    if same is not None:
        out.append(Alternative(gpu_type=gpu.name, gpus=same.gpus_per_replica, plan=same))
    fewest = same.gpus_per_replica if same is not None else MAX_GPUS + 1

    def helps(plan: Plan | None) -> bool:
        # A change is only worth suggesting if it saves GPUs on this type.
        return plan is not None and plan.gpus_per_replica < fewest

    if req.kv_cache_dtype is None:
        # e5m2 needs no calibrated scales, unlike e4m3 (TGI docs).
        kv = replace(auto, kv_cache_dtype=KvCacheDtype.fp8_e5m2)
        plan = _try(facts, kv, gpu)
        if plan is not None and helps(plan):
            out.append(
                Alternative(
                    gpu_type=gpu.name,
                    gpus=plan.gpus_per_replica,
                    kv_cache_dtype=KvCacheDtype.fp8_e5m2,
                    plan=plan,
                )
            )

    shorter = _shorter_context(facts, req, gpu)
    if shorter is not None and helps(shorter.plan):
        out.append(shorter)

    if facts.quantization is None:
        current = weight_bytes_per_parameter(req.quantize)
        groups: tuple[tuple[Quantize, ...], ...] = (
            (Quantize.fp8, Quantize.eetq),
            (Quantize.bitsandbytes_nf4,),
            (Quantize.awq,),
        )
        for group in groups:
            for q in group:
                if q == req.quantize or weight_bytes_per_parameter(q) > current:
                    continue
                variant = replace(auto, quantize=q, dtype=None)
                variant_facts = facts
                if q in PREQUANTIZED:
                    variant_facts = facts.model_copy(update={"quantization": q})
                plan = _try(variant_facts, variant, gpu)
                if plan is not None and helps(plan):
                    out.append(
                        Alternative(
                            gpu_type=gpu.name,
                            gpus=plan.gpus_per_replica,
                            quantize=q,
                            needs_prequantized_weights=q in PREQUANTIZED,
                            plan=plan,
                        )
                    )
                    break

    others = [p for t in catalog if t.name != gpu.name if (p := _try(facts, auto, t)) is not None]
    # Fewest GPUs first (less sharding, easier scheduling), then the least memory bought.
    others.sort(key=lambda p: (p.gpus_per_replica, p.gpus_per_replica * p.gpu_memory_gib, p.gpu_type))
    out.extend(
        Alternative(gpu_type=p.gpu_type, gpus=p.gpus_per_replica, plan=p)
        for p in others[:_MAX_OTHER_GPU_SUGGESTIONS]
    )
    return out


def plan(
    facts: ModelArchitecture,
    gpu: GpuType,
    *,
    quantize: Quantize | None = None,
    dtype: Dtype | None = None,
    kv_cache_dtype: KvCacheDtype | None = None,
    max_total_tokens: int | None = None,
    concurrent_sequences: int = DEFAULT_CONCURRENT_SEQUENCES,
    gpus: int | Literal["auto"] = "auto",
    catalog: Sequence[GpuType] = (),
) -> Plan:
    """Plan one replica of the model on `gpu`.

    gpus "auto" picks the smallest valid shard count in SHARD_COUNTS that fits; an integer is
    checked as given. `catalog` (other GPU types) is only used to suggest alternatives when the
    request does not fit. Raises PlanError with a user-facing message otherwise.
    """
    if concurrent_sequences < 1:
        raise ValueError("concurrent_sequences must be at least 1")
    if gpus != "auto" and not 1 <= gpus <= MAX_GPUS:
        raise PlanError(
            f"gpus must be 'auto' or from 1 to {MAX_GPUS}, got {gpus}", reason=PlanFailure.invalid_settings
        )
    tokens = max_total_tokens if max_total_tokens is not None else default_max_total_tokens(facts)
    if tokens < 2:
        raise PlanError(
            f"maxTotalTokens must be at least 2, got {tokens}", reason=PlanFailure.invalid_settings
        )
    req = _Request(quantize, dtype, kv_cache_dtype, tokens, concurrent_sequences, gpus)
    problem = _settings_problem(facts, req)
    if problem:
        raise PlanError(problem, reason=PlanFailure.invalid_settings)
    try:
        return _plan_on(facts, req, gpu)
    except _NoFitError as err:
        alternatives = _alternatives(facts, req, gpu, catalog)
        if alternatives:
            fits = "; ".join(a.describe() for a in alternatives)
            message = f"{err.message}. Fits: {fits}"
        else:
            message = f"{err.message}. Nothing in the GPU catalog fits; lower maxTotalTokens or quantize"
        raise PlanError(message, reason=err.reason, alternatives=alternatives) from None
