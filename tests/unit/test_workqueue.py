"""The keyed work queue: one pass per model at a time, coalescing, backoff with jitter."""

from __future__ import annotations

import itertools
import random
import threading
import time

from modeldeploy.workqueue import Backoff, Key, WorkQueue


def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_events_during_a_pass_coalesce_into_one_more_pass() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[tuple[Key, bool]] = []
    running: set[Key] = set()
    overlap: list[Key] = []

    def work(key: Key, apply: bool) -> bool:
        if key in running:
            overlap.append(key)
        running.add(key)
        runs.append((key, apply))
        if len(runs) == 1:
            started.set()
            release.wait(5)
        running.discard(key)
        return False

    q = WorkQueue(work, workers=4)
    q.start()
    try:
        q.add(("ns", "a"))
        assert started.wait(5)
        for _ in range(20):  # a burst while the first pass runs
            q.add(("ns", "a"), apply=False)
        q.add(("ns", "b"))  # another model is not held up by a's pass
        wait_until(lambda: ("ns", "b") in [k for k, _ in runs])
        release.set()
        wait_until(lambda: q.pending() == 0)
    finally:
        q.stop()
    a_runs = [apply for k, apply in runs if k == ("ns", "a")]
    assert a_runs == [True, False], runs  # the burst became exactly one status pass
    assert overlap == []


def test_failures_back_off_exponentially_with_jitter_and_success_forgets() -> None:
    b = Backoff(base=1.0, cap=8.0)
    rng = random.Random(1)
    delays = [b.delay(n, rng) for n in range(1, 7)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert len({round(d, 6) for d in delays[3:]}) == 3  # jittered, not in step

    attempts: list[float] = []

    def work(key: Key, apply: bool) -> bool:
        attempts.append(time.monotonic())
        return len(attempts) < 3  # fails twice, then succeeds

    q = WorkQueue(work, workers=1, backoff=Backoff(base=0.05, cap=1.0))
    q.start()
    try:
        q.add(("ns", "m"))
        wait_until(lambda: len(attempts) == 3 and q.pending() == 0)
        assert q.failures(("ns", "m")) == 0
    finally:
        q.stop()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05, gaps


def test_only_a_new_generation_cuts_the_backoff_short() -> None:
    attempts: list[bool] = []

    def work(key: Key, apply: bool) -> bool:
        attempts.append(apply)
        return len(attempts) == 1  # the first pass fails

    q = WorkQueue(work, workers=1, backoff=Backoff(base=60.0, cap=60.0))
    q.start()
    try:
        q.add(("ns", "m"))
        wait_until(lambda: q.failures(("ns", "m")) == 1)
        q.add(("ns", "m"))  # a resync or a pod event: waits for the retry
        q.add(("ns", "m"), apply=False)
        assert q.pending() == 1  # only the delayed retry: neither add queued a pass
        assert attempts == [True]
        q.add(("ns", "m"), reset=True)  # e.g. a new generation: runs now, not in a minute
        wait_until(lambda: len(attempts) == 2, timeout=5)
    finally:
        q.stop()


def test_an_event_during_a_retry_pass_is_not_lost() -> None:
    """A pod becomes Ready while the retry of a failed pass runs (after it read its snapshot):
    the pass succeeds on old facts, so the event must give one more pass."""
    in_retry, release = threading.Event(), threading.Event()
    attempts: list[bool] = []

    def work(key: Key, apply: bool) -> bool:
        attempts.append(apply)
        if len(attempts) == 1:
            return True  # the API server is away: retry later
        if len(attempts) == 2:
            in_retry.set()
            release.wait(5)
        return False

    q = WorkQueue(work, workers=1, backoff=Backoff(base=0.05, cap=0.05))
    q.start()
    try:
        q.add(("ns", "m"))
        assert in_retry.wait(5)
        q.add(("ns", "m"), apply=False)  # the pod event, during the retry pass
        release.set()
        wait_until(lambda: len(attempts) == 3)
        assert attempts[2] is False  # a status refresh
    finally:
        q.stop()


def test_an_event_during_a_failing_pass_waits_for_the_backoff() -> None:
    """The other way round: a pass that fails while events came in retries after its backoff,
    not at once (a dead API server is not hammered by a stream of pod events)."""
    started, release = threading.Event(), threading.Event()
    attempts: list[float] = []

    def work(key: Key, apply: bool) -> bool:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            started.set()
            release.wait(5)
        return True  # always failing

    q = WorkQueue(work, workers=1, backoff=Backoff(base=60.0, cap=60.0))
    q.start()
    try:
        q.add(("ns", "m"))
        assert started.wait(5)
        q.add(("ns", "m"), apply=False)
        release.set()
        wait_until(lambda: q.failures(("ns", "m")) == 1)
        assert len(attempts) == 1
        assert q.pending() == 1  # just the delayed retry
    finally:
        q.stop()
