"""The prober: speaks to each rolled-out model's TGI beside the reconcile, never inside it.

Its own asyncio loop in its own thread: every tick it takes the model bodies from a source
(a callable), decides per model what is due (probes.due: after each rollout, then on the
probes' interval), and runs at most one verification per model at a time, all models sharing
one bound on requests in flight. A run reads `/info` (plain HTTP), sends one smoke prompt after
a rollout and the probes (TGI's own `text_generation.AsyncClient`, its chat call unless the
model has no chat template), then writes only its own part of status by server-side apply
under its own field manager, and posts an Event only when a verdict changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
from pydantic import ValidationError
from text_generation import AsyncClient  # type: ignore[import-untyped]
from text_generation.types import Message  # type: ignore[import-untyped]

from modeldeploy import metrics, probes
from modeldeploy.api import ModelDeploymentSpec, Probe, ProbeApi, ProbeResult, SmokeStatus
from modeldeploy.kube import now_rfc3339

log = logging.getLogger("modeldeploy.prober")
Obj = dict[str, Any]
T = TypeVar("T")
# The client (0.7) calls pydantic v1 methods; its deprecation warnings would fill the log.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="text_generation")
SEED = 42  # the same sampling on every run, so a changed output means a changed model


class KubeLike(Protocol):
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None: ...

    def apply_status(self, namespace: str, name: str, status: Obj, field_manager: str = ...) -> Obj: ...

    def event(self, owner: Obj, type_: str, reason: str, message: str) -> None: ...


class EndpointSource:
    """MODELDEPLOY_ENDPOINTS: the map itself (JSON/YAML object) or a file, re-read when its
    modification time changes (so an endpoint can be added without a restart)."""

    def __init__(self, value: str) -> None:
        self.value = value
        self._mtime: float | None = None
        self._map = probes.EndpointMap()
        if probes.endpoints_inline(value):
            self._map = probes.parse_endpoints(value)  # a bad inline map stops the start

    def current(self) -> probes.EndpointMap:
        if not self.value or probes.endpoints_inline(self.value):
            return self._map
        path = Path(self.value)
        try:
            mtime = path.stat().st_mtime
            if mtime != self._mtime:
                self._map = probes.parse_endpoints(path.read_text())
                self._mtime = mtime
        except (OSError, ValueError) as e:
            if self._mtime != -1.0:
                log.warning("endpoint map %s unreadable (keeping the last one): %s", path, e)
            self._mtime = -1.0
        return self._map


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    latency_ms: int
    api: str


def _no_chat(exc: BaseException) -> bool:
    """TGI's answer to a chat request for a model without a chat template (or an older TGI
    without the route): fall back to plain generation."""
    name = type(exc).__name__
    # TGI answers 422 with error_type template_error, which the client lifts to UnknownError.
    templated = name in ("ValidationError", "UnknownError") and "template" in str(exc).lower()
    return name == "NotFoundError" or templated


class Prober:
    def __init__(
        self,
        kube: KubeLike,
        models: Callable[[], Iterable[Obj]],
        settings: probes.ProberSettings,
        *,
        endpoints: EndpointSource | None = None,
    ) -> None:
        self.kube = kube
        self.models = models
        self.settings = settings
        self.endpoints = endpoints or EndpointSource(settings.endpoints)
        self.memos: dict[str, probes.Memo] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sem: asyncio.Semaphore | None = None
        self._started = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a thread of its own (a daemon: it never keeps the process alive)."""
        self._thread = threading.Thread(target=self._thread_main, name="modeldeploy-prober", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _thread_main(self) -> None:
        asyncio.run(self.run())

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._sem = asyncio.Semaphore(self.settings.concurrency)
        self._started.set()
        log.info("prober started (concurrency %d)", self.settings.concurrency)
        try:
            while not self._stop.is_set():
                try:
                    await self.tick()
                except Exception as e:  # a failed listing must not end the loop
                    log.warning("prober tick failed: %s", str(e)[:300])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.tick_seconds)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- scheduling -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """One look at every model: start the runs that are due (without waiting for them)."""
        bodies = await asyncio.to_thread(lambda: list(self.models()))
        now = time.monotonic()
        seen: set[str] = set()
        for body in bodies:
            meta = body.get("metadata") or {}
            uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
            seen.add(uid)
            try:
                spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
            except ValidationError:
                continue  # the reconcile reports a refused spec; nothing here to verify
            memo = self.memos.get(uid)
            if memo is None:
                memo = self.memos[uid] = probes.seed(body, now)
            kind = probes.due(body, spec, memo, now, self.settings)
            if kind is None:
                continue
            memo.running = True
            self._tasks[uid] = asyncio.create_task(self._guarded(uid, body, spec, kind, memo))
        for uid in set(self.memos) - seen:  # deleted models
            memo = self.memos.pop(uid)
            if not memo.running:
                self._tasks.pop(uid, None)

    async def _guarded(
        self, uid: str, body: Obj, spec: ModelDeploymentSpec, kind: str, memo: probes.Memo
    ) -> None:
        meta = body.get("metadata") or {}
        try:
            await self.verify(body, spec, kind, memo)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # An API write that failed, say: try the whole run again after a backoff.
            log.warning(
                "%s/%s: verification failed: %s", meta.get("namespace"), meta.get("name"), str(e)[:300]
            )
            memo.failures += 1
            memo.retry_at = time.monotonic() + probes.backoff(memo.failures, self.settings)
        finally:
            memo.running = False
            self._tasks.pop(uid, None)

    # -- one run ----------------------------------------------------------------------------------

    async def verify(self, body: Obj, spec: ModelDeploymentSpec, kind: str, memo: probes.Memo) -> None:
        meta, raw = body.get("metadata") or {}, body.get("status") or {}
        ns, name = str(meta["namespace"]), str(meta["name"])
        generation = int(meta.get("generation") or 0)
        base = self.endpoints.current().url(ns, name)
        started, at = time.monotonic(), now_rfc3339()
        info: Obj | None = None
        info_error: probes.Failure | None = None
        smoke: SmokeStatus | None = None
        results: tuple[ProbeResult, ...] | None = None
        set_message = ""
        try:
            info = probes.parse_info(
                await self._call(
                    ns, name, "info", lambda: self._info(base), self.settings.info_timeout_seconds
                )
            )
        except Exception as e:
            reason, retry = probes.classify(e)
            info_error = probes.Failure(reason, probes.bounded(f"{base}/info: {_text(e)}"), retry)
        # A wrong model is the verdict: its behaviour says nothing about the one asked for.
        if info is not None and probes.mismatch(info, spec, raw) is None:
            timeout = float(spec.probes.timeout_seconds if spec.probes else 60)
            if kind == "rollout":
                smoke = await self._smoke(ns, name, base, spec, memo, timeout)
            if (smoke is None or smoke.ok) and probes.has_probes(spec):
                probe_set = await self._probe_set(ns, spec)
                set_message = probe_set.message
                out = []
                for probe, source in probe_set.probes:
                    out.append(await self._probe(ns, name, base, spec, memo, probe, source, timeout, at))
                results = tuple(out)
        run = probes.RunResult(generation, at, info, info_error, smoke, results, set_message)
        prior = probes.own_part(raw)
        new = probes.build_status(prior, run, spec, raw)
        if not probes.same_part(prior, new):
            await asyncio.to_thread(self.kube.apply_status, ns, name, new, probes.FIELD_MANAGER)
        for n in probes.notices(prior, new):
            await self._event(body, n)
        verdict = next(c for c in new["conditions"] if c["type"] == probes.CONDITION)
        metrics.record_probe_run(
            ns, name, kind, verdict["reason"], new.get("probes"), time.monotonic() - started
        )
        # Scheduling: a transient failure retries the whole run after a backoff (capped by the
        # interval); anything else is a verdict, and the next run waits for the interval.
        now = time.monotonic()
        if run.transient():
            memo.failures += 1
            cap = probes.interval(spec, self.settings)
            memo.retry_at = now + probes.backoff(memo.failures, self.settings, cap=cap)
        else:
            memo.failures = 0
            memo.generation = generation
            memo.last_run = started
            memo.retry_at = 0.0

    async def _event(self, body: Obj, n: probes.Notice) -> None:
        meta = body.get("metadata") or {}
        owner = {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")}}
        try:
            await asyncio.to_thread(self.kube.event, owner, n.type, n.reason, n.message)
        except Exception as e:  # an Event is best effort
            log.warning(
                "%s/%s: could not post an event: %s", meta.get("namespace"), meta.get("name"), str(e)[:200]
            )

    async def _probe_set(self, ns: str, spec: ModelDeploymentSpec) -> probes.ProbeSet:
        """The spec's probes and the shared ConfigMap's (read per run; a problem with it is said
        in status, the spec's own probes still run)."""
        ref = spec.probes.config_map_ref if spec.probes else None
        if ref is None:
            return probes.merge_sets(spec.probes, None, "", "")
        source = f"configmap/{ref.name}"
        try:
            cm = await asyncio.to_thread(self.kube.get, "v1", "ConfigMap", ns, ref.name)
        except Exception as e:
            return probes.merge_sets(
                spec.probes, None, source, f"ConfigMap {ref.name}: cannot read it: {_text(e)}"
            )
        if cm is None:
            return probes.merge_sets(
                spec.probes, None, source, f"ConfigMap {ref.name} not found in namespace {ns}"
            )
        text = (cm.get("data") or {}).get(ref.key)
        if text is None:
            return probes.merge_sets(
                spec.probes, None, source, f"ConfigMap {ref.name} has no key {ref.key!r}"
            )
        try:
            shared = probes.parse_probe_set(text)
        except ValueError as e:
            return probes.merge_sets(spec.probes, None, source, f"ConfigMap {ref.name} key {ref.key}: {e}")
        return probes.merge_sets(spec.probes, shared, source, "")

    async def _smoke(
        self, ns: str, name: str, base: str, spec: ModelDeploymentSpec, memo: probes.Memo, timeout: float
    ) -> SmokeStatus:
        prompt = (spec.probes.smoke_prompt if spec.probes else "") or probes.SMOKE_PROMPT
        try:
            ans = await self._ask(
                ns, name, base, spec, memo, prompt, "", probes.SMOKE_MAX_NEW_TOKENS, timeout, "smoke"
            )
        except Exception as e:
            reason, _ = probes.classify(e)
            return SmokeStatus(ok=False, reason=reason, message=probes.bounded(_text(e)))
        if ans.tokens < 1 and not ans.text.strip():
            return SmokeStatus(ok=False, api=ans.api, latency_ms=ans.latency_ms, generated_tokens=ans.tokens,
                               reason="EmptyGeneration", message="TGI answered with no tokens")  # fmt: skip
        return SmokeStatus(ok=True, api=ans.api, latency_ms=ans.latency_ms, generated_tokens=ans.tokens)

    async def _probe(self, ns: str, name: str, base: str, spec: ModelDeploymentSpec, memo: probes.Memo,
                     probe: Probe, source: str, timeout: float, at: str) -> ProbeResult:  # fmt: skip
        common = {
            "name": probe.name,
            "expect": probe.expect.value,
            "gate": probe.gate,
            "source": source,
            "last_run": at,
        }
        try:
            ans = await self._ask(
                ns, name, base, spec, memo, probe.prompt, probe.system, probe.max_new_tokens, timeout, "probe"
            )
        except Exception as e:
            reason, _ = probes.classify(e)
            return ProbeResult(
                passed=False, reason=reason, message=probes.bounded(f"request failed: {_text(e)}"), **common
            )
        v = probes.evaluate(probe, ans.text)
        return ProbeResult(
            passed=v.passed,
            refused=v.refused,
            excerpt=probes.excerpt(ans.text),
            latency_ms=ans.latency_ms,
            reason="Passed" if v.passed else "Failed",
            message=v.message,
            **common,
        )

    # -- requests ---------------------------------------------------------------------------------

    async def _call(
        self, ns: str, name: str, route: str, fn: Callable[[], Awaitable[T]], timeout: float
    ) -> T:
        """One request with a timeout, inside the global bound, retried on transient errors with
        capped exponential backoff and jitter (never a hot loop)."""
        assert self._sem is not None
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._sem:
                    out = await asyncio.wait_for(fn(), timeout)
                metrics.TGI_REQUESTS.labels(ns, name, route, "ok").inc()
                return out
            except Exception as e:
                reason, retry = probes.classify(e)
                metrics.TGI_REQUESTS.labels(ns, name, route, reason).inc()
                if not retry or attempt >= self.settings.attempts:
                    raise
                await asyncio.sleep(probes.backoff(attempt, self.settings, cap=timeout))

    async def _info(self, base: str) -> Obj:
        async with aiohttp.ClientSession() as session, session.get(f"{base}/info") as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                  message=(await resp.text())[:200])  # fmt: skip
            data = await resp.json()
            if not isinstance(data, dict):
                raise ValueError("/info is not a JSON object")
            return data

    async def _ask(
        self,
        ns: str,
        name: str,
        base: str,
        spec: ModelDeploymentSpec,
        memo: probes.Memo,
        prompt: str,
        system: str,
        max_new_tokens: int,
        timeout: float,
        route: str,
    ) -> Answer:
        asked = spec.probes.api if spec.probes else ProbeApi.auto
        if asked != ProbeApi.auto:
            order = [asked.value]
        elif memo.api:
            order = [memo.api]
        else:
            order = ["chat", "generate"]
        for i, api in enumerate(order):

            def send(api: str = api) -> Awaitable[Answer]:
                return self._send(base, api, prompt, system, max_new_tokens, timeout)

            try:
                ans = await self._call(ns, name, f"{route}-{api}", send, timeout)
            except Exception as e:
                if i + 1 < len(order) and _no_chat(e):
                    continue
                raise
            if asked == ProbeApi.auto:
                memo.api = api
            return ans
        raise AssertionError("unreachable")

    async def _send(
        self, base: str, api: str, prompt: str, system: str, max_new_tokens: int, timeout: float
    ) -> Answer:
        client = AsyncClient(base, timeout=int(max(1, timeout)))
        started = time.monotonic()
        if api == "chat":
            messages = ([Message(role="system", content=system)] if system else []) + [
                Message(role="user", content=prompt)
            ]
            out: Any = await client.chat(messages=messages, max_tokens=max_new_tokens, seed=SEED)
            text = str(out.choices[0].message.content or "") if out.choices else ""
            usage = out.usage if isinstance(out.usage, dict) else {}
            tokens = int(usage.get("completion_tokens") or 0)
        else:
            full = f"{system}\n\n{prompt}" if system else prompt
            resp = await client.generate(full, max_new_tokens=max_new_tokens, seed=SEED)
            text, tokens = resp.generated_text, resp.details.generated_tokens
        return Answer(text, tokens, int((time.monotonic() - started) * 1000), api)


def _text(e: BaseException) -> str:
    return str(e) or type(e).__name__
