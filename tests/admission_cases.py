"""One table of ModelDeployments for admission: each bad one names the field the API server (and
the pydantic models, which must agree) refuses it on; each good one is an edge case both admit.

Used by tests/unit/test_api_validation.py (pydantic) and tests/integration/test_admission.py
(`kubectl apply` against the real API server).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

GOOD_NAME = "m"
BASE_SPEC: dict[str, Any] = {"model": {"id": "example-org/some-model"}}
INT32_MAX = 2**31 - 1
SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class Case:
    id: str
    # Merged into BASE_SPEC one level deep (each top-level section replaces BASE_SPEC's).
    spec: dict[str, Any] = field(default_factory=dict)
    # The field the error must name, as the API server writes it (list indexes in brackets).
    field: str = ""
    name: str = GOOD_NAME

    def body(self) -> dict[str, Any]:
        spec = copy.deepcopy(BASE_SPEC)
        spec.update(copy.deepcopy(self.spec))
        return {
            "apiVersion": "modeldeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": self.name},
            "spec": spec,
        }


def _res(**kw: Any) -> dict[str, Any]:
    return {"resources": kw}


def _eng(**kw: Any) -> dict[str, Any]:
    return {"engine": kw}


def _model(**kw: Any) -> dict[str, Any]:
    return {"model": {"id": "example-org/some-model", **kw}}


def _tol(**kw: Any) -> dict[str, Any]:
    return {"scheduling": {"tolerations": [kw]}}


def _auto(**kw: Any) -> dict[str, Any]:
    return {"autoscaling": {"enabled": True, **kw}}


BAD: list[Case] = [
    # Quantities, as Kubernetes parses them (a Deployment or PVC would refuse these).
    Case("memory-GB", _res(memory="32GB"), "spec.resources.memory"),
    Case("memory-negative", _res(memory="-1Gi"), "spec.resources.memory"),
    Case("memory-zero", _res(memory="0"), "spec.resources.memory"),
    Case("memory-space", _res(memory="32 Gi"), "spec.resources.memory"),
    Case("cpu-words", _res(cpu="4 cores"), "spec.resources.cpu"),
    Case("cpu-zero", _res(cpu="0m"), "spec.resources.cpu"),
    Case("shm-GB", _res(shmSize="1GB"), "spec.resources.shmSize"),
    Case("shm-zero", _res(shmSize="0"), "spec.resources.shmSize"),
    Case("cache-size-zero", {"cache": {"enabled": True, "size": "0Gi"}}, "spec.cache.size"),
    Case("cache-size-GB", {"cache": {"enabled": True, "size": "100GB"}}, "spec.cache.size"),
    Case("cache-size-empty", {"cache": {"enabled": True, "size": ""}}, "spec.cache.size"),
    # Revisions: git branch, tag or commit names only.
    Case("revision-traversal", _model(revision="../../etc/passwd"), "spec.model.revision"),
    Case("revision-space", _model(revision="main branch"), "spec.model.revision"),
    Case("revision-newline", _model(revision="main\n"), "spec.model.revision"),
    Case("revision-dotdot", _model(revision="a..b"), "spec.model.revision"),
    Case("revision-leading-slash", _model(revision="/main"), "spec.model.revision"),
    Case("revision-leading-dash", _model(revision="-main"), "spec.model.revision"),
    Case("revision-control", _model(revision="ma\x07in"), "spec.model.revision"),
    Case("revision-trailing-slash", _model(revision="main/"), "spec.model.revision"),
    Case("revision-lock", _model(revision="main.lock"), "spec.model.revision"),
    # Secret references (the Pod's secretKeyRef would refuse these).
    Case("secret-name-upper", _model(tokenSecretRef={"name": "HF_Token"}), "spec.model.tokenSecretRef.name"),
    Case("secret-name-long", _model(tokenSecretRef={"name": "a" * 254}), "spec.model.tokenSecretRef.name"),
    Case("secret-key-slash", _model(tokenSecretRef={"name": "hf", "key": "a/b"}),
         "spec.model.tokenSecretRef.key"),
    Case("secret-key-dotdot", _model(tokenSecretRef={"name": "hf", "key": "..token"}),
         "spec.model.tokenSecretRef.key"),
    Case("secret-key-long", _model(tokenSecretRef={"name": "hf", "key": "k" * 254}),
         "spec.model.tokenSecretRef.key"),
    # Tolerations and node selection (Pod validation).
    Case("toleration-key", _tol(key="bad key!", operator="Exists"), "spec.scheduling.tolerations[0].key"),
    Case("toleration-empty-key-equal", _tol(value="x"), "spec.scheduling.tolerations[0].operator"),
    Case("toleration-value", _tol(key="k", value="two words"), "spec.scheduling.tolerations[0].value"),
    Case("toleration-exists-value", _tol(key="k", operator="Exists", value="v"),
         "spec.scheduling.tolerations[0].value"),
    Case("toleration-seconds-noschedule", _tol(key="k", operator="Exists", effect="NoSchedule",
                                               tolerationSeconds=30),
         "spec.scheduling.tolerations[0].tolerationSeconds"),
    Case("toleration-seconds-huge", _tol(key="k", operator="Exists", effect="NoExecute",
                                         tolerationSeconds=2**63),
         "spec.scheduling.tolerations[0].tolerationSeconds"),
    Case("node-selector-key", {"scheduling": {"nodeSelector": {"bad key": "v"}}},
         "spec.scheduling.nodeSelector"),
    Case("node-selector-value", {"scheduling": {"nodeSelector": {"k": "a b"}}},
         "spec.scheduling.nodeSelector"),
    Case("node-selector-value-long", {"scheduling": {"nodeSelector": {"k": "v" * 64}}},
         "spec.scheduling.nodeSelector"),
    Case("priority-class", {"scheduling": {"priorityClassName": "High_Priority"}},
         "spec.scheduling.priorityClassName"),
    # Numbers: integers only, within what the children accept (int32) and what is sane.
    Case("replicas-fraction", {"replicas": 1.5}, "spec.replicas"),
    Case("replicas-string", {"replicas": "3"}, "spec.replicas"),
    Case("replicas-bool", {"replicas": True}, "spec.replicas"),
    Case("replicas-too-many", {"replicas": 65}, "spec.replicas"),
    Case("progress-deadline-huge", {"rollout": {"progressDeadlineSeconds": 10**9}},
         "spec.rollout.progressDeadlineSeconds"),
    Case("max-surge-huge", {"rollout": {"maxSurge": 10**6}}, "spec.rollout.maxSurge"),
    Case("max-replicas-huge", _auto(maxReplicas=100_000), "spec.autoscaling.maxReplicas"),
    Case("min-replicas-huge", _auto(minReplicas=5000, maxReplicas=6000), "spec.autoscaling.minReplicas"),
    Case("target-zero", _auto(target=0), "spec.autoscaling.target"),
    Case("target-huge", _auto(target=10**7), "spec.autoscaling.target"),
    Case("max-input-int32", _eng(maxInputTokens=INT32_MAX + 1), "spec.engine.maxInputTokens"),
    Case("max-total-int32", _eng(maxTotalTokens=INT32_MAX + 1), "spec.engine.maxTotalTokens"),
    Case("prefill-int32", _eng(maxBatchPrefillTokens=INT32_MAX + 1), "spec.engine.maxBatchPrefillTokens"),
    Case("concurrent-zero", _eng(maxConcurrentRequests=0), "spec.engine.maxConcurrentRequests"),
    Case("concurrent-huge", _eng(maxConcurrentRequests=10**9), "spec.engine.maxConcurrentRequests"),
    Case("startup-timeout-huge", _eng(startupTimeoutSeconds=10**6), "spec.engine.startupTimeoutSeconds"),
    Case("prefill-below-input", _eng(maxInputTokens=4096, maxTotalTokens=8192, maxBatchPrefillTokens=2048),
         "spec.engine.maxBatchPrefillTokens"),
    Case("architecture-layers-huge", _model(architecture={
        "parametersBillions": 7, "numLayers": 10**12, "hiddenSize": 4096, "numAttentionHeads": 32,
        "numKeyValueHeads": 8, "maxPositionEmbeddings": 32768}), "spec.model.architecture.numLayers"),
    # Engine.
    Case("image-space", _eng(image="ghcr.io/huggingface/text-generation-inference: 3.3.7"),
         "spec.engine.image"),
    Case("image-newline", _eng(image="tgi:3.3.7\n"), "spec.engine.image"),
    Case("image-upper-repo", _eng(image="ghcr.io/HuggingFace/tgi:3.3.7"), "spec.engine.image"),
    Case("kv-cache-dtype-fp8", _eng(kvCacheDtype="fp8"), "spec.engine.kvCacheDtype"),
    Case("extra-arg-newline", _eng(extraArgs=["--max-best-of", "2\n"]), "spec.engine.extraArgs[1]"),
    # The name: the Deployment and Service are named exactly like the model.
    Case("name-dot", name="qwen2.5-7b", field="metadata.name"),
    Case("name-leading-digit", name="7b-model", field="metadata.name"),
    Case("name-too-long", name="m" * 64, field="metadata.name"),
]  # fmt: skip

GOOD: list[Case] = [
    Case("defaults"),
    Case("memory-Gi", _res(memory="32Gi")),
    Case("memory-M", _res(memory="500M")),
    Case("memory-exponent", _res(memory="129e6")),
    Case("cpu-fraction", _res(cpu="1.5")),
    Case("cpu-milli", _res(cpu="100m")),
    Case("cpu-leading-dot", _res(cpu=".5")),
    Case("shm-Mi", _res(shmSize="512Mi")),
    Case("shm-plain", _res(shmSize="1073741824")),
    Case("cache-size-T", {"cache": {"enabled": True, "size": "1.5T"}}),
    Case("cache-size-auto", {"cache": {"enabled": True, "size": "auto"}}),
    Case("revision-sha", _model(revision=SHA)),
    Case("revision-tag", _model(revision="v1.0.2")),
    Case("revision-pr", _model(revision="refs/pr/2")),
    Case("revision-branch", _model(revision="release/2024_01-rc+1")),
    Case("secret-ref", _model(tokenSecretRef={"name": "hf-token.v1", "key": "HF_TOKEN"})),
    Case("secret-key-dotfile", _model(tokenSecretRef={"name": "h" * 253, "key": ".token"})),
    Case("toleration-all", _tol(operator="Exists")),
    Case("toleration-gpu", _tol(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")),
    Case("toleration-seconds", _tol(key="k", value="v", effect="NoExecute", tolerationSeconds=600)),
    Case("toleration-empty-value", _tol(key="example.com/dedicated")),
    Case("node-selector", {"scheduling": {"nodeSelector": {"example.com/pool": "gpu-a", "zone": "",
                                                           "k": "v" * 63}}}),
    Case("priority-class", {"scheduling": {"priorityClassName": "system-cluster-critical"}}),
    Case("replicas-zero", {"replicas": 0}),
    Case("replicas-max", {"replicas": 64}),
    Case("progress-deadline-week", {"rollout": {"progressDeadlineSeconds": 7 * 86400}}),
    Case("autoscaling-max", _auto(minReplicas=1, maxReplicas=1000, target=100)),
    Case("tokens-int32", _eng(maxInputTokens=INT32_MAX - 1, maxTotalTokens=INT32_MAX,
                              maxBatchPrefillTokens=INT32_MAX)),
    Case("prefill-equal-input", _eng(maxInputTokens=4096, maxTotalTokens=8192, maxBatchPrefillTokens=4096)),
    Case("prefill-without-input", _eng(maxBatchPrefillTokens=512)),
    Case("image-default", _eng(image="ghcr.io/huggingface/text-generation-inference:3.3.7")),
    Case("image-registry-port-digest", _eng(
        image="registry.example.com:5000/team/tgi:3.3.7-rocm@sha256:" + "a" * 64)),
    Case("image-bare", _eng(image="tgi")),
    Case("kv-cache-dtype", _eng(kvCacheDtype="fp8_e4m3fn")),
    Case("kv-cache-dtype-e5m2", _eng(kvCacheDtype="fp8_e5m2")),
    Case("name-63", name="m" * 63),
    Case("name-dashes", name="qwen2-5-7b"),
]  # fmt: skip
