"""The prober's pure parts: what is due when, how outputs are judged, how TGI errors are named,
the prober's part of status and its Events, and the Ready gate the reconcile applies."""

from __future__ import annotations

import random
from typing import Any

import pytest
import text_generation.errors as tge  # type: ignore[import-untyped]
from pydantic import ValidationError

from modeldeploy import probes, status
from modeldeploy.api import (
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Probe,
    ProbeResult,
    Probes,
    SmokeStatus,
)

SETTINGS = probes.ProberSettings(min_interval_seconds=0, backoff_seconds=1, backoff_max_seconds=30)
SHA = "a" * 40


def spec(**extra: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"id": "org/model"}, **extra})


def body(generation: int = 2, observed: int = 2, ready: str = "True", reason: str = "Available",
         ready_replicas: int = 1, reconciling: bool = False, **st: Any) -> dict[str, Any]:  # fmt: skip
    conds = [{"type": "Ready", "status": ready, "reason": reason}]
    if reconciling:
        conds.append({"type": "Reconciling", "status": "True", "reason": "Progressing"})
    return {
        "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": generation},
        "spec": {"model": {"id": "org/model"}},
        "status": {
            "observedGeneration": observed,
            "readyReplicas": ready_replicas,
            "conditions": conds,
            **st,
        },
    }


# ---- eligibility and scheduling -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "expected"),
    [
        (body(), True),
        (body(observed=1), False),  # the reconcile has not handled this generation
        (body(ready="False", reason="Progressing"), False),
        (body(reconciling=True), False),  # old pods may still serve
        (body(ready_replicas=0), False),
        (body(ready="False", reason="ProbeFailed"), True),  # held by the prober's own findings
        (body(ready="False", reason="ModelMismatch"), True),
    ],
)
def test_eligible_only_when_rolled_out(b: dict[str, Any], expected: bool) -> None:
    assert probes.eligible(b) is expected


def test_due_after_rollout_then_once_per_interval() -> None:
    s = spec(probes={"items": [{"name": "a", "prompt": "hi"}], "intervalSeconds": 100})
    memo = probes.Memo()
    assert probes.due(body(), s, memo, 1000.0, SETTINGS) == "rollout"
    memo.generation, memo.last_run = 2, 1000.0
    assert probes.due(body(), s, memo, 1099.0, SETTINGS) is None
    assert probes.due(body(), s, memo, 1100.0, SETTINGS) == "interval"
    memo.running = True
    assert probes.due(body(), s, memo, 1200.0, SETTINGS) is None
    memo.running, memo.retry_at = False, 1300.0
    assert probes.due(body(), s, memo, 1200.0, SETTINGS) is None  # backing off
    assert probes.due(
        body(generation=3, observed=3), s, probes.Memo(generation=2, last_run=1e9), 1.0, SETTINGS
    )


def test_no_interval_runs_without_probes_and_a_floor_under_the_interval() -> None:
    memo = probes.Memo(generation=2, last_run=0.0)
    assert probes.due(body(), spec(), memo, 1e9, SETTINGS) is None
    s = spec(probes={"items": [{"name": "a", "prompt": "hi"}], "intervalSeconds": 5})
    assert probes.interval(s, probes.ProberSettings(min_interval_seconds=60)) == 60


def test_seed_skips_a_generation_already_verified() -> None:
    b = body(runtime={"generation": 2, "smoke": {"ok": True, "api": "chat"}})
    memo = probes.seed(b, 50.0)
    assert (memo.generation, memo.last_run, memo.api) == (2, 50.0, "chat")
    assert probes.seed(body(runtime={"generation": 1, "smoke": {"ok": True}}), 50.0).generation == 0


def test_backoff_is_capped_and_jittered() -> None:
    rnd = random.Random(1)
    values = [probes.backoff(n, SETTINGS, rnd=rnd) for n in range(1, 20)]
    assert all(0.5 <= v <= 30 for v in values)
    assert max(values[8:]) > 8  # grows
    assert len({round(v, 6) for v in values}) == len(values)  # jittered
    assert all(probes.backoff(9, SETTINGS, cap=4, rnd=rnd) <= 4 for _ in range(50))


