"""Autoscaling end to end: the real HPA controller (in kube-controller-manager) scales a
model's Deployment from TGI's queue size, read through the aggregated custom metrics API from a
stand-in metrics server, and the operator leaves the replicas it chose alone."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from mdlocal.localcluster import serving_cert
from tests.conftest import Cluster, condition
from tests.integration.test_reconcile import model, wait_ready
from tests.integration.test_rollout_autoscaling import replicas_owner
from tests.standins.custom_metrics import SERVICE, CustomMetricsStandIn, registration

QUEUE = "tgi_queue_size"


@pytest.fixture(scope="module")
def custom_metrics(cluster: Cluster) -> Iterator[CustomMetricsStandIn]:
    pki = cluster.lc.state / "pki"
    cert, key = serving_cert(pki, SERVICE, f"DNS:{SERVICE}.default.svc,DNS:localhost")

    def list_pods(namespace: str, selector: str) -> list[str]:
        return [p["metadata"]["name"] for p in cluster.list("pods", namespace, selector)]

    with CustomMetricsStandIn(cert, key, list_pods) as standin:
        ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        objs = registration(standin.port, ca)
        name = objs[1]["metadata"]["name"]

        def available() -> bool:
            c = condition(cluster.get("apiservice", name), "Available")
            return c is not None and c["status"] == "True"

        # An APIService left behind unavailable would break discovery for every later test.
        try:
            cluster.apply(objs)
            try:
                cluster.wait("the custom metrics APIService Available", available, timeout=60)
            except TimeoutError as e:
                raise AssertionError(f"{e}: {condition(cluster.get('apiservice', name), 'Available')}") from e
            yield standin
        finally:
            cluster.kubectl("delete", "apiservice", name, "--wait=false")
            cluster.kubectl("delete", "service", "-n", "default", objs[0]["metadata"]["name"], "--wait=false")


def test_hpa_controller_scales_on_queue_size(
    cluster: Cluster, namespace: str, operator: Any, custom_metrics: CustomMetricsStandIn
) -> None:
    custom_metrics.set(namespace, QUEUE, 0)
    body = model("scaled", resources={"gpus": 1, "gpuType": "nvidia-h100-80gb"})
    scaling = {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "metric": "queue-size", "target": 8}
    body["spec"]["autoscaling"] = scaling
    cluster.apply(body, namespace)
    wait_ready(cluster, namespace, "scaled")

    def hpa_condition(type_: str) -> dict[str, Any] | None:
        c = condition(cluster.get("hpa", "scaled", namespace), type_)
        return c if c and c["status"] == "True" else None

    cluster.wait("the HPA reads the metric", lambda: hpa_condition("ScalingActive"), timeout=120)
    dep = cluster.get("deployment", "scaled", namespace)
    assert dep is not None and dep["spec"]["replicas"] == 1

    # 20 queued requests per pod against a target of 8: ceil(1 * 20 / 8) = 3 replicas.
    custom_metrics.set(namespace, QUEUE, 20)

    def scaled() -> dict[str, Any] | None:
        d = cluster.get("deployment", "scaled", namespace)
        return d if d and d["spec"]["replicas"] == 3 else None

    cluster.wait("the HPA controller scales to 3", scaled, timeout=120)

    # The controller scales first and writes its status after.
    def hpa_status() -> dict[str, Any] | None:
        h = cluster.get("hpa", "scaled", namespace)
        return h if h and h["status"].get("desiredReplicas") == 3 else None

    hpa = cluster.wait("the HPA status", hpa_status)
    assert hpa["status"]["currentMetrics"][0]["pods"]["current"]["averageValue"] == "20"

    # The model's status follows the three pods; the operator's passes meanwhile never take
    # replicas back.
    def all_ready() -> dict[str, Any] | None:
        obj = cluster.get("modeldeployment", "scaled", namespace)
        st = (obj or {}).get("status") or {}
        ready = condition(obj, "Ready")
        return obj if st.get("readyReplicas") == 3 and ready and ready["status"] == "True" else None

    cluster.wait("the model reports 3 ready replicas", all_ready, timeout=120)
    dep = cluster.get("deployment", "scaled", namespace, managed_fields=True)
    assert dep is not None and dep["spec"]["replicas"] == 3
    # The hand-over: the HPA controller's scale writes own replicas, the operator does not.
    assert "modeldeploy" not in replicas_owner(dep)
