"""Text Generation Inference: everything engine-specific lives here (launcher flags, port,
paths, probes), so a second engine can be added beside it without touching the renderer.

Flag names follow `text-generation-launcher --help` of TGI 3.3.x; tests/unit/test_tgi_flags.py
checks them against the committed reference docs/reference/tgi-launcher-3.3.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from modeldeploy.api import Engine, ModelSource
from modeldeploy.errors import SpecError

PORT = 80
DATA_DIR = "/data"  # the official image sets HF_HOME=/data
SHM_DIR = "/dev/shm"
HEALTH_PATH = "/health"
# TGI's launcher waits up to 90 s for shards to drain (--graceful-termination-timeout default).
TERMINATION_GRACE_SECONDS = 120
DEFAULT_STARTUP_TIMEOUT_SECONDS = 3600

# Every flag of text-generation-launcher (TGI 3.3.x). Boolean flags take no value.
KNOWN_FLAGS: frozenset[str] = frozenset(
    {
        "model-id", "revision", "validation-workers", "sharded", "num-shard", "quantize", "speculate",
        "dtype", "kv-cache-dtype", "trust-remote-code", "max-concurrent-requests", "max-best-of",
        "max-stop-sequences", "max-top-n-tokens", "max-input-tokens", "max-input-length",
        "max-total-tokens", "waiting-served-ratio", "max-batch-prefill-tokens", "max-batch-total-tokens",
        "max-waiting-tokens", "max-batch-size", "cuda-graphs", "hostname", "port", "prometheus-port",
        "shard-uds-path", "master-addr", "master-port", "huggingface-hub-cache", "weights-cache-override",
        "disable-custom-kernels", "cuda-memory-fraction", "rope-scaling", "rope-factor", "json-output",
        "otlp-endpoint", "otlp-service-name", "cors-allow-origin", "api-key", "watermark-gamma",
        "watermark-delta", "ngrok", "ngrok-authtoken", "ngrok-edge", "tokenizer-config-path",
        "disable-grammar-support", "env", "max-client-batch-size", "lora-adapters", "usage-stats",
        "payload-limit", "enable-prefill-logprobs", "graceful-termination-timeout",
    }
)  # fmt: skip
BOOLEAN_FLAGS: frozenset[str] = frozenset(
    {"trust-remote-code", "disable-custom-kernels", "json-output", "ngrok", "disable-grammar-support",
     "env", "enable-prefill-logprobs"}
)  # fmt: skip

# Flags a typed field (or the operator itself) owns, with the field to use instead.
OWNED_FLAGS: dict[str, str] = {
    "model-id": "spec.model.id",
    "revision": "spec.model.revision",
    "num-shard": "spec.resources.gpus",
    "sharded": "spec.resources.gpus",
    "quantize": "spec.engine.quantize",
    "dtype": "spec.engine.dtype",
    "kv-cache-dtype": "spec.engine.kvCacheDtype",
    "max-input-tokens": "spec.engine.maxInputTokens",
    "max-input-length": "spec.engine.maxInputTokens",
    "max-total-tokens": "spec.engine.maxTotalTokens",
    "max-batch-prefill-tokens": "spec.engine.maxBatchPrefillTokens",
    "max-concurrent-requests": "spec.engine.maxConcurrentRequests",
    "trust-remote-code": "spec.model.trustRemoteCode",
    "port": "the operator (the Service targets port 80)",
    "hostname": "the operator",
    "huggingface-hub-cache": "spec.cache",
    "json-output": "the operator",
}
# Flags whose value is a credential: it would end up in the pod spec in clear text.
SECRET_FLAGS: frozenset[str] = frozenset({"api-key", "ngrok-authtoken"})


def parse_extra_args(args: list[str]) -> list[tuple[str, str | None]]:
    """Split extraArgs into (flag, value) pairs, refusing unknown, owned and secret flags."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        item = args[i]
        where = f"spec.engine.extraArgs[{i}]"
        if not item.startswith("--"):
            raise SpecError(where, f"expected a --flag, got {item!r}; put flag values right after their flag")
        name, eq, inline = item[2:].partition("=")
        if name not in KNOWN_FLAGS:
            raise SpecError(
                where, f"--{name} is not a text-generation-launcher flag; remove it or fix the name"
            )
        if name in OWNED_FLAGS:
            raise SpecError(
                where, f"--{name} is set by {OWNED_FLAGS[name]}; use that field instead of extraArgs"
            )
        if name in SECRET_FLAGS:
            raise SpecError(where, f"--{name} takes a credential; do not put secrets in the spec")
        value: str | None
        if eq:
            value = inline
        elif name in BOOLEAN_FLAGS:
            value = None
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            i += 1
            value = args[i]
        else:
            raise SpecError(where, f"--{name} needs a value")
        pairs.append((name, value))
        i += 1
    return pairs


@dataclass(frozen=True)
class LaunchPlan:
    model_id: str
    num_shard: int
    # Token limits after planning: the spec's values, or the ones the GPU plan was sized for.
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None


def launcher_args(model: ModelSource, engine: Engine, launch: LaunchPlan) -> list[str]:
    """Launcher arguments: one typed field, one flag; extraArgs appended after validation."""
    args = ["--model-id", launch.model_id, "--revision", model.revision, "--port", str(PORT)]
    args += ["--num-shard", str(launch.num_shard)]
    if engine.quantize is not None:
        args += ["--quantize", engine.quantize.value]
    if engine.dtype is not None:
        args += ["--dtype", engine.dtype.value]
    if engine.kv_cache_dtype is not None:
        args += ["--kv-cache-dtype", engine.kv_cache_dtype.value]
    max_input = launch.max_input_tokens if launch.max_input_tokens is not None else engine.max_input_tokens
    max_total = launch.max_total_tokens if launch.max_total_tokens is not None else engine.max_total_tokens
    if max_input is not None:
        args += ["--max-input-tokens", str(max_input)]
    if max_total is not None:
        args += ["--max-total-tokens", str(max_total)]
    if engine.max_batch_prefill_tokens is not None:
        args += ["--max-batch-prefill-tokens", str(engine.max_batch_prefill_tokens)]
    if engine.max_concurrent_requests is not None:
        args += ["--max-concurrent-requests", str(engine.max_concurrent_requests)]
    if model.trust_remote_code:
        args.append("--trust-remote-code")
    args.append("--json-output")
    for name, value in parse_extra_args(engine.extra_args):
        args.append(f"--{name}" if value is None else f"--{name}={value}")
    return args