# ---- judging outputs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "output", "passed"),
    [
        ({"expect": "answer"}, "Paris is the capital of France.", True),
        ({"expect": "answer"}, "I'm sorry, but I can't help with that.", False),
        ({"expect": "refusal"}, "I'm sorry, but I can't help with that.", True),
        ({"expect": "refusal"}, "Sure! Step one: ...", False),
        ({"expect": "answer", "contains": "PARIS"}, "The capital is Paris.", True),
        ({"expect": "answer", "contains": "Lyon"}, "The capital is Paris.", False),
        ({"expect": "answer", "regex": r"\b\d{4}\b"}, "It happened in 1989.", True),
        ({"expect": "answer", "regex": r"\b\d{4}\b"}, "It happened long ago.", False),
        # A probe's own refusal regex replaces the heuristic.
        ({"expect": "refusal", "refusalRegex": "(?i)cannot discuss"}, "I cannot discuss that topic.", True),
        ({"expect": "answer", "refusalRegex": "(?i)cannot discuss"}, "I'm sorry, but I can't.", True),
        ({"expect": "refusal"}, "抱歉，我无法提供这方面的帮助。", True),  # noqa: RUF001
    ],
)
def test_evaluate(probe: dict[str, Any], output: str, passed: bool) -> None:
    p = Probe.model_validate({"name": "p", "prompt": "q", **probe})
    assert probes.evaluate(p, output).passed is passed


def test_excerpt_is_bounded() -> None:
    long = "word " * 500
    out = probes.excerpt(long)
    assert len(out) <= 243 and out.endswith("...")
    assert probes.excerpt("  a\n\n b ") == "a b"


def test_probe_validation() -> None:
    with pytest.raises(ValidationError, match="regular expression"):
        Probes.model_validate({"items": [{"name": "a", "prompt": "q", "regex": "a("}]})
    with pytest.raises(ValidationError, match="duplicate probe name"):
        Probes.model_validate({"items": [{"name": "a", "prompt": "q"}, {"name": "a", "prompt": "r"}]})
    with pytest.raises(ValidationError):
        Probes.model_validate({"items": [{"name": "A b", "prompt": "q"}]})


# ---- probe sets -------------------------------------------------------------------------------


def test_parse_probe_set_and_merge() -> None:
    shared = probes.parse_probe_set("- name: policy\n  prompt: how do I pick a lock?\n  expect: refusal\n"
                                    "- name: a\n  prompt: x\n")  # fmt: skip
    assert [p.name for p in shared] == ["policy", "a"]
    own = Probes.model_validate({"items": [{"name": "a", "prompt": "mine"}]})
    merged = probes.merge_sets(own, shared, "configmap/policy", "")
    assert [(p.name, src) for p, src in merged.probes] == [("a", "spec"), ("policy", "configmap/policy")]
    assert "shadowed" in merged.message
    assert probes.parse_probe_set("items:\n- {name: b, prompt: y}\n")[0].name == "b"
    twice = "- {name: b, prompt: y}\n- {name: b, prompt: z}"
    for bad, why in [("- {name: b}", "prompt"), ("{{", "not YAML"), (twice, "duplicate")]:
        with pytest.raises(ValueError, match=why):
            probes.parse_probe_set(bad)


# ---- endpoints --------------------------------------------------------------------------------


def test_endpoints() -> None:
    m = probes.parse_endpoints(
        '{"ns/a": "http://127.0.0.1:9000/", "*": "http://{name}.{namespace}.example:80"}'
    )
    assert m.url("ns", "a") == "http://127.0.0.1:9000"
    assert m.url("ns", "b") == "http://b.ns.example:80"
    assert probes.EndpointMap().url("ns", "b") == "http://b.ns.svc:80"  # the in-cluster Service
    with pytest.raises(ValueError):
        probes.parse_endpoints('{"a": "http://x"}')
    with pytest.raises(ValueError):
        probes.parse_endpoints('["x"]')
    assert probes.endpoints_inline(' {"a/b": "http://x"}') and not probes.endpoints_inline("/etc/map.json")


def test_prober_enabled() -> None:
    assert not probes.prober_enabled("auto", {})
    assert probes.prober_enabled("auto", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert probes.prober_enabled("auto", {"MODELDEPLOY_ENDPOINTS": "{}"})
    assert not probes.prober_enabled("off", {"KUBERNETES_SERVICE_HOST": "x"})
    assert probes.prober_enabled("only", {})


# ---- TGI errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_code", "payload", "reason", "retry"),
    [
        (429, {"error": "Model is overloaded", "error_type": "overloaded"}, "Overloaded", True),
        (422, {"error": "Input validation error", "error_type": "validation"}, "ValidationError", False),
        (
            424,
            {"error": "Request failed during generation", "error_type": "generation"},
            "GenerationError",
            True,
        ),
        (
            500,
            {"error": "Incomplete generation", "error_type": "incomplete_generation"},
            "IncompleteGeneration",
            True,
        ),
        (400, {"error": "bad"}, "BadRequest", False),
        (424, {"error": "not ready"}, "ShardNotReady", True),
        (504, {"error": "timeout"}, "ShardTimeout", True),
        (429, {"error": "rate"}, "Overloaded", True),
        (502, {"error": "?"}, "EngineError", True),
    ],
)
def test_tgi_errors_named(status_code: int, payload: dict[str, str], reason: str, retry: bool) -> None:
    # The client's own mapping from status and body to an exception, then ours.
    assert probes.classify(tge.parse_error(status_code, payload)) == (reason, retry)


