"""Benchmark the operator on the local control plane against the floor, at several sizes.

For each N (a fresh control plane each, N/8 simulated 8x H100 nodes):
  floor     the children the operator would make for N models (`modeldeploy render`), applied by
            a minimal async server-side-apply client with the operator's concurrency: time until
            all exist, and until every Deployment is available (KWOK's pods Ready);
  burst     N ModelDeployments created at once, the operator (its own process and API user)
            running: time until all children exist, until all models are Ready;
  change    spec changes one at a time: latency from the change to the Deployment's new
            generation (seen by a watch), p50 and p99;
  idle      the operator left alone with N models: its requests, by verb and resource, from
            the API server's audit log; its CPU seconds;
and the operator's requests per model (create) and per pass (no-op), its resident memory and CPU
seconds. Results go to bench/results/bench.json and bench/results/bench.png. Prints figures;
asserts nothing.

    make bench                                          # N = 50, 100, 300; 5 idle minutes each
    PYTHONPATH=devtools .venv/bin/python hack/bench.py --sizes 50 --idle-seconds 30 --changes 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import functools
import json
import math
import operator
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from mdlocal.audit import AuditLog, Request, by_verb_and_resource
from mdlocal.localcluster import (
    H100_LABELS,
    OPERATOR_TOKEN_USER,
    Binaries,
    LocalCluster,
    NodeShape,
    free_port,
    start_operator,
    stop_process,
)
from modeldeploy.cli import render_file
from modeldeploy.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WORKERS = 4  # the operator's default MODELDEPLOY_WORKERS; the floor client uses as many
PLURALS = {
    "Deployment": "apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "api/v1/namespaces/{ns}/services",
    "PodDisruptionBudget": "apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "HorizontalPodAutoscaler": "apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "ModelDeployment": "apis/modeldeploy.dev/v1alpha1/namespaces/{ns}/modeldeployments",
}
WATCH_VERBS = frozenset({"watch"})


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model(i: int, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"m{i:04d}", "namespace": ns},
        "spec": {
            "model": {"preset": "dolphin-2.8-mistral-7b-v02"},
            "engine": {"maxTotalTokens": 4096},
            "resources": {"gpus": "auto", "gpuType": "nvidia-h100-80gb"},
        },
    }


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)] if s else float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def passes(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modeldeploy_reconcile_total{")
    )


class Api:
    """A minimal async client of the API server: apply, create, list, watch."""

    def __init__(self, lc: LocalCluster) -> None:
        ctx = ssl.create_default_context(cafile=str(lc.state / "pki" / "ca.crt"))
        self.base = lc.server
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {lc.token}"},
            connector=aiohttp.TCPConnector(ssl=ctx, limit=64),
        )

    async def close(self) -> None:
        await self.session.close()

    def url(self, obj: dict[str, Any]) -> str:
        path = PLURALS[obj["kind"]].format(ns=obj["metadata"]["namespace"])
        return f"{self.base}/{path}"

    async def apply(self, obj: dict[str, Any]) -> None:
        url = f"{self.url(obj)}/{obj['metadata']['name']}?fieldManager=floor&force=true"
        async with self.session.patch(
            url, data=json.dumps(obj), headers={"Content-Type": "application/apply-patch+yaml"}
        ) as r:
            if r.status >= 300:
                raise RuntimeError(
                    f"apply {obj['kind']} {obj['metadata']['name']}: {r.status} {await r.text()}"
                )

    async def create(self, obj: dict[str, Any]) -> None:
        async with self.session.post(self.url(obj), json=obj) as r:
            if r.status >= 300:
                raise RuntimeError(f"create {obj['metadata']['name']}: {r.status} {await r.text()}")

    async def merge_patch(self, obj: dict[str, Any], patch: dict[str, Any]) -> None:
        url = f"{self.url(obj)}/{obj['metadata']['name']}"
        async with self.session.patch(
            url, data=json.dumps(patch), headers={"Content-Type": "application/merge-patch+json"}
        ) as r:
            if r.status >= 300:
                raise RuntimeError(f"patch {obj['metadata']['name']}: {r.status} {await r.text()}")

    async def list(self, kind: str, ns: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.base}/{PLURALS[kind].format(ns=ns)}") as r:
            return list((await r.json())["items"])

    async def watch(self, kind: str, ns: str, on_event: Any) -> None:
        """Call on_event(type, object) for every object listed, then every event from that
        listing's resourceVersion on, until cancelled."""
        path = f"{self.base}/{PLURALS[kind].format(ns=ns)}"
        async with self.session.get(path) as r:
            listing = await r.json()
        for obj in listing["items"]:
            on_event("ADDED", obj)
        rv = listing["metadata"]["resourceVersion"]
        while True:
            url = f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds=300&allowWatchBookmarks=true"
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
                async for line in r.content:
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {kind}: {event['object']}")
                    rv = event["object"]["metadata"].get("resourceVersion", rv)
                    if event["type"] != "BOOKMARK":
                        on_event(event["type"], event["object"])


