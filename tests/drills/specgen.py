"""Hypothesis strategies for ModelDeployment specs, generated from the CRD's own schema
(crds/modeldeploy.dev_modeldeployments.yaml): every property the schema has, with values that
fit it (enums, bounds, realistic samples for patterned strings) or, in a hostile spec, values
that do not (wrong types, huge numbers, unicode look-alikes, control characters, shell and
template injections, and launcher flags that must not reach TGI)."""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import strategies as st

from modeldeploy import catalog, tgi
from tests.conftest import CRD

S = st.SearchStrategy[Any]

HOSTILE_STRINGS = [
    "",
    " ",
    "\u202egpu",
    "a\u200bb",
    "\uff4d\uff4f\uff44\uff45\uff4c",
    "\uff0d\uff0dport",
    "; rm -rf /",
    "$(id)",
    "`id`",
    "../../etc/passwd",
    "a\x00b",
    "line\nbreak",
    "tab\there",
    "{{ .Values.secret }}",
    "${HF_TOKEN}",
    "%s%n%x",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "\U0001f680" * 20,
    "x" * 5000,
    "\u03a9\u2248\u00e7\u221a\u222b\u02dc",
    "null",
    "true",
    "1e309",
    "-1",
    "0x10",
    "NaN",
    "Infinity",
    "system-node-critical",
    "nvidia.com/gpu",
    "/etc/passwd",
    "http://169.254.169.254/latest/meta-data/",
    "\\",
    "\"'",
    "*",
    "kube-system",
]
HOSTILE_NUMBERS = [2**31, 2**63, -(2**63) - 1, 10**30, 1e308, -1e308, 0.5, -0.0, -1, 0]
HOSTILE: S = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.lists(st.sampled_from(HOSTILE_STRINGS), max_size=3),
    st.dictionaries(
        st.sampled_from(["a", "$ne", "__proto__", "spec"]), st.sampled_from(HOSTILE_STRINGS), max_size=2
    ),
)

# Launcher flags a spec must never smuggle past the operator, and injection attempts.
INJECTIONS = [
    "--port",
    "80",
    "--otlp-endpoint",
    "http://elsewhere:4317",
    "--cors-allow-origin",
    "*",
    "--tokenizer-config-path",
    "/etc/passwd",
    "--ngrok",
    "--ngrok-authtoken",
    "--ngrok-edge",
    "edge",
    "--prometheus-port",
    "--api-key=sk-live-123",
    "; rm -rf /",
    "--model-id=evil/model",
    "--flag\nnewline",
    "\uff0d\uff0dport",
    "\u2014port",
    "--port\u200b",
    "--env",
    "--max-total-tokens=1",
    "-p",
    "--",
    "--=x",
    "--help",
    "--json-output",
    "--hostname=0.0.0.0",
    "--master-addr=10.0.0.1",
    "--weights-cache-override=/",
    "$(id)",
    "--otlp-service-name=\U0001f600",
    "--huggingface-hub-cache=/tmp",
    "--trust-remote-code",
    "--sharded=true",
]
FLAGS = sorted(f"--{f}" for f in tgi.KNOWN_FLAGS)
EXTRA_ARG: S = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(INJECTIONS),
    st.from_regex(r"--[a-z][a-z-]{0,24}(=[ -~]{0,24})?", fullmatch=True),
    st.text(max_size=30),
)

GPU_TYPES = [g.name for g in catalog.gpu_types()]
MODEL_IDS = [
    "cognitivecomputations/dolphin-2.8-mistral-7b-v02",
    "mistralai/Mistral-7B-Instruct-v0.2",
    "Qwen/Qwen2.5-7B-Instruct-AWQ",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "tiiuae/falcon-40b",
    "acme/tiny-llm",
    "acme/no-such-model",
    "Org/Model.v2",
]
QUANTITIES = ["1Gi", "16Gi", "500m", "2", "1e3", "0.5Gi", "64Mi", "1Ti", "100Ti"]
NAMES = ["hf-token", "standard", "unserved", "default", "a.b-c"]
SAMPLES: dict[str, S] = {
    "spec.model.id": st.sampled_from(MODEL_IDS),
    "spec.model.revision": st.sampled_from(["main", "v1.0", "refs/pr/1", "a" * 40, "release/2024.1"]),
    "spec.model.preset": st.sampled_from(
        ["", "dolphin-2.8-mistral-7b-v02", "qwen2.5-7b-instruct", "no-such"]
    ),
    "spec.engine.image": st.sampled_from(
        [
            "ghcr.io/huggingface/text-generation-inference:3.3.7",
            "registry.local:5000/tgi:latest",
            "tgi@sha256:" + "a" * 64,
            "",
        ]
    ),
    "spec.engine.extraArgs": st.lists(EXTRA_ARG, max_size=6),
    "spec.resources.gpus": st.one_of(
        st.integers(min_value=-1, max_value=10), st.sampled_from(["auto", "2", "x"])
    ),
    "spec.resources.gpuType": st.sampled_from([*GPU_TYPES, "no-such-gpu", ""]),
    "spec.resources.shmSize": st.sampled_from(QUANTITIES),
    "spec.resources.cpu": st.sampled_from(["", *QUANTITIES]),
    "spec.resources.memory": st.sampled_from(["", *QUANTITIES]),
    "spec.scheduling.priorityClassName": st.sampled_from(
        ["", "high-priority", "system-node-critical", "system-cluster-critical"]
    ),
    "spec.scheduling.nodeSelector": st.dictionaries(
        st.sampled_from(["nvidia.com/gpu.product", "kubernetes.io/hostname", "zone", "bad key!"]),
        st.sampled_from(["NVIDIA-L4", "gpu-h100-0", "", "a b"]),
        max_size=2,
    ),
    "spec.cache.size": st.sampled_from(["auto", *QUANTITIES]),
    "spec.cache.storageClassName": st.sampled_from(["", *NAMES]),
    "spec.rollout.maxSurge": st.one_of(
        st.integers(min_value=-1, max_value=5), st.sampled_from(["auto", "25%"])
    ),
    "spec.rollout.maxUnavailable": st.one_of(
        st.integers(min_value=-1, max_value=5), st.sampled_from(["auto", "50%"])
    ),
}


