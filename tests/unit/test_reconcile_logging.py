"""Pure parts of the pass: logging of repeated failures, the status take-over's merge patch,
which refusals a status refresh must keep."""

from __future__ import annotations

import logging

import pytest

from modeldeploy.api import ModelDeploymentStatus
from modeldeploy.reconcile import Reconciler, Snapshot, merge_patch_to


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


def test_merge_patch_deletes_stale_keys_at_every_depth() -> None:
    old = {
        "plan": {"gpusPerReplica": 2, "estimatedGiBPerGpu": 30.1},
        "cache": {"phase": "Ready"},
        "model": "m",
    }
    new = {"plan": {"gpusPerReplica": 1}, "model": "m"}
    patch = merge_patch_to(old, new)
    assert patch == {"cache": None, "plan": {"estimatedGiBPerGpu": None, "gpusPerReplica": 1}, "model": "m"}


def _snap(reason: str, observed: int, generation: int) -> Snapshot:
    prior = ModelDeploymentStatus.model_validate({
        "observedGeneration": observed,
        "conditions": [{"type": "Ready", "status": "False", "reason": reason},
                       {"type": "Stalled", "status": "True", "reason": reason}],
    })  # fmt: skip
    return Snapshot("ns", "m", "uid", generation, prior, None, None)


@pytest.mark.parametrize(
    "reason", ["InvalidSpec", "DoesNotFit", "ApplyRefused", "NotOwned", "InvalidShardCount"]
)
def test_a_refresh_keeps_every_refusal_of_the_current_generation(reason: str) -> None:
    assert _snap(reason, 2, 2).refused
    assert not _snap(reason, 1, 2).refused  # a newer generation: a full pass is coming anyway


@pytest.mark.parametrize("reason", ["CrashLoopBackOff", "OOMKilled", "ReplicaFailure", "GatedModel"])
def test_a_refresh_updates_what_pods_and_caches_do(reason: str) -> None:
    assert not _snap(reason, 2, 2).refused


def test_an_api_server_away_is_retried_and_said_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """A restart of the API server fails every model's pass for a moment: one line each, no
    traceback (the drill saw 855 traceback lines for 8 models over a 2.7 s outage)."""
    import urllib3

    from modeldeploy.settings import Settings

    class Away:
        def get_model(self, namespace: str, name: str) -> None:
            raise urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused")  # type: ignore[arg-type]

    rec = Reconciler(kube=Away(), settings=Settings())  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="modeldeploy.reconcile")
    assert rec.reconcile("ns", "m") is True  # retried with backoff
    assert rec.reconcile("ns", "m") is True
    records = [r for r in caplog.records if r.name == "modeldeploy.reconcile"]
    assert [r.exc_info for r in records] == [None, None]
    assert "cannot reach the API server" in records[0].getMessage()
