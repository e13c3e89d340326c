"""The chart's ValidatingAdmissionPolicy on the real API server: rendered by the real helm,
applied with its binding, it refuses at `kubectl apply` what the operator's policy refuses, with
the operator's words, and admits what the operator admits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.errors import SpecError
from modeldeploy.resolve import ClusterFacts, resolve
from modeldeploy.settings import Settings
from tests.conftest import Cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "modeldeploy"
Obj = dict[str, Any]

VALUES: Obj = {
    "policy": {
        "admission": {"enabled": True},
        "allowedImageRepositories": [
            "ghcr.io/huggingface/text-generation-inference",
            "registry.internal/ml/",
        ],
        "allowedTokenSecretNames": ["hf-token"],
    }
}
# The operator with the same settings the chart passes it.
SETTINGS = Settings(
    allowed_image_repositories=("ghcr.io/huggingface/text-generation-inference", "registry.internal/ml/"),
    allowed_token_secrets=("hf-token",),
)

BAD: list[tuple[str, Obj]] = [
    ("other-image", {"engine": {"image": "docker.io/attacker/miner:1"}}),
    ("look-alike-image", {"engine": {"image": "ghcr.io/huggingface/text-generation-inference-evil:1"}}),
    ("system-priority", {"scheduling": {"priorityClassName": "system-node-critical"}}),
    ("tolerate-all", {"scheduling": {"tolerations": [{"operator": "Exists"}]}}),
    ("token-secret", {"model": {"id": "org/m", "tokenSecretRef": {"name": "other", "key": "token"}}}),
    ("otlp", {"engine": {"extraArgs": ["--otlp-endpoint", "http://elsewhere:4317"]}}),
    ("cors", {"engine": {"extraArgs": ["--cors-allow-origin", "*"]}}),
    ("ngrok", {"engine": {"extraArgs": ["--ngrok"]}}),
    ("prometheus-port", {"engine": {"extraArgs": ["--prometheus-port=80"]}}),
    ("port", {"engine": {"extraArgs": ["--port", "8080"]}}),
    ("unknown", {"engine": {"extraArgs": ["--not-a-flag"]}}),
    ("credential", {"engine": {"extraArgs": ["--api-key=abc"]}}),
    ("tokenizer-path", {"engine": {"extraArgs": ["--tokenizer-config-path", "/etc/passwd"]}}),
    ("tokenizer-dots", {"engine": {"extraArgs": ["--tokenizer-config-path=/data/../etc/passwd"]}}),
    ("lora-path", {"engine": {"extraArgs": ["--lora-adapters", "a/b=/etc"]}}),
    ("shell", {"engine": {"extraArgs": ["; rm -rf /"]}}),
    ("shell-value", {"engine": {"extraArgs": ["--max-best-of", "; rm -rf /"]}}),
    ("full-width", {"engine": {"extraArgs": ["\uff0d\uff0dport", "80"]}}),
    ("switch-value", {"engine": {"extraArgs": ["--disable-custom-kernels=true"]}}),
    ("no-value", {"engine": {"extraArgs": ["--cuda-graphs"]}}),
    ("stray", {"engine": {"extraArgs": ["--disable-custom-kernels", "yes"]}}),
]
GOOD: list[tuple[str, Obj]] = [
    ("plain", {}),
    ("tgi-tag", {"engine": {"image": "ghcr.io/huggingface/text-generation-inference:3.2.0"}}),
    ("mirror", {"engine": {"image": "registry.internal/ml/tgi:3.3.7"}}),
    ("priority", {"scheduling": {"priorityClassName": "gpu-high"}}),
    ("named-toleration", {"scheduling": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}}),
    ("token", {"model": {"id": "org/m", "tokenSecretRef": {"name": "hf-token", "key": "token"}}}),
    (
        "safe-args",
        {
            "engine": {
                "extraArgs": [
                    "--cuda-graphs",
                    "1,2,4",
                    "--max-best-of=4",
                    "--disable-custom-kernels",
                    "--usage-stats",
                    "off",
                    "--lora-adapters",
                    "org/a,org/b@v1",
                    "--tokenizer-config-path",
                    "/data/hub/tokenizer_config.json",
                ]
            }
        },
    ),
]


def body(name: str, spec: Obj) -> Obj:
    merged: Obj = {"model": {"id": "org/model"}, "resources": {"gpus": 1}}
    for key, value in spec.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": merged}  # fmt: skip


def operator_verdict(obj: Obj) -> SpecError | None:
    try:
        resolve(ModelDeploymentSpec.model_validate(obj["spec"]), SETTINGS, ClusterFacts())
    except SpecError as e:
        return e
    return None


def dry_run(cluster: Cluster, namespace: str, obj: Obj) -> tuple[bool, str]:
    res = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(obj), check=False
    )
    return res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def policy_namespace(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace the chart's admission policy is bound to (namespaced mode), its policy
    rendered by the real helm; removed afterwards (it is cluster-scoped)."""
    ns = f"p-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    values = tmp_path_factory.mktemp("policy") / "values.yaml"
    values.write_text(yaml.safe_dump({**VALUES, "watchNamespaces": [ns]}))
    manifest = cluster.helm(
        "template", "modeldeploy", str(CHART), "-n", ns, "-f", str(values),
        "--show-only", "templates/admissionpolicy.yaml",
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    cluster.kubectl("apply", "-f", "-", stdin=manifest)
    probe = body("probe", {"scheduling": {"priorityClassName": "system-node-critical"}})
    # The policy is enforced once the API server has compiled it and seen the binding.
    cluster.wait("admission policy in force", lambda: not dry_run(cluster, ns, probe)[0], timeout=60)
    policy = cluster.get("validatingadmissionpolicy", docs[0]["metadata"]["name"])
    assert policy is not None
    # Every expression type-checks against the CRD's schema.
    assert not (policy.get("status") or {}).get("typeChecking", {}).get("expressionWarnings"), policy[
        "status"
    ]
    try:
        yield ns
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", stdin=manifest, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize(("case", "spec"), BAD, ids=[c for c, _ in BAD])
def test_admission_refuses_what_the_operator_refuses(
    cluster: Cluster, policy_namespace: str, case: str, spec: Obj
) -> None:
    obj = body(case, spec)
    verdict = operator_verdict(obj)
    assert verdict is not None, f"the operator admits {case}"
    admitted, stderr = dry_run(cluster, policy_namespace, obj)
    assert not admitted, f"the admission policy admits {case}"
    assert "ValidatingAdmissionPolicy" in stderr, stderr
    # The operator's words, naming the field (the policy names the list, not the item).
    field = verdict.field.split("[")[0]
    assert f"{field}: " in stderr or f"{field.rsplit('.', 1)[0]}" in stderr, stderr
    assert verdict.message.split(", got ")[0].split(" (")[0] in stderr, (verdict.message, stderr)


@pytest.mark.parametrize(("case", "spec"), GOOD, ids=[c for c, _ in GOOD])
def test_admission_admits_what_the_operator_admits(
    cluster: Cluster, policy_namespace: str, case: str, spec: Obj
) -> None:
    obj = body(case, spec)
    assert operator_verdict(obj) is None
    admitted, stderr = dry_run(cluster, policy_namespace, obj)
    assert admitted, stderr


def test_a_refused_model_is_not_created_and_a_valid_one_is(cluster: Cluster, policy_namespace: str) -> None:
    bad = body("sneaky", {"engine": {"extraArgs": ["--otlp-endpoint", "http://elsewhere:4317"]}})
    res = cluster.kubectl("apply", "-n", policy_namespace, "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert res.returncode != 0
    assert (
        "--otlp-endpoint is not allowed in extraArgs: it sends traces (with prompts) to another host"
        in res.stderr
    )
    assert cluster.get("modeldeployment", "sneaky", policy_namespace) is None
    good = body("fine", {})
    cluster.kubectl("apply", "-n", policy_namespace, "-f", "-", stdin=yaml.safe_dump(good))
    assert cluster.get("modeldeployment", "fine", policy_namespace) is not None
    cluster.kubectl("delete", "modeldeployment", "fine", "-n", policy_namespace)


def test_the_binding_stays_in_the_watched_namespaces(
    cluster: Cluster, policy_namespace: str, namespace: str
) -> None:
    # namespace: another one, not watched: the policy does not apply there.
    admitted, stderr = dry_run(
        cluster, namespace, body("elsewhere", {"scheduling": {"priorityClassName": "system-x"}})
    )
    assert admitted, stderr
