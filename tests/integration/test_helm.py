"""The Helm chart against the real API server: server-side dry runs, install/upgrade/uninstall,
Pod Security admission of the operator pod, and the operator running with nothing but the
chart's RBAC (a ServiceAccount token) reconciling every example."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdlocal.localcluster import start_operator, stop_process
from tests.conftest import Cluster, condition
from tests.standins.hf_hub import HubStandIn

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modeldeploy"
EXAMPLES = REPO / "manifests" / "examples"
RELEASE = "modeldeploy"
SA = RELEASE  # the chart's ServiceAccount is named after the release's full name
PRIMARY_EXAMPLE = "dolphin-2.8-mistral-7b.yaml"

Obj = dict[str, Any]


def values_args(tmp_path: Path, values: Obj) -> list[str]:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def docs_of(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture()
def release(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A release name in the test namespace; uninstalled afterwards, because the chart's
    ClusterRoles and bindings outlive the namespace."""
    yield RELEASE
    cluster.helm("uninstall", RELEASE, "-n", namespace, "--ignore-not-found", check=False)


def install(cluster: Cluster, namespace: str, tmp_path: Path, values: Obj | None = None) -> None:
    # The session applied the ModelDeployment CRD; Helm 4 would apply crds/ again server-side
    # and co-own its fields, so leave the shared CRD to the session.
    cluster.helm(
        "install", RELEASE, str(CHART), "-n", namespace, "--skip-crds", *values_args(tmp_path, values or {})
    )


def gone(cluster: Cluster, kind: str, name: str, namespace: str | None) -> bool:
    return cluster.get(kind, name, namespace) is None


def can_i(cluster: Cluster, namespace: str, *args: str) -> bool:
    res = cluster.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{namespace}:{SA}", check=False)
    answer = res.stdout.strip()
    assert answer in ("yes", "no"), res.stderr
    return answer == "yes"


# -- server-side dry runs ----------------------------------------------------------------------


def test_rendered_chart_passes_server_side_dry_run(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    default = cluster.helm("template", RELEASE, str(CHART), "-n", namespace, "--include-crds").stdout
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=default).stdout
    assert f"deployment.apps/{RELEASE} serverside-applied (server dry run)" in out

    non_default: Obj = {
        "watchNamespaces": [namespace, "default"],
        "replicas": 2,
        "peering": {"enabled": True},
        "logFormat": "json",
        "logLevel": "debug",
        "gpuTypes": {
            "nvidia-a10g-24gb": {"memoryMiB": 23028, "computeCapability": 8.6, "products": ["NVIDIA-A10G"]}
        },
        "startupTimeoutSeconds": 1200,
        "hfEndpoint": "https://hf-mirror.example",
        # The ServiceMonitor kind does not exist here; its rendering is a unit test.
        "metrics": {"enabled": True},
        "priorityClassName": "system-cluster-critical",
        "policy": {"admission": {"enabled": True}, "allowedPriorityClasses": ["gpu-high"]},
        "modelPods": {"runAsUser": 1000},
        "prefetchProgress": {"fromLogs": True},
    }
    rendered = docs_of(
        cluster.helm(
            "template", RELEASE, str(CHART), "-n", namespace, *values_args(tmp_path, non_default)
        ).stdout
    )
    # The kopf peering objects need kopf's CRDs to exist for real (a dry run creates nothing).
    peering_crds = [d for d in rendered if d["kind"] == "CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in peering_crds} == {
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    cluster.apply(peering_crds)
    for crd in peering_crds:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s"
        )
    out = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(rendered)
    ).stdout
    for expected in (
        f"role.rbac.authorization.k8s.io/{RELEASE} serverside-applied",
        f"service/{RELEASE}-metrics serverside-applied",
        f"deployment.apps/{RELEASE} serverside-applied",
        f"role.rbac.authorization.k8s.io/{RELEASE}-prefetch-log serverside-applied",
        f"validatingadmissionpolicy.admissionregistration.k8s.io/{RELEASE}-{namespace}-modeldeployments",
        f"validatingadmissionpolicybinding.admissionregistration.k8s.io/{RELEASE}-{namespace}-modeldeployments",
    ):
        assert expected in out, out


# -- install, upgrade, uninstall ---------------------------------------------------------------


