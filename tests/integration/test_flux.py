"""GitOps rollouts of ModelDeployments judged by the real Flux controllers.

source-controller and kustomize-controller (built from their Go modules, `hack/build-controlplane.sh`)
run beside the test cluster, one installation for the whole run. Each test has its own namespace,
its own git repository (served over smart HTTP on 127.0.0.1, `mdlocal.gitserver`), GitRepository
and Kustomization; every step is one commit. The Kustomization uses `wait: true` with the
`healthCheckExprs` recipe exactly as docs/gitops.md prints it, and the assertions read what Flux
itself reports: the Kustomization's conditions, its revisions and its Events.
"""

from __future__ import annotations

import calendar
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdlocal.flux import Flux, GitRepo, docs_health_check_exprs, docs_objects, kustomization
from mdlocal.localcluster import LocalCluster
from tests import kstatus
from tests.conftest import Cluster, condition
from tests.integration.test_reconcile import get_model, model
from tests.integration.test_trust import replicas_policy

REPO = Path(__file__).resolve().parents[2]
SOURCE_INTERVAL = 5.0  # seconds: the GitRepository's spec.interval
# Generous: every failure below must come long before it (Flux fails fast on Stalled).
HEALTH_TIMEOUT = "5m0s"  # as Go prints it: Flux quotes it in its messages
H100 = {"gpus": 1, "gpuType": "nvidia-h100-80gb"}


@pytest.fixture(scope="session")
def flux(local_cluster: LocalCluster, cluster: Cluster) -> Flux:
    """One Flux installation per test run (stopped with the cluster)."""
    f = Flux(local_cluster)
    f.start()
    return f