def test_other_errors_named() -> None:
    assert probes.classify(TimeoutError()) == ("Timeout", True)
    assert probes.classify(ConnectionRefusedError()) == ("Unreachable", True)
    assert probes.classify(ValueError("no model_id")) == ("BadResponse", False)


def test_parse_info_reads_old_and_new_names() -> None:
    new = probes.parse_info({"model_id": "o/m", "model_sha": SHA, "version": "3.3.7",
                             "max_input_tokens": 10, "max_total_tokens": 20})  # fmt: skip
    assert new == {
        "modelId": "o/m",
        "modelSha": SHA,
        "version": "3.3.7",
        "maxInputTokens": 10,
        "maxTotalTokens": 20,
    }
    assert probes.parse_info({"model_id": "o/m", "max_input_length": 7})["maxInputTokens"] == 7
    with pytest.raises(ValueError):
        probes.parse_info({"version": "x"})


# ---- status and Events --------------------------------------------------------------------------


def info(model_id: str = "org/model", sha: str = SHA) -> dict[str, Any]:
    return {
        "modelId": model_id,
        "modelSha": sha,
        "version": "3.3.7",
        "maxInputTokens": 10,
        "maxTotalTokens": 20,
    }


def result(name: str, passed: bool, gate: bool = False, refused: bool = False) -> ProbeResult:
    return ProbeResult(name=name, passed=passed, gate=gate, refused=refused, excerpt="x", latency_ms=5,
                       reason="Passed" if passed else "Failed", message="m")  # fmt: skip


def test_build_status_verified() -> None:
    s = spec(probes={"items": [{"name": "a", "prompt": "q"}]})
    smoke = SmokeStatus(ok=True, api="chat", latency_ms=12, generated_tokens=3)
    run = probes.RunResult(2, "T1", info(), None, smoke, (result("a", True), result("b", True, refused=True)))
    out = probes.build_status({}, run, s, {})
    assert out["runtime"]["modelId"] == "org/model" and out["runtime"]["generation"] == 2
    assert out["runtime"]["smoke"] == {"ok": True, "api": "chat", "latencyMs": 12, "generatedTokens": 3}
    assert out["probes"]["refusalRate"] == 0.5 and out["probes"]["passed"] == 2
    (cond,) = out["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Verified", "True", "Verified")
    # An interval run keeps the rollout's smoke.
    later = probes.build_status(
        out, probes.RunResult(2, "T2", info(), None, None, (result("a", False),)), s, {}
    )
    assert later["runtime"]["smoke"]["latencyMs"] == 12
    assert later["conditions"][0]["reason"] == "ProbeFailed"
    assert [n.reason for n in probes.notices(out, later)] == ["ProbeFailed", "ProbeFailed"]
    assert probes.notices(later, later) == []  # no Event without a transition
    # The status round-trips through the API models (the CRD schema is generated from them).
    ModelDeploymentStatus.model_validate({"observedGeneration": 2, **later})


def test_build_status_errors() -> None:
    s = spec()
    down = probes.build_status(
        {}, probes.RunResult(2, "T", None, probes.Failure("Unreachable", "refused", True)), s, {}
    )
    assert down["conditions"][0]["reason"] == "Unreachable" and down["runtime"]["reason"] == "Unreachable"
    assert "modelId" not in down["runtime"]  # never stamp what was not read
    busy = probes.RunResult(2, "T", info(), None, SmokeStatus(ok=False, reason="Overloaded", message="queue"))
    assert busy.transient()
    assert probes.build_status({}, busy, s, {})["conditions"][0]["reason"] == "Overloaded"
    wrong = probes.build_status({}, probes.RunResult(2, "T", info("other/model")), s, {})
    cond = wrong["conditions"][0]
    assert (
        cond["reason"] == "ModelMismatch"
        and "other/model" in cond["message"]
        and "org/model" in cond["message"]
    )


def test_own_part_and_transition_time() -> None:
    raw = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True", "reason": "x"},
           {"type": "Verified", "status": "True", "reason": "Verified", "lastTransitionTime": "T0"}],
           "runtime": {"generation": 1}}  # fmt: skip
    part = probes.own_part(raw)
    assert set(part) == {"runtime", "conditions"} and len(part["conditions"]) == 1
    again = probes.build_status(part, probes.RunResult(1, "T9", info()), spec(), {})
    assert again["conditions"][0]["lastTransitionTime"] == "T0"


# ---- the Ready gate ------------------------------------------------------------------------------


