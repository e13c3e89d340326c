"""What the drills share: their size (short or long form), the report each one prints and
leaves behind, and the operator processes they start, kill and restart themselves."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from mdlocal.localcluster import ProcessExitedError, free_port, start_operator, stop_process
from tests.conftest import REPO, Cluster, condition

Obj = dict[str, Any]

# `make drills` sets MODELDEPLOY_DRILLS=long; `make test` runs the short form.
LONG = os.environ.get("MODELDEPLOY_DRILLS", "short") == "long"
RESULTS = Path(os.environ.get("MODELDEPLOY_DRILLS_RESULTS") or REPO / ".modeldeploy" / "drills")
MODEL_ID = "cognitivecomputations/dolphin-2.8-mistral-7b-v02"
H100 = {"gpus": 1, "gpuType": "nvidia-h100-80gb"}
# Lines that mean an error nobody handled, or a pass that ended in an exception.
UNHANDLED = re.compile(r"Traceback \(most recent call last\)|Unhandled exception|pass for \S+ raised")


# A pass that failed because the API server could not be reached (reconcile.py logs the first
# failure of a model in full, with its traceback, then one line per retry).
TRANSIENT = re.compile(
    r": pass failed: (MaxRetryError|ProtocolError|NewConnectionError|ReadTimeoutError|ConnectionResetError|"
    r"ConnectionRefusedError|RemoteDisconnected|TimeoutError|SSLError)"
)
_TRACEBACK_PART = re.compile(
    r"^(Traceback |  |The above exception|During handling|[\w.]+(Error|Exception)\b|$)"
)


def _with_context(text: str) -> Iterator[tuple[str, str]]:
    """Each line with the log line its traceback belongs to ('' outside a traceback)."""
    context = ""
    for ln in text.splitlines():
        if _TRACEBACK_PART.match(ln):
            yield ln, context
        else:
            context = ln
            yield ln, ""


def size(short: int, long: int) -> int:
    return long if LONG else short


class Report:
    """What a drill did and checked, printed as it goes (pytest shows it with a failure) and
    written as JSON to RESULTS/<drill>.json; its figures go into the session's summary table."""

    def __init__(self, drill: str) -> None:
        self.drill = drill
        self.lines: list[str] = []
        self.figures: dict[str, Any] = {}
        self.started = time.monotonic()
        self.outcome = "unfinished"
        self.seconds = 0.0

    def _say(self, kind: str, msg: str) -> None:
        line = f"[drill {self.drill} {time.monotonic() - self.started:6.1f}s] {kind}: {msg}"
        self.lines.append(line)
        print(line, flush=True)

    def did(self, msg: str) -> None:
        self._say("did", msg)

    def checked(self, msg: str) -> None:
        self._say("checked", msg)

    def figure(self, key: str, value: Any) -> None:
        self.figures[key] = value
        self._say("figure", f"{key} = {value}")

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.drill}.json"
        self.seconds = time.monotonic() - self.started
        body = {
            "drill": self.drill,
            "form": "long" if LONG else "short",
            "outcome": self.outcome,
            "seconds": round(self.seconds, 1),
            "figures": self.figures,
            "log": self.lines,
        }
        path.write_text(json.dumps(body, indent=2, default=str) + "\n")
        return path


@dataclass
class Operator:
    """One `modeldeploy run` process a drill started (and may kill, and start again)."""

    name: str
    env: dict[str, str]
    args: tuple[str, ...]
    log: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Operator:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = start_operator(self.env, self.log, *self.args, metrics_port=self.metrics_port)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            assert self.proc is not None
            tail = self.log.read_text(errors="replace")[-3000:]
            raise ProcessExitedError(f"operator {self.name} exited with {self.proc.returncode}:\n{tail}")

    def kill9(self) -> None:
        """SIGKILL, no clean-up of any kind (kopf's peering entry and all stay behind)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            stop_process(self.proc)

    def mark(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def text(self, since: int = 0) -> str:
        with self.log.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def unhandled(self, since: int = 0, transient_ok: bool = False) -> list[str]:
        """Lines of the log (from `since`) that show an error nobody handled. With `transient_ok`,
        the traceback a pass logs once per model for a connection error (the API server away: the
        pass is retried with backoff) does not count; the drill counts those with `transient`."""
        out = []
        for ln, context in _with_context(self.text(since)):
            if UNHANDLED.search(ln) and not (transient_ok and TRANSIENT.search(context)):
                out.append(f"{ln} (after: {context[:200]})" if context else ln)
        return out

    def transient(self, since: int = 0) -> int:
        """Passes that failed on a connection error and were logged with their traceback."""
        return sum(1 for ln in self.text(since).splitlines() if TRANSIENT.search(ln))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def sample(self, prefix: str) -> float:
        """The sum of this process's metric samples whose line starts with `prefix`."""
        return sum(float(ln.split()[-1]) for ln in self.metrics().splitlines() if ln.startswith(prefix))

    def passes(self) -> float:
        return self.sample("modeldeploy_reconcile_total{")