async def bounded(n: int, jobs: list[Any]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(job: Any) -> None:
        async with sem:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


def ready_deployment(d: dict[str, Any]) -> bool:
    st = d.get("status") or {}
    return bool(st.get("observedGeneration") == d["metadata"].get("generation")) and st.get(
        "availableReplicas", 0
    ) >= (d.get("spec") or {}).get("replicas", 1)


def ready_model(m: dict[str, Any]) -> bool:
    st = m.get("status") or {}
    return st.get("observedGeneration") == m["metadata"].get("generation") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
    )


def settled_model(m: dict[str, Any]) -> bool:
    """Ready, and no rollout going on (no Reconciling=True)."""
    conditions = (m.get("status") or {}).get("conditions") or []
    rolling = any(c.get("type") == "Reconciling" and c.get("status") == "True" for c in conditions)
    return ready_model(m) and not rolling


async def wait_counts(
    api: Api, ns: str, n: int, t0: float, what: str, kinds: dict[str, Any]
) -> dict[str, float]:
    """Watch the namespace and return when each named predicate holds for n objects: the time
    (since t0) each first did. `kinds` maps a name to (kind, predicate)."""
    seen: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in kinds}
    done: dict[str, float] = {}

    def handler(name: str) -> Any:
        def on(event: str, obj: dict[str, Any]) -> None:
            objs = seen[name]
            if event == "DELETED":
                objs.pop(obj["metadata"]["name"], None)
            else:
                objs[obj["metadata"]["name"]] = obj

        return on

    tasks = [asyncio.create_task(api.watch(kind, ns, handler(name))) for name, (kind, _) in kinds.items()]
    last, shown = "", -1.0
    try:
        while len(done) < len(kinds):
            now = time.monotonic() - t0
            counts = {
                name: sum(1 for o in seen[name].values() if pred(o)) for name, (_, pred) in kinds.items()
            }
            for name, c in counts.items():
                if c >= n and name not in done:
                    done[name] = now
            line = ", ".join(f"{c}/{n} {name}" for name, c in counts.items())
            # A progress line a second at most (and the last one).
            if line != last and (now - shown >= 1.0 or len(done) == len(kinds)):
                say(f"  {what} {now:6.1f}s: {line}")
                last, shown = line, now
            if now > 1800:
                raise TimeoutError(f"{what}: not done after 30 min: {line}")
            await asyncio.sleep(0.1)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done


async def floor(lc: LocalCluster, n: int) -> dict[str, Any]:
    ns = "floor"
    lc.kubectl("create", "namespace", ns)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all([model(i, ns) for i in range(n)], f)
        f.flush()
        children = list(yaml.safe_load_all(render_file(f.name, Settings())))
    api = Api(lc)
    try:
        say(f"floor: {len(children)} children of {n} models, {WORKERS} at a time")
        t0 = time.monotonic()
        watching = asyncio.create_task(
            wait_counts(api, ns, n, t0, "floor", {"available Deployments": ("Deployment", ready_deployment)})
        )
        await bounded(WORKERS, [api.apply(c) for c in children])
        exist = time.monotonic() - t0
        ready = (await watching)["available Deployments"]
    finally:
        await api.close()
    say(f"floor: all exist after {exist:.1f}s, all available after {ready:.1f}s")
    lc.kubectl("delete", "namespace", ns, "--timeout=600s")
    return {
        "children": len(children),
        "exist_s": exist,
        "ready_s": ready,
        "objects_per_s": len(children) / exist,
    }


def requests_summary(reqs: list[Request]) -> dict[str, Any]:
    calls = [r for r in reqs if r.verb not in WATCH_VERBS]
    return {
        "requests": len(calls),
        "writes": sum(1 for r in calls if r.write),
        "watches": len(reqs) - len(calls),
        "by_verb_and_resource": by_verb_and_resource(reqs),
    }


