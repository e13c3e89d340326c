"""API server refusals in the model's own terms; request timeouts on every call."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest
from kubernetes import client

from modeldeploy import kube
from modeldeploy.apierrors import RefusedError, TransientError, classify, spec_field


class FakeApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = json.dumps(body)
        self.reason = "x"


@pytest.mark.parametrize(
    ("child", "field"),
    [
        ("spec.template.spec.containers[0].resources.requests.memory", "spec.resources"),
        ("spec.template.spec.tolerations[1].key", "spec.scheduling.tolerations"),
        ("spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef.name", "spec.model.tokenSecretRef"),
        ("spec.progressDeadlineSeconds", "spec.rollout.progressDeadlineSeconds"),
        ("spec.maxReplicas", "spec.autoscaling.maxReplicas"),
        ("metadata.name", "metadata.name"),
        ("spec.somethingNew", "spec"),
    ],
)
def test_child_fields_map_to_spec_fields(child: str, field: str) -> None:
    assert spec_field(child) == field


def test_422_is_refused_naming_the_spec_field() -> None:
    e = classify(FakeApiError(422, {"message": 'Deployment.apps "m" is invalid: quantities must match',
                           "details": {"causes": [{"field": "spec.template.spec.containers[0].resources"
                                                   ".limits[memory]"}]}}), "Deployment m")  # fmt: skip
    assert isinstance(e, RefusedError)
    err = e.spec_error()
    assert err.field == "spec.resources" and err.reason == "ApplyRefused"
    assert "the API server refused Deployment m" in err.message and "quantities" in err.message


@pytest.mark.parametrize("status", [0, 429, 500, 503, 504])
def test_overload_and_outages_are_transient(status: int) -> None:
    assert isinstance(classify(FakeApiError(status, {"message": "busy"}), "Deployment m"), TransientError)


def test_every_request_has_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that accepts the connection and never answers (a half-open API server).
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (1.0, 1.0))
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{srv.getsockname()[1]}"
    # The client library's own requests (API discovery, when the client starts) time out too.
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
        kube.Kube(client.ApiClient(cfg))
    assert time.monotonic() - started < 15
    k = kube.Kube.__new__(kube.Kube)
    k.api = kube.with_default_timeout(client.ApiClient(cfg))
    k.custom = client.CustomObjectsApi(k.api)
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
        k.get_model("ns", "m")
    assert time.monotonic() - started < 10
    srv.close()


def test_namespace_field_is_not_the_name() -> None:
    assert spec_field("metadata.namespace") == "spec"
