"""The resync follows kopf's peering rule: active unless a live peer outranks or ties, and
paused while the peering object is missing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from modeldeploy.peering import is_active

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def peer(priority: int, seconds_ago: float = 5, lifetime: int = 60) -> dict[str, object]:
    seen = (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lastseen": seen, "lifetime": lifetime}


def obj(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "modeldeploy"}, "status": status}


def test_highest_live_priority_is_active() -> None:
    peering = obj(a=peer(700), b=peer(300))
    assert is_active(peering, "a", 700, NOW)
    assert not is_active(peering, "b", 300, NOW)


def test_dead_peers_do_not_count() -> None:
    assert is_active(obj(a=peer(900, seconds_ago=120), b=peer(300)), "b", 300, NOW)


def test_a_tie_pauses_both() -> None:
    peering = obj(a=peer(500), b=peer(500))
    assert not is_active(peering, "a", 500, NOW)
    assert not is_active(peering, "b", 500, NOW)


def test_own_entry_is_found_by_identity_not_priority() -> None:
    # Before its first keep-alive the replica has no entry; a live peer with its priority still ties.
    assert not is_active(obj(other=peer(500)), "me", 500, NOW)
    # Its own stale entry, with any priority, does not count against it.
    assert is_active(obj(me=peer(900, seconds_ago=1)), "me", 500, NOW)


def test_alone_or_junk_is_active() -> None:
    assert is_active(obj(a=peer(1)), "a", 1, NOW)
    assert is_active(obj(), "a", 1, NOW)
    assert is_active({"metadata": {}}, "a", 1, NOW)
    assert is_active(obj(junk="x", b={"priority": "n/a"}), "a", 1, NOW)


def test_missing_peering_object_pauses() -> None:
    assert not is_active(None, "a", 1, NOW)
