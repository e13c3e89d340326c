"""The resync follows kopf's peering rule: active unless a live peer outranks or ties."""

from __future__ import annotations

import datetime as dt

from modeldeploy.peering import is_active

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def peer(priority: int, seconds_ago: float = 5, lifetime: int = 60) -> dict[str, object]:
    seen = (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lastseen": seen, "lifetime": lifetime}


def test_highest_live_priority_is_active() -> None:
    status = {"a": peer(700), "b": peer(300)}
    assert is_active(status, 700, NOW)
    assert not is_active(status, 300, NOW)


def test_dead_peers_do_not_count() -> None:
    assert is_active({"a": peer(900, seconds_ago=120), "b": peer(300)}, 300, NOW)


def test_a_tie_pauses_both() -> None:
    status = {"a": peer(500), "b": peer(500)}
    assert not is_active(status, 500, NOW)


def test_alone_or_unknown_is_active() -> None:
    assert is_active({"a": peer(1)}, 1, NOW)
    assert is_active(None, 1, NOW)
    assert is_active({"junk": "x", "a": {"priority": "n/a"}}, 1, NOW)