def test_install_upgrade_uninstall(cluster: Cluster, namespace: str, release: str, tmp_path: Path) -> None:
    install(cluster, namespace, tmp_path)
    cluster_name = f"{RELEASE}-{namespace}"
    dep = cluster.get("deployment", RELEASE, namespace)
    assert dep is not None
    assert cluster.get("serviceaccount", SA, namespace) is not None
    assert cluster.get("configmap", f"{RELEASE}-gpu-catalog", namespace) is not None
    assert cluster.get("clusterrole", cluster_name) is not None
    assert cluster.get("clusterrolebinding", cluster_name) is not None
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=info" in args

    cluster.helm(
        "upgrade", release, str(CHART), "-n", namespace, "--set", "logLevel=debug", "--set", "logFormat=json"
    )
    upgraded = cluster.get("deployment", RELEASE, namespace)
    assert upgraded is not None
    assert upgraded["metadata"]["generation"] > dep["metadata"]["generation"]
    args = upgraded["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=debug" in args and "--log-format=json" in args
    history = json.loads(cluster.helm("history", release, "-n", namespace, "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]

    cluster.helm("uninstall", release, "-n", namespace, "--wait")
    for kind, name, ns in [
        ("deployment", RELEASE, namespace),
        ("serviceaccount", SA, namespace),
        ("configmap", f"{RELEASE}-gpu-catalog", namespace),
        ("networkpolicy", RELEASE, namespace),
        ("clusterrole", cluster_name, None),
        ("clusterrolebinding", cluster_name, None),
    ]:
        cluster.wait(f"{kind}/{name} deleted", functools.partial(gone, cluster, kind, name, ns), timeout=30)
    assert cluster.get("crd", "modeldeployments.modeldeploy.dev") is not None


# -- Pod Security admission --------------------------------------------------------------------


def test_restricted_namespace_admits_the_operator_pod(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # The admission is really on: a pod without the restricted settings is refused.
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
    }
    res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(bare), check=False)
    assert res.returncode != 0 and "violates PodSecurity" in res.stderr, res.stderr

    # The chart's namespaced objects only: admission concerns the pod, not the RBAC.
    shown = [f"--show-only=templates/{t}.yaml" for t in ("serviceaccount", "configmap", "deployment")]
    manifest = cluster.helm("template", RELEASE, str(CHART), "-n", namespace, *shown).stdout
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)
    selector = "app.kubernetes.io/name=modeldeploy,app.kubernetes.io/component=operator"
    pods = cluster.wait("operator pod created", lambda: cluster.list("pods", namespace, selector), timeout=60)
    assert len(pods) == 1
    assert pods[0]["spec"]["securityContext"]["runAsNonRoot"] is True
    events = cluster.list("events", namespace)
    failed = [e["message"] for e in events if e.get("reason") == "FailedCreate"]
    assert not failed, failed
    for rs in cluster.list("replicasets", namespace, selector):
        assert not condition(rs, "ReplicaFailure"), rs["status"]


# -- the operator with only the chart's RBAC ---------------------------------------------------


def sa_kubeconfig(cluster: Cluster, namespace: str, path: Path) -> Path:
    return cluster.lc.service_account_kubeconfig(namespace, SA, path)


@pytest.fixture()
def sa_operator(
    cluster: Cluster, namespace: str, release: str, hub: HubStandIn, tmp_path: Path
) -> Iterator[Path]:
    """`modeldeploy run -n NAMESPACE` authenticated as the chart's ServiceAccount; yields its log."""
    install(cluster, namespace, tmp_path, {"watchNamespaces": [namespace]})
    kubeconfig = sa_kubeconfig(cluster, namespace, tmp_path / "kubeconfig")
    log_path = tmp_path / "operator.log"
    env = {
        **cluster.lc.env(),
        "KUBECONFIG": str(kubeconfig),
        "MODELDEPLOY_RESYNC_SECONDS": "5",
        "MODELDEPLOY_HF_ENDPOINT": hub.url,
    }
    # Debug: kopf logs each handler's outcome only at that level.
    proc = start_operator(env, log_path, "-n", namespace, "--log-level=debug")
    try:
        yield log_path
    finally:
        stop_process(proc)


def examples() -> dict[str, Obj]:
    out: dict[str, Obj] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in docs_of(path.read_text()):
            if doc.get("kind") == "ModelDeployment":
                out[path.name] = doc
    return out


def test_operator_with_chart_rbac_reconciles_every_example(
    cluster: Cluster, namespace: str, sa_operator: Path
) -> None:
    models = examples()
    assert PRIMARY_EXAMPLE in models

    def reconciled(name: str, ready_true: bool) -> Obj | None:
        md = cluster.get("modeldeployment", name, namespace)
        ready = condition(md, "Ready")
        if ready is None or (ready_true and ready.get("status") != "True"):
            return None
        if cluster.get("deployment", name, namespace) is None:
            return None
        return md

    # The first one all the way to Ready; it needs one GPU of a type the cluster has.
    primary = models.pop(PRIMARY_EXAMPLE)
    name = primary["metadata"]["name"]
    cluster.apply(primary, namespace)
    cluster.wait(f"{name} Ready", lambda: reconciled(name, ready_true=True), timeout=90)
    # The others may wait for GPUs the first holds; a Ready condition and a Deployment show
    # the operator could read, write and report on them.
    cluster.apply(list(models.values()), namespace)
    for model in models.values():
        n = model["metadata"]["name"]
        cluster.wait(f"{n} reconciled", functools.partial(reconciled, n, ready_true=False), timeout=60)

    # A model asking for what the examples do not (an HPA, a weight cache) goes through the
    # same RBAC without a denial.
    coverage = {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "rbac-coverage"},
        "spec": {
            "model": {"id": primary["spec"]["model"]["id"]},
            "resources": {"gpus": 1},
            "autoscaling": {
                "enabled": True,
                "engine": "hpa",
                "metric": "cpu",
                "maxReplicas": 2,
                "target": 80,
            },
            "cache": {
                "enabled": True,
                "size": "20Gi",
                "storageClassName": "standard",
                "accessMode": "ReadWriteOnce",
            },
        },
    }
    cluster.apply(coverage, namespace)
    cluster.wait(
        "rbac-coverage reconciled",
        functools.partial(reconciled, "rbac-coverage", ready_true=False),
        timeout=60,
    )
    cluster.wait("rbac-coverage HPA", lambda: cluster.get("hpa", "rbac-coverage", namespace), timeout=30)

    # kopf's own watch handled them too (the resync loop alone could have made them Ready);
    # its first list may be retried, e.g. while a CRD's storage re-initialises.
    cluster.wait(
        "kopf on_model_event handler", lambda: "Handler 'on_model_event' succeeded" in sa_operator.read_text()
    )
    log = sa_operator.read_text()
    # "Forbidden" is in every client's 403 report; a bare 403 can be a resourceVersion in debug logs.
    denial = re.compile(r"forbidden|(status|code)\W{0,3}403\b", re.IGNORECASE)
    forbidden = [ln for ln in log.splitlines() if denial.search(ln)]
    assert not forbidden, "the operator hit RBAC denials:\n" + "\n".join(forbidden[:20])
    # Hand the simulated GPUs back before the next test rather than at namespace deletion.
    cluster.kubectl("delete", "modeldeployments", "--all", "-n", namespace, "--timeout=60s")


