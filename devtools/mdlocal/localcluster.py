"""A real local control plane for tests and the demo: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK (simulated nodes), each a process
started from the binaries `hack/build-controlplane.sh` builds. `mdlocal.flux` starts Flux
beside it.

A development tool, kept out of the operator's package (it never ships in the wheel or image).
With `devtools` on the path (the Makefile and pytest set it):
`PYTHONPATH=devtools python -m mdlocal.localcluster up DIR [--flux]` starts one (and Flux) and
leaves it running;
`PYTHONPATH=devtools python -m mdlocal.localcluster down DIR` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# This file is devtools/mdlocal/localcluster.py in the repository.
REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN_USER = "modeldeploy-admin"
# The operator's own identity on the local control plane: the audit log counts its requests.
OPERATOR_TOKEN_USER = "modeldeploy-operator"
# Log every request of the operator's user (one line per request, once answered); nothing else.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_TOKEN_USER]}, {"level": "None"}],
}
GPU = "nvidia.com/gpu"
HOST_PATH_STORAGE_CLASS = "standard"
UNSERVED_STORAGE_CLASS = "unserved"


def log(msg: str) -> None:
    print(f"[localcluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    env = os.environ.get("MODELDEPLOY_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "modeldeploy"


def versions(path: Path | None = None) -> dict[str, str]:
    path = path or REPO_ROOT / "hack" / "versions.env"
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    apiserver: Path
    controller_manager: Path
    scheduler: Path
    kwok: Path
    kwok_stages: Path
    kubectl: Path
    helm: Path
    keda_crd: Path

    @classmethod
    def locate(cls) -> Binaries:
        v = versions()
        b = cache_dir() / "bin"
        k8s = b / f"kubernetes-v{v['K8S_VERSION']}"
        kwok = b / f"kwok-v{v['KWOK_VERSION']}"
        tools = b / f"kubectl-layer-{v['KUBECTL_LAYER_VERSION']}"
        bins = cls(
            etcd=b / f"etcd-v{v['ETCD_VERSION']}" / "etcd",
            apiserver=k8s / "kube-apiserver",
            controller_manager=k8s / "kube-controller-manager",
            scheduler=k8s / "kube-scheduler",
            kwok=kwok / "kwok",
            kwok_stages=kwok / "stage",
            kubectl=tools / "kubectl",
            helm=tools / "helm",
            keda_crd=b / f"keda-v{v['KEDA_VERSION']}" / "keda.sh_scaledobjects.yaml",
        )
        missing = [str(p) for p in bins.__dict__.values() if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(
                "control-plane binaries missing (run hack/build-controlplane.sh): " + ", ".join(missing)
            )
        return bins


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessExitedError(RuntimeError):
    """A process being waited on died: waiting longer cannot help."""


# Errors a check raises because its own code is wrong, not because what it waits for is not
# there yet: waiting longer cannot help, so they end the wait at once.
BUG_ERRORS: tuple[type[Exception], ...] = (NameError, ImportError, SyntaxError, TypeError, AttributeError)


def _not_yet(exc: Exception) -> bool:
    """True for the errors of a check whose object is not there yet: a server refusing
    connections, a failed kubectl, a missing key, a failed assertion, or an object read back as
    None and then indexed ("'NoneType' object is not subscriptable"). TypeError and
    AttributeError about anything but None are bugs in the check."""
    if isinstance(exc, (TypeError, AttributeError)) and "'NoneType'" in str(exc):
        return True
    return not isinstance(exc, BUG_ERRORS)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0, interval: float = 0.2) -> None:
    """Poll `check` until it is true.

    Errors that mean "not yet" (see `_not_yet`) are retried; the last one is named in the
    TimeoutError (and chained to it), so a failing assertion does not read as a bare timeout.
    Programming errors in the check (TypeError, AttributeError, NameError, ImportError) and
    ProcessExitedError end the wait at once."""
    started = time.monotonic()
    deadline = started + timeout
    last_error: Exception | None = None
    last_error_at = 0.0
    last_false = False
    checks = 0
    while True:
        checks += 1
        try:
            if check():
                return
            last_false = True
        except ProcessExitedError:
            raise
        except Exception as e:
            if not _not_yet(e):
                raise
            last_error, last_error_at, last_false = e, time.monotonic() - started, False
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = [f"{checks} checks"]
    if last_false:
        detail.append("the last returned False")
    if last_error is not None:
        detail.append(f"last error (after {last_error_at:.1f}s): {type(last_error).__name__}: {last_error}")
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what} ({'; '.join(detail)})"
    ) from last_error


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def serving_cert(pki: Path, name: str, sans: str) -> tuple[Path, Path]:
    """NAME.crt and NAME.key in `pki`: a serving certificate for `sans` (openssl's
    subjectAltName syntax) signed by the CA there. Also for servers the API server calls."""
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
    (pki / f"{name}.cnf").write_text(f"[v3]\nsubjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "3650", "-extfile", f"{name}.cnf", "-extensions", "v3", "-out", f"{name}.crt",
             cwd=pki)  # fmt: skip
    return pki / f"{name}.crt", pki / f"{name}.key"


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving cert and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-days", "3650", "-subj", "/CN=modeldeploy-local-ca",
             "-out", "ca.crt", cwd=pki)  # fmt: skip
    serving_cert(
        pki, "apiserver",
        "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1",
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca: Path, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }


# Nodes shaped like a real GPU cluster, with GPU Feature Discovery labels.
H100_LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.present": "true",
}
L4_LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-L4",
    "nvidia.com/gpu.memory": "23034",
    "nvidia.com/gpu.count": "1",
    "nvidia.com/gpu.present": "true",
}


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpu: str
    memory: str
    gpus: int
    labels: dict[str, str] = field(default_factory=dict)


DEFAULT_NODES = (
    NodeShape("gpu-h100-0", "192", "2048Gi", 8, H100_LABELS),
    NodeShape("gpu-h100-1", "192", "2048Gi", 8, H100_LABELS),
    NodeShape("gpu-l4-0", "16", "64Gi", 1, L4_LABELS),
    NodeShape("gpu-l4-1", "16", "64Gi", 1, L4_LABELS),
    NodeShape("cpu-0", "16", "64Gi", 0),
)


def node_manifest(shape: NodeShape) -> dict[str, Any]:
    capacity = {"cpu": shape.cpu, "memory": shape.memory, "pods": "110", "ephemeral-storage": "1Ti"}
    taints: list[dict[str, str]] = []
    if shape.gpus:
        capacity[GPU] = str(shape.gpus)
        taints.append({"key": GPU, "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": shape.name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": shape.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **shape.labels,
            },
        },
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def storage_classes() -> list[dict[str, Any]]:
    return [
        {
            # Served by kube-controller-manager's built-in host-path provisioner.
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": HOST_PATH_STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/host-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        },
        {
            # Nothing provisions this one: claims on it stay Pending, as with a missing driver.
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": UNSERVED_STORAGE_CLASS},
            "provisioner": "example.com/not-installed",
            "volumeBindingMode": "Immediate",
        },
    ]


@dataclass
class LocalCluster:
    """One running control plane. `state` is the directory holding its files and pids."""

    state: Path
    bins: Binaries
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    token: str = ""
    operator_token: str = ""

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines): every request the operator's user made."""
        return self.state / "logs" / "audit.log"

    @property
    def kubeconfig_path(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    # -- process handling ------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logf = (self.state / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        self.procs[name] = proc
        self._write_pids()

    def _write_pids(self) -> None:
        pids = {n: p.pid for n, p in self.procs.items()}
        (self.state / "pids.json").write_text(json.dumps({"pids": pids, "ports": self.ports}))

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            tail = (self.state / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise ProcessExitedError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _https_ok(self, port: int, path: str, token: str | None = None) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)

    def _wait_healthy(self, name: str, probe: Callable[[], bool], timeout: float = 120.0) -> None:
        def check() -> bool:
            self._check_alive(name)
            return probe()

        started = time.monotonic()
        wait_for(f"{name} to be healthy (log: {self.state}/logs/{name}.log)", check, timeout)
        log(f"{name} ready ({time.monotonic() - started:.1f}s)")

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start a process beside the control plane (its log in STATE/logs/NAME.log); `stop` and
        `python -m mdlocal.localcluster down` stop it with the rest, before the control plane."""
        self._spawn(name, argv, env)

    def wait_healthy(self, name: str, probe: Callable[[], bool], timeout: float = 120.0) -> None:
        """Wait for `probe` while the process NAME is alive (a dead process ends the wait)."""
        self._wait_healthy(name, probe, timeout)

    def _probe(self, name: str) -> Callable[[], bool]:
        """The health check `start` waits on for the component NAME."""
        p = self.ports
        if name == "etcd":

            def etcd_ok() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{p['etcd']}/health", timeout=3) as r:
                    return bool(json.loads(r.read()).get("health") == "true")

            return etcd_ok
        if name == "apiserver":
            return lambda: self._https_ok(p["apiserver"], "/readyz", self.token)
        if name in ("controller-manager", "scheduler"):
            return lambda: self._https_ok(p[name], "/healthz")
        if name == "kwok":

            def kwok_ok() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{p['kwok']}/healthz", timeout=3) as r:
                    return bool(r.status == 200)

            return kwok_ok
        raise KeyError(f"no health check for {name}")

    def restart(self, name: str, kill: bool = False, timeout: float = 120.0) -> float:
        """Stop the component NAME (SIGTERM and wait, or with `kill` SIGKILL at once) and start it
        again with the same command line: the same ports, data directory and certificates.
        Returns the seconds from the stop until it is healthy again (for etcd: until the API
        server is ready again too)."""
        old = self.procs[name]
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(old.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            old.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(old.pid, signal.SIGKILL)
            old.wait(timeout=10)
        log(f"{name} stopped ({'SIGKILL' if kill else 'SIGTERM'}, exit {old.returncode}); starting it again")
        argv = old.args
        assert isinstance(argv, list), argv
        # None of the control-plane components is started with an environment of its own.
        self._spawn(name, [str(a) for a in argv])
        self._wait_healthy(name, self._probe(name), timeout)
        if name == "etcd" and "apiserver" in self.procs:
            # The API server serves nothing until it has its storage back: wait for that too.
            self._wait_healthy("apiserver", self._probe("apiserver"), timeout)
        return time.monotonic() - started

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, nodes: tuple[NodeShape, ...] = DEFAULT_NODES) -> None:
        if self.state.exists():
            stop_state_dir(self.state)
            shutil.rmtree(self.state)
        (self.state / "logs").mkdir(parents=True)
        pki = self.state / "pki"
        make_pki(pki)
        self.token = os.urandom(16).hex()
        self.operator_token = os.urandom(16).hex()
        (self.state / "tokens.csv").write_text(
            f"{self.token},{ADMIN_TOKEN_USER},1,system:masters\n"
            f"{self.operator_token},{OPERATOR_TOKEN_USER},2,system:masters\n"
        )
        (self.state / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok"):
            self.ports[name] = free_port()
        try:
            self._start_etcd()
            self._start_apiserver(pki)
            self.kubeconfig_path.write_text(
                yaml.safe_dump(kubeconfig(self.server, pki / "ca.crt", self.token))
            )
            self._start_controller_manager(pki)
            self._start_scheduler()
            self._start_kwok()
            self._create_nodes(nodes)
            self.apply(storage_classes())
            self._wait_default_service_account()
        except BaseException:
            self.stop()
            raise

    def _start_etcd(self) -> None:
        p = self.ports
        self._spawn("etcd", [
            str(self.bins.etcd), "--name=default", f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-cluster=default=http://127.0.0.1:{p['etcd-peer']}",
            # A throwaway cluster: durability is not worth the fsync cost on a shared disk.
            "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip

        def etcd_ok() -> bool:
            url = f"http://127.0.0.1:{p['etcd']}/health"
            with urllib.request.urlopen(url, timeout=3) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        self._wait_healthy("etcd", etcd_ok)

    def _start_apiserver(self, pki: Path) -> None:
        p = self.ports
        self._spawn("apiserver", [
            str(self.bins.apiserver),
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.state / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--audit-policy-file={self.state / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-maxsize=0",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # No kubelet endpoints to reconcile on a loopback-only apiserver.
            "--endpoint-reconciler-type=none",
            "--profiling=false", "--v=1",
        ])  # fmt: skip
        self._wait_healthy("apiserver", lambda: self._https_ok(p["apiserver"], "/readyz", self.token))

    def _start_controller_manager(self, pki: Path) -> None:
        p = self.ports
        self._spawn("controller-manager", [
            str(self.bins.controller_manager),
            f"--kubeconfig={self.kubeconfig_path}",
            f"--authentication-kubeconfig={self.kubeconfig_path}",
            f"--authorization-kubeconfig={self.kubeconfig_path}",
            "--bind-address=127.0.0.1", f"--secure-port={p['controller-manager']}",
            "--leader-elect=false", "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            # Real Kubernetes code that provisions PVs for the host-path StorageClass.
            "--enable-hostpath-provisioner",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
            # Fast garbage collection and HPA syncs keep tests short.
            "--concurrent-gc-syncs=10", "--horizontal-pod-autoscaler-sync-period=5s", "--v=1",
        ])  # fmt: skip
        self._wait_healthy("controller-manager", lambda: self._https_ok(p["controller-manager"], "/healthz"))

    def _start_scheduler(self) -> None:
        p = self.ports
        self._spawn("scheduler", [
            str(self.bins.scheduler),
            f"--kubeconfig={self.kubeconfig_path}",
            f"--authentication-kubeconfig={self.kubeconfig_path}",
            f"--authorization-kubeconfig={self.kubeconfig_path}",
            "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}", "--leader-elect=false", "--v=1",
        ])  # fmt: skip
        self._wait_healthy("scheduler", lambda: self._https_ok(p["scheduler"], "/healthz"))

    def _start_kwok(self) -> None:
        st = self.bins.kwok_stages
        stages = [
            st / "node" / "fast" / "node-initialize.yaml",
            st / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            st / "pod" / "fast" / "pod-ready.yaml",
            st / "pod" / "fast" / "pod-complete.yaml",
            st / "pod" / "fast" / "pod-delete.yaml",
        ]
        extra = REPO_ROOT / "hack" / "kwok-stages"
        if extra.is_dir():
            # The project's own stages replace KWOK's stages of the same file name.
            ours = sorted(extra.glob("*.yaml"))
            names = {p.name for p in ours}
            stages = [s for s in stages if s.name not in names] + ours
        self._spawn("kwok", [
            str(self.bins.kwok), f"--kubeconfig={self.kubeconfig_path}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40", "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
            *[f"--config={s}" for s in stages],
        ])  # fmt: skip

        def kwok_ok() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['kwok']}/healthz", timeout=3) as r:
                return bool(r.status == 200)

        self._wait_healthy("kwok", kwok_ok)

    def _create_nodes(self, nodes: tuple[NodeShape, ...]) -> None:
        self.apply([node_manifest(n) for n in nodes])

        def all_ready() -> bool:
            out = self.kubectl("get", "nodes", "-o", "json")
            items = json.loads(out)["items"]

            def is_ready(node: dict[str, Any]) -> bool:
                conds = node["status"].get("conditions", [])
                return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

            return sum(1 for n in items if is_ready(n)) >= len(nodes)

        wait_for("simulated nodes Ready", all_ready, timeout=60)
        log(f"{len(nodes)} simulated nodes Ready")

    def _wait_default_service_account(self) -> None:
        wait_for(
            "default ServiceAccount",
            lambda: bool(self.kubectl("get", "serviceaccount", "default", "-n", "default", "-o", "name")),
            timeout=60,
        )

    # -- helpers ------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}

    def operator_env(self) -> dict[str, str]:
        """The environment for an operator process acting as its own user (see AUDIT_POLICY)."""
        path = self.state / "operator.kubeconfig"
        if not path.exists():
            path.write_text(
                yaml.safe_dump(kubeconfig(self.server, self.state / "pki" / "ca.crt", self.operator_token))
            )
        return {**os.environ, "KUBECONFIG": str(path)}

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        res = subprocess.run(
            [str(self.bins.kubectl), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
        )
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
        return res.stdout

    def apply(self, objs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "--field-manager=localcluster", "-f", "-",
                     stdin=yaml.safe_dump_all(objs))  # fmt: skip

    def service_account_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest API token)."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration=24h").strip()
        cfg = kubeconfig(self.server, self.state / "pki" / "ca.crt", token)
        cfg["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(cfg))
        return path

    def stop(self) -> None:
        # Reverse start order, each reaped before the next: an apiserver whose etcd is already
        # gone hangs in its graceful shutdown.
        for proc in reversed(list(self.procs.values())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.state / "pids.json").unlink()


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_state_dir(state: Path) -> bool:
    """Stop whatever a previous run (maybe crashed) left recorded in STATE/pids.json."""
    pidfile = state / "pids.json"
    if not pidfile.exists():
        return False
    pids = json.loads(pidfile.read_text()).get("pids", {})
    for pid in reversed(list(pids.values())):
        _terminate(int(pid))
    pidfile.unlink()
    return True


def start_operator(
    env: dict[str, str], log_path: Path, *args: str, metrics_port: int | None = None
) -> subprocess.Popen[bytes]:
    """`modeldeploy run ARGS` as its own process, returned once its liveness endpoint answers.
    Its ports are free ones, so several operators can run side by side."""
    port = free_port()
    metrics = f"--metrics-port={metrics_port or free_port()}"
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modeldeploy.cli",
                "run",
                *args,
                f"--liveness=http://127.0.0.1:{port}/healthz",
                metrics,
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def alive() -> bool:
        if proc.poll() is not None:
            raise ProcessExitedError(f"operator exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    try:
        wait_for(f"operator liveness (log: {log_path})", alive, timeout=60)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdlocal.localcluster")
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("state", type=Path, help="directory for the cluster's files, pids and logs")
    ap.add_argument("--flux", action="store_true", help="also start Flux beside it (mdlocal.flux)")
    args = ap.parse_args(argv)
    state: Path = args.state.resolve()
    if args.action == "down":
        log("stopped" if stop_state_dir(state) else "nothing running")
        return 0
    cluster = LocalCluster(state=state, bins=Binaries.locate())
    started = time.monotonic()
    cluster.start()
    log(f"control plane up in {time.monotonic() - started:.1f}s; KUBECONFIG={cluster.kubeconfig_path}")
    if args.flux:
        from mdlocal.flux import Flux  # here: mdlocal.flux imports this module

        flux = Flux(cluster)
        flux.start()
        log(f"git repositories under {flux.root / 'repos'} are served at {flux.git_url}/NAME.git")
    return 0


if __name__ == "__main__":
    sys.exit(main())
