"""Which replica is active under kopf peering, for the work kopf does not schedule itself (the
periodic resync). kopf starts every replica paused, pauses it while a live peer has a higher
priority, and pauses all of them while two share one; the same rule is applied here to the
peering object's status."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

NAME = "modeldeploy"
"""The peering objects' name (the chart creates them)."""
DEFAULT_LIFETIME = 60
"""Seconds a replica counts as alive after its last keep-alive (kopf's default)."""
ROLE_CHECK_SECONDS = 5.0
"""How often a replica re-reads the peering objects for its own role."""


def peering_object(namespace: str | None) -> dict[str, Any]:
    """The peering object kopf reads and writes: cluster-wide, or one per watched namespace."""
    if namespace is None:
        return {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": NAME}}
    return {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": NAME, "namespace": namespace},
    }


def is_active(peering: Mapping[str, Any] | None, identity: str, priority: int, now: dt.datetime) -> bool:
    """True when no other live peer has this priority or a higher one.

    peering: the (Cluster)KopfPeering object, None when it does not exist (kopf then keeps
    every replica paused). Its status is {identity: {priority, lastseen, lifetime}}; this
    replica's own entry (under `identity`) does not count."""
    if peering is None:
        return False
    for peer, info in (peering.get("status") or {}).items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(info["lastseen"]))
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=dt.UTC)
            alive = seen + dt.timedelta(seconds=float(info.get("lifetime", 60))) > now
            peer_priority = int(info.get("priority", 0))
        except (KeyError, ValueError, TypeError):
            continue
        if alive and peer_priority >= priority:
            return False
    return True