async def operator_run(lc: LocalCluster, n: int, args: argparse.Namespace, out: dict[str, Any]) -> None:
    ns = "bench"
    lc.kubectl("create", "namespace", ns)
    metrics_port = free_port()
    env = {**lc.operator_env(), "MODELDEPLOY_WORKERS": str(WORKERS)}
    op = start_operator(env, lc.state / "logs" / "operator.log", metrics_port=metrics_port)
    audit = AuditLog(lc.audit_log)
    api = Api(lc)
    profiler: subprocess.Popen[bytes] | None = None
    try:
        out["rss_start_mib"] = rss_mib(op.pid)
        models = [model(i, ns) for i in range(n)]
        # -- burst ------------------------------------------------------------------------
        mark, cpu0, passes0 = audit.mark(), cpu_seconds(op.pid), passes(metrics_port)
        if args.profile and n == max(args.sizes):
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(op.pid), "-r", "50",
                 "--nonblocking", "-f", "raw", "-o", str(args.out / f"profile-{n}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        say(f"burst: creating {n} ModelDeployments, {WORKERS} at a time")
        t0 = time.monotonic()
        watching = asyncio.create_task(
            wait_counts(
                api,
                ns,
                n,
                t0,
                "operator",
                {
                    "Deployments": ("Deployment", lambda _: True),
                    "Services": ("Service", lambda _: True),
                    "models Ready": ("ModelDeployment", ready_model),
                },
            )
        )
        await bounded(WORKERS, [api.create(m) for m in models])
        done = await watching
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
            strip_paths(args.out / f"profile-{n}.txt")
            out["profile"] = top_frames(args.out / f"profile-{n}.txt")
        burst_reqs = audit.since(mark, OPERATOR_TOKEN_USER)
        burst_passes = passes(metrics_port) - passes0
        exist = max(done["Deployments"], done["Services"])
        out["burst"] = {
            "exist_s": exist,
            "ready_s": done["models Ready"],
            "objects_per_s": 2 * n / exist,
            "cpu_s": cpu_seconds(op.pid) - cpu0,
            "passes": burst_passes,
            **requests_summary(burst_reqs),
        }
        out["burst"]["requests_per_model"] = out["burst"]["requests"] / n
        out["burst"]["requests_per_pass"] = out["burst"]["requests"] / max(burst_passes, 1)
        out["rss_after_burst_mib"] = rss_mib(op.pid)
        say(f"burst: all children after {exist:.1f}s, all Ready after {done['models Ready']:.1f}s")
        # -- change latency ---------------------------------------------------------------
        out["change"] = await change_latency(api, ns, models, args.changes, op.pid)
        say(
            f"change: p50 {out['change']['p50_ms']:.0f} ms, p99 {out['change']['p99_ms']:.0f} ms "
            f"over {args.changes} changes"
        )
        # -- idle --------------------------------------------------------------------------
        # Let the last rollouts of the change phase finish first: idle means nothing changes.
        await wait_counts(
            api, ns, n, time.monotonic(), "settling", {"models settled": ("ModelDeployment", settled_model)}
        )
        mark, cpu0, passes0 = audit.mark(), cpu_seconds(op.pid), passes(metrics_port)
        say(f"idle: {args.idle_seconds:.0f}s with {n} models, counting the operator's requests")
        end = time.monotonic() + args.idle_seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(30.0, left))
            say(f"  idle: {max(0.0, end - time.monotonic()):.0f}s left")
        idle_reqs = audit.since(mark, OPERATOR_TOKEN_USER)
        idle_passes = passes(metrics_port) - passes0
        out["idle"] = {
            "seconds": args.idle_seconds,
            "cpu_s": cpu_seconds(op.pid) - cpu0,
            "passes": idle_passes,
            **requests_summary(idle_reqs),
        }
        out["idle"]["requests_per_pass"] = out["idle"]["requests"] / max(idle_passes, 1)
        out["rss_end_mib"] = rss_mib(op.pid)
        out["cpu_total_s"] = cpu_seconds(op.pid)
        say(
            f"idle: {out['idle']['requests']} requests ({out['idle']['writes']} writes) over "
            f"{idle_passes:.0f} passes, {out['idle']['cpu_s']:.1f} CPU s; RSS {out['rss_end_mib']:.0f} MiB"
        )
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        await api.close()
        stop_process(op)


