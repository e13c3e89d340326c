"""Weight caches: names, sizes, the rendered PVC and Job, the status mapping and retention."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from modeldeploy import cache, prefetch, render
from modeldeploy.api import (
    AccessMode,
    Cache,
    ModelArchitecture,
    Quantize,
    Scheduling,
    SecretKeyRef,
    Toleration,
)
from modeldeploy.errors import SpecError

Obj = dict[str, Any]
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
SHA = "e0bc86c23ce5aae1db576c8cca6f06f1f73af2db"
IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"


# ---- names and sizes ------------------------------------------------------------------------


def test_cache_key_is_stable_short_and_revision_specific() -> None:
    key = cache.cache_key(MODEL, "main")
    assert key == cache.cache_key(MODEL, "main")
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert key != cache.cache_key(MODEL, SHA)
    assert key != cache.cache_key(MODEL.lower(), "main")


@pytest.mark.parametrize(
    ("model_id", "revision", "starts"),
    [
        (MODEL, "main", "mdcache-mistralai-mistral-7b-instruct-v0-3-"),
        ("gpt2", "main", "mdcache-gpt2-"),
        ("Org/Name.With_Odd--Chars", "v1", "mdcache-org-name-with-odd-chars-"),
        ("a" * 40 + "/" + "b" * 90, "main", "mdcache-" + "a" * 40 + "-bbbbb"),
        ("---/___", "main", "mdcache-"),
    ],
)
def test_claim_name_is_a_short_dns_label(model_id: str, revision: str, starts: str) -> None:
    name = cache.claim_name(model_id, revision)
    assert DNS1123_LABEL.match(name), name
    assert len(name) <= 63
    assert name.startswith(starts)
    assert name.endswith("-" + cache.cache_key(model_id, revision)[:8])


def test_claim_names_differ_by_revision() -> None:
    assert cache.claim_name(MODEL, "main") != cache.claim_name(MODEL, SHA)


def test_disk_weight_size_follows_the_published_format() -> None:
    bf16 = ModelArchitecture.model_validate(
        {"parametersBillions": 7.24, "numLayers": 32, "hiddenSize": 4096, "numAttentionHeads": 32,
         "numKeyValueHeads": 8, "maxPositionEmbeddings": 32768}
    )  # fmt: skip
    # 7.24e9 parameters * 2 bytes / 2**30 = 13.49 GiB
    assert cache.disk_weight_gib(bf16) == pytest.approx(13.486, abs=0.01)
    awq = bf16.model_copy(update={"quantization": Quantize.awq})
    # 0.5 bytes + 15% (scales, 16-bit embeddings): 7.24e9 * 0.575 / 2**30 = 3.88 GiB
    assert cache.disk_weight_gib(awq) == pytest.approx(3.877, abs=0.01)


@pytest.mark.parametrize(
    ("size", "weight_gib", "expected"),
    [
        ("auto", 13.49, "19Gi"),  # 13.49 * 1.2 + 2 = 18.19 -> 19
        ("auto", 130.0, "158Gi"),  # 130 * 1.2 + 2 = 158 exactly
        ("auto", 0.01, "3Gi"),
        ("200Gi", None, "200Gi"),
        ("500Mi", 13.0, "500Mi"),
    ],
)
def test_cache_size(size: str, weight_gib: float | None, expected: str) -> None:
    assert cache.cache_size(Cache(enabled=True, size=size), weight_gib) == expected


def test_auto_size_without_a_weight_estimate_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as err:
        cache.cache_size(Cache(enabled=True), None)
    assert err.value.field == "spec.cache.size"


# ---- PVC ------------------------------------------------------------------------------------


def test_pvc_shape() -> None:
    spec = Cache(enabled=True, storage_class_name="fast-rwx", retain=False)
    pvc = cache.render_pvc(MODEL, "main", "ml", spec, "19Gi")
    key = cache.cache_key(MODEL, "main")
    assert pvc["apiVersion"] == "v1" and pvc["kind"] == "PersistentVolumeClaim"
    meta = pvc["metadata"]
    assert meta["name"] == cache.claim_name(MODEL, "main")
    assert meta["namespace"] == "ml"
    assert meta["labels"][cache.CACHE_KEY_LABEL] == key
    assert meta["annotations"] == {
        cache.MODEL_ID_ANNOTATION: MODEL,
        cache.REVISION_ANNOTATION: "main",
        cache.RETAIN_ANNOTATION: "false",
    }
    assert "ownerReferences" not in meta
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "19Gi"}},
        "storageClassName": "fast-rwx",
    }


def test_pvc_without_storage_class_uses_the_cluster_default() -> None:
    pvc = cache.render_pvc(MODEL, "main", "ml", Cache(enabled=True, access_mode=AccessMode.rwo), "19Gi")
    assert "storageClassName" not in pvc["spec"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"][cache.RETAIN_ANNOTATION] == "true"


# ---- Job ------------------------------------------------------------------------------------


def _job(**kw: Any) -> Obj:
    return cache.render_job(MODEL, "main", "ml", image=IMAGE, **kw)


def _container(job: Obj) -> Obj:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_job_runs_the_embedded_prefetch_program_in_the_serving_image() -> None:
    job = _job()
    c = _container(job)
    assert c["image"] == IMAGE
    assert c["command"][:2] == ["python", "-c"]
    assert c["command"][2] == Path(prefetch.__file__).read_text(encoding="utf-8")
    assert c["args"] == [
        "--model-id", MODEL, "--revision", "main", "--cache-key", cache.cache_key(MODEL, "main"),
        "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HOME"] == "/data"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert "HF_ENDPOINT" not in env and "HF_TOKEN" not in env and "HF_HUB_OFFLINE" not in env


def test_job_pod_is_hardened() -> None:
    job = _job()
    pod = job["spec"]["template"]["spec"]
    c = _container(job)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    # The read-only root leaves /tmp (and HOME in it) writable, besides the volume.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/tmp" and "USER" not in env

    non_root = _job(security=render.PodSecurity(run_as_user=1000))
    pod = non_root["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    env = {e["name"]: e.get("value") for e in _container(non_root)["env"]}
    assert env["USER"] == "uid1000"
    # Another security context is another pod template: a failed Job may be replaced for it.
    ann = cache.JOB_HASH_ANNOTATION
    assert non_root["metadata"]["annotations"][ann] != job["metadata"]["annotations"][ann]


def test_job_settings() -> None:
    job = _job()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == cache.claim_name(MODEL, "main")
    assert "ownerReferences" not in meta
    assert meta["annotations"][cache.MODEL_ID_ANNOTATION] == MODEL
    assert meta["annotations"][cache.REVISION_ANNOTATION] == "main"
    assert spec["backoffLimit"] == 3
    assert spec["activeDeadlineSeconds"] == 6 * 3600
    assert "ttlSecondsAfterFinished" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": meta["name"]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    assert spec["template"]["metadata"]["labels"][cache.CACHE_KEY_LABEL] == cache.cache_key(MODEL, "main")
    resources = _container(job)["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert render.GPU_RESOURCE not in json.dumps(resources)


def test_pod_failure_policy_fails_at_once_on_causes_a_retry_cannot_fix() -> None:
    policy = _job()["spec"]["podFailurePolicy"]
    assert policy == {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "prefetch", "operator": "In", "values": [10, 11, 12, 14]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }
    # 13 (network and hub errors) is left to backoffLimit.
    assert prefetch.EXIT_OTHER not in policy["rules"][0]["onExitCodes"]["values"]


def test_token_only_as_a_secret_reference() -> None:
    job = _job(token_ref=SecretKeyRef(name="hf-token", key="hf_token"))
    (token,) = [e for e in _container(job)["env"] if e["name"] == "HF_TOKEN"]
    assert token == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "hf_token"}},
    }


def test_endpoint_and_scheduling() -> None:
    sched = Scheduling(
        node_selector={"zone": "a"},
        tolerations=[Toleration(key="dedicated", value="ml", effect="NoSchedule")],
        priority_class_name="batch-low",
    )
    aff: Obj = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    job = _job(hf_endpoint="https://hub.internal", scheduling=sched, affinity=aff)
    env = {e["name"]: e.get("value") for e in _container(job)["env"]}
    assert env["HF_ENDPOINT"] == "https://hub.internal"
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"zone": "a"}
    assert pod["priorityClassName"] == "batch-low"
    assert pod["affinity"] == aff
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_rendering_is_deterministic_and_yaml_safe() -> None:
    objs = [_job(), cache.render_pvc(MODEL, "main", "ml", Cache(enabled=True), "19Gi")]
    assert render.to_yaml(objs) == render.to_yaml([_job(), objs[1]])


def test_an_unfinished_job_is_replaced_only_when_its_inputs_changed() -> None:
    old = _job()
    old["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}
    assert not cache.should_replace_job(old, _job())
    assert cache.should_replace_job(old, _job(token_ref=SecretKeyRef(name="hf-token")))
    # A pod stuck on a missing Secret or an image it cannot pull: fixing the spec restarts it.
    stuck = _job()
    stuck_pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"name": "prefetch", "state": {"waiting": {"reason": "CreateContainerConfigError"}}}]}}  # fmt: skip
    fixed = _job(token_ref=SecretKeyRef(name="hf-token"))
    assert cache.should_replace_job(stuck, fixed, pods=[stuck_pod])
    assert not cache.should_replace_job(stuck, _job(), pods=[stuck_pod])
    # A download that is running is never interrupted.
    assert not cache.should_replace_job(stuck, fixed, pods=[{"metadata": {"name": "p"}, "status": {}}])


def test_models_sharing_a_cache_never_take_turns_deleting_its_job() -> None:
    stuck = _job()
    stuck["metadata"]["annotations"][cache.CREATED_FOR_ANNOTATION] = "a"
    stuck_pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"name": "prefetch", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}  # fmt: skip
    other = _job(token_ref=SecretKeyRef(name="b-token"))
    # b has other settings, but the stuck Job is a's while a uses the cache: b leaves it.
    assert not cache.should_replace_job(stuck, other, pods=[stuck_pod], requester="b", users=["a", "b"])
    assert cache.should_replace_job(stuck, other, pods=[stuck_pod], requester="a", users=["a", "b"])
    assert cache.should_replace_job(stuck, other, pods=[stuck_pod], requester="b", users=["b"])  # a is gone
    # A Job that failed for good (say, gated without a token) is tried again with b's token.
    failed = _job()
    failed["metadata"]["annotations"][cache.CREATED_FOR_ANNOTATION] = "a"
    failed["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    assert cache.should_replace_job(failed, other, requester="b", users=["a", "b"])
    assert not cache.should_replace_job(failed, _job(), requester="b", users=["a", "b"])


def test_a_completed_job_is_kept_unless_it_filled_another_volume() -> None:
    done = _job()
    done["metadata"]["annotations"][cache.CLAIM_UID_ANNOTATION] = "uid-1"
    done["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert not cache.should_replace_job(done, _job(token_ref=SecretKeyRef(name="hf-token")), "uid-1")
    # The claim was deleted and made anew (VolumeLost): the new volume is empty.
    assert cache.should_replace_job(done, _job(), "uid-2")


# ---- status ---------------------------------------------------------------------------------

CLAIM = cache.claim_name(MODEL, "main")


def pvc(phase: str = "Bound", sc: str | None = None, deleting: bool = False, capacity: str = "19Gi") -> Obj:
    obj = cache.render_pvc(MODEL, "main", "ml", Cache(enabled=True, storage_class_name=sc or ""), capacity)
    obj["status"] = {"phase": phase}
    if phase == "Bound":
        obj["status"]["capacity"] = {"storage": capacity}
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return obj


def job(failed: int = 0, token: bool = False, complete: bool = False) -> Obj:
    obj = _job(token_ref=SecretKeyRef(name="hf-token") if token else None)
    obj["status"] = {"failed": failed} if failed else {}
    if complete:
        obj["status"] |= {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    else:
        obj["status"]["active"] = 1
    return obj


def failed_job(
    reason: str = "PodFailurePolicy", failed: int = 1, message: str = "", token: bool = False
) -> Obj:
    obj = job(failed, token)
    del obj["status"]["active"]
    obj["status"]["conditions"] = [
        {"type": t, "status": "True", "reason": reason, "message": message}
        for t in ("FailureTarget", "Failed")
    ]
    return obj


def _pod(n: int, container: Obj, conditions: list[Obj] | None = None) -> Obj:
    status: Obj = {"containerStatuses": [{"name": "prefetch", **container}]}
    if conditions:
        status = {"conditions": conditions}
    return {"metadata": {"name": f"p{n}", "creationTimestamp": f"2025-01-01T00:00:0{n}Z"}, "status": status}


def running(n: int = 0) -> Obj:
    return _pod(n, {"state": {"running": {}}})


def ended(code: int, n: int = 0, raw: str | None = None, **summary: Any) -> Obj:
    """A pod whose prefetch container exited with `code`; its termination message is the JSON
    summary, or `raw` (as kubelet's log fallback gives it)."""
    text = json.dumps({"exitCode": code, **summary}) if raw is None else raw
    why = "Completed" if code == 0 else "Error"
    return _pod(n, {"state": {"terminated": {"exitCode": code, "message": text, "reason": why}}})


def waiting(reason: str, message: str) -> Obj:
    return _pod(0, {"state": {"waiting": {"reason": reason, "message": message}}})


def unschedulable(message: str) -> Obj:
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    return _pod(0, {}, [cond])


def event(message: str) -> Obj:
    when = "2025-01-01T00:00:00Z"
    return {"type": "Warning", "reason": "ProvisioningFailed", "message": message, "lastTimestamp": when}


GATED_NO_TOKEN = (
    f"model {MODEL} is gated or private and no usable token was given: set spec.model.tokenSecretRef "
    "to a Secret with a Hugging Face token that has access"
)
POLICY_MESSAGE = (
    "Container prefetch for pod ml/x-abc failed with exit code 10 matching FailJob rule at index 0"
)
GIB = 1024**3
STALLED = {"StorageClassNotFound", "NoDefaultStorageClass", "VolumeProvisioningFailed", "TokenSecretInvalid",
           "ImagePullFailed"}  # fmt: skip

STATUS_CASES: list[tuple[str, Obj, str, str, str]] = [
    # id, cache_status arguments, phase, reason, message fragment
    ("no pvc yet", {"pvc": None, "job": None}, "Pending", "CacheCreating", f"creating volume {CLAIM}"),
    ("pvc deleting", {"pvc": pvc(deleting=True), "job": job()}, "Pending", "VolumeTerminating", "deleted"),
    ("pvc lost", {"pvc": pvc("Lost"), "job": job()}, "Failed", "VolumeLost", "delete the PVC"),
    (
        "storage class missing",
        {"pvc": pvc("Pending", sc="fast"), "job": job(), "storage_class_exists": False},
        "Pending", "StorageClassNotFound",
        "storageClassName 'fast' not found: create it or set spec.cache.storageClassName",
    ),
    (
        "storage class missing, seen in events",
        {"pvc": pvc("Pending", sc="fast"), "job": job(),
         "events": [event('storageclass.storage.k8s.io "fast" not found')]},
        "Pending", "StorageClassNotFound", "storageClassName 'fast' not found",
    ),
    (
        "no default storage class",
        {"pvc": pvc("Pending"), "job": job(), "storage_class_exists": False},
        "Pending", "NoDefaultStorageClass", "set spec.cache.storageClassName",
    ),
    (
        "provisioner error",
        {"pvc": pvc("Pending", sc="fast"), "job": job(), "storage_class_exists": True,
         "events": [event("rpc error: quota exceeded")]},
        "Pending", "VolumeProvisioningFailed", "quota exceeded",
    ),
    (
        "provisioning (waits for the Job's pod)",
        {"pvc": pvc("Pending", sc="fast"), "job": job(), "pods": [running()], "storage_class_exists": True},
        "Pending", "VolumeProvisioning", f"waiting for volume {CLAIM}",
    ),
    ("bound, no job yet", {"pvc": pvc(), "job": None}, "Pending", "PrefetchStarting", f"{MODEL}@main"),
    (
        "downloading",
        {"pvc": pvc(), "job": job(), "pods": [running()]},
        "Downloading", "Downloading", f"downloading {MODEL}@main into {CLAIM}",
    ),
    (
        "downloading, with progress from the pod's log",
        {"pvc": pvc(), "job": job(), "pods": [running()], "progress": "7.2 GiB of 14.5 GiB (50%), 98.1 MB/s"},
        "Downloading", "Downloading", f"into {CLAIM}: 7.2 GiB of 14.5 GiB (50%)",
    ),
    (
        "downloading, second attempt",
        {"pvc": pvc(), "job": job(failed=1), "pods": [ended(13, message="connection reset"), running(1)]},
        "Downloading", "Downloading", "attempt 2 of 4; last error: connection reset",
    ),
    (
        "token secret missing",
        {"pvc": pvc(), "job": job(token=True),
         "pods": [waiting("CreateContainerConfigError", 'secret "hf-token" not found')]},
        "Pending", "TokenSecretInvalid", 'secret "hf-token" not found: check spec.model.tokenSecretRef',
    ),
    (
        "image pull",
        {"pvc": pvc(), "job": job(), "pods": [waiting("ImagePullBackOff", "back-off pulling")]},
        "Pending", "ImagePullFailed", "ImagePullBackOff",
    ),
    (
        "unschedulable",
        {"pvc": pvc(), "job": job(), "pods": [unschedulable("0/3 nodes are available: Insufficient cpu")]},
        "Pending", "PrefetchUnschedulable", "Insufficient cpu",
    ),
    (
        "ready",
        {"pvc": pvc(), "job": job(complete=True), "pods": [ended(0, commit=SHA, bytes=15 * GIB, files=9)]},
        "Ready", "CacheReady", f"{MODEL}@main is cached in {CLAIM} (commit {SHA[:12]}, 15.0 GiB)",
    ),
    (
        "gated, no token",
        {"pvc": pvc(), "job": failed_job(), "pods": [ended(10, error="GatedRepo", message="gated")]},
        "Failed", "GatedModel", GATED_NO_TOKEN,
    ),
    (
        "gated, token without access",
        {"pvc": pvc(), "job": failed_job(token=True), "pods": [ended(10, error="GatedRepo")]},
        "Failed", "GatedModel", "token in Secret hf-token (key token) was refused or has no access",
    ),
    (
        "gated, pods gone: exit code from the Job condition",
        {"pvc": pvc(), "job": failed_job(message=POLICY_MESSAGE)},
        "Failed", "GatedModel", GATED_NO_TOKEN,
    ),
    (
        "unknown repo",
        {"pvc": pvc(), "job": failed_job(), "pods": [ended(11, error="RepositoryNotFound")]},
        "Failed", "ModelNotFound", f"model {MODEL} was not found on the Hub (or it is private",
    ),
    (
        "unknown revision",
        {"pvc": pvc(), "job": failed_job(), "pods": [ended(11, error="RevisionNotFound")]},
        "Failed", "ModelNotFound", f"model {MODEL} has no revision 'main': check spec.model.revision",
    ),
    (
        "volume too small",
        {"pvc": pvc(capacity="10Gi"), "job": failed_job(),
         "pods": [ended(12, error="NoSpace", needBytes=14 * GIB + 1)]},
        "Failed", "VolumeTooSmall",
        f"model {MODEL}@main needs ~15 GiB but volume {CLAIM} (10Gi) is too small: "
        "set spec.cache.size to at least 19Gi",
    ),
    (
        "no weights",
        {"pvc": pvc(), "job": failed_job(), "pods": [ended(14, error="NoWeights")]},
        "Failed", "NoWeights", "TGI cannot serve it",
    ),
    (
        "network errors until the backoff limit",
        {"pvc": pvc(), "job": failed_job("BackoffLimitExceeded", 4),
         "pods": [ended(13, n=i, error="ConnectError", message=f"reset {i}") for i in range(4)]},
        "Failed", "DownloadFailed", f"downloading {MODEL}@main failed after 4 attempts: reset 3",
    ),
    (
        "killed for memory",
        {"pvc": pvc(), "job": failed_job("BackoffLimitExceeded", 4), "pods": [ended(137, raw="")]},
        "Failed", "DownloadFailed", "failed after 4 attempts: Error",
    ),
    (
        "deadline",
        {"pvc": pvc(), "job": failed_job("DeadlineExceeded", 0, "Job was active longer than deadline")},
        "Failed", "PrefetchTimedOut", "did not finish within 6 h",
    ),
    (
        "prefetch off, bound",
        {"pvc": pvc(), "job": None, "prefetch": False},
        "Ready", "VolumeBound", "the first pod downloads",
    ),
    (
        "prefetch off, pending",
        {"pvc": pvc("Pending"), "job": None, "prefetch": False},
        "Pending", "VolumeProvisioning", f"waiting for volume {CLAIM}",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "phase", "reason", "fragment"), [c[1:] for c in STATUS_CASES],
                         ids=[c[0] for c in STATUS_CASES])  # fmt: skip
def test_cache_status(kwargs: Obj, phase: str, reason: str, fragment: str) -> None:
    kw = dict(kwargs)
    verdict = cache.cache_status(CLAIM, kw.pop("pvc"), kw.pop("job"), kw.pop("pods", ()), **kw)
    status, got_reason, message = verdict.status, verdict.reason, verdict.message
    assert (status.phase, got_reason) == (phase, reason), message
    assert fragment in message
    assert status.claim_name == CLAIM
    assert status.message == message
    assert verdict.ready == (phase == "Ready")
    assert verdict.stalled == (phase == "Failed" or reason in STALLED)


def test_ready_reports_the_resolved_commit() -> None:
    verdict = cache.cache_status(CLAIM, pvc(), job(complete=True), [ended(0, commit=SHA, bytes=1)])
    assert verdict.status.revision == SHA
    assert verdict.status.model_dump(by_alias=True)["claimName"] == CLAIM


def test_ready_with_bin_weights_says_so() -> None:
    verdict = cache.cache_status(CLAIM, pvc(), job(complete=True), [ended(0, commit=SHA, format="bin")])
    assert verdict.ready and "TGI converts at start-up" in verdict.message


def test_every_exit_code_the_job_fails_on_has_its_own_reason() -> None:
    reasons = set()
    for code in prefetch.FATAL_EXIT_CODES:
        verdict = cache.cache_status(CLAIM, pvc(), failed_job(), [ended(code)])
        reasons.add(verdict.reason)
    assert reasons == {"GatedModel", "ModelNotFound", "VolumeTooSmall", "NoWeights"}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (json.dumps({"commit": SHA, "bytes": 3}), {"commit": SHA, "bytes": 3}),
        ("some log line\nmore\n" + '{"exitCode":13,"error":"X","message":"m"}',
         {"exitCode": 13, "error": "X", "message": "m"}),
        (SHA + "\n", {"commit": SHA}),
        ("Traceback ...\nKeyError: 'x'", {"message": "Traceback ...\nKeyError: 'x'"}),
        ("", {}),
    ],
)  # fmt: skip
def test_termination_summary(message: str, expected: Obj) -> None:
    assert cache.termination_summary(message) == expected


