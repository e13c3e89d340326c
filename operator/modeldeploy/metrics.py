"""Prometheus metrics of the operator itself (TGI's own metrics are on each model's pods)."""

from __future__ import annotations

import contextlib

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
