"""The local demo: a real control plane with simulated GPU nodes, the operator, the example
models reconciled, and their status printed. Leaves everything running; `make down` stops it.

With --gitops (`make demo-gitops`) the models come from a local git repository instead of
`kubectl apply`: Flux's own source-controller and kustomize-controller sync them, health-checking
each with the `healthCheckExprs` recipe of docs/gitops.md, and the demo prints Flux's verdict next
to the models."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mdlocal.flux import Flux, FluxBinaries, docs_health_check_exprs, kustomization
from mdlocal.localcluster import Binaries, LocalCluster, log, start_operator, stop_state_dir, wait_for

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "models"
OPERATOR_NAMESPACE = "modeldeploy-system"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--state", type=Path, default=REPO / ".modeldeploy" / "demo")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--gitops", action="store_true", help="sync the example models from git with Flux")
    args = ap.parse_args()
    state: Path = args.state.resolve()

    pidfile = state / "operator.pid"
    if pidfile.exists():
        subprocess.run(["kill", pidfile.read_text().strip()], check=False, capture_output=True)
        pidfile.unlink()
    stop_state_dir(state)

    started = time.monotonic()
    log("step 1/6: starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)")
    cluster = LocalCluster(state=state, bins=Binaries.locate())
    flux_bins = FluxBinaries.locate() if args.gitops else None  # missing binaries fail before the start
    cluster.start()
    kubectl = cluster.kubectl

    log("step 2/6: installing the ModelDeployment CRD")
    kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "modeldeploy.dev_modeldeployments.yaml"))

    def established() -> bool:
        crd = json.loads(kubectl("get", "crd", "modeldeployments.modeldeploy.dev", "-o", "json"))
        conds = crd.get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    wait_for("CRD Established", established, timeout=60)

    log("step 3/6: installing the Helm chart (ServiceAccount, least-privilege RBAC, operator Deployment)")
    # There is no image to run here: KWOK only simulates the chart's operator pod. The operator
    # that does the work runs locally, authenticated as the chart's ServiceAccount, so the demo
    # also shows the chart's RBAC is enough.
    res = subprocess.run(
        [str(cluster.bins.helm), "install", "modeldeploy", str(REPO / "charts" / "modeldeploy"),
         "--namespace", OPERATOR_NAMESPACE, "--create-namespace", "--skip-crds", "--wait", "--timeout=120s"],
        env=cluster.env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise SystemExit(f"helm install failed:\n{res.stderr}")
    log("step 4/6: starting the operator as the chart's ServiceAccount (modeldeploy run)")
    sa_config = cluster.service_account_kubeconfig(
        OPERATOR_NAMESPACE, "modeldeploy", state / "operator.kubeconfig"
    )
    proc = start_operator({**cluster.env(), "KUBECONFIG": str(sa_config)}, state / "logs" / "operator.log")
    pidfile.write_text(str(proc.pid))

    kubectl("create", "namespace", NAMESPACE)
    # The gated Llama example reads its token from this Secret (a placeholder here).
    kubectl("create", "secret", "generic", "hf-token", "-n", NAMESPACE, "--from-literal=token=placeholder")
    examples = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
    flux: Flux | None = None
    if flux_bins is not None:
        log(f"step 5/6: Flux syncs the example models from git into namespace {NAMESPACE}")
        flux = Flux(cluster, flux_bins)
        flux.start()
        repo = flux.repo("platform")
        sha = repo.commit({f"models/{p.name}": p.read_text() for p in examples}, "the example models")
        log(f"  committed {len(examples)} models to {repo.work} ({sha[:12]}), served at {repo.url}")
        cluster.apply([
            repo.git_repository("flux-system", interval="10s"),
            kustomization("models", "flux-system", "platform", "./models", timeout="10m", interval="1m",
                          target_namespace=NAMESPACE,
                          health_check_exprs=docs_health_check_exprs(REPO / "docs" / "gitops.md")),
        ])  # fmt: skip
    else:
        log(f"step 5/6: applying the example models in namespace {NAMESPACE}")
        for path in examples:
            kubectl("apply", "-n", NAMESPACE, "-f", str(path))
            log(f"  applied {path.name}")

    log("step 6/6: waiting until every model is Ready or says why not")
    deadline = time.monotonic() + args.timeout
    last = ""
    waiting: dict[str, str] = {}
    while True:
        items = json.loads(kubectl("get", "mdep", "-n", NAMESPACE, "-o", "json"))["items"]
        ready, waiting = [], {}
        for m in items:
            if m.get("status", {}).get("observedGeneration") != m["metadata"].get("generation"):
                continue  # the operator has not handled this generation yet
            conds = {c["type"]: c for c in m.get("status", {}).get("conditions", [])}
            r = conds.get("Ready", {})
            if r.get("status") == "True":
                ready.append(m["metadata"]["name"])
            elif r.get("reason") not in (None, "Progressing"):
                # Settled on a reason (e.g. Unschedulable: no free GPU of its type).
                waiting[m["metadata"]["name"]] = f"{r['reason']}: {r.get('message', '')}"
        line = f"  {len(ready)}/{len(items)} models Ready, {len(waiting)} reporting why not"
        if flux is not None:
            line += f"; Flux: {flux_verdict(kubectl)}"
        if line != last:
            log(line)
            last = line
        settled = len(ready) + len(waiting) == len(items) and len(items) == len(examples)
        if flux is not None:
            # Flux has applied the commit and is health-checking it, or has a verdict.
            verdict = flux_verdict(kubectl)
            settled = settled and (
                "Running health checks" in verdict or verdict.startswith(("Ready", "Failed"))
            )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(1)

    print()
    print(kubectl("get", "mdep", "-n", NAMESPACE))
    print(kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"))
    print(kubectl("get", "nodes", "-L", "nvidia.com/gpu.product"))
    for name, why in waiting.items():
        print(f"{name} is not Ready, and says why: {why}\n")
    if flux is not None:
        print(kubectl("get", "gitrepository,kustomization", "-n", "flux-system"))
        print(f"Flux's verdict on the models: {flux_verdict(kubectl)}")
        print("  (Flux stays in progress while a model waits for a GPU: never Ready before every model is.)")
        print(f"Change the models in git: cd {flux.root / 'work' / 'platform'} && edit models/*.yaml && "
              "git commit -am change && git push origin main")  # fmt: skip
        print(f"Flux's Events: {cluster.bins.kubectl} events -n flux-system --for kustomization/models\n")
    print(f"Demo up in {time.monotonic() - started:.0f}s. Use the cluster with:")
    print(f"  export KUBECONFIG={cluster.kubeconfig_path}")
    print(f"  {cluster.bins.kubectl} describe mdep -n {NAMESPACE}")
    print(f"Operator log: {state / 'logs' / 'operator.log'}")
    print("Stop everything with: make down")
    return 0


def flux_verdict(kubectl: Callable[..., str]) -> str:
    """The Kustomization's Ready condition as one line: status, reason, message."""
    ks = json.loads(kubectl("get", "kustomization", "models", "-n", "flux-system", "-o", "json"))
    conds = {c["type"]: c for c in (ks.get("status") or {}).get("conditions") or []}
    ready = conds.get("Ready")
    if ready is None:
        return "not reconciled yet"
    if ready["status"] == "Unknown" and "Reconciling" in conds:
        ready = conds["Reconciling"]  # says what it is doing: applying, or which health checks run
    word = {"True": "Ready", "False": "Failed", "Unknown": "In progress"}[ready["status"]]
    if ready["type"] == "Reconciling":
        word = "In progress"
    return f"{word} ({ready['reason']}): {ready['message']}"


if __name__ == "__main__":
    sys.exit(main())