# ---- sharing and retention ------------------------------------------------------------------


def md(name: str, model: Obj, cache_spec: Obj | None = None, deleting: bool = False) -> Obj:
    meta: Obj = {"name": name, "namespace": "ml"}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    spec: Obj = {"model": model}
    if cache_spec is not None:
        spec["cache"] = cache_spec
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": meta,
        "spec": spec,
    }


KEY = cache.cache_key(MODEL, "main")
ON = {"enabled": True}
MODELS = [
    md("a", {"id": MODEL}, ON),
    md("b", {"id": MODEL, "revision": "main"}, {"enabled": True, "retain": False}),
    md("c", {"id": MODEL, "revision": SHA}, ON),  # another revision: another cache
    md("d", {"id": MODEL}, {"enabled": False}),  # no cache
    md("e", {"id": MODEL}),  # cache off by default
    md("f", {"id": MODEL}, ON, deleting=True),  # going away
    md("g", {"preset": "no-such-preset"}, ON),
]


def test_users_of_a_cache() -> None:
    assert cache.users(MODELS, KEY) == ["a", "b"]
    assert cache.users(MODELS, cache.cache_key(MODEL, SHA)) == ["c"]
    assert cache.users([], KEY) == []


def test_presets_resolve_to_their_model_id() -> None:
    from modeldeploy.catalog import list_presets

    preset = list_presets()[0]
    body = md("p", {"preset": preset.name}, ON)
    assert cache.model_ref(body) == (preset.id, "main")
    assert cache.users([body], cache.cache_key(preset.id, "main")) == ["p"]


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        (MODELS, True),  # a keeps it (retain defaults to true)
        ([MODELS[1]], False),
        ([], None),
    ],
)
def test_desired_retain(models: list[Obj], expected: bool | None) -> None:
    assert cache.desired_retain(models, KEY) is expected


