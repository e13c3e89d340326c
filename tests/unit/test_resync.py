"""The periodic resync: each model and each namespace's cache collection on its own, so one
failure skips nothing else (the API calls are a small in-memory stand-in: this is orchestration
only; the passes themselves are tested on the real control plane)."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import handlers
from modeldeploy.workqueue import Key


class Collecting:
    def __init__(self, fail_in: set[str]) -> None:
        self.collected: list[str] = []
        self.fail_in = fail_in

    def collect_garbage(self, namespace: str) -> None:
        if namespace in self.fail_in:
            raise RuntimeError(f"cannot list PVCs in {namespace}")
        self.collected.append(namespace)


class Listing:
    def __init__(self, models: dict[str | None, list[Key]], pvc_namespaces: list[str]) -> None:
        self.models = models
        self.pvc_namespaces = pvc_namespaces

    def list(self, api_version: str, kind: str, scope: str | None, selector: str = "") -> list[Any]:
        if kind == "ModelDeployment":
            if scope == "broken":
                raise RuntimeError("list failed")
            return [{"metadata": {"namespace": ns, "name": n}} for ns, n in self.models.get(scope, [])]
        return [{"metadata": {"namespace": ns}} for ns in self.pvc_namespaces if scope in (None, ns)]


class Rec:
    def __init__(self, kube: Listing, caches: Collecting) -> None:
        self.kube = kube
        self.caches = caches


class Queue:
    def __init__(self) -> None:
        self.added: list[Key] = []

    def add(self, key: Key, apply: bool = True) -> None:
        self.added.append(key)


def test_one_failure_skips_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    q = Queue()
    monkeypatch.setattr(handlers, "queue", lambda: q)
    kube = Listing({"a": [("a", "m1"), ("a", "m2")], "c": [("c", "m3")]}, ["a", "b", "c"])
    caches = Collecting(fail_in={"a"})
    handlers._resync(Rec(kube, caches), ["a", "broken", "b", "c"])  # type: ignore[arg-type]
    assert q.added == [("a", "m1"), ("a", "m2"), ("c", "m3")]
    assert caches.collected == ["b", "c"]
