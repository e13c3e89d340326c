"""Drills: the operator through its own crashes, the control plane's restarts, a second replica,
hostile input, other writers and deletion, on the session's real control plane (tests/conftest.py).

Each drill starts its own operator process(es) and never the session's `operator` fixture, so
they run in a pytest invocation of their own (`make drills`, and the short form in `make test`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from mdlocal.localcluster import H100_LABELS, NodeShape, node_manifest
from tests.conftest import Cluster
from tests.drills.kit import LONG, RESULTS, Operators, Report

_reports: list[Report] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    report = getattr(item, "_drill_report", None)
    if report is not None and (rep.when == "call" or rep.failed):
        report.outcome = "failed" if rep.failed else ("passed" if rep.when == "call" else report.outcome)


@pytest.fixture()
def report(request: pytest.FixtureRequest) -> Iterator[Report]:
    name = request.node.name.removeprefix("test_")
    r = Report(name)
    request.node._drill_report = r
    r.did(f"{'long' if LONG else 'short'} form")
    try:
        yield r
    finally:
        r.save()
        _reports.append(r)


@pytest.fixture()
def operators(cluster: Cluster) -> Iterator[Operators]:
    ops = Operators(cluster)
    try:
        yield ops
    finally:
        ops.stop_all()


@pytest.fixture(scope="session")
def gpu_pool(cluster: Cluster) -> Iterator[int]:
    """More simulated H100 nodes (8 GPUs each), so every drill model gets a GPU and can be
    Ready; yields the cluster's H100 GPU count. Removed at the end of the session."""
    extra = 15 if LONG else 4
    shapes = [NodeShape(f"drill-h100-{i}", "192", "2048Gi", 8, H100_LABELS) for i in range(extra)]
    cluster.lc.apply([node_manifest(s) for s in shapes])

    def ready() -> bool:
        for s in shapes:
            node = cluster.get("node", s.name) or {}
            conds = (node.get("status") or {}).get("conditions") or []
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return False
        return True

    cluster.wait(f"{extra} more H100 nodes Ready", ready, timeout=120)
    try:
        yield 16 + 8 * extra
    finally:
        for s in shapes:
            cluster.kubectl("delete", "node", s.name, "--ignore-not-found", "--wait=false", check=False)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}"
    return json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _reports:
        return
    tr = terminalreporter
    tr.section(f"drills ({'long' if LONG else 'short'} form; JSON reports in {RESULTS})", sep="=")
    for r in _reports:
        tr.line(f"{r.drill:<24} {r.outcome:<8} {r.seconds:6.1f}s")
        for k, v in r.figures.items():
            tr.line(f"    {k:<44} {_fmt(v)}")