@pytest.mark.parametrize(
    ("retain", "users", "deleting", "expected"),
    [
        ("false", [], False, True),
        ("false", ["a"], False, False),
        ("true", [], False, False),
        (None, [], False, False),  # no annotation: keep, the safe side
        ("false", [], True, False),  # already going
    ],
)
def test_should_delete(retain: str | None, users: list[str], deleting: bool, expected: bool) -> None:
    claim = pvc(deleting=deleting)
    if retain is None:
        del claim["metadata"]["annotations"][cache.RETAIN_ANNOTATION]
    else:
        claim["metadata"]["annotations"][cache.RETAIN_ANNOTATION] = retain
    assert cache.should_delete(claim, users) is expected
    assert cache.should_delete(None, []) is False


def test_what_a_claim_cannot_take_is_said_not_ignored() -> None:
    pvc = cache.render_pvc(MODEL, "main", "ml", Cache(enabled=True, access_mode="ReadWriteOnce"), "20Gi")
    asked = Cache(enabled=True, access_mode="ReadWriteMany", size="10Gi")
    notes = " | ".join(cache.drift(asked, pvc))
    assert "spec.cache.accessMode ReadWriteMany differs from the volume's ReadWriteOnce" in notes
    assert "spec.cache.size 10Gi is below the volume's 20Gi" in notes
    assert not cache.grows(asked, pvc)
    assert cache.grows(Cache(enabled=True, size="30Gi"), pvc)
    assert not cache.grows(Cache(enabled=True, size="auto"), pvc)
    assert cache.drift(Cache(enabled=True, access_mode="ReadWriteOnce", size="20Gi"), pvc) == []