@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_service_account_permissions(
    cluster: Cluster, namespace: str, release: str, tmp_path: Path, mode: str
) -> None:
    namespaced = mode == "namespaced"
    install(cluster, namespace, tmp_path, {"watchNamespaces": [namespace] if namespaced else []})
    model = "modeldeployments.modeldeploy.dev"
    # Never Secrets, anywhere; never everything.
    for where in (["-n", namespace], ["-n", "kube-system"], ["--all-namespaces"]):
        for verb in ("get", "list", "watch"):
            assert not can_i(cluster, namespace, verb, "secrets", *where), (verb, where)
        assert not can_i(cluster, namespace, "*", "*", *where), where
    # The status subresource, and no update or delete of the user's objects.
    assert can_i(cluster, namespace, "patch", model, "--subresource=status", "-n", namespace)
    assert not can_i(cluster, namespace, "update", model, "-n", namespace)
    assert not can_i(cluster, namespace, "delete", model, "-n", namespace)
    assert can_i(cluster, namespace, "create", "deployments.apps", "-n", namespace)
    # Outside the watched namespace: nothing to write in namespaced mode.
    assert can_i(cluster, namespace, "create", "deployments.apps", "-n", "default") is not namespaced
    assert can_i(cluster, namespace, "patch", model, "-n", "default") is not namespaced
    # Cluster-wide reads it needs in both modes: GPU nodes and the pod list for GPU accounting.
    assert can_i(cluster, namespace, "list", "nodes")
    assert can_i(cluster, namespace, "list", "pods", "--all-namespaces")
    assert can_i(cluster, namespace, "watch", "pods", "--all-namespaces") is not namespaced
    # The effective rule list has no Secrets and no wildcard resource rule.
    listed = cluster.kubectl(
        "auth", "can-i", "--list", "-n", namespace, f"--as=system:serviceaccount:{namespace}:{SA}"
    ).stdout
    for line in listed.splitlines()[1:]:
        resource = line.split()[0] if line.split() else ""
        assert not resource.startswith("secrets"), line
        assert resource != "*.*", line
