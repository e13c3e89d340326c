"""What the API server said when it refused a write, in the model's own terms.

A permanent refusal (400, 403, 422 ...) of a child becomes Stalled naming the spec field that
produced the refused child field; anything that may pass by itself (429, 5xx, timeouts) is
TransientError and retried with backoff.
"""

from __future__ import annotations

import json
import re
from typing import Any

from modeldeploy.errors import SpecError

# Child field paths (as the API server names them in its causes) -> the spec field behind them.
_FIELD_MAP: tuple[tuple[str, str], ...] = (
    (r"^metadata\.(name|labels)\b(?!space)", "metadata.name"),
    (r"\.containers\[\d+\]\.resources", "spec.resources"),
    (r"\.containers\[\d+\]\.image", "spec.engine.image"),
    (r"\.containers\[\d+\]\.args", "spec.engine.extraArgs"),
    (r"\.env\[\d+\]\.valueFrom\.secretKeyRef", "spec.model.tokenSecretRef"),
    (r"\.volumes\[\d+\]\.emptyDir", "spec.resources.shmSize"),
    (r"\.tolerations", "spec.scheduling.tolerations"),
    (r"\.nodeSelector", "spec.scheduling.nodeSelector"),
    (r"\.affinity", "spec.resources.gpuType"),
    (r"\.priorityClassName", "spec.scheduling.priorityClassName"),
    (r"^spec\.progressDeadlineSeconds", "spec.rollout.progressDeadlineSeconds"),
    (r"^spec\.strategy", "spec.rollout"),
    (r"^spec\.replicas", "spec.replicas"),
    (r"^spec\.(minReplicas|minReplicaCount)", "spec.autoscaling.minReplicas"),
    (r"^spec\.(maxReplicas|maxReplicaCount)", "spec.autoscaling.maxReplicas"),
    (r"^spec\.metrics|^spec\.triggers", "spec.autoscaling.target"),
    (r"^spec\.resources\.requests\.storage", "spec.cache.size"),
    (r"^spec\.accessModes", "spec.cache.accessMode"),
    (r"^spec\.storageClassName", "spec.cache.storageClassName"),
)
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def spec_field(child_field: str) -> str:
    for pattern, field in _FIELD_MAP:
        if re.search(pattern, child_field):
            return field
    return "spec"


def _body(e: Any) -> dict[str, Any]:
    raw = getattr(e, "body", None)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {"message": raw}
        return parsed if isinstance(parsed, dict) else {}
    return {}


class RefusedError(Exception):
    """The API server refused a child for good: fixing the spec (or the cluster) is needed."""

    def __init__(self, what: str, status: int, message: str, causes: list[dict[str, Any]]) -> None:
        super().__init__(f"{what}: {message}")
        self.what = what
        self.status = status
        self.message = message
        self.causes = causes

    def spec_error(self) -> SpecError:
        fields = [str(c.get("field") or "") for c in self.causes]
        field = next((spec_field(f) for f in fields if f), "spec")
        reason = "Forbidden" if self.status == 403 else "ApplyRefused"
        return SpecError(field, f"the API server refused {self.what}: {self.message}", reason=reason)


class TransientError(Exception):
    """A failure that may pass by itself: reported as Reconciling and retried with backoff."""

    reason = "ApplyFailed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def classify(e: Any, what: str) -> RefusedError | TransientError:
    """An ApiException/DynamicApiError from a write of `what`, as RefusedError or TransientError."""
    status = int(getattr(e, "status", 0) or 0)
    body = _body(e)
    message = str(body.get("message") or getattr(e, "reason", "") or e)[:900]
    if status == 0 or status in TRANSIENT_STATUSES:
        return TransientError(f"{what}: {status or ''} {message}".replace("  ", " "))
    causes = list((body.get("details") or {}).get("causes") or [])
    return RefusedError(what, status, message, causes)