async def change_latency(
    api: Api, ns: str, models: list[dict[str, Any]], changes: int, pid: int
) -> dict[str, Any]:
    """One spec change at a time; the time until a watch sees the Deployment's new generation."""
    generations: dict[str, int] = {}
    moved = asyncio.Event()

    def on(event: str, obj: dict[str, Any]) -> None:
        if event != "DELETED":
            generations[obj["metadata"]["name"]] = int(obj["metadata"].get("generation", 0))
            moved.set()

    watcher = asyncio.create_task(api.watch("Deployment", ns, on))
    latencies: list[float] = []
    cpu0 = cpu_seconds(pid)
    try:
        while len(generations) < len(models):
            moved.clear()
            await asyncio.wait_for(moved.wait(), 30)
        for i in range(changes):
            m = models[i % len(models)]
            name = m["metadata"]["name"]
            before = generations[name]
            tokens = 4000 if (i // len(models)) % 2 == 0 else 4096
            t0 = time.monotonic()
            await api.merge_patch(m, {"spec": {"engine": {"maxTotalTokens": tokens}}})
            while generations[name] <= before:
                moved.clear()
                await asyncio.wait_for(moved.wait(), 60)
            latencies.append((time.monotonic() - t0) * 1000)
            if (i + 1) % 20 == 0:
                say(f"  change: {i + 1}/{changes}, last {latencies[-1]:.0f} ms")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return {
        "changes": changes,
        "p50_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": max(latencies),
        "cpu_s": cpu_seconds(pid) - cpu0,
    }


def strip_paths(path: Path) -> None:
    """Keep file names, not where this machine keeps them, in the stacks (they are committed)."""
    if path.exists():
        path.write_text(re.sub(r"\((?:[^();:]*/)([^/();:]+:\d+)\)", r"(\1)", path.read_text()))


def top_frames(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]  # fmt: skip
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    idle = {
        f for f in own if f.startswith(("wait ", "_wait_for_tstate_lock", "select ", "_run_once", "sleep "))
    }
    busy = {f: c for f, c in own.items() if f not in idle}
    busy_total = sum(busy.values()) or 1
    return {
        "samples": total,
        "busy_samples": busy_total,
        "self": [[f, round(100 * c / busy_total, 1)] for f, c in collections.Counter(busy).most_common(top)],
        "inclusive_modeldeploy": [
            [f, round(100 * c / busy_total, 1)]
            for f, c in inclusive.most_common()
            if "(" in f
            and any(
                m in f
                for m in (
                    "reconcile.py",
                    "observe.py",
                    "status.py",
                    "render.py",
                    "resolve.py",
                    "kube.py",
                    "watchcache.py",
                    "cache_sync.py",
                )
            )
        ][:top],
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in results]
    idle_s = f"idle {results[0]['idle']['seconds']:.0f}s"
    # (title, [(figure's path in a result, style, label)], (target, its label) or None)
    panels = [
        ("Burst: time (s)", [(("burst", "ready_s"), "o-", "operator: all Ready"),
                             (("burst", "exist_s"), "o--", "operator: all children exist"),
                             (("floor", "ready_s"), "s-", "floor: all available"),
                             (("floor", "exist_s"), "s--", "floor: all exist")], None),
        ("Operator / floor", [(("ratio_ready",), "o-", "all Ready / all available"),
                              (("ratio_exist",), "o--", "children exist")], (2.0, "target 2.0")),
        ("Change latency (ms)", [(("change", "p50_ms"), "o-", "p50"), (("change", "p99_ms"), "o-", "p99")],
         (1000, "target p99 1 s")),
        ("Operator API requests (audit log)", [(("burst", "requests"), "o-", "burst"),
                                               (("idle", "requests"), "o-", idle_s),
                                               (("idle", "writes"), "o--", "idle writes")], None),
        ("Operator resident memory (MiB)", [(("rss_end_mib",), "o-", "end"),
                                            (("rss_after_burst_mib",), "o--", "after burst")],
         (200, "target 200 MiB")),
        ("Operator CPU seconds", [(("burst", "cpu_s"), "o-", "burst"), (("change", "cpu_s"), "o-", "changes"),
                                  (("idle", "cpu_s"), "o-", "idle")], None),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, lines, target) in zip(axes.flat, panels, strict=True):
        for keys, style, label in lines:
            ax.plot(ns, [functools.reduce(operator.getitem, keys, r) for r in results], style, label=label)
        if target is not None:
            ax.axhline(target[0], color="grey", lw=0.8, ls=":", label=target[1])
        ax.set(title=title, xlabel="models")
        ax.legend(fontsize=8)
    fig.suptitle("modeldeploy on the local control plane (2 cores shared with it)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


async def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    nodes = tuple(NodeShape(f"gpu-h100-{i}", "192", "2048Gi", 8, H100_LABELS) for i in range((n + 7) // 8))
    state = Path(tempfile.mkdtemp(prefix="modeldeploy-bench-"))
    lc = LocalCluster(state=state, bins=Binaries.locate())
    say(f"N={n}: starting a control plane with {len(nodes)} simulated 8x H100 nodes")
    lc.start(nodes=nodes)
    out: dict[str, Any] = {"n": n}
    try:
        lc.kubectl(
            "apply", "--server-side", "-f", str(REPO / "crds" / "modeldeploy.dev_modeldeployments.yaml")
        )
        lc.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.dev")
        out["floor"] = await floor(lc, n)
        await operator_run(lc, n, args, out)
    finally:
        lc.stop()
        shutil.rmtree(state, ignore_errors=True)
    out["ratio_ready"] = out["burst"]["ready_s"] / out["floor"]["ready_s"]
    out["ratio_exist"] = out["burst"]["exist_s"] / out["floor"]["exist_s"]
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        ("floor: all children exist (s)", lambda r: f"{r['floor']['exist_s']:.1f}"),
        ("floor: all available (s)", lambda r: f"{r['floor']['ready_s']:.1f}"),
        ("operator: all children exist (s)", lambda r: f"{r['burst']['exist_s']:.1f}"),
        ("operator: all Ready (s)", lambda r: f"{r['burst']['ready_s']:.1f}"),
        ("operator / floor (Ready)", lambda r: f"{r['ratio_ready']:.2f}"),
        ("operator / floor (exist)", lambda r: f"{r['ratio_exist']:.2f}"),
        ("children per second", lambda r: f"{r['burst']['objects_per_s']:.0f}"),
        ("burst requests per model", lambda r: f"{r['burst']['requests_per_model']:.1f}"),
        ("burst requests per pass", lambda r: f"{r['burst']['requests_per_pass']:.2f}"),
        ("change latency p50 (ms)", lambda r: f"{r['change']['p50_ms']:.0f}"),
        ("change latency p99 (ms)", lambda r: f"{r['change']['p99_ms']:.0f}"),
        ("idle requests (non-watch)", lambda r: f"{r['idle']['requests']}"),
        ("idle writes", lambda r: f"{r['idle']['writes']}"),
        ("idle requests per no-op pass", lambda r: f"{r['idle']['requests_per_pass']:.2f}"),
        ("idle CPU seconds", lambda r: f"{r['idle']['cpu_s']:.1f}"),
        ("burst CPU seconds", lambda r: f"{r['burst']['cpu_s']:.1f}"),
        ("RSS at end (MiB)", lambda r: f"{r['rss_end_mib']:.0f}"),
    ]
    head = f"{'':34}" + "".join(f"{'N=' + str(r['n']):>10}" for r in results)
    return "\n".join([head] + [f"{label:34}" + "".join(f"{f(r):>10}" for r in results) for label, f in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,100,300", help="comma-separated model counts")
    ap.add_argument("--changes", type=int, default=100, help="spec changes timed at each size")
    ap.add_argument("--idle-seconds", type=float, default=300.0)
    ap.add_argument("--profile", action="store_true", help="py-spy the operator during the largest burst")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sizes:
        results.append(asyncio.run(run_size(n, args)))
        (args.out / "bench.json").write_text(json.dumps(envelope(results, args), indent=2) + "\n")
    plot(results, args.out / "bench.png")
    print()
    print(table(results))
    print(f"\nresults: {args.out / 'bench.json'}, plot: {args.out / 'bench.png'}")
    return 0


def envelope(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "settings": {"workers": WORKERS, "changes": args.changes, "idle_seconds": args.idle_seconds},
        "results": results,
    }


if __name__ == "__main__":
    sys.exit(main())
