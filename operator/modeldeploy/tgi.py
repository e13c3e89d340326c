"""Text Generation Inference: everything engine-specific lives here (launcher flags, port,
paths, probes), so a second engine can be added beside it without touching the renderer.

Flag names follow `text-generation-launcher --help` of TGI 3.3.x; tests/unit/test_tgi_flags.py
checks them against the committed reference docs/reference/tgi-launcher-3.3.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modeldeploy.api import Engine, ModelSource
from modeldeploy.errors import SpecError

PORT = 80
DATA_DIR = "/data"  # the official image sets HF_HOME=/data
SHM_DIR = "/dev/shm"
# What else TGI writes, so a read-only root filesystem needs it writable: the shards' gRPC
# sockets (/tmp/text-generation-server-N, the --shard-uds-path default) and caches under HOME
# (triton, outlines, torch inductor, CUDA's ComputeCache). One emptyDir at /tmp, and HOME
# pointed into it (the image's HOME, /root, is on the root filesystem).
TMP_DIR = "/tmp"
HOME_DIR = TMP_DIR
# The image's default repository (DEFAULT_IMAGE without its tag).
IMAGE_REPOSITORY = "ghcr.io/huggingface/text-generation-inference"
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
    "weights-cache-override": "spec.cache",
    "json-output": "the operator",
}
# Flags whose value is a credential: it would end up in the pod spec in clear text.
SECRET_FLAGS: frozenset[str] = frozenset({"api-key", "ngrok-authtoken"})
# Flags no namespace user may hand to the server, with why: they send data off the pod, open it
# to other origins, or take a port or socket the pod's other parts use.
REFUSED_FLAGS: dict[str, str] = {
    "otlp-endpoint": "sends traces (with prompts) to another host",
    "otlp-service-name": "names the traces --otlp-endpoint sends, which is not allowed",
    "cors-allow-origin": "lets web pages of other origins read the model's answers in browsers",
    "ngrok": "opens a tunnel from the internet to the pod",
    "ngrok-edge": "opens a tunnel from the internet to the pod",
    "prometheus-port": "binds a port of the pod the operator does not manage",
    "shard-uds-path": "moves the shards' sockets, which the pod's writable paths are laid out for",
    "master-addr": "points the shards' torch.distributed rendezvous at another host",
    "master-port": "binds a port of the pod the operator does not manage",
}

# Value shapes (RE2 and Python `re` alike; matched against the whole value).
_INT = r"[0-9]{1,10}"
_NUMBER = r"[0-9]{1,10}(\.[0-9]{1,10})?"
# No nested counted repeats: RE2 (the API server's CEL) caps their product at 1000. The
# schema bounds every item's length anyway.
_HUB_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
_ADAPTER = f"{_HUB_ID}(@[A-Za-z0-9][A-Za-z0-9._-]*)?"
# A file in the model's own volume: components that do not start with "." (so no ".." either).
_DATA_FILE = DATA_DIR + r"(/[A-Za-z0-9_+=@-][A-Za-z0-9_.+=@-]*)+"


@dataclass(frozen=True)
class ValueShape:
    pattern: str
    says: str  # what the flag takes, for messages


_WHOLE = ValueShape(_INT, "a whole number")
_REAL = ValueShape(_NUMBER, "a number such as 0.5")

# The flags any namespace user may pass in extraArgs, with the shape of their value (None: a
# switch, which takes no value). An allowlist: a flag a new TGI adds is refused until judged.
SAFE_FLAGS: dict[str, ValueShape | None] = {
    "validation-workers": _WHOLE,
    "speculate": _WHOLE,
    "max-best-of": _WHOLE,
    "max-stop-sequences": _WHOLE,
    "max-top-n-tokens": _WHOLE,
    "waiting-served-ratio": _REAL,
    "max-batch-total-tokens": _WHOLE,
    "max-waiting-tokens": _WHOLE,
    "max-batch-size": _WHOLE,
    "cuda-graphs": ValueShape(
        r"[0-9]{1,5}(,[0-9]{1,5}){0,63}", "batch sizes separated by commas, e.g. 1,2,4,8"
    ),
    "disable-custom-kernels": None,
    "cuda-memory-fraction": _REAL,
    "rope-scaling": ValueShape("linear|dynamic", "linear or dynamic"),
    "rope-factor": _REAL,
    "watermark-gamma": _REAL,
    "watermark-delta": _REAL,
    "disable-grammar-support": None,
    "env": None,
    "max-client-batch-size": _WHOLE,
    "lora-adapters": ValueShape(
        f"{_ADAPTER}(,{_ADAPTER})*",
        "Hub adapter ids (org/name or org/name@revision) separated by commas, no local paths",
    ),
    "usage-stats": ValueShape("on|off|no-stack", "on, off or no-stack"),
    "payload-limit": _WHOLE,
    "enable-prefill-logprobs": None,
    "graceful-termination-timeout": _WHOLE,
    "tokenizer-config-path": ValueShape(
        _DATA_FILE, f"a file under {DATA_DIR} (the model's own weights), without hidden or '..' parts"
    ),
}


def refusal(name: str) -> str | None:
    """Why --name may not be in extraArgs (None: it may). One text for the operator and the
    chart's admission policy."""
    if name not in KNOWN_FLAGS:
        return f"--{name} is not a text-generation-launcher flag; remove it or fix the name"
    if name in OWNED_FLAGS:
        return f"--{name} is set by {OWNED_FLAGS[name]}; use that field instead of extraArgs"
    if name in SECRET_FLAGS:
        return f"--{name} takes a credential; do not put secrets in the spec"
    if name in REFUSED_FLAGS:
        return f"--{name} is not allowed in extraArgs: it {REFUSED_FLAGS[name]}"
    if name not in SAFE_FLAGS:
        return f"--{name} is not allowed in extraArgs"
    return None


def value_ok(name: str, value: str) -> bool:
    shape = SAFE_FLAGS[name]
    return shape is not None and re.fullmatch(shape.pattern, value) is not None


def parse_extra_args(args: list[str]) -> list[tuple[str, str | None]]:
    """Split extraArgs into (flag, value) pairs, refusing what SAFE_FLAGS does not allow and
    values not of their flag's shape."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        item = args[i]
        where = f"spec.engine.extraArgs[{i}]"
        if not item.startswith("--"):
            raise SpecError(where, f"expected a --flag, got {item!r}; put flag values right after their flag")
        name, eq, inline = item[2:].partition("=")
        if (why := refusal(name)) is not None:
            raise SpecError(where, why)
        shape = SAFE_FLAGS[name]
        value: str | None
        if shape is None:
            if eq:
                raise SpecError(where, f"--{name} is a switch and takes no value")
            value = None
        elif eq:
            value = inline
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            i += 1
            where = f"spec.engine.extraArgs[{i}]"
            value = args[i]
        else:
            raise SpecError(where, f"--{name} needs a value")
        if shape is not None and value is not None and not value_ok(name, value):
            raise SpecError(where, f"--{name} takes {shape.says}, got {value!r}")
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
