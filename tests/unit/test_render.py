"""The renderer is pure and deterministic: golden files for the examples, and the rules a
rendered TGI Deployment must follow."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import render, tgi
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.cli import render_file
from modeldeploy.crdgen import crd_yaml
from modeldeploy.errors import SpecError
from modeldeploy.resolve import ClusterFacts, NodeGpus, resolve
from modeldeploy.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_matches_golden_file(path: Path) -> None:
    out = render_file(str(path), Settings())
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(out)
    assert golden.exists(), f"missing golden file; run UPDATE_GOLDEN=1 pytest {__file__}"
    assert out == golden.read_text(), "rendered children changed; review and run with UPDATE_GOLDEN=1"
    # Same input, same bytes.
    assert render_file(str(path), Settings()) == out


def test_committed_crd_matches_models() -> None:
    committed = (REPO / "crds" / "modeldeploy.dev_modeldeployments.yaml").read_text()
    assert committed == crd_yaml(), "crds/ drifted from api.py: run `make crd`"


def spec(**kw: Any) -> ModelDeploymentSpec:
    base: dict[str, Any] = {"model": {"id": "example-org/some-model"}}
    base.update(kw)
    return ModelDeploymentSpec.model_validate(base)


def deployment(s: ModelDeploymentSpec, facts: ClusterFacts | None = None) -> dict[str, Any]:
    res, _ = resolve(s, Settings(), facts or ClusterFacts())
    return render.deployment("m", "ns", s, res, render.Owner("m", "uid-1"))


def container(dep: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def test_typed_fields_map_to_one_flag_each() -> None:
    s = spec(
        engine={"quantize": "bitsandbytes-nf4", "kvCacheDtype": "fp8_e4m3fn", "maxInputTokens": 100,
                "maxTotalTokens": 200, "maxBatchPrefillTokens": 300, "maxConcurrentRequests": 7},
        resources={"gpus": 2},
    )  # fmt: skip
    args = container(deployment(s))["args"]
    pairs = dict(itertools.pairwise(args))
    expected = {
        "--quantize": "bitsandbytes-nf4", "--kv-cache-dtype": "fp8_e4m3fn", "--max-input-tokens": "100",
        "--max-total-tokens": "200", "--max-batch-prefill-tokens": "300", "--max-concurrent-requests": "7",
        "--num-shard": "2", "--model-id": "example-org/some-model", "--port": "80",
    }  # fmt: skip
    for flag, value in expected.items():
        assert args.count(flag) == 1, flag
        assert pairs[flag] == value, flag
    assert "--dtype" not in args


def test_gpu_limits_shm_probes_and_tolerations() -> None:
    dep = deployment(spec(resources={"gpus": 4, "shmSize": "8Gi"}, engine={"startupTimeoutSeconds": 1200}))
    c = container(dep)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1200
    assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 120
    assert c["ports"] == [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] > 90
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modeldeploy"


def test_gpu_type_becomes_node_affinity_on_product_labels() -> None:
    dep = deployment(spec(resources={"gpus": 1, "gpuType": "nvidia-l4"}))
    term = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]  # fmt: skip
    assert term["matchExpressions"][0]["key"] == "nvidia.com/gpu.product"
    assert "NVIDIA-L4" in term["matchExpressions"][0]["values"]


def test_token_is_only_a_secret_reference() -> None:
    s = spec(model={"id": "meta-llama/Llama-2-7b-chat-hf", "tokenSecretRef": {"name": "hf", "key": "tok"}},
             resources={"gpus": 1})  # fmt: skip
    env = container(deployment(s))["env"]
    token = [e for e in env if e["name"] == "HF_TOKEN"]
    assert token == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}}}]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--not-a-flag"], "is not a text-generation-launcher flag"),
        (["--quantize=awq"], "is set by spec.engine.quantize"),
        (["--num-shard", "2"], "is set by spec.resources.gpus"),
        (["--api-key=abc"], "takes a credential"),
        (["--cuda-graphs"], "needs a value"),
        (["stray"], "expected a --flag"),
    ],
)
def test_extra_args_refused(extra: list[str], needle: str) -> None:
    with pytest.raises(SpecError) as err:
        deployment(spec(engine={"extraArgs": extra}, resources={"gpus": 1}))
    assert needle in str(err.value)
    assert err.value.field.startswith("spec.engine.extraArgs[")


def test_extra_args_accepted_and_appended() -> None:
    extra = ["--cuda-graphs", "1,2,4", "--disable-custom-kernels"]
    args = container(deployment(spec(engine={"extraArgs": extra}, resources={"gpus": 1})))["args"]
    assert args[-2:] == ["--cuda-graphs=1,2,4", "--disable-custom-kernels"]


def test_serving_pod_is_hardened_by_default() -> None:
    dep = deployment(spec(resources={"gpus": 1}))
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))
    # What TGI writes is a volume: weights, shared memory, and /tmp (shard sockets; HOME caches).
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/data", "/dev/shm", "/tmp"}
    assert volumes[mounts["/tmp"]] == {"name": "tmp", "emptyDir": {}}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/tmp"
    # The shards' sockets (the launcher's --shard-uds-path default) land in that volume.
    reference = yaml.safe_load((REPO / "docs" / "reference" / "tgi-launcher-3.3.yaml").read_text())
    uds = next(f["default"] for f in reference["flags"] if f["name"] == "shard-uds-path")
    assert uds.startswith(tgi.TMP_DIR + "/")


def test_non_root_setting() -> None:
    s = spec(resources={"gpus": 1})
    res, _ = resolve(s, Settings(run_as_user=1000, read_only_root_filesystem=False), ClusterFacts())
    dep = render.deployment("m", "ns", s, res, None)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    c = container(dep)
    assert c["securityContext"]["readOnlyRootFilesystem"] is False
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["USER"] == "uid1000" and env["HOME"] == "/tmp"


def test_known_flags_cover_owned_flags() -> None:
    assert set(tgi.OWNED_FLAGS) <= tgi.KNOWN_FLAGS
    assert tgi.BOOLEAN_FLAGS <= tgi.KNOWN_FLAGS


def test_surge_only_when_a_gpu_of_the_type_is_free() -> None:
    s = spec(resources={"gpus": 2, "gpuType": "nvidia-h100-80gb"})
    full = ClusterFacts(
        gpu_nodes=(NodeGpus("h", "NVIDIA-H100-80GB-HBM3", 8, 7), NodeGpus("l", "NVIDIA-L4", 8, 0))
    )
    free = ClusterFacts(gpu_nodes=(NodeGpus("h", "NVIDIA-H100-80GB-HBM3", 8, 6),))
    assert deployment(s, full)["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert deployment(s, free)["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_pdb_only_with_more_than_one_replica() -> None:
    one = spec(resources={"gpus": 1})
    res, _ = resolve(one, Settings(), ClusterFacts())
    assert [o["kind"] for o in render.render("m", "ns", one, res, None)] == ["Deployment", "Service"]
    two = spec(resources={"gpus": 1}, replicas=2)
    assert "PodDisruptionBudget" in [o["kind"] for o in render.render("m", "ns", two, res, None)]


def test_plan_does_not_fit_names_field_and_alternatives() -> None:
    s = spec(model={"preset": "qwen2.5-72b-instruct"}, resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"})
    with pytest.raises(SpecError) as err:
        deployment(s)
    assert err.value.reason == "DoesNotFit"
    assert err.value.field == "spec.resources.gpus"
    assert "gpus 2 on nvidia-h100-80gb" in err.value.message


def test_rendered_yaml_round_trips() -> None:
    out = render_file(str(EXAMPLES[0]), Settings())
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs][:2] == ["Deployment", "Service"]


def test_plan_cli_prints_the_shard_table(tmp_path: Path) -> None:
    from modeldeploy.cli import plan_table

    out = plan_table(str(REPO / "manifests" / "examples" / "falcon-40b.yaml"), None, Settings())
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "4", "8"]
    assert rows[1][-1] == "chosen" and "needs" in rows[0]
    assert "gpus 2, --num-shard 2" in out


def test_remote_code_is_written_where_the_pod_can_write(tmp_path: Path) -> None:
    """transformers writes a model's remote code under HF_HOME/modules: /data is read-only
    once the weights are prefetched, and so is the root filesystem."""
    import yaml as _yaml

    from modeldeploy.cli import render_file
    from modeldeploy.settings import Settings

    f = tmp_path / "m.yaml"
    f.write_text(_yaml.safe_dump({
        "apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "team"},
        "spec": {"model": {"id": "org/custom", "trustRemoteCode": True},
                 "resources": {"gpus": 1, "gpuType": "nvidia-h100-80gb"}},
    }))  # fmt: skip
    dep = next(d for d in _yaml.safe_load_all(render_file(str(f), Settings())) if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_MODULES_CACHE"].startswith("/tmp/")
