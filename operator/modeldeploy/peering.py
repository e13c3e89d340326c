"""Which replica is active under kopf peering, for the work kopf does not schedule itself (the
periodic resync). kopf pauses a replica while a live peer has a higher priority, and pauses all
of them while two share one; the same rule is applied here to the peering object's status."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


def is_active(status: Mapping[str, Any] | None, priority: int, now: dt.datetime) -> bool:
    """True when no other live peer has this priority or a higher one.

    status: the (Cluster)KopfPeering's status: {identity: {priority, lastseen, lifetime}},
    this replica's own entry included (it is the one with `priority`)."""
    same = 0
    for info in (status or {}).values():
        if not isinstance(info, Mapping):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(info["lastseen"]))
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=dt.UTC)
            alive = seen + dt.timedelta(seconds=float(info.get("lifetime", 60))) > now
            peer_priority = int(info.get("priority", 0))
        except (KeyError, ValueError, TypeError):
            continue
        if not alive:
            continue
        if peer_priority > priority:
            return False
        if peer_priority == priority:
            same += 1
    return same <= 1