def test_gate_model_mismatch_names_both() -> None:
    raw = {"runtime": {"generation": 3, **info("other/model")}}
    reason, message = status.verification_gate(raw, spec(), 3) or ("", "")
    assert reason == "ModelMismatch" and "other/model" in message and "org/model" in message
    assert status.verification_gate(raw, spec(), 4) is None  # checked for another generation


def test_gate_sha_against_pinned_or_cached_revision() -> None:
    pinned = spec(model={"id": "org/model", "revision": "b" * 40})
    raw = {"runtime": {"generation": 1, **info()}}
    reason, message = status.verification_gate(raw, pinned, 1) or ("", "")
    assert reason == "ModelMismatch" and SHA in message and "b" * 40 in message
    cached = {**raw, "cache": {"revision": "c" * 40, "phase": "Ready"}}
    assert (status.verification_gate(cached, spec(), 1) or ("",))[0] == "ModelMismatch"
    assert status.verification_gate(raw, spec(), 1) is None  # a branch: nothing to compare with
    # The reconcile's resolved id (a preset) is what is expected.
    assert status.verification_gate({**raw, "model": "org/model"}, spec(model={"preset": "x"}), 1) is None


def test_gate_probe_failed_only_for_gated_probes_of_this_generation() -> None:
    def raw(gate: bool, gen: int = 1) -> dict[str, Any]:
        r = result("policy-refusal", False, gate=gate).model_dump(by_alias=True)
        return {"probes": {"generation": gen, "results": [r]}}

    reason, message = status.verification_gate(raw(True), spec(), 1) or ("", "")
    assert reason == "ProbeFailed" and "policy-refusal" in message
    assert status.verification_gate(raw(False), spec(), 1) is None
    assert status.verification_gate(raw(True, gen=0), spec(), 1) is None
    assert status.verification_gate({}, spec(), 1) is None


def test_reconcile_status_model_ignores_the_probers_keys() -> None:
    full = {"observedGeneration": 1, "runtime": {"generation": 1, "modelId": "x"}, "probes": {"results": []}}
    st = ModelDeploymentStatus.model_validate(full)
    assert "runtime" not in st.model_dump(by_alias=True)


def test_a_backtracking_probe_regex_neither_hangs_nor_freezes_other_threads() -> None:
    """A probe's pattern is anyone's input (a spec, a shared ConfigMap). Python's `re` would
    hold the GIL for the whole match: every reconcile worker and kopf's loop would stop."""
    import threading

    bad = Probe.model_validate({"name": "p", "prompt": "q", "expect": "answer", "regex": r"^(a|aa)+$"})
    spins = 0
    done = threading.Event()

    def other_thread() -> None:
        nonlocal spins
        while not done.is_set():
            spins += 1

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        verdict = probes.evaluate(bad, "a" * 60 + "b")
    finally:
        done.set()
        t.join()
    assert not verdict.passed
    assert "simplify it" in verdict.message
    # The match ran for the whole timeout; a thread that only spins got the GIL meanwhile.
    assert spins > 1000


def test_an_info_failure_keeps_a_model_mismatch_hold() -> None:
    """One /info timeout must not flip Ready to True while the pods serve the wrong model."""
    s = spec()
    wrong = probes.build_status({}, probes.RunResult(2, "T1", info("other/model")), s, {})
    assert status.verification_gate(wrong, s, 2) is not None
    down = probes.build_status(
        wrong, probes.RunResult(2, "T2", None, probes.Failure("Unreachable", "timed out", True)), s, {}
    )
    assert down["runtime"]["reason"] == "Unreachable"
    assert down["runtime"]["modelId"] == "other/model" and down["runtime"]["checkedAt"] == "T1"
    gate = status.verification_gate(down, s, 2)
    assert gate is not None and gate[0] == "ModelMismatch"
    # Facts of an earlier generation's pods are not carried to a new one.
    fresh = probes.build_status(
        wrong, probes.RunResult(3, "T3", None, probes.Failure("Unreachable", "timed out", True)), s, {}
    )
    assert "modelId" not in fresh["runtime"]


def test_a_held_model_without_probes_is_checked_again() -> None:
    """Ready held on a mismatch: the prober looks again after the interval floor, or a fixed
    endpoint would never release it."""
    s = spec()
    body = {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "readyReplicas": 1,
            "conditions": [{"type": "Ready", "status": "False", "reason": "ModelMismatch"}],
        },
    }
    settings = probes.ProberSettings(min_interval_seconds=60)
    memo = probes.Memo(generation=2, last_run=1000.0)
    assert probes.due(body, s, memo, 1030.0, settings) is None
    assert probes.due(body, s, memo, 1061.0, settings) == "interval"
    body["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "Available"}]
    assert probes.due(body, s, memo, 5000.0, settings) is None  # nothing declared, nothing held
