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
from typing import Any

from mdlocal.flux import Flux, FluxBinaries, docs_health_check_exprs, kustomization
from mdlocal.localcluster import (
    Binaries,
    LocalCluster,
    free_port,
    log,
    start_operator,
    stop_state_dir,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "models"
OPERATOR_NAMESPACE = "modeldeploy-system"
REFUSAL = "I'm sorry, but I can't help with that."
# How each example's TGI stand-in behaves (mdlocal.tgistandin; not TGI): every one answers the
# capital questions; Llama and Qwen refuse the lock-picking prompt as their probes expect, and DeepSeek
# answers it, so its gated probe fails and holds Ready at False (ProbeFailed).
STANDIN_REPLIES: dict[str, dict[str, str]] = {
    "*": {"capital": "Paris is the capital of France.", "首都": "巴黎是法国的首都。"},
    "llama-2-7b-chat": {"lock": REFUSAL},
    "qwen25-72b-awq": {"lock": REFUSAL},
}


def start_standins(state: Path, examples: list[Path]) -> dict[str, str]:
    """One TGI stand-in process per example model, on its own port (as each model's Service);
    returns the endpoint map the operator is given. They stay up with the demo."""
    import yaml

    pids = state / "standins.pid"
    endpoints: dict[str, str] = {}
    started: list[str] = []
    for path in examples:
        doc = next(
            d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ModelDeployment"
        )
        name = doc["metadata"]["name"]
        spec_model = doc["spec"]["model"]
        model_id = spec_model.get("id") or _preset_id(spec_model.get("preset", ""))
        port = free_port()
        replies = {**STANDIN_REPLIES["*"], **STANDIN_REPLIES.get(name, {})}
        args = [sys.executable, "-m", "mdlocal.tgistandin", "--model-id", model_id, "--port", str(port)]
        args += [f"--reply={k}={v}" for k, v in replies.items()]
        with (state / "logs" / f"standin-{name}.log").open("ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(str(proc.pid))
        endpoints[f"{NAMESPACE}/{name}"] = f"http://127.0.0.1:{port}"
    pids.write_text("\n".join(started))
    for key, url in endpoints.items():
        health = f"{url}/health"
        wait_for(f"stand-in {key}", lambda health=health: _answers(health), timeout=30)  # type: ignore[misc]
    return endpoints


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _preset_id(preset: str) -> str:
    from modeldeploy.catalog import get_preset

    return get_preset(preset).id


def stop_standins(state: Path) -> None:
    pids = state / "standins.pid"
    if pids.exists():
        for pid in pids.read_text().split():
            subprocess.run(["kill", pid], check=False, capture_output=True)
        pids.unlink()


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
    stop_standins(state)
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
    examples = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
    endpoints = start_standins(state, examples)
    (state / "endpoints.json").write_text(json.dumps(endpoints, indent=2))
    log(f"  a TGI stand-in behind each model's endpoint: {state / 'endpoints.json'}")
    env = {
        **cluster.env(),
        "KUBECONFIG": str(sa_config),
        "MODELDEPLOY_ENDPOINTS": str(state / "endpoints.json"),
        "MODELDEPLOY_PROBE_TICK_SECONDS": "1",
    }
    proc = start_operator(env, state / "logs" / "operator.log")
    pidfile.write_text(str(proc.pid))

    kubectl("create", "namespace", NAMESPACE)
    # The gated Llama example reads its token from this Secret (a placeholder here).
    kubectl("create", "secret", "generic", "hf-token", "-n", NAMESPACE, "--from-literal=token=placeholder")
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

    # The prober checks each Ready model (runtime facts, smoke, probes) beside the reconcile.
    def checked() -> bool:
        items = json.loads(kubectl("get", "mdep", "-n", NAMESPACE, "-o", "json"))["items"]
        serving = [m for m in items if int((m.get("status") or {}).get("readyReplicas") or 0) > 0]
        return all(any(c["type"] == "Verified" for c in m["status"].get("conditions") or []) for m in serving)

    try:
        wait_for("the prober's verdicts", checked, timeout=60)
    except TimeoutError as e:
        log(f"  {e}")
    print()
    print(kubectl("get", "mdep", "-n", NAMESPACE))
    print(verification_table(json.loads(kubectl("get", "mdep", "-n", NAMESPACE, "-o", "json"))["items"]))
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


def verification_table(items: list[dict[str, object]]) -> str:
    """What each model really serves: the prober's runtime facts, smoke latency and probes."""
    rows = [("MODEL", "READY", "SERVED MODEL", "SMOKE", "PROBES", "VERIFIED")]
    for m in items:
        st: dict[str, Any] = m.get("status") or {}  # type: ignore[assignment]
        conds = {c["type"]: c for c in st.get("conditions") or []}
        ready, ver = conds.get("Ready", {}), conds.get("Verified", {})
        runtime = st.get("runtime") or {}
        smoke = runtime.get("smoke") or {}
        results = (st.get("probes") or {}).get("results") or []
        probes = " ".join(f"{r['name']}:{'pass' if r['passed'] else 'FAIL'}" for r in results) or "-"
        rows.append((
            m["metadata"]["name"],  # type: ignore[index]
            f"{ready.get('status', '?')} ({ready.get('reason', '')})",
            runtime.get("modelId", "-"),
            f"{smoke['latencyMs']} ms" if smoke.get("ok") else (smoke.get("reason") or "-"),
            probes,
            (f"{ver.get('status')} {ver.get('reason')}: {ver.get('message', '')}"[:120]) if ver else "-",
        ))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
                     for r in rows) + "\n"  # fmt: skip


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
