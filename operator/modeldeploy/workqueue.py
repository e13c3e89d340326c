"""A keyed work queue: events mark a model dirty, at most one pass per model runs at a time,
events that arrive while it runs coalesce into one more pass, and failures come back after a
capped exponential backoff with jitter. Handlers only enqueue, so no handler ever waits on
another model's pass, and a new generation never waits for the backoff of an old one.

The shape is client-go's work queue (a dirty set beside a processing set); the rate limiter is
its per-item exponential backoff, with full jitter so many failing models do not retry in step.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("modeldeploy.queue")

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    cap: float = 300.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds before retry number `failures` (1-based): up to base * 2^(n-1), capped,
        drawn from the upper half so a retry never comes back at once."""
        ceiling = min(self.cap, self.base * (2 ** max(0, failures - 1)))
        return float(ceiling * rng.uniform(0.5, 1.0))


@dataclass
class WorkQueue:
    """`work(key, apply)` runs a pass; it returns True when the pass should be retried later
    (a transient failure), False when done. `apply` is True if any coalesced request asked
    for a full pass (False: a status refresh is enough)."""

    work: Callable[[Key, bool], bool]
    workers: int = 4
    backoff: Backoff = field(default_factory=Backoff)
    _dirty: dict[Key, bool] = field(default_factory=dict)
    _processing: set[Key] = field(default_factory=set)
    _ready: list[Key] = field(default_factory=list)
    _delayed: list[tuple[float, int, Key, bool]] = field(default_factory=list)
    _failures: dict[Key, int] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _seq: int = 0
    _stopped: bool = False
    _threads: list[threading.Thread] = field(default_factory=list)
    _rng: random.Random = field(default_factory=random.Random)

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"modeldeploy-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._timer, name="modeldeploy-queue-timer", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def add(self, key: Key, apply: bool = True, reset: bool = False) -> None:
        """Mark `key` dirty. A failing key waits for its retry (events and resyncs do not cut
        its backoff short) unless `reset`: a new reason to try, such as a new generation."""
        with self._cond:
            if reset:
                self._failures.pop(key, None)
            elif self._failures.get(key) and key not in self._processing:
                return  # waiting in backoff: the retry reads everything afresh
            # (While its pass runs, an event may postdate what the pass read: keep it.)
            self._mark(key, apply)

    def _mark(self, key: Key, apply: bool) -> None:
        queued = key in self._dirty
        self._dirty[key] = self._dirty.get(key, False) or apply
        if not queued and key not in self._processing:
            self._ready.append(key)
            self._cond.notify_all()

    def add_after(self, key: Key, delay: float, apply: bool = True) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay, self._seq, key, apply))
            self._cond.notify_all()

    def forget(self, key: Key) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: Key) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def pending(self) -> int:
        with self._cond:
            return len(self._dirty) + len(self._processing) + len(self._delayed)

    def _timer(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, _, key, apply = heapq.heappop(self._delayed)
                    self._mark(key, apply)
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(wait)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                key = self._ready.pop(0)
                apply = self._dirty.pop(key)
                self._processing.add(key)
            retry = True
            try:
                retry = self.work(key, apply)
            except Exception:  # work() reports its own errors; this is the last resort
                log.exception("pass for %s/%s raised", *key)
            with self._cond:
                self._processing.discard(key)
                if retry:
                    n = self._failures.get(key, 0) + 1
                    self._failures[key] = n
                    delay = self.backoff.delay(n, self._rng)
                    self._seq += 1
                    heapq.heappush(self._delayed, (time.monotonic() + delay, self._seq, key, True))
                    # Events that came in meanwhile wait for the retry: it reads them too.
                    self._dirty.pop(key, None)
                elif apply:
                    self._failures.pop(key, None)
                if key in self._dirty:
                    # Events came in while the pass ran: one more pass, now.
                    self._ready.append(key)
                self._cond.notify_all()
