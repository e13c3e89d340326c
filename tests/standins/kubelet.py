"""Stand-in for the kubelet, for pods whose container is a Python program: runs the container of a
pod the cluster scheduled as a local process, with the pod's own command, args and environment,
then reports how it ended in the pod's status, as the kubelet does. The local control plane has no
kubelet (KWOK only simulates pods), so this is how a test runs a program the operator ships in a
pod for real, and lets the operator read back what the program actually wrote.

What it maps, as a kubelet and a container runtime would:
  - the image's `python` is this interpreter (it has huggingface_hub, as the TGI image has);
  - each volumeMount's path is a local directory (ROOT/volumes/<volume name>): env values and
    args under a mount path are rewritten to it;
  - the container's terminationMessagePath is a local file; the message is what the program wrote
    there (at most 4096 bytes), or with FallbackToLogsOnError and a failure, the tail of its log;
  - env `valueFrom.secretKeyRef` is read from the Secret (the kubelet reads it, the operator never);
  - nothing of this process's environment leaks in but PATH, and HOME (a fresh directory).

`report` writes the pod's status subresource as the kubelet does when the container has exited:
the container terminated with its exit code, reason and message, the pod Succeeded or Failed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.conftest import Cluster

Obj = dict[str, Any]

# The kubelet keeps at most 4096 bytes of a termination message, and for FallbackToLogsOnError
# the last 80 lines or 2048 bytes of the log, whichever is smaller.
MESSAGE_LIMIT = 4096
LOG_FALLBACK_LINES = 80
LOG_FALLBACK_BYTES = 2048


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Termination:
    """How the container ended: what `report` writes into the pod's status."""

    container: str
    exit_code: int
    message: str
    started_at: str
    finished_at: str
    log: str

    @property
    def reason(self) -> str:
        return "Completed" if self.exit_code == 0 else "Error"


class Kubelet:
    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root

    def _secret_value(self, namespace: str, ref: Obj) -> str:
        secret = self.cluster.get("secret", ref["name"], namespace)
        if secret is None or ref["key"] not in (secret.get("data") or {}):
            # The kubelet does not start such a container (CreateContainerConfigError).
            raise AssertionError(f"Secret {ref['name']} key {ref['key']} not found in {namespace}")
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    def run(self, pod: Obj, timeout: float = 120.0) -> Termination:
        """Run the pod's (only) container to its end."""
        ns = pod["metadata"]["namespace"]
        (c,) = pod["spec"]["containers"]
        assert pod["spec"].get("nodeName"), "the kubelet runs only pods bound to its node"
        command = [*c.get("command", []), *c.get("args", [])]
        assert command and command[0] in ("python", "python3"), f"not a Python container: {command[:1]}"

        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"volumeMount {m['name']} has no volume"
            local = self.root / "volumes" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"].rstrip("/")] = local
        term_path = c.get("terminationMessagePath") or "/dev/termination-log"
        term_file = self.root / "termination-log" / c["name"]
        term_file.parent.mkdir(parents=True, exist_ok=True)
        term_file.write_text("")

        def local_path(value: str) -> str:
            if value == term_path:
                return str(term_file)
            for mount, local in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    return str(local) + value[len(mount) :]
            return value

        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        for e in c.get("env", []):
            if "valueFrom" in e:
                ref = e["valueFrom"].get("secretKeyRef")
                assert ref is not None, f"env {e['name']}: only secretKeyRef is supported here"
                env[e["name"]] = self._secret_value(ns, ref)
            else:
                env[e["name"]] = local_path(str(e.get("value", "")))

        argv = [sys.executable, *(local_path(a) for a in command[1:])]
        started = _now()
        proc = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=timeout)
        finished = _now()
        log = proc.stdout + proc.stderr
        message = term_file.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        policy = c.get("terminationMessagePolicy", "File")
        if not message.strip() and proc.returncode != 0 and policy == "FallbackToLogsOnError":
            tail = "\n".join(log.splitlines()[-LOG_FALLBACK_LINES:])
            message = tail.encode()[-LOG_FALLBACK_BYTES:].decode(errors="replace")
        return Termination(c["name"], proc.returncode, message, started, finished, log)

    def report(self, pod: Obj, t: Termination) -> None:
        """Write the terminated container and the pod's final phase into its status."""
        (c,) = pod["spec"]["containers"]
        now = _now()
        not_ready = {"status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
        status = {
            "phase": "Succeeded" if t.exit_code == 0 else "Failed",
            "conditions": [{"type": "Ready", **not_ready}, {"type": "ContainersReady", **not_ready}],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": t.exit_code,
                            "reason": t.reason,
                            "message": t.message,
                            "startedAt": t.started_at,
                            "finishedAt": t.finished_at,
                        }
                    },
                }
            ],
        }
        self.cluster.kubectl(
            "patch", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"],
            "--subresource=status", "--type=strategic", "-p", json.dumps({"status": status}),
        )  # fmt: skip