@dataclass
class Operators:
    """Factory of drill operators; everything it started is stopped at the end of the drill."""

    cluster: Cluster
    started: list[Operator] = field(default_factory=list)

    def new(self, name: str, namespaces: list[str], extra_env: dict[str, str] | None = None,
            args: tuple[str, ...] = ()) -> Operator:  # fmt: skip
        env = {**self.cluster.lc.operator_env(), "MODELDEPLOY_PROBER": "off", **(extra_env or {})}
        ns_args = tuple(a for ns in namespaces for a in ("-n", ns))
        op = Operator(
            name=name,
            env=env,
            args=(*ns_args, *args),
            log=self.cluster.lc.state / "logs" / f"drill-{name}.log",
            metrics_port=free_port(),
        )
        self.started.append(op)
        return op

    def stop_all(self) -> None:
        for op in self.started:
            op.stop()


def api_client(cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


def mdep(name: str, **spec: Any) -> Obj:
    body: Obj = {"model": {"id": MODEL_ID}, "resources": dict(H100)}
    body.update(spec)
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": body}  # fmt: skip


def models(cluster: Cluster, ns: str) -> dict[str, Obj]:
    return {m["metadata"]["name"]: m for m in cluster.list("modeldeployment", ns)}


def converged(obj: Obj | None) -> bool:
    """Ready=True at the current generation, nothing Stalled or Reconciling."""
    if obj is None:
        return False
    ready = condition(obj, "Ready")
    return (
        (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
        and ready is not None
        and ready["status"] == "True"
        and condition(obj, "Stalled") is None
        and condition(obj, "Reconciling") is None
    )


def wait_all_converged(cluster: Cluster, ns: str, names: list[str], timeout: float) -> float:
    """Seconds until every model in `names` has converged (see `converged`)."""
    started = time.monotonic()

    def done() -> bool:
        have = models(cluster, ns)
        return all(converged(have.get(n)) for n in names)

    try:
        cluster.wait(f"{len(names)} models converged in {ns}", done, timeout=timeout)
    except TimeoutError:
        have = models(cluster, ns)
        stuck = {n: (have.get(n) or {}).get("status") for n in names if not converged(have.get(n))}
        raise AssertionError(
            f"{len(stuck)} of {len(names)} models did not converge in {timeout:.0f}s; first ones: "
            + json.dumps(dict(list(stuck.items())[:3]), default=str)[:3000]
        ) from None
    return time.monotonic() - started


def render(bodies: list[Obj]) -> dict[tuple[str, str], Obj]:
    """What `modeldeploy render` (the CLI, offline) makes of these models: (kind, name) -> child."""
    import yaml

    res = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", "render", "-f", "-"],
        input=yaml.safe_dump_all(bodies), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(res.stdout) if d}


def subset_diff(want: Any, have: Any, path: str = "") -> list[str]:
    """Where `have` (a live object, with the API server's defaults) lacks or differs from `want`
    (what the operator renders). Lists must match element by element."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [f"{path}: {have!r} is not an object"]
        out: list[str] = []
        for k, v in want.items():
            if k not in have:
                out.append(f"{path}.{k}: missing")
            else:
                out += subset_diff(v, have[k], f"{path}.{k}")
        return out
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return [f"{path}: {have!r} != {want!r}"]
        return [
            d
            for i, (w, h) in enumerate(zip(want, have, strict=True))
            for d in subset_diff(w, h, f"{path}[{i}]")
        ]
    if want != have and str(want) != str(have):
        return [f"{path}: {have!r} != {want!r}"]
    return []


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> tuple[Any, float]:
    """Like Cluster.wait, with the seconds it took."""
    from mdlocal.localcluster import wait_for

    box: list[Any] = []
    started = time.monotonic()

    def probe() -> bool:
        v = check()
        if v:
            box.append(v)
        return bool(v)

    wait_for(what, probe, timeout=timeout, interval=interval)
    return box[-1], time.monotonic() - started


def iter_strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from iter_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from iter_strings(v)
    elif obj is not None:
        yield str(obj)
