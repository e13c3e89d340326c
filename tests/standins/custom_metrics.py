"""Stand-in for a custom metrics API server (the role Prometheus Adapter plays in a real cluster):
a small HTTPS server that the kube-apiserver's aggregation layer proxies
`custom.metrics.k8s.io/v1beta2` to, so the real HPA controller can read a Pods metric. It is
not Prometheus Adapter; it answers from values the test sets.

Served:
  GET /apis/custom.metrics.k8s.io/v1beta2
      discovery: a resource pods/{metric} for each metric given a value
  GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/{name or *}/{metric}?labelSelector=
      MetricValueList, one item per matching pod, with the value set for the namespace

Pods are listed from the API server (the real list, by the request's label selector), so the
items name the pods the HPA controller sees. Registration is an APIService pointing at an
ExternalName Service "localhost": the aggregator resolves it to https://localhost:PORT, which
needs no kube-proxy and no routable address.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.standins.server import LocalServer

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
PREFIX = f"/apis/{GROUP}/{VERSION}"
POD_METRIC = re.compile(rf"^{PREFIX}/namespaces/([^/]+)/pods/([^/]+)/([^/]+)$")

ListPods = Callable[[str, str], list[str]]
"""(namespace, label selector) -> pod names."""


SERVICE = "custom-metrics-standin"
"""The Service the APIService names; the serving certificate must carry its DNS name."""


class CustomMetricsStandIn(LocalServer):
    """HTTPS server on 127.0.0.1 (an ephemeral port); use as a context manager.
    `set(namespace, metric, value)` sets the value every pod in the namespace reports."""

    def __init__(self, cert: Path, key: Path, list_pods: ListPods) -> None:
        self._values: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._list_pods = list_pods
        super().__init__(self._handler_class(), tls=(cert, key))

    def set(self, namespace: str, metric: str, value: float) -> None:
        with self._lock:
            self._values[(namespace, metric)] = value

    # -- API objects -------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        with self._lock:
            metrics = sorted({m for _, m in self._values})
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{GROUP}/{VERSION}",
            "resources": [
                {"name": f"pods/{m}", "singularName": "", "namespaced": True, "kind": "MetricValueList",
                 "verbs": ["get"]}
                for m in metrics
            ],
        }  # fmt: skip

    def values(self, namespace: str, pod: str, metric: str, selector: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._values.get((namespace, metric))
        if value is None:
            return None
        pods = self._list_pods(namespace, selector) if pod == "*" else [pod]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "kind": "MetricValueList",
            "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {},
            "items": [
                {
                    "describedObject": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": p,
                        "apiVersion": "v1",
                    },
                    "metric": {"name": metric},
                    "timestamp": now,
                    "windowSeconds": 60,
                    "value": f"{round(value * 1000)}m",
                }
                for p in pods
            ],
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, what: str) -> None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404, "message": what})  # fmt: skip

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == PREFIX:
                    self._send(200, standin.discovery())
                    return
                m = POD_METRIC.match(url.path)
                if not m:
                    self._not_found(f"{url.path} is not served")
                    return
                namespace, pod, metric = m.groups()
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                body = standin.values(namespace, pod, metric, selector)
                if body is None:
                    self._not_found(f"no values of {metric} in {namespace}")
                    return
                self._send(200, body)

        return Handler


def registration(port: int, ca_bundle: str, namespace: str = "default") -> list[dict[str, Any]]:
    """The ExternalName Service and APIService that hand custom.metrics.k8s.io to the stand-in.
    ca_bundle: the CA certificate, base64-encoded PEM."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": namespace},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": f"{VERSION}.{GROUP}"},
            "spec": {
                "group": GROUP,
                "version": VERSION,
                "service": {"name": SERVICE, "namespace": namespace, "port": port},
                "caBundle": ca_bundle,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]
