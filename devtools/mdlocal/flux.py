"""Flux beside a local control plane: the real source-controller and kustomize-controller (built
from their Go modules by `hack/build-controlplane.sh`), their CRDs from the same module versions,
and git repositories served over smart HTTP on 127.0.0.1 (`mdlocal.gitserver`).

A development tool for the Flux tests and `make demo-gitops`. Every process is started through
the cluster, so `python -m mdlocal.localcluster down DIR` stops Flux too.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mdlocal.localcluster import LocalCluster, cache_dir, free_port, log, versions, wait_for

SOURCE_API = "source.toolkit.fluxcd.io/v1"
KUSTOMIZE_API = "kustomize.toolkit.fluxcd.io/v1"
FLUX_NAMESPACE = "flux-system"
# Fast reverts: a new source revision cancels a health check still waiting on the old one.
FEATURE_GATES = "CancelHealthCheckOnNewRevision=true"


@dataclass(frozen=True)
class FluxBinaries:
    source_controller: Path
    kustomize_controller: Path
    crd_dirs: tuple[Path, ...]

    @classmethod
    def locate(cls) -> FluxBinaries:
        v = versions()
        b = cache_dir() / "bin"
        sc = b / f"flux-source-controller-v{v['FLUX_SOURCE_CONTROLLER_VERSION']}"
        kc = b / f"flux-kustomize-controller-v{v['FLUX_KUSTOMIZE_CONTROLLER_VERSION']}"
        bins = cls(sc / "source-controller", kc / "kustomize-controller", (sc / "crds", kc / "crds"))
        missing = [str(p) for p in (bins.source_controller, bins.kustomize_controller, *bins.crd_dirs)
                   if not p.exists()]  # fmt: skip
        if missing:
            raise FileNotFoundError(
                "Flux controllers missing (run hack/build-controlplane.sh): " + ", ".join(missing)
            )
        return bins

    def crds(self) -> list[Path]:
        return sorted(p for d in self.crd_dirs for p in d.glob("*.yaml"))


def _git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "modeldeploy", "GIT_AUTHOR_EMAIL": "gitops@modeldeploy.dev",
        "GIT_COMMITTER_NAME": "modeldeploy", "GIT_COMMITTER_EMAIL": "gitops@modeldeploy.dev",
        "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd),
    }  # fmt: skip
    res = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}:\n{res.stderr}")
    return res.stdout.strip()


FileContent = str | dict[str, Any] | list[dict[str, Any]] | None


class GitRepo:
    """One repository: a bare NAME.git the git server serves, and a work tree to commit from."""

    def __init__(self, root: Path, name: str, base_url: str) -> None:
        self.name = name
        self.bare = root / "repos" / f"{name}.git"
        self.work = root / "work" / name
        self.url = f"{base_url}/{name}.git"
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=self.bare.parent)
        _git("init", "--quiet", "--initial-branch=main", cwd=self.work)
        _git("remote", "add", "origin", str(self.bare), cwd=self.work)
        # So that a person can commit in the work tree too (the demo invites it).
        _git("config", "user.name", "modeldeploy demo", cwd=self.work)
        _git("config", "user.email", "gitops@modeldeploy.dev", cwd=self.work)

    def commit(self, files: Mapping[str, FileContent], message: str) -> str:
        """Write (a dict or list is written as YAML) or delete (None) files, commit, push to the
        served repository; returns the commit's SHA."""
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content)
            elif isinstance(content, list):
                path.write_text(yaml.safe_dump_all(content, sort_keys=False))
            else:
                path.write_text(yaml.safe_dump(content, sort_keys=False))
        _git("add", "--all", ".", cwd=self.work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        _git("push", "--quiet", "origin", "main", cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work)

    def git_repository(self, namespace: str, interval: str = "5s") -> dict[str, Any]:
        return {
            "apiVersion": SOURCE_API,
            "kind": "GitRepository",
            "metadata": {"name": self.name, "namespace": namespace},
            "spec": {"url": self.url, "interval": interval, "ref": {"branch": "main"}, "timeout": "20s"},
        }


def kustomization(name: str, namespace: str, source: str, path: str = "./", *, timeout: str = "5m",
                  interval: str = "10m", health_check_exprs: list[dict[str, str]] | None = None,
                  target_namespace: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A Kustomization with `wait: true` (every applied object health-checked) and prune."""
    spec: dict[str, Any] = {
        "interval": interval,
        "path": path,
        "prune": True,
        "wait": True,
        "timeout": timeout,
        "sourceRef": {"kind": "GitRepository", "name": source},
        "targetNamespace": target_namespace or namespace,
    }
    if health_check_exprs:
        spec["healthCheckExprs"] = health_check_exprs
    return {
        "apiVersion": KUSTOMIZE_API,
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


class Flux:
    """source-controller, kustomize-controller and a git server, started beside `cluster`."""

    def __init__(self, cluster: LocalCluster, bins: FluxBinaries | None = None) -> None:
        self.cluster = cluster
        self.bins = bins or FluxBinaries.locate()
        self.root = cluster.state / "flux"
        self.git_port = 0

    @property
    def git_url(self) -> str:
        return f"http://127.0.0.1:{self.git_port}"

    def start(self) -> None:
        started = time.monotonic()
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        self._install_crds()
        self.git_port = free_port()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.cluster.spawn(
            "flux-git-server",
            [sys.executable, "-m", "mdlocal.gitserver", str(self.root / "repos"), str(self.git_port)],
            env=env,
        )
        self.cluster.wait_healthy("flux-git-server", lambda: self._http_ok(self.git_port, "/"))
        storage = free_port()
        common = ["--watch-all-namespaces", "--enable-leader-election=false", "--log-level=info",
                  "--log-encoding=console"]  # fmt: skip
        ctl_env = {**self.cluster.env(), "RUNTIME_NAMESPACE": FLUX_NAMESPACE, "TMPDIR": str(self.root)}
        for name, binary, extra in (
            ("source-controller", self.bins.source_controller, [
                f"--storage-path={self.root / 'storage'}",
                f"--storage-addr=127.0.0.1:{storage}",
                f"--storage-adv-addr=127.0.0.1:{storage}",
            ]),
            ("kustomize-controller", self.bins.kustomize_controller, [
                "--no-remote-bases=true", f"--feature-gates={FEATURE_GATES}",
            ]),
        ):  # fmt: skip
            health = free_port()
            self.cluster.ports[name] = health
            self.cluster.spawn(
                name,
                [str(binary), *common, *extra, f"--metrics-addr=127.0.0.1:{free_port()}",
                 f"--health-addr=127.0.0.1:{health}"],
                env=ctl_env,
            )  # fmt: skip
        for name in ("source-controller", "kustomize-controller"):
            port = self.cluster.ports[name]
            self.cluster.wait_healthy(name, lambda p=port: self._http_ok(p, "/readyz"))  # type: ignore[misc]
        log(f"Flux up in {time.monotonic() - started:.1f}s (git server {self.git_url})")

    def _install_crds(self) -> None:
        for path in self.bins.crds():
            self.cluster.kubectl("apply", "--server-side", "--field-manager=localcluster", "-f", str(path))
        names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in self.bins.crds()]

        def established() -> bool:
            out = json.loads(self.cluster.kubectl("get", "crd", *names, "-o", "json"))
            return all(
                any(c["type"] == "Established" and c["status"] == "True"
                    for c in (i.get("status") or {}).get("conditions") or [])
                for i in out["items"]
            )  # fmt: skip

        wait_for("Flux CRDs Established", established, timeout=60)
        self.cluster.kubectl("create", "namespace", FLUX_NAMESPACE, check=False)

    @staticmethod
    def _http_ok(port: int, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
                return bool(r.status < 500)
        except urllib.error.HTTPError as e:
            return e.code < 500

    def repo(self, name: str) -> GitRepo:
        return GitRepo(self.root, name, self.git_url)

    def request_reconcile(self, kind: str, name: str, namespace: str) -> None:
        """What `flux reconcile` does: set the reconcile.fluxcd.io/requestedAt annotation."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f".{time.time_ns() % 10**9}"
        self.cluster.kubectl("annotate", "--overwrite", "-n", namespace, kind, name,
                             f"reconcile.fluxcd.io/requestedAt={stamp}")  # fmt: skip


def docs_objects(doc: Path) -> list[dict[str, Any]]:
    """The Kubernetes objects (mappings with a kind) in a Markdown file's YAML blocks."""
    out: list[dict[str, Any]] = []
    for block in _yaml_blocks(doc.read_text()):
        with contextlib.suppress(yaml.YAMLError):
            out += [o for o in yaml.safe_load_all(block) if isinstance(o, dict) and "kind" in o]
    return out


def docs_health_check_exprs(doc: Path) -> list[dict[str, str]]:
    """The `healthCheckExprs` of the first Kustomization in a Markdown file's YAML blocks: the
    tests and the demo run the recipe exactly as docs/gitops.md prints it."""
    for obj in docs_objects(doc):
        if obj["kind"] == "Kustomization" and (obj.get("spec") or {}).get("healthCheckExprs"):
            return [dict(e) for e in obj["spec"]["healthCheckExprs"]]
    raise ValueError(f"no Kustomization with healthCheckExprs in {doc}")


def _yaml_blocks(text: str) -> Iterable[str]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```yaml":
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            yield "\n".join(lines[i + 1 : j])
            i = j
        i += 1
