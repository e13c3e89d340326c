"""What a ModelDeployment may ask for (policy.py, tgi.SAFE_FLAGS): each refusal of the hostile-input
run, the settings that widen the policy, and that resolve (so the operator and `modeldeploy
render`) applies it before anything is rendered."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import policy, tgi
from modeldeploy.api import DEFAULT_IMAGE, ModelDeploymentSpec
from modeldeploy.errors import SpecError
from modeldeploy.resolve import ClusterFacts, resolve
from modeldeploy.settings import Settings


def spec(**kw: Any) -> ModelDeploymentSpec:
    base: dict[str, Any] = {"model": {"id": "example-org/some-model"}, "resources": {"gpus": 1}}
    base.update(kw)
    return ModelDeploymentSpec.model_validate(base)


def refused(s: ModelDeploymentSpec, settings: Settings | None = None) -> SpecError:
    with pytest.raises(SpecError) as err:
        resolve(s, settings or Settings(), ClusterFacts())
    return err.value


def admitted(s: ModelDeploymentSpec, settings: Settings | None = None) -> None:
    resolve(s, settings or Settings(), ClusterFacts())


# -- extraArgs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "index", "needle"),
    [
        # Network egress.
        (["--otlp-endpoint", "http://elsewhere:4317"], 0, "sends traces (with prompts) to another host"),
        (["--otlp-endpoint=http://elsewhere:4317"], 0, "sends traces"),
        (["--otlp-service-name", "x"], 0, "is not allowed in extraArgs"),
        (["--cors-allow-origin", "*"], 0, "other origins"),
        (["--ngrok"], 0, "tunnel"),
        (["--ngrok-edge", "edge"], 0, "tunnel"),
        (["--master-addr", "elsewhere"], 0, "another host"),
        # Files outside the model's own.
        (["--tokenizer-config-path", "/etc/passwd"], 1, "a file under /data"),
        (["--tokenizer-config-path=/data/../etc/passwd"], 0, "without hidden or '..' parts"),
        (["--tokenizer-config-path", "/data/./x"], 1, "a file under /data"),
        (["--tokenizer-config-path", "/data"], 1, "a file under /data"),
        (["--lora-adapters", "a/b=/etc"], 1, "no local paths"),
        (["--lora-adapters", "/etc/adapters"], 1, "no local paths"),
        (["--lora-adapters", "org/adapter,../x"], 1, "no local paths"),
        (["--weights-cache-override", "/etc"], 0, "is set by spec.cache"),
        # Owned ports and sockets.
        (["--prometheus-port", "80"], 0, "binds a port"),
        (["--master-port", "80"], 0, "binds a port"),
        (["--shard-uds-path", "/etc/x"], 0, "sockets"),
        (["--port", "8080"], 0, "is set by the operator"),
        (["--hostname", "0.0.0.0"], 0, "is set by the operator"),
        # Injection attempts, kept refused.
        (["; rm -rf /"], 0, "expected a --flag"),
        (["--max-best-of", "; rm -rf /"], 1, "takes a whole number"),
        (["--max-best-of=2; rm -rf /"], 0, "takes a whole number"),
        (["--cuda-graphs", "1,2 && curl x"], 1, "batch sizes separated by commas"),
        (["\uff0d\uff0dport", "80"], 0, "expected a --flag"),  # full-width hyphens
        (["--\uff50ort", "80"], 0, "is not a text-generation-launcher flag"),  # full-width p
        (["--rope-scaling", "LINEAR"], 1, "linear or dynamic"),
        (["--waiting-served-ratio", "1e9"], 1, "a number"),
        # Switches take no value; values need their flag.
        (["--disable-custom-kernels=false"], 0, "is a switch and takes no value"),
        (["--disable-custom-kernels", "false"], 1, "expected a --flag"),
        (["--usage-stats"], 0, "needs a value"),
        (["--api-key", "abc"], 0, "takes a credential"),
        (["--ngrok-authtoken=abc"], 0, "takes a credential"),
    ],
)
def test_extra_args_refusals(extra: list[str], index: int, needle: str) -> None:
    err = refused(spec(engine={"extraArgs": extra}))
    assert err.field == f"spec.engine.extraArgs[{index}]"
    assert needle in err.message, err.message


def test_a_newline_in_extra_args_is_refused_at_validation() -> None:
    with pytest.raises(ValueError, match="extraArgs"):
        spec(engine={"extraArgs": ["--max-best-of", "2\n--port=1"]})


def test_safe_flags_are_passed_as_written() -> None:
    extra = [
        "--cuda-graphs", "1,2,4,8", "--max-best-of=4", "--usage-stats", "off", "--rope-scaling", "dynamic",
        "--rope-factor", "2.0", "--lora-adapters", "org/a,org/b@v1.0", "--disable-grammar-support",
        "--tokenizer-config-path", "/data/hub/models--org--m/snapshots/abc/tokenizer_config.json",
        "--cuda-memory-fraction", "0.9", "--env",
    ]  # fmt: skip
    pairs = tgi.parse_extra_args(extra)
    assert pairs == [
        ("cuda-graphs", "1,2,4,8"), ("max-best-of", "4"), ("usage-stats", "off"), ("rope-scaling", "dynamic"),
        ("rope-factor", "2.0"), ("lora-adapters", "org/a,org/b@v1.0"), ("disable-grammar-support", None),
        ("tokenizer-config-path", "/data/hub/models--org--m/snapshots/abc/tokenizer_config.json"),
        ("cuda-memory-fraction", "0.9"), ("env", None),
    ]  # fmt: skip
    admitted(spec(engine={"extraArgs": extra}))


# -- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        (
            "ghcr.io/huggingface/text-generation-inference:3.3.7",
            "ghcr.io/huggingface/text-generation-inference",
        ),
        ("localhost:5000/tgi:1@sha256:" + "a" * 64, "localhost:5000/tgi"),
        ("localhost:5000/tgi", "localhost:5000/tgi"),
        ("tgi", "tgi"),
    ],
)
def test_image_repository(image: str, repo: str) -> None:
    assert policy.image_repository(image) == repo


@pytest.mark.parametrize(
    "image",
    [
        "",
        DEFAULT_IMAGE,
        "ghcr.io/huggingface/text-generation-inference:3.2.0",
        "ghcr.io/huggingface/text-generation-inference@sha256:" + "b" * 64,
        "ghcr.io/huggingface/text-generation-inference:3.3.7@sha256:" + "b" * 64,
    ],
)
def test_tgi_images_are_allowed_by_default(image: str) -> None:
    admitted(spec(engine={"image": image}))


@pytest.mark.parametrize(
    "image",
    [
        "docker.io/attacker/miner:1",
        "ghcr.io/huggingface/text-generation-inference-evil:3.3.7",  # a longer name, not the repo
        "ghcr.io/huggingface/text-generation-inference/sub:1",
        "ghcr.io:443/huggingface/text-generation-inference:1",  # another registry host
    ],
)
def test_other_images_are_stalled_with_a_clear_message(image: str) -> None:
    err = refused(spec(engine={"image": image}))
    assert err.field == "spec.engine.image"
    assert err.reason == "NotAllowed"
    assert f"image {image} is not from an allowed repository" in err.message
    assert "ghcr.io/huggingface/text-generation-inference" in err.message


def test_image_settings_widen_and_narrow() -> None:
    mirror = Settings(allowed_image_repositories=("registry.internal/ml/",))
    admitted(spec(engine={"image": "registry.internal/ml/tgi:3.3.7"}), mirror)
    admitted(spec(engine={"image": "registry.internal/ml/team/tgi:1"}), mirror)
    assert (
        refused(spec(engine={"image": DEFAULT_IMAGE.replace("3.3.7", "3.2.0")}), mirror).reason
        == "NotAllowed"
    )
    assert refused(spec(engine={"image": "registry.internal/mlx/tgi:1"}), mirror).reason == "NotAllowed"
    # The operator's own default image is always allowed: it is the admin's choice.
    admitted(spec(engine={"image": DEFAULT_IMAGE}), mirror)
    admitted(spec(engine={"image": "anything.example/x:1"}), Settings(allowed_image_repositories=("*",)))
    only_default = Settings(allowed_image_repositories=())
    admitted(spec(), only_default)
    assert (
        "none but the default image" in refused(spec(engine={"image": "a.example/b:1"}), only_default).message
    )


# -- priority classes, tolerations, token Secrets ---------------------------------------------


@pytest.mark.parametrize("name", ["system-node-critical", "system-cluster-critical", "system-anything"])
def test_system_priority_classes_are_refused_by_default(name: str) -> None:
    err = refused(spec(scheduling={"priorityClassName": name}))
    assert err.field == "spec.scheduling.priorityClassName"
    assert err.reason == "NotAllowed"
    assert "preempt other tenants" in err.message


def test_priority_class_setting() -> None:
    admitted(spec(scheduling={"priorityClassName": "gpu-high"}))
    listed = Settings(allowed_priority_classes=("gpu-high", "system-cluster-critical"))
    admitted(spec(scheduling={"priorityClassName": "gpu-high"}), listed)
    admitted(spec(scheduling={"priorityClassName": "system-cluster-critical"}), listed)
    err = refused(spec(scheduling={"priorityClassName": "gpu-low"}), listed)
    assert "allowed: gpu-high, system-cluster-critical" in err.message


@pytest.mark.parametrize(
    "tolerations",
    [
        [{"operator": "Exists"}],
        [{"key": "a", "operator": "Exists"}, {"operator": "Exists", "effect": "NoSchedule"}],
    ],
)
def test_tolerate_everything_is_refused_unless_allowed(tolerations: list[dict[str, str]]) -> None:
    s = spec(scheduling={"tolerations": tolerations})
    err = refused(s)
    assert err.field == f"spec.scheduling.tolerations[{len(tolerations) - 1}]"
    assert "tolerates every taint" in err.message
    admitted(s, Settings(allow_tolerate_all=True))


def test_tolerations_of_named_taints_are_allowed() -> None:
    admitted(
        spec(scheduling={"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]})
    )


def test_token_secret_names_setting() -> None:
    s = spec(model={"id": "org/gated", "tokenSecretRef": {"name": "hf-token", "key": "token"}})
    admitted(s)
    admitted(s, Settings(allowed_token_secrets=("hf-token",)))
    err = refused(s, Settings(allowed_token_secrets=("hf-read",)))
    assert err.field == "spec.model.tokenSecretRef.name" and err.reason == "NotAllowed"


# -- settings from the environment ------------------------------------------------------------


def test_policy_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "MODELDEPLOY_ALLOWED_IMAGE_REPOSITORIES": f"registry.internal/ml/, {tgi.IMAGE_REPOSITORY}",
            "MODELDEPLOY_ALLOWED_PRIORITY_CLASSES": "gpu-high,gpu-low",
            "MODELDEPLOY_ALLOW_TOLERATE_ALL": "true",
            "MODELDEPLOY_ALLOWED_TOKEN_SECRETS": "hf-token",
            "MODELDEPLOY_RUN_AS_USER": "1000",
            "MODELDEPLOY_READ_ONLY_ROOT_FILESYSTEM": "false",
            "MODELDEPLOY_PREFETCH_LOG_NAMESPACES": "team-a,team-b",
        }
    )
    assert s.allowed_image_repositories == (
        "registry.internal/ml/",
        "ghcr.io/huggingface/text-generation-inference",
    )
    assert s.allowed_priority_classes == ("gpu-high", "gpu-low")
    assert s.allow_tolerate_all is True
    assert s.allowed_token_secrets == ("hf-token",)
    assert s.run_as_user == 1000
    assert s.read_only_root_filesystem is False
    assert s.reads_prefetch_log("team-a") and not s.reads_prefetch_log("team-c")
    # Defaults: TGI's repository only, no system-* class, no tolerate-all, no log reading.
    d = Settings.from_env({})
    assert d.allowed_image_repositories == (tgi.IMAGE_REPOSITORY,)
    assert DEFAULT_IMAGE.startswith(tgi.IMAGE_REPOSITORY + ":")
    assert (d.allowed_priority_classes, d.allow_tolerate_all, d.run_as_user) == ((), False, None)
    assert not d.reads_prefetch_log("default")
    assert Settings.from_env({"MODELDEPLOY_ALLOWED_IMAGE_REPOSITORIES": ""}).allowed_image_repositories == ()
    assert Settings.from_env({"MODELDEPLOY_PREFETCH_LOG_NAMESPACES": "*"}).reads_prefetch_log("any")
    with pytest.raises(ValueError, match="run_as_user"):
        Settings.from_env({"MODELDEPLOY_RUN_AS_USER": "0"})
