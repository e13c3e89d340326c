"""Two operator replicas under kopf peering, as the chart runs them with replicas=2: the one with
the higher priority works, the other stands by and takes over when the first one goes."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modeldeploy.localcluster import free_port, start_operator, stop_process
from tests.conftest import Cluster
from tests.integration.test_helm import CHART, RELEASE, Obj, docs_of, install, sa_kubeconfig
from tests.integration.test_reconcile import model, wait_ready
from tests.standins.hf_hub import HubStandIn

SKIPPED = "standby: resync of"  # the operator's debug line when a standby leaves a resync
LIFETIME = 10  # --peering-lifetime: how long a killed replica still counts as alive


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def samples(self, prefix: str) -> list[float]:
        """The values of this replica's metric lines that start with `prefix`."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return [float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(prefix)]

    def reconciles(self) -> float:
        """modeldeploy_reconcile_total summed over outcomes: how many passes this replica ran."""
        return sum(self.samples("modeldeploy_reconcile_total{"))

    def count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)


@dataclass(frozen=True)
class Case:
    scope: str  # "namespaced" (a KopfPeering) or "cluster-wide" (the ClusterKopfPeering)
    stop: str  # how the active replica goes: "terminate" (rolling update) or "kill" (crash)


CASES = [Case("namespaced", "terminate"), Case("cluster-wide", "kill")]


@pytest.fixture(params=CASES, ids=lambda c: f"{c.scope}-{c.stop}")
def case(request: pytest.FixtureRequest) -> Case:
    out: Case = request.param
    return out


@pytest.fixture()
def peering_kind(cluster: Cluster, namespace: str, case: Case, tmp_path: Path) -> Iterator[str]:
    """The chart installed with replicas=2 and peering: its peering object (a post-install hook)
    and its ServiceAccount. kopf's peering CRDs are shared by every test, so they are applied
    once and the release leaves them alone (peering.createCRDs=false, as documented)."""
    rendered = cluster.helm(
        "template", RELEASE, str(CHART), "--set", "replicas=2", "--set", "peering.enabled=true",
        "--show-only", "templates/peering.yaml",
    ).stdout  # fmt: skip
    crds = [d for d in docs_of(rendered) if d["kind"] == "CustomResourceDefinition"]
    cluster.apply(crds)
    for crd in crds:
        cluster.wait_established(crd["metadata"]["name"])
    values: Obj = {
        "replicas": 2,
        "peering": {"enabled": True, "createCRDs": False, "lifetimeSeconds": LIFETIME},
    }
    if case.scope == "namespaced":
        values["watchNamespaces"] = [namespace]
    install(cluster, namespace, tmp_path, values)
    try:
        kind = "kopfpeering" if case.scope == "namespaced" else "clusterkopfpeering"
        where = namespace if case.scope == "namespaced" else None
        assert cluster.get(kind, "modeldeploy", where) is not None, "the chart's hook made no peering object"
        yield kind
    finally:
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--ignore-not-found", check=False)


@pytest.fixture()
def replicas(
    cluster: Cluster, namespace: str, hub: HubStandIn, peering_kind: str, tmp_path: Path
) -> Iterator[tuple[Replica, Replica]]:
    """(standby, active): the chart's two replicas, run locally with the operator Deployment's
    own arguments and authenticated as its ServiceAccount (a TokenRequest token), so the
    chart's RBAC is all they have. The active one starts first, with the higher priority."""
    dep = cluster.get("deployment", RELEASE, namespace)
    assert dep is not None and dep["spec"]["replicas"] == 2
    chart_args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert chart_args[0] == "run" and f"--peering-lifetime={LIFETIME}" in chart_args
    env = {
        **cluster.lc.env(),
        "KUBECONFIG": str(sa_kubeconfig(cluster, namespace, tmp_path / "kubeconfig")),
        "MODELDEPLOY_RESYNC_SECONDS": "2",
        "MODELDEPLOY_HF_ENDPOINT": hub.url,
    }
    started: list[Replica] = []
    try:
        for name, priority in (("active", 200), ("standby", 100)):
            log = cluster.lc.state / "logs" / f"peering-{namespace}-{name}.log"
            port = free_port()
            # Later flags win: a fixed priority, and debug to see which handlers ran. kopf
            # names a replica by POD_ID in the peering object, as the chart's pods do.
            proc = start_operator(
                {**env, "POD_ID": name}, log, *chart_args[1:], f"--priority={priority}", "--log-level=debug",
                metrics_port=port,
            )  # fmt: skip
            started.append(Replica(name, proc, log, port))
        yield started[1], started[0]
    finally:
        for r in started:
            if r.proc.poll() is None:
                stop_process(r.proc)


def test_standby_replica_handles_nothing_until_the_active_one_goes(
    cluster: Cluster, namespace: str, case: Case, peering_kind: str, replicas: tuple[Replica, Replica]
) -> None:
    standby, active = replicas
    where = namespace if case.scope == "namespaced" else None

    def peers() -> dict[str, Any]:
        return dict((cluster.get(peering_kind, "modeldeploy", where) or {}).get("status") or {})

    # A replica starts paused and stays so while a live peer outranks it.
    cluster.wait("both replicas in the peering object", lambda: {"active", "standby"} <= peers().keys())
    assert peers()["active"]["priority"] > peers()["standby"]["priority"]
    active_in = f'modeldeploy_active{{namespace="{where or ""}"}}'
    cluster.wait("the standby reports itself standing by", lambda: standby.samples(active_in) == [0])
    assert active.samples(active_in) == [1]
    paused_at = standby.reconciles()

    cluster.apply(model("peered", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}), namespace)
    wait_ready(cluster, namespace, "peered")
    cluster.wait("the active replica reconciled", lambda: active.reconciles() > 0)
    # The standby's resync loop comes round twice more with the model there, and leaves it.
    skips = standby.count(SKIPPED)
    cluster.wait("two standby resync periods", lambda: standby.count(SKIPPED) >= skips + 2)
    assert standby.reconciles() == paused_at
    assert standby.count("Handler 'on_model' is invoked") == 0

    if case.stop == "terminate":
        # A clean stop takes the replica out of the peering object: the standby resumes at once.
        stop_process(active.proc)
        cluster.wait("the active replica leaves the peering object", lambda: "active" not in peers())
    else:
        # A crash leaves its entry behind; the standby waits until it is older than the lifetime.
        active.proc.kill()
        active.proc.wait(timeout=10)
        assert "active" in peers()
    resumed = "Resuming operations"
    cluster.wait("the standby resumes", lambda: standby.count(resumed) > 0, timeout=LIFETIME + 60)
    cluster.wait("the standby reports itself active", lambda: standby.samples(active_in) == [1])

    cluster.apply(model("peered", resources={"gpus": 2, "gpuType": "nvidia-h100-80gb"}), namespace)
    cluster.wait("the standby reconciles", lambda: standby.reconciles() > paused_at)
    ready = wait_ready(cluster, namespace, "peered")
    assert ready["status"]["plan"]["gpusPerReplica"] == 2
    # Its resync loop works again too: no more standby lines once it has taken over.
    skips = standby.count(SKIPPED)
    before = standby.reconciles()
    cluster.wait("the standby's resync runs", lambda: standby.reconciles() >= before + 2)
    assert standby.count(SKIPPED) == skips
