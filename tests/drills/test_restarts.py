"""API server restart, then etcd restart, each while the operator is creating children: the
operator (one process throughout) reconnects its watches and converges, and a spec change made
after each restart reaches its Deployment. The resync is an hour, so only the watches can bring
the change in."""

from __future__ import annotations

import json
import time

from tests.conftest import Cluster
from tests.drills.kit import Operators, Report, mdep, poll, size, wait_all_converged


def patch_until_accepted(cluster: Cluster, ns: str, name: str, spec: dict[str, object]) -> None:
    """A write just after a restart may meet an API server still warming up: retry it."""

    def patched() -> bool:
        res = cluster.kubectl(
            "patch", "mdep", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}), check=False
        )
        return res.returncode == 0

    cluster.wait(f"patch of {name} accepted", patched, timeout=60)


def test_restarts(
    cluster: Cluster, namespace: str, operators: Operators, gpu_pool: int, report: Report
) -> None:
    n = size(8, 24)
    op = operators.new("restarts", [namespace], {"MODELDEPLOY_RESYNC_SECONDS": "3600"}).start()
    pid = op.pid
    report.did(f"started the operator (pid {pid}, resync 1 h) on namespace {namespace}")
    everyone: list[str] = []
    # The API server crashes (every connection dropped at once; its graceful stop would take
    # its 60 s request timeout to drain); etcd stops cleanly.
    for component, kill in (("apiserver", True), ("etcd", False)):
        batch = [mdep(f"{component}-{i}") for i in range(n)]
        names = [b["metadata"]["name"] for b in batch]
        everyone += names
        mark = op.mark()
        cluster.apply(batch, namespace)
        down = cluster.lc.restart(component, kill=kill)
        how = "SIGKILL" if kill else "SIGTERM"
        report.did(f"created {n} models and at once restarted {component} ({how}; back in {down:.1f}s)")
        report.figure(f"{component}: seconds down", round(down, 1))
        op.assert_alive()

        after = time.monotonic()
        patch_until_accepted(cluster, namespace, names[0], {"engine": {"maxTotalTokens": 2048}})

        def carried(name: str = names[0]) -> bool:
            dep = cluster.get("deployment", name, namespace) or {}
            args = ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", [{}])[0]
            return "2048" in (args.get("args") or [])

        _, change = poll(f"the change to {names[0]} in its Deployment", carried, timeout=120)
        took = wait_all_converged(cluster, namespace, everyone, timeout=180)
        since = time.monotonic() - after
        report.figure(f"{component}: seconds from back to the change in the Deployment", round(change, 1))
        report.figure(
            f"{component}: seconds from back to all {len(everyone)} models converged", round(since, 1)
        )
        report.checked(
            f"after the {component} restart: the spec change reached the Deployment in {change:.1f}s; all "
            f"{len(everyone)} models Ready at their generation ({took:.1f}s more)"
        )
        obj = cluster.get("mdep", names[0], namespace) or {}
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
        op.assert_alive()
        assert op.pid == pid and op.starts == 1, "the operator was restarted"
        text = op.text(mark)
        unhandled = op.unhandled(mark, transient_ok=True)
        report.figure(f"{component}: passes failed on the dropped connection (retried)", op.transient(mark))
        report.figure(f"{component}: operator log lines while it happened", len(text.splitlines()))
        report.figure(f"{component}: unhandled errors in the operator's log", len(unhandled))
        assert not unhandled, "\n".join(unhandled[:20])
    report.checked(f"the operator process {pid} ran throughout, through both restarts")
