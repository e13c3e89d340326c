"""Prometheus metrics of the operator itself (TGI's own metrics are on each model's pods)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "modeldeploy_reconcile_total",
    "Reconcile passes, by outcome (ok: applied or waited; refused: spec refused; error: raised).",
    ["outcome"],
)
RECONCILE_SECONDS = Histogram(
    "modeldeploy_reconcile_duration_seconds",
    "Time of one reconcile pass.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACTIVE = Gauge(
    "modeldeploy_active",
    "1 while this replica does the work, 0 while it stands by for a peer (kopf peering).",
)
CONDITIONS = Gauge(
    "modeldeploy_model_condition",
    "1 when the ModelDeployment's condition has this status, per model.",
    ["namespace", "name", "type", "status"],
)


def record_conditions(namespace: str, name: str, conditions: list[tuple[str, str]]) -> None:
    """Export the model's conditions; types that went away (Reconciling, Stalled) read 0."""
    present = dict(conditions)
    for type_ in ("Ready", "Reconciling", "Stalled", "CacheReady"):
        for status in ("True", "False", "Unknown"):
            CONDITIONS.labels(namespace, name, type_, status).set(1 if present.get(type_) == status else 0)


def forget(namespace: str, name: str) -> None:
    for type_ in ("Ready", "Reconciling", "Stalled", "CacheReady"):
        for status in ("True", "False", "Unknown"):
            with contextlib.suppress(KeyError):
                CONDITIONS.remove(namespace, name, type_, status)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr)


# ---- the prober (runtime checks and behaviour probes) ------------------------------------------

TGI_REQUESTS = Counter(
    "modeldeploy_tgi_requests_total",
    "Requests the prober sent to models' TGI, by route (info, smoke-chat, probe-generate ...) and "
    "outcome (ok, or the error's reason: Overloaded, Timeout, Unreachable ...).",
    ["namespace", "name", "route", "outcome"],
)
PROBE_RUNS = Counter(
    "modeldeploy_probe_runs_total",
    "Verification runs, by kind (rollout, interval) and verdict (the Verified condition's reason).",
    ["namespace", "name", "kind", "verdict"],
)
PROBE_RUN_SECONDS = Histogram(
    "modeldeploy_probe_run_duration_seconds",
    "Time of one verification run (all its requests and retries).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
PROBE_PASSED = Gauge(
    "modeldeploy_probe_passed",
    "1 while the probe's last run passed, 0 while it fails, per model and probe.",
    ["namespace", "name", "probe"],
)
REFUSAL_RATE = Gauge(
    "modeldeploy_probe_refusal_rate",
    "Share of the model's probes whose last output was a refusal.",
    ["namespace", "name"],
)


def record_probe_run(
    namespace: str, name: str, kind: str, verdict: str, probes: dict[str, Any] | None, seconds: float
) -> None:
    PROBE_RUNS.labels(namespace, name, kind, verdict).inc()
    PROBE_RUN_SECONDS.observe(seconds)
    if not probes:
        return
    for r in probes.get("results") or []:
        PROBE_PASSED.labels(namespace, name, r["name"]).set(1 if r.get("passed") else 0)
    if probes.get("refusalRate") is not None:
        REFUSAL_RATE.labels(namespace, name).set(float(probes["refusalRate"]))
