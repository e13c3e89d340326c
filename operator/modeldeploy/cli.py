"""`modeldeploy` command line: run the operator, render children offline, print the CRD."""

from __future__ import annotations

import argparse
import logging
import os
import random
import secrets
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modeldeploy import KIND, metrics, peering, render
from modeldeploy.api import ModelDeploymentSpec, is_dns_label
from modeldeploy.errors import SpecError
from modeldeploy.reconcile import spec_error_from_validation
from modeldeploy.resolve import ClusterFacts, model_facts, plan_model, resolve, static_rules
from modeldeploy.settings import Settings

# kopf peering priorities drawn when --priority is not given: 1..this.
MAX_RANDOM_PRIORITY = 1_000_000
MIN_PEERING_LIFETIME = 10


def _load_models(path: str) -> Iterator[tuple[str, str, ModelDeploymentSpec]]:
    """(name, namespace, validated spec) of each ModelDeployment in the file ('-' = stdin)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        meta = doc.get("metadata") or {}
        name = str(meta.get("name", ""))
        if name and not is_dns_label(name):
            # The rule the CRD enforces at admission: the children take the model's name.
            raise SpecError(
                "metadata.name", f"{name!r} is not a DNS-1035 label (lowercase, digits, '-', no dots)"
            )
        try:
            spec = ModelDeploymentSpec.model_validate(doc.get("spec") or {})
        except ValidationError as e:
            raise spec_error_from_validation(e) from e
        yield meta.get("name", ""), meta.get("namespace", "default"), spec


def render_file(path: str, settings: Settings) -> str:
    """The children the operator would apply for each ModelDeployment in the file."""
    out: list[dict[str, Any]] = []
    for name, namespace, spec in _load_models(path):
        # Offline: no cluster facts, so the rollout strategy is the no-free-GPU one.
        resolved, _ = resolve(spec, settings, ClusterFacts())
        out += render.render(name, namespace, spec, resolved, owner=None)
    return render.to_yaml(out)


def model_source(
    kube: Any, namespaces: list[str], active: Callable[[], bool] = lambda: True
) -> Callable[[], list[dict[str, Any]]]:
    """The prober's models, read at most once per tick: beside the reconcile, from its
    watch-fed indices (no request); alone (--prober=only), one list call per watched namespace.
    A standby replica (kopf peering) probes nothing: the active one does."""
    from modeldeploy import GROUP, VERSION

    def models() -> list[dict[str, Any]]:
        if not active():
            return []
        if not namespaces:
            return list(kube.list(f"{GROUP}/{VERSION}", KIND, None))
        return [m for ns in namespaces for m in kube.list(f"{GROUP}/{VERSION}", KIND, ns)]

    return models


def start_prober(namespaces: list[str], beside_reconcile: bool = False) -> Any:
    from modeldeploy.kube import Kube
    from modeldeploy.prober import Prober
    from modeldeploy.probes import ProberSettings

    settings = ProberSettings.from_env()
    if beside_reconcile:
        from modeldeploy import handlers

        kube = handlers.reconciler().kube
        source = model_source(kube, namespaces, handlers.acting)
    else:
        kube = Kube()
        source = model_source(kube, namespaces)
    prober = Prober(kube, source, settings)
    prober.start()
    return prober


def serve_liveness(url: str) -> None:
    """/healthz for --prober=only (kopf serves it otherwise)."""
    import http.server
    import threading
    from urllib.parse import urlparse

    where = urlparse(url)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?")[0] == (where.path or "/healthz")
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"{}" if ok else b"")

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((where.hostname or "0.0.0.0", where.port or 8080), Health)
    threading.Thread(target=server.serve_forever, name="liveness", daemon=True).start()


def run_prober_only(args: argparse.Namespace, namespaces: list[str]) -> int:
    """Only the prober, no reconcile: beside an operator that reconciles (or for a dry look)."""
    import signal
    import threading

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    prober = start_prober(namespaces)
    if args.liveness:
        serve_liveness(args.liveness)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    prober.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from modeldeploy import handlers
    from modeldeploy.probes import prober_enabled

    if args.prober == "only":
        return run_prober_only(args, args.namespace or [])
    if not args.peering and (args.priority is not None or args.peering_lifetime is not None):
        print("error: --priority and --peering-lifetime need --peering", file=sys.stderr)
        return 2
    handlers._state["peering"] = args.peering
    # kopf's name for this replica in the peering objects: the pod's name in a cluster.
    identity = os.environ.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    handlers._state["identity"] = identity
    # kopf pauses every peer that shares a priority, until one of them goes: unless told, draw
    # from a range wide enough that two replicas practically never tie.
    priority = args.priority if args.priority is not None else random.randint(1, MAX_RANDOM_PRIORITY)
    handlers._state["priority"] = priority
    handlers._state["peering_lifetime"] = args.peering_lifetime or peering.DEFAULT_LIFETIME
    namespaces: list[str] = args.namespace or []
    handlers._state["namespaces"] = namespaces
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    kopf.configure(
        verbose=args.log_level == "debug",
        debug=False,
        quiet=args.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if args.log_level != "debug":
        # kopf logs every handled watch event at INFO ("Handler ... succeeded"): noise here.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("modeldeploy").setLevel(args.log_level.upper())
    # The runtime checks and probes run beside the reconcile, in a thread of their own.
    enabled = prober_enabled(args.prober, os.environ)
    prober = start_prober(namespaces, beside_reconcile=True) if enabled else None
    try:
        _run_kopf(kopf, args, namespaces, identity, priority)
    finally:
        if prober is not None:
            prober.stop()
    return 0


def _run_kopf(
    kopf: Any, args: argparse.Namespace, namespaces: list[str], identity: str, priority: int
) -> None:
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
        standalone=not args.peering,
        peering_name=peering.NAME if args.peering else None,
        priority=priority if args.peering else None,
        # kopf types it as its own NewType of str, which it does not export.
        identity=identity if args.peering else None,
    )


def cmd_render(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(render_file(args.file, Settings.from_env()))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def plan_table(path: str, gpu_type: str | None, settings: Settings) -> str:
    """The planner's table for each ModelDeployment in the file: every shard count considered."""
    lines: list[str] = []
    for name, _, asked in _load_models(path):
        spec = asked
        if gpu_type:
            spec = asked.model_copy(
                update={"resources": asked.resources.model_copy(update={"gpu_type": gpu_type})}
            )
        static_rules(spec)
        model_id, arch = model_facts(spec)
        if arch is None:
            lines.append(f"{name}: {model_id}: no architecture facts (not in the catalog): nothing to plan")
            continue
        p = plan_model(spec, arch, settings, ClusterFacts())
        lines.append(
            f"{name}: {model_id} on {p.gpu_type} "
            f"({p.gpu_memory_gib:.1f} GiB, {p.usable_gib_per_gpu:.1f} usable), "
            f"weights {p.weights_format}, {p.max_total_tokens} tokens x {p.concurrent_sequences} sequences"
        )
        lines.append(f"  {'shards':>6} {'weights':>9} {'kv-cache':>9} {'overhead':>9} {'total':>9}  verdict")
        for c in p.candidates:
            verdict = (
                "chosen" if c.num_shard == p.num_shard else ("fits" if c.fits else c.reason or "does not fit")
            )
            lines.append(
                f"  {c.num_shard:>6} {c.weights_gib_per_gpu:>8.1f}G {c.kv_cache_gib_per_gpu:>8.1f}G "
                f"{c.overhead_gib_per_gpu:>8.1f}G {c.total_gib_per_gpu:>8.1f}G  {verdict}"
            )
        lines.append(
            f"  => gpus {p.gpus_per_replica}, --num-shard {p.num_shard}, "
            f"~{p.total_gib_per_gpu:.1f} GiB per GPU"
        )
    return "\n".join(lines) + "\n"


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(plan_table(args.file, args.gpu_type, Settings.from_env()))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_crd(_: argparse.Namespace) -> int:
    from modeldeploy.crdgen import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _lifetime(text: str) -> int:
    value = int(text)
    # kopf renews its entry 5-10 s before the lifetime ends; shorter would let a live replica expire.
    if value < MIN_PEERING_LIFETIME:
        raise argparse.ArgumentTypeError(f"at least {MIN_PEERING_LIFETIME} seconds")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="modeldeploy", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    run.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL ('' = off)"
    )
    run.add_argument(
        "--log-format", choices=["plain", "json"], default=os.environ.get("MODELDEPLOY_LOG_FORMAT", "plain")
    )
    run.add_argument(
        "--metrics-port", type=int, default=8081, help="port for Prometheus metrics at /metrics (0 = off)"
    )
    run.add_argument(
        "--peering", action="store_true", help="kopf peering: one active replica, others standby"
    )
    run.add_argument(
        "--peering-lifetime",
        type=_lifetime,
        help="seconds a replica counts as alive after its last keep-alive; a standby takes over "
        f"this long after the active replica dies without a clean stop (default {peering.DEFAULT_LIFETIME}, "
        f"at least {MIN_PEERING_LIFETIME})",
    )
    run.add_argument(
        "--priority",
        type=int,
        help="peering priority; the live replica with the highest one works "
        f"(default: random 1-{MAX_RANDOM_PRIORITY})",
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=os.environ.get("MODELDEPLOY_LOG_LEVEL", "info"),
    )
    run.add_argument(
        "--prober",
        choices=["auto", "on", "off", "only"],
        default=os.environ.get("MODELDEPLOY_PROBER", "auto"),
        help="runtime checks and behaviour probes beside the reconcile: auto (on inside a cluster or "
        "with MODELDEPLOY_ENDPOINTS set), on, off, or only (the prober without the reconcile)",
    )
    run.set_defaults(fn=cmd_run)
    rnd = sub.add_parser("render", help="print the children of ModelDeployments in FILE, offline")
    rnd.add_argument(
        "-f", "--file", required=True, help="YAML file with ModelDeployment documents ('-' = stdin)"
    )
    rnd.set_defaults(fn=cmd_render)
    pln = sub.add_parser("plan", help="print the GPU plan of ModelDeployments in FILE, offline")
    pln.add_argument(
        "-f", "--file", required=True, help="YAML file with ModelDeployment documents ('-' = stdin)"
    )
    pln.add_argument("--gpu-type", help="plan on this GPU type (catalog name) instead of the spec's")
    pln.set_defaults(fn=cmd_plan)
    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(fn=cmd_crd)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rc: int = args.fn(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
