"""What the operator costs the API server, read from the real API server's audit log (the
session operator runs as its own user): a pass that changes nothing makes no request, an idle
operator writes nothing, and a change to one model touches only that model's objects."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from mdlocal.audit import AuditLog, Request, by_verb_and_resource
from mdlocal.localcluster import OPERATOR_TOKEN_USER
from tests.conftest import OPERATOR_METRICS_PORT, Cluster
from tests.integration.test_reconcile import model, wait_ready

pytestmark = pytest.mark.cluster
NAMES = ("scale-a", "scale-b", "scale-c")
H100 = {"gpus": 1, "gpuType": "nvidia-h100-80gb"}


def passes() -> float:
    """Reconcile passes the operator has run, from its own metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r"^modeldeploy_reconcile_total\{[^}]*\} (\S+)$", text, re.M))


def models_in_cluster(cluster: Cluster) -> int:
    out = json.loads(cluster.kubectl("get", "modeldeployments", "-A", "-o", "json").stdout)
    return len(out["items"])


def quiet_window(cluster: Cluster, audit: AuditLog, keep: Any) -> list[Request]:
    """The operator's requests that `keep` selects, over a window long enough for every model
    in the cluster to have had two periodic (no-op) passes."""
    mark = audit.mark()
    start = passes()
    need = 2 * models_in_cluster(cluster)
    cluster.wait(f"{need} more passes", lambda: passes() - start >= need, timeout=60)
    return [r for r in audit.since(mark, OPERATOR_TOKEN_USER) if keep(r)]


def models_ready(cluster: Cluster, namespace: str) -> None:
    for name in NAMES:
        cluster.apply(model(name, replicas=1, resources=H100), namespace)
    for name in NAMES:
        wait_ready(cluster, namespace, name)


def test_no_op_passes_make_no_request_and_an_idle_operator_writes_nothing(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    audit = AuditLog(cluster.lc.audit_log)
    models_ready(cluster, namespace)
    # Converged once no window of periodic passes asks anything about this namespace. A pass
    # that lists, gets or applies anything (as every pass did before the watch-fed reads)
    # never gets there.
    seen: list[list[Request]] = []

    def about_namespace(r: Request) -> bool:
        return r.namespace == namespace or (r.write and not r.namespace)

    def converged() -> bool:
        mine = quiet_window(cluster, audit, about_namespace)
        seen.append(mine)
        return not mine

    try:
        cluster.wait("a window without requests for the namespace", converged, timeout=120)
    except TimeoutError as e:
        raise AssertionError(f"requests in each window: {[by_verb_and_resource(w) for w in seen]}") from e
    # Idle: no write anywhere (cluster-scoped objects included), window after window.
    writes = quiet_window(cluster, audit, lambda r: r.write and r.namespace in (namespace, ""))
    assert not writes, by_verb_and_resource(writes)


def test_a_change_to_one_model_touches_only_that_models_objects(
    cluster: Cluster, namespace: str, operator: Any
) -> None:
    audit = AuditLog(cluster.lc.audit_log)
    models_ready(cluster, namespace)
    mark = audit.mark()
    cluster.kubectl(
        "patch", "mdep", "scale-b", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}'
    )
    wait_ready(cluster, namespace, "scale-b")
    cluster.wait(
        "the Deployment scaled",
        lambda: (cluster.get("deployment", "scale-b", namespace) or {}).get("spec", {}).get("replicas") == 2,
    )
    touched = [r for r in audit.since(mark, OPERATOR_TOKEN_USER) if r.namespace == namespace]
    assert touched, "the change was applied without a request?"
    # Lists have no name: a pass that lists the namespace (or the cluster) would show here.
    others = [r for r in touched if r.name != "scale-b" and r.resource != "events"]
    assert not others, by_verb_and_resource(others)
