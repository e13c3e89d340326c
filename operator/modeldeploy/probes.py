"""Pure parts of the runtime checks and behaviour probes: settings, endpoint resolution, what to
run when, how an output is judged, how a TGI error is named, and the prober's part of status.

No I/O here; `prober.py` does the talking (TGI, the API server) and calls these.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from modeldeploy import refusal, render
from modeldeploy.api import (
    EXCERPT_CHARS,
    Condition,
    ModelDeploymentSpec,
    Probe,
    ProbeExpect,
    ProbeResult,
    Probes,
    ProbesStatus,
    RuntimeStatus,
    SmokeStatus,
)

Obj = dict[str, Any]

FIELD_MANAGER = "modeldeploy-prober"
CONDITION = "Verified"
# Ready=False reasons the reconcile sets from the prober's findings: a model held by one of them
# is still probed (otherwise it could never be released).
GATE_REASONS = frozenset({"ModelMismatch", "ProbeFailed"})
SMOKE_PROMPT = "Reply with one short sentence: what is the capital of France?"
SMOKE_MAX_NEW_TOKENS = 16
MESSAGE_CHARS = 300  # bound of error messages kept in status
_SHA = re.compile(r"^[0-9a-f]{40}$")


# ---- settings -------------------------------------------------------------------------------


class ProberSettings(BaseModel):
    """Operator-wide prober settings (environment variables, set by the chart)."""

    model_config = ConfigDict(frozen=True)

    # Where each model's TGI is reached: inline JSON/YAML or a file re-read when it changes.
    endpoints: str = ""
    concurrency: int = Field(default=4, ge=1, le=256)  # requests in flight, all models together
    tick_seconds: float = Field(default=5.0, gt=0)  # how often the model list is looked at
    min_interval_seconds: float = Field(default=60.0, ge=0)  # floor under spec.probes.intervalSeconds
    attempts: int = Field(default=3, ge=1, le=10)  # tries per request on a transient error
    backoff_seconds: float = Field(default=1.0, gt=0)  # first retry delay (doubles, full jitter)
    backoff_max_seconds: float = Field(default=60.0, gt=0)
    info_timeout_seconds: float = Field(default=10.0, gt=0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProberSettings:
        env = os.environ if env is None else env
        names = {
            "endpoints": "MODELDEPLOY_ENDPOINTS",
            "concurrency": "MODELDEPLOY_PROBE_CONCURRENCY",
            "tick_seconds": "MODELDEPLOY_PROBE_TICK_SECONDS",
            "min_interval_seconds": "MODELDEPLOY_PROBE_MIN_INTERVAL_SECONDS",
            "attempts": "MODELDEPLOY_PROBE_ATTEMPTS",
            "backoff_seconds": "MODELDEPLOY_PROBE_BACKOFF_SECONDS",
            "backoff_max_seconds": "MODELDEPLOY_PROBE_BACKOFF_MAX_SECONDS",
            "info_timeout_seconds": "MODELDEPLOY_PROBE_INFO_TIMEOUT_SECONDS",
        }
        return cls(**{k: env[v] for k, v in names.items() if env.get(v)})


def prober_enabled(mode: str, env: Mapping[str, str]) -> bool:
    """auto: on inside a cluster (Service DNS names resolve) or when an endpoint map says where
    models are; outside a cluster without one every check would only fail."""
    if mode in ("on", "only"):
        return True
    if mode == "off":
        return False
    return bool(env.get("KUBERNETES_SERVICE_HOST") or env.get("MODELDEPLOY_ENDPOINTS"))


# ---- endpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointMap:
    """namespace/name -> base URL; "*" a template with {namespace} and {name}; anything else the
    in-cluster Service (render.endpoint)."""

    exact: Mapping[str, str] = field(default_factory=dict)
    template: str = ""

    def url(self, namespace: str, name: str) -> str:
        hit = self.exact.get(f"{namespace}/{name}")
        if hit:
            return hit.rstrip("/")
        if self.template:
            return self.template.format(namespace=namespace, name=name).rstrip("/")
        return render.endpoint(name, namespace)


def parse_endpoints(text: str) -> EndpointMap:
    """A JSON (or YAML) object of "namespace/name": URL, plus "*": template. Raises ValueError."""
    if not text.strip():
        return EndpointMap()
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError('the endpoint map must be an object of "namespace/name": "http://host:port"')
    template = data.pop("*", "")
    for key, url in data.items():
        if key.count("/") != 1 or not url.startswith(("http://", "https://")):
            raise ValueError(f'endpoint map entry {key!r}: {url!r}: want "namespace/name": "http(s)://..."')
    return EndpointMap(exact=data, template=template)


def endpoints_inline(value: str) -> bool:
    """MODELDEPLOY_ENDPOINTS holds the map itself (else: a file path)."""
    return value.lstrip().startswith("{")


# ---- what to run when ---------------------------------------------------------------------


def _conditions(body: Obj) -> dict[str, Obj]:
    return {c.get("type", ""): c for c in ((body.get("status") or {}).get("conditions") or [])}


def eligible(body: Obj) -> bool:
    """Rolled out, by the reconcile's own account: its status is for this generation, Ready is
    True with no rollout in progress (or False only because of the prober's own findings), and
    some replica is ready. Probing in the middle of a rollout would stamp the old pods' facts on
    the new generation."""
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    if st.get("observedGeneration") != meta.get("generation"):
        return False
    if int(st.get("readyReplicas") or 0) < 1:
        return False
    conds = _conditions(body)
    ready = conds.get("Ready") or {}
    if ready.get("status") == "True":
        return (conds.get("Reconciling") or {}).get("status") != "True"
    return ready.get("status") == "False" and ready.get("reason") in GATE_REASONS


@dataclass
class Memo:
    """What the prober remembers of one model between ticks (seeded from status on start)."""

    generation: int = 0  # generation of the last complete run
    last_run: float = -math.inf  # monotonic start of the last complete run
    failures: int = 0  # consecutive runs that ended on a transient error
    retry_at: float = 0.0  # monotonic: no run before this
    running: bool = False
    api: str = ""  # chat or generate, once auto has found out


def seed(body: Obj, now: float) -> Memo:
    """A memo for a model first seen (say after a restart): a generation already verified is
    not checked again before an interval has passed."""
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    gen = int(meta.get("generation") or 0)
    runtime = st.get("runtime") or {}
    if (
        runtime.get("generation") == gen
        and not runtime.get("reason")
        and (runtime.get("smoke") or {}).get("ok")
    ):
        return Memo(generation=gen, last_run=now, api=str((runtime.get("smoke") or {}).get("api") or ""))
    return Memo()


def interval(spec: ModelDeploymentSpec, settings: ProberSettings) -> float:
    asked = spec.probes.interval_seconds if spec.probes else 300
    return max(float(asked), settings.min_interval_seconds)


def has_probes(spec: ModelDeploymentSpec) -> bool:
    return spec.probes is not None and (bool(spec.probes.items) or spec.probes.config_map_ref is not None)


def due(body: Obj, spec: ModelDeploymentSpec, memo: Memo, now: float, settings: ProberSettings) -> str | None:
    """ "rollout" (facts, smoke and probes), "interval" (facts and probes) or None: at most one
    run in flight per model, none before a backoff ends, probes at most once per interval."""
    if memo.running or now < memo.retry_at or not eligible(body):
        return None
    if int((body.get("metadata") or {}).get("generation") or 0) != memo.generation:
        return "rollout"
    if has_probes(spec) and now - memo.last_run >= interval(spec, settings):
        return "interval"
    if held(body) and now - memo.last_run >= settings.min_interval_seconds:
        # Ready is held on what the prober found: look again (a fixed endpoint, pods
        # restarted on the right model) whether or not the model declares probes.
        return "interval"
    return None


def held(body: Obj) -> bool:
    ready = _conditions(body).get("Ready") or {}
    return ready.get("status") == "False" and ready.get("reason") in GATE_REASONS


def backoff(
    failures: int, settings: ProberSettings, cap: float | None = None, rnd: random.Random | None = None
) -> float:
    """Capped exponential backoff with full jitter: uniform in [base/2, min(cap, base*2^(n-1))]."""
    top = min(cap if cap is not None else settings.backoff_max_seconds, settings.backoff_max_seconds,
              settings.backoff_seconds * 2 ** max(failures - 1, 0))  # fmt: skip
    low = min(settings.backoff_seconds / 2, top)
    return (rnd or random).uniform(low, top)


# ---- probe sets -------------------------------------------------------------------------------

_PROBE_LIST = TypeAdapter(list[Probe])


def parse_probe_set(text: str) -> list[Probe]:
    """A ConfigMap's YAML list of probes (or {items: [...]}). Raises ValueError with the reason."""
    try:
        data = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as e:
        raise ValueError(f"not YAML: {str(e)[:200]}") from e
    if isinstance(data, dict) and "items" in data:
        data = data["items"]
    try:
        probes = _PROBE_LIST.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from e
    names = [p.name for p in probes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate probe names: {', '.join(dupes)}")
    return probes


@dataclass(frozen=True)
class ProbeSet:
    probes: tuple[tuple[Probe, str], ...]  # (probe, source)
    message: str = ""  # a problem with the shared set, said in status


def merge_sets(
    spec_probes: Probes | None, shared: list[Probe] | None, shared_source: str, problem: str
) -> ProbeSet:
    """The spec's items, then the ConfigMap's; a shared probe named like one of the spec's is
    left out (the model's own wins) and said."""
    items = list(spec_probes.items) if spec_probes else []
    out: list[tuple[Probe, str]] = [(p, "spec") for p in items]
    taken = {p.name for p in items}
    notes = [problem] if problem else []
    shadowed = [p.name for p in shared or [] if p.name in taken]
    out += [(p, shared_source) for p in shared or [] if p.name not in taken]
    if shadowed:
        notes.append(f"{shared_source}: {', '.join(shadowed)} shadowed by spec.probes.items of the same name")
    return ProbeSet(tuple(out), "; ".join(notes))


# ---- judging an output --------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    passed: bool
    refused: bool
    message: str


def evaluate(probe: Probe, output: str) -> Verdict:
    """Whether the output meets the probe's expectation: refusal or not (the heuristic, or the
    probe's refusalRegex), then contains / regex when given."""
    try:
        return _evaluate(probe, output)
    except refusal.PatternTooSlowError as e:
        return Verdict(False, False, str(e))


def _evaluate(probe: Probe, output: str) -> Verdict:
    refused = refusal.is_refusal(output, probe.refusal_regex or None)
    if probe.expect == ProbeExpect.answer and refused:
        return Verdict(False, True, "expected an answer, got a refusal")
    if probe.expect == ProbeExpect.refusal and not refused:
        return Verdict(False, False, "expected a refusal, got an answer")
    if probe.contains and probe.contains.casefold() not in output.casefold():
        return Verdict(False, refused, f"output does not contain {probe.contains!r}")
    if probe.regex and not refusal.user_search(probe.regex, output):
        return Verdict(False, refused, f"output does not match /{probe.regex}/")
    return Verdict(True, refused, "refused as expected" if refused else "answered as expected")


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The output's opening, whitespace collapsed, at most `limit` characters (plus "...")."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[:limit].rstrip() + "..."


def bounded(message: str) -> str:
    return excerpt(message, MESSAGE_CHARS)


# ---- TGI errors -----------------------------------------------------------------------------

# text_generation's exception class name -> (status reason, worth retrying). Matched by name so
# this module imports no client (and a newer client's subclass still maps).
TGI_ERRORS: dict[str, tuple[str, bool]] = {
    "OverloadedError": ("Overloaded", True),  # 429, error_type overloaded: the queue is full
    "RateLimitExceededError": ("Overloaded", True),  # 429 without an error_type
    "ValidationError": ("ValidationError", False),  # 422: the request itself is wrong
    "GenerationError": ("GenerationError", True),  # 424: failed while generating
    "IncompleteGenerationError": ("IncompleteGeneration", True),  # 500, incomplete_generation
    "BadRequestError": ("BadRequest", False),  # 400
    "ShardNotReadyError": ("ShardNotReady", True),  # 424/403 without an error_type
    "ShardTimeoutError": ("ShardTimeout", True),  # 504
    "NotFoundError": ("NotFound", False),  # 404: no such route (an older TGI, another server)
    "UnknownError": ("EngineError", True),  # any other status
}


def classify(exc: BaseException) -> tuple[str, bool]:
    """(reason, retryable) of an exception raised while talking to TGI."""
    names = [c.__name__ for c in type(exc).__mro__]
    module = type(exc).__module__
    if module.startswith("text_generation") and names[0] in TGI_ERRORS:
        return TGI_ERRORS[names[0]]
    if isinstance(exc, TimeoutError) or "TimeoutError" in names:
        return "Timeout", True
    if "ClientConnectionError" in names or isinstance(exc, ConnectionError | OSError):
        return "Unreachable", True
    if "ContentTypeError" in names or isinstance(exc, ValueError | KeyError | TypeError):
        return "BadResponse", False  # not TGI's shapes (pydantic's ValidationError is a ValueError)
    if "ClientError" in names:
        return "Unreachable", True
    return "ProbeError", True


# ---- runtime facts ------------------------------------------------------------------------------


def parse_info(info: Obj) -> Obj:
    """The /info fields kept in status (TGI 2.x/3.x names; max_input_length in older ones)."""
    if not isinstance(info, dict) or not isinstance(info.get("model_id"), str):
        raise ValueError("/info has no model_id")

    def num(*keys: str) -> int | None:
        for k in keys:
            v = info.get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    return {
        "modelId": info["model_id"],
        "modelSha": str(info.get("model_sha") or ""),
        "version": str(info.get("version") or ""),
        "maxInputTokens": num("max_input_tokens", "max_input_length"),
        "maxTotalTokens": num("max_total_tokens"),
    }


def expected_model(spec: ModelDeploymentSpec, raw_status: Obj) -> tuple[str, str]:
    """(model id, commit sha or "") the pods should serve: the reconcile's resolved id (a preset
    fills it) else the spec's; the sha when the revision is pinned to a commit, or the commit the
    weight cache was filled from."""
    model_id = str(raw_status.get("model") or spec.model.id)
    sha = spec.model.revision if _SHA.fullmatch(spec.model.revision) else ""
    cached = str((raw_status.get("cache") or {}).get("revision") or "")
    if not sha and _SHA.fullmatch(cached):
        sha = cached
    return model_id, sha


def mismatch(runtime: Obj, spec: ModelDeploymentSpec, raw_status: Obj) -> str | None:
    """A message naming both when the served model is not the one asked for, else None."""
    served_id, served_sha = str(runtime.get("modelId") or ""), str(runtime.get("modelSha") or "")
    if not served_id:
        return None
    want_id, want_sha = expected_model(spec, raw_status)
    if want_id and served_id != want_id:
        return f"TGI serves model {served_id!r}, the spec asks for {want_id!r}"
    if want_sha and served_sha and served_sha != want_sha:
        return f"TGI serves {served_id} at commit {served_sha}, expected commit {want_sha}"
    return None


# ---- the prober's status ------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    retryable: bool


@dataclass(frozen=True)
class RunResult:
    """What one run found. info/smoke None: not attempted this run (an interval run keeps the
    rollout's smoke)."""

    generation: int
    at: str  # RFC 3339
    info: Obj | None = None
    info_error: Failure | None = None
    smoke: SmokeStatus | None = None
    probes: tuple[ProbeResult, ...] | None = None
    probe_set_message: str = ""

    def transient(self) -> bool:
        """Ended on an error worth retrying soon (not a verdict on the model)."""
        if self.info_error is not None:
            return self.info_error.retryable
        if self.smoke is not None and not self.smoke.ok:
            return self.smoke.reason in RETRYABLE_REASONS
        return any(r.reason in RETRYABLE_REASONS for r in self.probes or ())


RETRYABLE_REASONS = frozenset(r for r, retry in TGI_ERRORS.values() if retry) | {
    "Timeout",
    "Unreachable",
    "ProbeError",
}


def own_part(raw_status: Obj) -> Obj:
    """The prober's part of a status as read (what its next write is compared with)."""
    out: Obj = {k: raw_status[k] for k in ("runtime", "probes") if raw_status.get(k)}
    mine = [c for c in raw_status.get("conditions") or [] if c.get("type") == CONDITION]
    if mine:
        out["conditions"] = mine
    return out


def build_status(prior: Obj, run: RunResult, spec: ModelDeploymentSpec, raw_status: Obj) -> Obj:
    """The prober's whole part of status after `run`, from its prior part (server-side apply
    drops what is left out, so what this run did not check is carried over as it was)."""
    runtime = dict(prior.get("runtime") or {})
    before = dict(runtime)
    if run.info is not None or run.info_error is not None:
        smoke = (
            runtime.get("smoke")
            if run.smoke is None and runtime.get("generation") == run.generation
            else None
        )
        runtime = {"generation": run.generation, "checkedAt": run.at}
        if run.info is not None:
            runtime.update({k: v for k, v in run.info.items() if v not in (None, "")})
        if run.info_error is not None:
            if before.get("generation") == run.generation:
                # The last facts of these pods (and when they were read) stand until /info
                # answers again: a timeout must not release a ModelMismatch hold.
                kept = {k: v for k, v in before.items() if k not in ("reason", "message", "smoke")}
                runtime.update(kept)
            runtime.update(reason=run.info_error.reason, message=bounded(run.info_error.message))
        if smoke:
            runtime["smoke"] = smoke
    if run.smoke is not None:
        runtime["smoke"] = run.smoke.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) | {
            "ok": run.smoke.ok
        }
    out: Obj = {}
    if runtime:
        out["runtime"] = RuntimeStatus.model_validate(runtime).model_dump(
            by_alias=True, exclude_none=True, exclude_defaults=True
        ) | {"generation": runtime.get("generation", 0)}
    if run.probes is not None:
        results = list(run.probes)
        ran = [r for r in results if r.refused is not None]
        probes = ProbesStatus(
            generation=run.generation,
            last_run=run.at,
            passed=sum(1 for r in results if r.passed),
            failed=sum(1 for r in results if not r.passed),
            refusal_rate=round(sum(1 for r in ran if r.refused) / len(ran), 3) if ran else None,
            message=bounded(run.probe_set_message) if run.probe_set_message else "",
            results=results,
        )
        out["probes"] = probes.model_dump(by_alias=True, exclude_none=True)
    elif prior.get("probes") and has_probes(spec):
        out["probes"] = prior["probes"]
    out["conditions"] = [verified(out, spec, raw_status, run.at, prior)]
    return out


def verified(part: Obj, spec: ModelDeploymentSpec, raw_status: Obj, now: str, prior: Obj) -> Obj:
    """The prober's own condition: every check of the current generation passed, or the first
    thing that did not."""
    runtime = part.get("runtime") or {}
    smoke = runtime.get("smoke") or {}
    probes = part.get("probes") or {}
    failing = [r for r in probes.get("results") or [] if not r.get("passed")]
    failing.sort(key=lambda r: not r.get("gate"))  # gated ones first: they hold Ready
    wrong = mismatch(runtime, spec, raw_status)
    if runtime.get("reason"):
        status, reason, message = "False", runtime["reason"], f"/info: {runtime.get('message', '')}"
    elif wrong:
        status, reason, message = "False", "ModelMismatch", wrong
    elif smoke and not smoke.get("ok"):
        status, reason, message = (
            "False",
            smoke.get("reason") or "SmokeFailed",
            f"smoke generation: {smoke.get('message', '')}",
        )
    elif failing:
        names = ", ".join(r["name"] for r in failing)
        first = failing[0]
        gate = " (gated)" if first.get("gate") else ""
        status, reason = "False", "ProbeFailed"
        message = f"probe {first['name']}{gate} failed: {first.get('message', '')}; failing: {names}"
    elif probes.get("message"):
        status, reason, message = "False", "ProbeSetUnavailable", probes["message"]
    else:
        status, reason = "True", "Verified"
        served = runtime.get("modelId", "")
        message = f"serving {served}"
        if runtime.get("modelSha"):
            message += f" at {runtime['modelSha'][:12]}"
        if smoke:
            message += f"; smoke: {smoke.get('generatedTokens', 0)} tokens in {smoke.get('latencyMs', 0)} ms"
        if probes:
            message += f"; {probes.get('passed', 0)}/{len(probes.get('results') or [])} probes passed"
    old = next((c for c in prior.get("conditions") or [] if c.get("type") == CONDITION), None)
    since = old.get("lastTransitionTime", now) if old and old.get("status") == status else now
    gen = int(runtime.get("generation") or probes.get("generation") or 0)
    cond = Condition(
        type=CONDITION,
        status=status,
        reason=reason,
        message=bounded(message),
        last_transition_time=since or now,
        observed_generation=gen,
    )
    return cond.model_dump(by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class Notice:
    """An Event to post: only on a pass/fail transition, never per retry."""

    type: str  # Normal or Warning
    reason: str
    message: str


def notices(prior: Obj, new: Obj) -> list[Notice]:
    """Events for what changed: the Verified condition's status or reason, and each probe whose
    passed flag flipped (or that ran for the first time)."""
    out: list[Notice] = []
    old_c: Obj = next((c for c in prior.get("conditions") or [] if c.get("type") == CONDITION), {})
    new_c: Obj = next((c for c in new.get("conditions") or [] if c.get("type") == CONDITION), {})
    if (old_c.get("status"), old_c.get("reason")) != (new_c.get("status"), new_c.get("reason")) and new_c:
        kind = "Normal" if new_c["status"] == "True" else "Warning"
        out.append(
            Notice(kind, new_c["reason"], f"{CONDITION}={new_c['status']}: {new_c.get('message', '')}")
        )
    before = {r["name"]: r.get("passed") for r in (prior.get("probes") or {}).get("results") or []}
    for r in (new.get("probes") or {}).get("results") or []:
        if before.get(r["name"]) == r.get("passed"):
            continue
        word = "passed" if r.get("passed") else "failed"
        msg = f"probe {r['name']} {word}: {r.get('message', '')}; output: {r.get('excerpt', '')!r}"
        out.append(
            Notice(
                "Normal" if r.get("passed") else "Warning",
                "ProbePassed" if r.get("passed") else "ProbeFailed",
                bounded(msg),
            )
        )
    return out


def same_part(a: Obj, b: Obj) -> bool:
    """Equal as JSON (the API server's round trip turns tuples into lists and so on)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
