"""kstatus verdicts from the real library: sigs.k8s.io/cli-utils/pkg/kstatus/status, the rules
Flux and other GitOps tools judge health with, run through `hack/kstatus-check` (a small Go
program `hack/build-controlplane.sh` builds into the cache, keyed by a hash of its sources).

`compute(obj)` is `status.Compute` on one object as the API server returned it (None: it does
not exist); `compute_all` judges many in one run of the checker.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from mdlocal.localcluster import REPO_ROOT, cache_dir

__all__ = ["Condition", "Result", "Status", "checker", "compute", "compute_all"]

SOURCES = REPO_ROOT / "hack" / "kstatus-check"


class Status(StrEnum):
    IN_PROGRESS = "InProgress"
    FAILED = "Failed"
    CURRENT = "Current"
    TERMINATING = "Terminating"
    NOT_FOUND = "NotFound"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Condition:
    """A standard kstatus condition (Reconciling or Stalled) kstatus derived from the object."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Result:
    status: Status
    message: str
    conditions: tuple[Condition, ...] = ()


@cache
def checker() -> Path:
    """The built checker for the current sources (the same key as hack/build-controlplane.sh)."""
    digest = hashlib.sha256(b"".join((SOURCES / f).read_bytes() for f in ("go.mod", "go.sum", "main.go")))
    path = cache_dir() / "bin" / f"kstatus-check-{digest.hexdigest()[:12]}" / "kstatus-check"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `make controlplane` (hack/build-controlplane.sh)")
    return path


def compute_all(objs: Sequence[Mapping[str, Any] | None]) -> list[Result]:
    """kstatus on each object. Raises ValueError where status.Compute returns an error."""
    res = subprocess.run([str(checker())], input=json.dumps(list(objs)), capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"kstatus-check failed ({res.returncode}): {res.stderr}")
    out: list[Result] = []
    for line in res.stdout.splitlines():
        v = json.loads(line)
        if v.get("error"):
            raise ValueError(v["error"])
        conditions = tuple(
            Condition(c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
            for c in v["conditions"]
        )
        out.append(Result(Status(v["status"]), v.get("message", ""), conditions))
    if len(out) != len(objs):
        raise RuntimeError(f"kstatus-check judged {len(out)} of {len(objs)} objects: {res.stdout}")
    return out


def compute(obj: Mapping[str, Any] | None) -> Result:
    return compute_all([obj])[0]
