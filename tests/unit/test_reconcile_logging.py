"""A model that fails the same way every pass is logged in full once, then in one line; every
line names the model."""

from __future__ import annotations

import logging

import pytest

from modeldeploy.reconcile import Reconciler


def test_repeated_failure_is_logged_in_full_once(caplog: pytest.LogCaptureFixture) -> None:
    rec = Reconciler.__new__(Reconciler)
    rec._logged = {}
    caplog.set_level(logging.INFO, logger="modeldeploy.reconcile")
    for _ in range(3):
        try:
            raise ValueError("boom")
        except ValueError:
            rec._log_failure("ns", "m", "ValueError: boom", exc=True)
    records = [r for r in caplog.records if r.name == "modeldeploy.reconcile"]
    assert len(records) == 3
    assert all(r.getMessage().startswith("ns/m: ") for r in records)
    assert records[0].exc_info is not None
    assert [r.exc_info for r in records[1:]] == [None, None]
    assert "still failing" in records[1].getMessage()
    # A different failure is news again.
    rec._log_failure("ns", "m", "spec.engine: other", exc=False)
    assert "still failing" not in caplog.records[-1].getMessage()
