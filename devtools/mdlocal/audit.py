"""Read the local control plane's audit log: the operator's requests, counted by verb and
resource, from a mark on. The API server writes one JSON line per answered request of the
operator's user (see localcluster.AUDIT_POLICY)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Request:
    verb: str
    resource: str  # "deployments", "modeldeployments/status" ...
    namespace: str
    name: str
    user: str
    code: int

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS


def _request(event: dict[str, Any]) -> Request:
    ref = event.get("objectRef") or {}
    resource = str(ref.get("resource", ""))
    if ref.get("subresource"):
        resource += f"/{ref['subresource']}"
    return Request(
        verb=str(event.get("verb", "")),
        resource=resource or str(event.get("requestURI", "")),
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
        user=str((event.get("user") or {}).get("username", "")),
        code=int((event.get("responseStatus") or {}).get("code", 0) or 0),
    )


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """A position: `since(mark)` reads only what was logged after it."""
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, mark: int, user: str) -> list[Request]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(mark)
            data = f.read()
        out = []
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written as we read
            if event.get("stage") != "ResponseComplete":
                continue
            req = _request(event)
            if req.user == user:
                out.append(req)
        return out


def by_verb_and_resource(requests: list[Request]) -> dict[str, int]:
    """Counts keyed "verb resource", e.g. {"patch deployments": 300}."""
    return dict(sorted(Counter(f"{r.verb} {r.resource}" for r in requests).items()))