def _ts(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


@dataclass
class Sync:
    """One GitOps pipeline in one namespace: repository -> GitRepository -> Kustomization."""

    cluster: Cluster
    flux: Flux
    namespace: str
    repo: GitRepo
    name: str = "models"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def commit(self, message: str, **models: dict[str, Any] | None) -> str:
        """Write each model as models/NAME.yaml (None removes it); one commit; its revision."""
        changes: dict[str, dict[str, Any] | None] = {}
        for name, body in models.items():
            changes[f"models/{name}.yaml"] = body
            if body is None:
                self.files.pop(name, None)
            else:
                self.files[name] = copy.deepcopy(body)
        sha = self.repo.commit(changes, message)
        return f"main@sha1:{sha}"

    def ks(self) -> dict[str, Any]:
        obj = self.cluster.get("kustomization", self.name, self.namespace)
        assert obj is not None
        return obj

    def wait_ks(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 90
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            k = self.ks()
            return k if check(k) else None

        result: dict[str, Any] = self.cluster.wait(what, probe, timeout=timeout)
        return result

    def wait_ready(self, revision: str, timeout: float = 90) -> dict[str, Any]:
        def ready(k: dict[str, Any]) -> bool:
            c = condition(k, "Ready")
            failed = (
                c is not None
                and c["status"] == "False"
                and revision in k["status"].get("lastAttemptedRevision", "")
            )
            assert not failed, f"Flux failed revision {revision}: {c}"
            return (
                c is not None and c["status"] == "True" and k["status"].get("lastAppliedRevision") == revision
            )

        return self.wait_ks(f"Kustomization Ready at {revision}", ready, timeout)

    def wait_failed(self, revision: str, timeout: float = 90) -> dict[str, Any]:
        def failed(k: dict[str, Any]) -> bool:
            c = condition(k, "Ready")
            return (c is not None and c["status"] == "False"
                    and k["status"].get("lastAttemptedRevision") == revision)  # fmt: skip

        return self.wait_ks(f"Kustomization failed at {revision}", failed, timeout)

    def events(self) -> list[dict[str, Any]]:
        """Flux's Events on the Kustomization, oldest first."""
        items = self.cluster.list("events", self.namespace, "")
        mine = [e for e in items if e["involvedObject"].get("kind") == "Kustomization"
                and e["involvedObject"].get("name") == self.name]  # fmt: skip
        return sorted(mine, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def wait_event(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.wait(
            f"Flux Event: {what}", lambda: next((e for e in self.events() if check(e)), None), timeout=timeout
        )
        return found


@pytest.fixture()
def sync(cluster: Cluster, flux: Flux, namespace: str, operator: Any) -> Iterator[Sync]:
    repo = flux.repo(namespace)
    s = Sync(cluster, flux, namespace, repo)
    cluster.apply([
        repo.git_repository(namespace, interval=f"{SOURCE_INTERVAL:.0f}s"),
        kustomization(s.name, namespace, repo.name, "./models", timeout=HEALTH_TIMEOUT,
                      health_check_exprs=docs_health_check_exprs(REPO / "docs" / "gitops.md")),
    ])  # fmt: skip
    yield s
    # Delete the Kustomization before the namespace goes: it prunes what it applied.
    cluster.kubectl("delete", "kustomization", s.name, "-n", namespace, "--wait=false", check=False)


def models_status(cluster: Cluster, ns: str, names: list[str]) -> dict[str, kstatus.Result]:
    objs = [get_model(cluster, ns, n) for n in names]
    return dict(zip(names, kstatus.compute_all(objs), strict=True))


def running_health_checks(ks: dict[str, Any], revision: str) -> bool:
    """Flux's own words while it waits on the health of what it applied."""
    healthy, reconciling = condition(ks, "Healthy"), condition(ks, "Reconciling")
    message = f"Running health checks for revision {revision} with a timeout of {HEALTH_TIMEOUT}"
    return (healthy is not None and healthy["status"] == "Unknown" and healthy["message"] == message
            and reconciling is not None and reconciling["message"] == message)  # fmt: skip


def ready_models(cluster: Cluster, ns: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each model, asserted Ready at its generation (and Current to kstatus)."""
    out: dict[str, dict[str, Any]] = {}
    for name, res in models_status(cluster, ns, names).items():
        obj = get_model(cluster, ns, name)
        assert obj is not None
        ready = condition(obj, "Ready")
        assert ready is not None and ready["status"] == "True", (name, obj.get("status"))
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"], name
        assert res.status is kstatus.Status.CURRENT, (name, res)
        out[name] = obj
    return out


def test_initial_sync_is_ready_only_when_both_models_are(cluster: Cluster, sync: Sync) -> None:
    rev = sync.commit("two models", a=model("a", resources=H100), b=model("b", resources=H100, replicas=2))
    seen_in_progress: list[dict[str, Any]] = []

    def ready(k: dict[str, Any]) -> bool:
        c = condition(k, "Ready")
        if running_health_checks(k, rev) and c is not None and c["status"] == "Unknown":
            seen_in_progress.append(c)
        return c is not None and c["status"] == "True" and k["status"].get("lastAppliedRevision") == rev

    ks = sync.wait_ks("initial sync Ready", ready)
    # The moment Flux says Ready, both models are Ready at their generation.
    models = ready_models(cluster, sync.namespace, ["a", "b"])
    ks_ready = condition(ks, "Ready")
    assert ks_ready is not None and ks_ready["reason"] == "ReconciliationSucceeded"
    assert ks_ready["message"] == f"Applied revision: {rev}"
    healthy = condition(ks, "Healthy")
    assert healthy is not None and healthy["status"] == "True"
    for name, obj in models.items():
        model_ready = condition(obj, "Ready")
        assert model_ready is not None
        assert _ts(model_ready["lastTransitionTime"]) <= _ts(ks_ready["lastTransitionTime"]), name
    # ... and before that Flux said it was waiting on their health.
    assert seen_in_progress, "Flux never reported health checks running on the new revision"
    assert ks["status"]["inventory"]["entries"] and {
        e["id"] for e in ks["status"]["inventory"]["entries"]
    } == {f"{sync.namespace}_{n}_modeldeploy.dev_ModelDeployment" for n in ("a", "b")}
    sync.wait_event("models created", lambda e: e["reason"] == "Progressing"
                    and f"ModelDeployment/{sync.namespace}/a created" in e["message"])  # fmt: skip
    sync.wait_event("health check passed", lambda e: e["message"].startswith("Health check passed"))


def _synced(cluster: Cluster, sync: Sync, **models: dict[str, Any]) -> str:
    """The first commit, synced and Ready; its revision."""
    rev = sync.commit("initial models", **models)
    sync.wait_ready(rev)
    ready_models(cluster, sync.namespace, list(models))
    return rev


def _container_args(dep: dict[str, Any]) -> list[str]:
    return [str(a) for a in dep["spec"]["template"]["spec"]["containers"][0].get("args", [])]


def test_good_change_is_ready_only_after_the_deployment_reflects_it(cluster: Cluster, sync: Sync) -> None:
    body = model("m", resources=H100, engine={"maxInputTokens": 1024, "maxTotalTokens": 2048})
    _synced(cluster, sync, m=body)
    changed = copy.deepcopy(body)
    changed["spec"]["replicas"] = 2
    changed["spec"]["engine"] = {"maxInputTokens": 3072, "maxTotalTokens": 4096}
    rev = sync.commit("two replicas, longer context", m=changed)
    ks = sync.wait_ready(rev)
    # Read right after Flux said Ready: the Deployment already serves the new spec.
    dep = cluster.get("deployment", "m", sync.namespace)
    assert dep is not None
    args = " ".join(_container_args(dep))
    assert "--max-total-tokens 4096" in args or "--max-total-tokens=4096" in args, args
    assert dep["spec"]["replicas"] == 2
    assert dep["status"].get("updatedReplicas") == 2 and dep["status"].get("readyReplicas") == 2, dep[
        "status"
    ]
    assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"]
    obj = ready_models(cluster, sync.namespace, ["m"])["m"]
    assert obj["metadata"]["generation"] == 2 and obj["status"]["readyReplicas"] == 2
    assert condition(ks, "Ready")["message"] == f"Applied revision: {rev}"  # type: ignore[index]
    sync.wait_event(
        "model configured",
        lambda e: f"ModelDeployment/{sync.namespace}/m configured" in e["message"] and rev in _revision(e),
    )


def _revision(event: dict[str, Any]) -> str:
    """The source revision Flux annotates its Events with."""
    return str((event["metadata"].get("annotations") or {}).get("kustomize.toolkit.fluxcd.io/revision", ""))


def test_operator_refusal_fails_flux_early_and_a_revert_recovers(cluster: Cluster, sync: Sync) -> None:
    good = model("m", resources=H100)
    _synced(cluster, sync, m=good)
    dep_before = cluster.get("deployment", "m", sync.namespace)
    assert dep_before is not None
    # The API server admits an unknown GPU type; the operator refuses it (Stalled, InvalidSpec).
    bad = copy.deepcopy(good)
    bad["spec"]["resources"]["gpuType"] = "no-such-gpu"
    bad_rev = sync.commit("a GPU type nobody has", m=bad)
    committed = time.monotonic()
    ks = sync.wait_failed(bad_rev)
    took = time.monotonic() - committed
    ready = condition(ks, "Ready")
    assert ready is not None and ready["reason"] == "HealthCheckFailed", ready
    # Flux fails fast on the operator's Stalled verdict, long before its 5m timeout, and names
    # the model. (Flux's message carries kstatus's status, never the object's own message.)
    assert took < 30, f"Flux took {took:.0f}s: a timeout, not the operator's verdict"
    assert ready["message"].endswith(
        f"failed early due to stalled resources: [ModelDeployment/{sync.namespace}/m status: 'Failed']"
    ), ready["message"]
    healthy = condition(ks, "Healthy")
    assert (
        healthy is not None and healthy["status"] == "False" and ready["message"].endswith(healthy["message"])
    )
    assert ks["status"]["lastAppliedRevision"] != bad_rev
    event = sync.wait_event(
        "health check failed", lambda e: e["type"] == "Warning" and e["reason"] == "HealthCheckFailed"
    )
    assert _revision(event) == bad_rev and "ModelDeployment/" in event["message"]
    # The object Flux names says why, in the operator's words, and kstatus reads that same message.
    obj = get_model(cluster, sync.namespace, "m")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["reason"] == "InvalidSpec" and "no-such-gpu" in stalled["message"]
    assert obj is not None and obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    assert kstatus.compute(obj) == kstatus.Result(
        kstatus.Status.FAILED,
        stalled["message"],
        (kstatus.Condition("Stalled", "True", "InvalidSpec", stalled["message"]),),
    )
    # Nothing changed in the cluster: the last good Deployment keeps serving.
    dep = cluster.get("deployment", "m", sync.namespace)
    assert dep is not None and dep["metadata"]["generation"] == dep_before["metadata"]["generation"]

    # The revert: a new commit with the good spec again.
    revert_rev = sync.commit("revert: back to H100", m=good)
    reverted = time.monotonic()
    sync.wait_ready(revert_rev, timeout=SOURCE_INTERVAL + 40)
    took = time.monotonic() - reverted
    # One source interval to see the commit, one reconcile: apply, and health checks polled
    # every 5 s by kustomize-controller; the operator takes the new generation at once.
    assert took < SOURCE_INTERVAL + 20, f"revert took {took:.1f}s"
    obj = ready_models(cluster, sync.namespace, ["m"])["m"]
    assert obj["metadata"]["generation"] == 3
    assert condition(obj, "Stalled") is None
    sync.wait_event("recovered", lambda e: e["type"] == "Normal" and _revision(e) == revert_rev
                    and e["message"].startswith("Health check passed"))  # fmt: skip


def test_child_refused_by_cluster_policy_fails_flux_early(cluster: Cluster, sync: Sync) -> None:
    # The ModelDeployment is admitted; the Deployment it needs is not (a ValidatingAdmissionPolicy
    # allows at most 2 replicas here). The operator's dry run meets the refusal: Stalled, ApplyRefused.
    good = model("m", resources=H100)
    with replicas_policy(cluster, sync.namespace, 2):
        _synced(cluster, sync, m=good)
        dep_before = cluster.get("deployment", "m", sync.namespace)
        assert dep_before is not None
        bad = copy.deepcopy(good)
        bad["spec"]["replicas"] = 3
        bad_rev = sync.commit("three replicas", m=bad)
        committed = time.monotonic()
        ks = sync.wait_failed(bad_rev)
        assert time.monotonic() - committed < 30
        ready = condition(ks, "Ready")
        assert ready is not None and ready["reason"] == "HealthCheckFailed", ready
        assert ready["message"].endswith(f"[ModelDeployment/{sync.namespace}/m status: 'Failed']"), ready
        stalled = condition(get_model(cluster, sync.namespace, "m"), "Stalled")
        assert stalled is not None and stalled["reason"] == "ApplyRefused", stalled
        assert "at most 2 replicas per model" in stalled["message"], stalled
        dep = cluster.get("deployment", "m", sync.namespace)
        assert dep is not None and dep["spec"]["replicas"] == 1
        assert dep["metadata"]["generation"] == dep_before["metadata"]["generation"]


def test_admission_refusal_is_reported_by_flux(cluster: Cluster, sync: Sync) -> None:
    good = model("m", resources=H100)
    good_rev = _synced(cluster, sync, m=good)
    bad = copy.deepcopy(good)
    bad["spec"]["resources"]["memory"] = "32GB"
    bad_rev = sync.commit("memory in GB", m=bad)
    ks = sync.wait_failed(bad_rev)
    ready = condition(ks, "Ready")
    assert ready is not None and ready["reason"] == "ReconciliationFailed", ready
    # The API server's own message, naming the field, as Flux reports it.
    assert f"ModelDeployment/{sync.namespace}/m" in ready["message"], ready["message"]
    assert "spec.resources.memory" in ready["message"], ready["message"]
    assert "must be a Kubernetes quantity" in ready["message"], ready["message"]
    assert ks["status"]["lastAppliedRevision"] == good_rev
    event = sync.wait_event(
        "apply refused", lambda e: e["type"] == "Warning" and "spec.resources.memory" in e["message"]
    )
    assert _revision(event) == bad_rev
    # Never applied: the model still reads the good spec, at its first generation.
    obj = get_model(cluster, sync.namespace, "m")
    assert (
        obj is not None
        and obj["metadata"]["generation"] == 1
        and obj["spec"]["resources"]["memory"] != "32GB"
    )


def test_model_waiting_for_a_gpu_type_with_no_nodes_is_never_healthy(cluster: Cluster, sync: Sync) -> None:
    # No node carries L40S GPUs (no test adds one): the model fits one, so the operator plans,
    # applies and waits (Reconciling, Unschedulable); nothing is refused.
    waiting = model("lone", resources={"gpus": 1, "gpuType": "nvidia-l40s"})
    rev = sync.commit("a model on L40S", lone=waiting)
    sync.wait_ks("health checks running", lambda k: running_health_checks(k, rev))
    cluster.wait(
        "model waits for its GPUs",
        lambda: condition(get_model(cluster, sync.namespace, "lone"), "Reconciling"),
    )
    rec = condition(get_model(cluster, sync.namespace, "lone"), "Reconciling")
    assert rec is not None and rec["reason"] in ("RolloutBlocked", "Unschedulable"), rec
    # An observation window (what must never happen cannot be waited for): two more of
    # kustomize-controller's health polls, 5 s apart. In progress, never healthy.
    deadline = time.monotonic() + 11
    while time.monotonic() < deadline:
        ks = sync.ks()
        ready = condition(ks, "Ready")
        assert ready is not None and (ready["status"], ready["reason"]) == ("Unknown", "Progressing"), ready
        assert running_health_checks(ks, rev), ks["status"]["conditions"]
        assert ks["status"].get("lastAppliedRevision") != rev
        res = kstatus.compute(get_model(cluster, sync.namespace, "lone"))
        assert res.status is kstatus.Status.IN_PROGRESS, res
        time.sleep(1)
    # A fix in git cancels the health check still waiting (CancelHealthCheckOnNewRevision):
    # Ready long before the 5m timeout.
    fixed = model("lone", resources=H100)
    fix_rev = sync.commit("move to H100", lone=fixed)
    fixed_at = time.monotonic()
    sync.wait_ready(fix_rev, timeout=60)
    assert time.monotonic() - fixed_at < SOURCE_INTERVAL + 25
    canceled = sync.wait_event("health check canceled", lambda e: e["reason"] == "HealthCheckCanceled")
    assert canceled["message"].startswith(
        "Health checks canceled due to new reconciliation triggered by GitRepository/"
    )
    ready_models(cluster, sync.namespace, ["lone"])


def test_removing_a_model_from_git_prunes_it_and_its_children(cluster: Cluster, sync: Sync) -> None:
    _synced(cluster, sync, keep=model("keep", resources=H100), gone=model("gone", resources=H100))
    assert cluster.get("deployment", "gone", sync.namespace) is not None
    kept = cluster.get("deployment", "keep", sync.namespace)
    assert kept is not None
    rev = sync.commit("remove gone", gone=None)
    ks = sync.wait_ready(rev)
    assert {e["id"] for e in ks["status"]["inventory"]["entries"]} == {
        f"{sync.namespace}_keep_modeldeploy.dev_ModelDeployment"
    }
    sync.wait_event("pruned", lambda e: f"ModelDeployment/{sync.namespace}/gone deleted" in e["message"])
    cluster.wait("model gone", lambda: get_model(cluster, sync.namespace, "gone") is None)
    for kind in ("deployment", "service"):
        cluster.wait(f"{kind} collected", lambda k=kind: cluster.get(k, "gone", sync.namespace) is None)  # type: ignore[misc]
    cluster.wait("pods gone", lambda: not cluster.list("pods", sync.namespace, "modeldeploy.dev/name=gone"))
    # The other model was not touched.
    after = cluster.get("deployment", "keep", sync.namespace)
    assert after is not None and after["metadata"]["generation"] == kept["metadata"]["generation"]
    ready_models(cluster, sync.namespace, ["keep"])


def test_docs_recipe_is_what_the_tests_run() -> None:
    exprs = docs_health_check_exprs(REPO / "docs" / "gitops.md")
    assert [e["kind"] for e in exprs] == ["ModelDeployment"]
    assert {"inProgress", "failed", "current"} <= exprs[0].keys()


def test_docs_flux_manifests_are_accepted(cluster: Cluster, flux: Flux, namespace: str) -> None:
    """The GitRepository and Kustomization docs/gitops.md shows pass the Flux CRDs' validation."""
    objs = [o for o in docs_objects(REPO / "docs" / "gitops.md")
            if o["kind"] in ("GitRepository", "Kustomization")]  # fmt: skip
    assert {o["kind"] for o in objs} == {"GitRepository", "Kustomization"}
    for o in objs:
        o["metadata"]["namespace"] = namespace
    res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(objs))
    assert res.stdout.count("(server dry run)") == len(objs), res.stdout