ALWAYS = {"spec": ("model",), "spec.model": ("id",)}


def weighted(*choices: tuple[S, int]) -> S:
    """One of the strategies, each drawn with its weight (one_of treats repeats as one)."""
    pool = [s for s, w in choices for _ in range(w)]
    return st.integers(min_value=0, max_value=len(pool) - 1).flatmap(lambda i: pool[i])


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    out: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return out


def _string(schema: dict[str, Any], path: str) -> S:
    pattern = schema.get("pattern")
    limit = min(int(schema.get("maxLength", 64)), 64)
    if pattern and "[:" not in pattern:
        return st.from_regex(re.compile(pattern), fullmatch=True).filter(lambda s: len(s) <= limit)
    if path.endswith((".name", "Name")):
        return st.sampled_from(NAMES)
    if path.endswith(".key"):
        return st.sampled_from(["token", "probes.yaml", "nvidia.com/gpu", "dedicated"])
    return st.text(max_size=limit)


def fitting(schema: dict[str, Any], path: str, hostile: bool) -> S:
    """Values for the schema at `path`: fitting ones, with hostile ones mixed in when `hostile`."""
    valid = _fitting(schema, path, hostile)
    if not hostile:
        return valid
    return weighted((valid, 7), (HOSTILE, 1))  # one in eight replaced


def _fitting(schema: dict[str, Any], path: str, hostile: bool) -> S:
    if path in SAMPLES:
        return SAMPLES[path]
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(min_value=0, max_value=10), st.sampled_from(["auto", "1", "50%"]))
    t = schema.get("type")
    if t == "object":
        props: dict[str, Any] = schema.get("properties") or {}
        if not props:
            return st.dictionaries(
                st.sampled_from(["a", "b/c", "d.e"]), st.sampled_from(["x", "1", ""]), max_size=2
            )
        # Required keys (the schema's, and a model id, without which nearly all would be refused).
        required = {*schema.get("required", []), *ALWAYS.get(path, ())}
        strats = {k: fitting(v, f"{path}.{k}", hostile) for k, v in props.items()}
        return st.fixed_dictionaries(
            {k: s for k, s in strats.items() if k in required},
            optional={k: s for k, s in strats.items() if k not in required},
        )
    if t == "array":
        items = fitting(schema.get("items") or {}, f"{path}[]", hostile)
        return st.lists(items, max_size=min(int(schema.get("maxItems", 3)), 3))
    if t == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if t == "number":
        return st.floats(
            min_value=schema.get("minimum"),
            max_value=schema.get("maximum"),
            allow_nan=False,
            allow_infinity=False,
        )
    if t == "boolean":
        return st.booleans()
    if t == "string":
        return _string(schema, path)
    return HOSTILE


def specs() -> S:
    """Whole specs: fitting the schema's shape, or with hostile values mixed in, or not even an
    object."""
    schema = spec_schema()
    # The spec itself is always an object: a wrong type there proves little, once.
    valid, mixed = _fitting(schema, "spec", hostile=False), _fitting(schema, "spec", hostile=True)
    return weighted((valid, 3), (mixed, 4), (HOSTILE, 1))


HOSTILE_NAMES = [
    "UPPER",
    "a.b",
    "-x",
    "x" * 64,
    "\uff4d\uff4f\uff44\uff45\uff4c",
    "a_b",
    "1abc",
    "x" * 253,
    "a..b",
]


def names() -> S:
    """None: a fresh valid name (the drill numbers them); or a hostile one."""
    return weighted((st.none(), 15), (st.sampled_from(HOSTILE_NAMES), 1))
