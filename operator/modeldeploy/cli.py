"""`modeldeploy` command line: run the operator, render children offline, print the CRD."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modeldeploy import KIND, render
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.errors import SpecError
from modeldeploy.reconcile import spec_error_from_validation
from modeldeploy.resolve import ClusterFacts, resolve
from modeldeploy.settings import Settings


def _load_models(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") == KIND]


def render_file(path: str, settings: Settings) -> str:
    """The children the operator would apply for each ModelDeployment in the file."""
    out: list[dict[str, Any]] = []
    for doc in _load_models(path):
        meta = doc.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "default")
        try:
            spec = ModelDeploymentSpec.model_validate(doc.get("spec") or {})
        except ValidationError as e:
            raise spec_error_from_validation(e) from e
        # Offline: no cluster facts, so the rollout strategy is the no-free-GPU one.
        resolved, _ = resolve(spec, settings, ClusterFacts())
        out += render.render(name, namespace, spec, resolved, owner=None)
    return render.to_yaml(out)


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from modeldeploy import handlers

    handlers._state["peering"] = args.peering
    namespaces: list[str] = args.namespace or []
    if len(namespaces) == 1:
        handlers._state["namespace"] = namespaces[0]
    kopf.configure(
        verbose=args.log_level == "debug",
        debug=False,
        quiet=args.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
        standalone=not args.peering,
        peering_name="modeldeploy" if args.peering else None,
    )
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(render_file(args.file, Settings.from_env()))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_crd(_: argparse.Namespace) -> int:
    from modeldeploy.crdgen import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


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
        "--peering", action="store_true", help="kopf peering: one active replica, others standby"
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=os.environ.get("MODELDEPLOY_LOG_LEVEL", "info"),
    )
    run.set_defaults(fn=cmd_run)
    rnd = sub.add_parser("render", help="print the children of ModelDeployments in FILE, offline")
    rnd.add_argument(
        "-f", "--file", required=True, help="YAML file with ModelDeployment documents ('-' = stdin)"
    )
    rnd.set_defaults(fn=cmd_render)
    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(fn=cmd_crd)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rc: int = args.fn(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
