"""Fixtures: one real control plane per test session, a fresh namespace per test, and the
operator running against it as a separate process (the same `modeldeploy run` users run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdlocal.localcluster import Binaries, LocalCluster, free_port, start_operator, stop_process, wait_for
from tests.standins.hf_hub import HubStandIn

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "modeldeploy.dev_modeldeployments.yaml"
OPERATOR_METRICS_PORT = free_port()


class SkipsFail:
    """A skipped test fails the session: a test that did not run proves nothing, so a missing
    tool or control plane must read as a failure, never as a quiet "s" in the summary. Expected
    failures (xfail, xpass) count as skips: a known-broken test hides what it tests."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    @staticmethod
    def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
        if hasattr(report, "wasxfail"):
            return f"xfail: {report.wasxfail}" if report.wasxfail else "xfail"
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            return str(longrepr[2])  # (path, line, "Skipped: reason")
        return str(longrepr)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self.skipped.append(f"{report.nodeid or '<collection>'}: {self._reason(report)}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped or hasattr(report, "wasxfail"):
            self.skipped.append(f"{report.nodeid}: {self._reason(report)}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skipped and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            terminalreporter.section("skipped tests fail the suite", sep="=", red=True, bold=True)
            for line in self.skipped:
                terminalreporter.line(f"SKIPPED {line}", red=True)
            terminalreporter.line(
                f"{len(self.skipped)} skipped: the session fails (tests/conftest.py)", red=True
            )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipsFail(), "modeldeploy-skips-fail")


class Cluster:
    """Test-side handle: kubectl, JSON reads and waits."""

    def __init__(self, lc: LocalCluster) -> None:
        self.lc = lc
        self.kubeconfig = lc.kubeconfig_path

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(self.lc.bins.kubectl), *args], input=stdin, capture_output=True, text=True,
            env=self.lc.env(), timeout=120,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{res.stderr}")
        return res

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(self.lc.bins.helm), *args], capture_output=True, text=True,
                             env=self.lc.env(), timeout=300)  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stderr}")
        return res

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        docs = obj if isinstance(obj, list) else [obj]
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", stdin=yaml.safe_dump_all(docs), check=check)

    def get(self, kind: str, name: str, namespace: str | None = None, managed_fields: bool = False
            ) -> dict[str, Any] | None:  # fmt: skip
        ns = ["-n", namespace] if namespace else []
        extra = ["--show-managed-fields"] if managed_fields else []
        res = self.kubectl("get", kind, name, *ns, "-o", "json", *extra, check=False)
        if res.returncode != 0:
            if "NotFound" in res.stderr:
                return None
            raise AssertionError(res.stderr)
        out: dict[str, Any] = json.loads(res.stdout)
        return out

    def list(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        sel = ["-l", selector] if selector else []
        res = self.kubectl("get", kind, "-n", namespace, *sel, "-o", "json")
        items: list[dict[str, Any]] = json.loads(res.stdout)["items"]
        return items

    def wait_established(self, crd: str) -> None:
        # `kubectl wait` fails outright when it reads a CRD before it has any status.
        def established() -> bool:
            c = condition(self.get("crd", crd), "Established")
            return c is not None and c["status"] == "True"

        self.wait(f"CRD {crd} Established", established, timeout=60)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
        """Poll until check() returns something truthy; return it."""
        box: list[Any] = []

        def probe() -> bool:
            v = check()
            if v:
                box.append(v)
                return True
            return False

        wait_for(what, probe, timeout=timeout, interval=0.3)
        return box[-1]


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    try:
        bins = Binaries.locate()
    except FileNotFoundError as e:
        pytest.fail(str(e))  # a missing control plane is a failure, never a skip
    state = Path(tempfile.mkdtemp(prefix="modeldeploy-test-"))
    lc = LocalCluster(state=state, bins=bins)
    lc.start()
    try:
        yield lc
    finally:
        lc.stop()
        # Logs of every component stay behind only when something failed.
        if request.session.testsfailed == 0:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"\ncontrol-plane and operator logs: {state / 'logs'}")


@pytest.fixture(scope="session")
def cluster(local_cluster: LocalCluster) -> Cluster:
    c = Cluster(local_cluster)
    c.kubectl("apply", "--server-side", "-f", str(CRD))
    c.wait_established("modeldeployments.modeldeploy.dev")
    return c


@pytest.fixture(scope="session")
def hub() -> Iterator[HubStandIn]:
    """The local Hugging Face Hub stand-in (generated repositories; no internet)."""
    with HubStandIn() as h:
        yield h


@pytest.fixture(scope="session")
def operator_proc(cluster: Cluster, hub: HubStandIn) -> Iterator[subprocess.Popen[bytes]]:
    """`modeldeploy run` against the test cluster, with a fast resync, reading model configs
    from the Hub stand-in."""
    env = {
        # Its own user, so the audit log tells its requests apart (tests/integration/test_scale.py).
        **cluster.lc.operator_env(),
        "MODELDEPLOY_RESYNC_SECONDS": "5",
        "MODELDEPLOY_DISCOVERY_RETRY_SECONDS": "1",
        "MODELDEPLOY_HF_ENDPOINT": hub.url,
    }
    proc = start_operator(env, cluster.lc.state / "logs" / "operator.log", metrics_port=OPERATOR_METRICS_PORT)
    try:
        yield proc
    finally:
        stop_process(proc)


@pytest.fixture()
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait("default ServiceAccount", lambda: cluster.get("serviceaccount", "default", name), timeout=60)
    yield name
    if os.environ.get("MODELDEPLOY_KEEP_NAMESPACES") != "1":
        cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture()
def operator(operator_proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    if operator_proc.poll() is not None:
        pytest.fail("operator process died")
    return operator_proc
