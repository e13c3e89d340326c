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

from mdlocal.localcluster import free_port, start_operator, stop_process
from tests.conftest import Cluster
from tests.integration.test_helm import CHART, RELEASE, Obj, docs_of, install, sa_kubeconfig
from tests.integration.test_reconcile import model, wait_ready
from tests.standins.hf_hub import HubStandIn

SKIPPED = "standby: resync left"  # the operator's debug line when a standby leaves a resync
RESYNCED = "resync of "  # its debug line for each resync pass it runs
# peering.lifetimeSeconds: how long a killed replica still counts as alive. kopf renews an
# entry 5-10 s before it ends; 30 s leaves a loaded machine room for a late keep-alive.
LIFETIME = 30
ACTIVE = "modeldeploy_active "  # the gauge's sample line (no labels)
ON_MODEL = "Handler 'on_model_event' is invoked"  # kopf's debug line for the ModelDeployment event handler


@dataclass
class Replica:
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
    """The chart installed with replicas=2 and peering, for its ServiceAccount and the
    Deployment's arguments; yields the peering object's kind, which no one has created yet.
    kopf's peering CRDs are shared by every test, so they are applied here and the release
    leaves them alone (peering.createCRDs=false, as documented)."""
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
    kind = "kopfpeering" if case.scope == "namespaced" else "clusterkopfpeering"
    if case.scope == "cluster-wide":
        cluster.kubectl("delete", kind, "modeldeploy", "--ignore-not-found")
    try:
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
            started.append(Replica(proc, log, port))
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

    # One of them created the missing peering object. A replica starts paused and stays so
    # while a live peer outranks it.
    cluster.wait("both replicas in the peering object", lambda: {"active", "standby"} <= peers().keys())
    assert active.count("created the peering object") + standby.count("created the peering object") == 1
    assert peers()["active"]["priority"] > peers()["standby"]["priority"]
    assert peers()["active"]["lifetime"] == LIFETIME
    cluster.wait("the standby reports standby", lambda: standby.samples(ACTIVE) == [0])
    cluster.wait("the active replica reports active", lambda: active.samples(ACTIVE) == [1])
    paused_at = standby.reconciles()

    # The session's own operator (not peered) may also be running; only each replica's own
    # metrics and log say which replica did what.
    cluster.apply(model("peered", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"}), namespace)
    wait_ready(cluster, namespace, "peered")
    cluster.wait("the active replica handled the model", lambda: active.count(ON_MODEL) > 0)
    cluster.wait("the active replica reconciled", lambda: active.reconciles() > 0)
    # The standby's resync loop comes round twice more with the model there, and leaves it.
    skips = standby.count(SKIPPED)
    cluster.wait("two standby resync periods", lambda: standby.count(SKIPPED) >= skips + 2)
    assert standby.reconciles() == paused_at
    assert standby.count(ON_MODEL) == 0
    assert standby.count(RESYNCED) == 0

    if case.stop == "terminate":
        # A clean stop takes the replica out of the peering object on its way out.
        stop_process(active.proc)
        assert active.proc.returncode == 0
        assert "active" not in peers()
    else:
        # A crash leaves its entry behind; the standby waits until it is older than the lifetime.
        active.proc.kill()
        active.proc.wait(timeout=10)
        assert "active" in peers()
    resumed = "Resuming operations"
    cluster.wait("the standby resumes", lambda: standby.count(resumed) > 0, timeout=LIFETIME + 30)
    cluster.wait("the standby reports active", lambda: standby.samples(ACTIVE) == [1])

    cluster.apply(model("peered", resources={"gpus": 2, "gpuType": "nvidia-h100-80gb"}), namespace)
    cluster.wait("the standby reconciles", lambda: standby.reconciles() > paused_at)
    cluster.wait("the standby handled the change", lambda: standby.count(ON_MODEL) > 0)
    # Its resync loop works again too.
    cluster.wait("two resync passes on the former standby", lambda: standby.count(RESYNCED) >= 2)