def test_a_job_that_ran_out_of_space_goes_again_once_the_volume_grew() -> None:
    failed = _job()
    failed["metadata"]["annotations"][cache.CLAIM_SIZE_ANNOTATION] = "20Gi"
    failed["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    grown = _job()
    grown["metadata"]["annotations"][cache.CLAIM_SIZE_ANNOTATION] = "40Gi"
    assert cache.should_replace_job(failed, grown)
    same = _job()
    same["metadata"]["annotations"][cache.CLAIM_SIZE_ANNOTATION] = "20Gi"
    assert not cache.should_replace_job(failed, same)


# ---- progress from the prefetch pod's log (opt-in) --------------------------------------------


class _LogKube:
    """A Kube stand-in that records which pod logs were asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def pod_log_tail(self, namespace: str, name: str, container: str, lines: int) -> str:
        self.asked.append((namespace, name))
        return "starting\nprogress: 7.2 GiB of 14.5 GiB (50%)\n"


def test_prefetch_progress_is_read_only_where_allowed() -> None:
    from modeldeploy.cache_sync import CacheSync
    from modeldeploy.settings import Settings

    running = [{"metadata": {"name": "p"}, "status": {"phase": "Running"}}]
    kube = _LogKube()
    # Default: the operator holds no pods/log power and never asks.
    assert CacheSync(kube, Settings())._progress("ml", running) == ""  # type: ignore[arg-type]
    assert kube.asked == []
    allowed = CacheSync(kube, Settings(prefetch_log_namespaces=("ml",)))  # type: ignore[arg-type]
    assert allowed._progress("other", running) == ""
    assert allowed._progress("ml", running) == "7.2 GiB of 14.5 GiB (50%)"
    assert kube.asked == [("ml", "p")]
