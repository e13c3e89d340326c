"""Benchmark: how fast the operator brings N models to Ready, what one reconcile pass costs, and
the operator's memory, on the local control plane. Prints figures; asserts nothing.

    make bench            # N=40 by default
    PYTHONPATH=devtools .venv/bin/python hack/bench.py --models 80
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import config

from mdlocal.localcluster import (
    H100_LABELS,
    Binaries,
    LocalCluster,
    NodeShape,
    log,
    start_operator,
    stop_process,
)
from modeldeploy.kube import Kube
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import Settings

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"m{i:03d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"preset": "dolphin-2.8-mistral-7b-v02"},
            "engine": {"maxTotalTokens": 4096},
            "resources": {"gpus": "auto", "gpuType": "nvidia-h100-80gb"},
        },
    }


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--passes", type=int, default=50, help="timed no-op reconcile passes")
    args = ap.parse_args()
    n = args.models
    gpu_nodes = (n + 7) // 8
    nodes = tuple(NodeShape(f"gpu-h100-{i}", "192", "2048Gi", 8, H100_LABELS) for i in range(gpu_nodes))
    state = Path(tempfile.mkdtemp(prefix="modeldeploy-bench-"))
    cluster = LocalCluster(state=state, bins=Binaries.locate())
    log(f"starting a control plane with {gpu_nodes} simulated 8x H100 nodes")
    cluster.start(nodes=nodes)
    op = None
    try:
        cluster.kubectl(
            "apply", "--server-side", "-f", str(REPO / "crds" / "modeldeploy.dev_modeldeployments.yaml")
        )
        time.sleep(1)
        op = start_operator(cluster.env(), state / "logs" / "operator.log")
        idle_rss = rss_mib(op.pid)
        cluster.kubectl("create", "namespace", NAMESPACE)
        log(f"applying {n} ModelDeployments")
        t0 = time.monotonic()
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([model(i) for i in range(n)]))
        last = -1
        while True:
            items = json.loads(cluster.kubectl("get", "mdep", "-n", NAMESPACE, "-o", "json"))["items"]
            ready = sum(
                1
                for m in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in m.get("status", {}).get("conditions", [])
                )
            )
            if ready != last:
                log(f"  {ready}/{n} Ready after {time.monotonic() - t0:.1f}s")
                last = ready
            if ready == n or time.monotonic() - t0 > 600:
                break
            time.sleep(0.5)
        all_ready = time.monotonic() - t0
        busy_rss = rss_mib(op.pid)

        log(f"timing {args.passes} no-op reconcile passes in-process")
        rec = Reconciler(
            Kube(config.new_client_from_config(config_file=str(cluster.kubeconfig_path))), Settings()
        )
        times = []
        for i in range(args.passes):
            t = time.perf_counter()
            rec.reconcile(NAMESPACE, f"m{i % n:03d}")
            times.append((time.perf_counter() - t) * 1000)

        print()
        print(f"models                         {n}")
        print(f"time to all Ready              {all_ready:.1f} s  ({n / all_ready:.1f} models/s)")
        print(f"no-op reconcile pass           p50 {statistics.median(times):.1f} ms, "
              f"p95 {pct(times, 0.95):.1f} ms, max {max(times):.1f} ms  ({args.passes} passes)")  # fmt: skip
        print(f"operator RSS                   {idle_rss:.0f} MiB idle, {busy_rss:.0f} MiB with {n} models")
        print("(2-core shared machine; the control plane runs on the same cores)")
    finally:
        if op is not None:
            stop_process(op)
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
