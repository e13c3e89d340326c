"""Model-weight caches: one PersistentVolumeClaim per (model id, revision) per namespace, filled
once by a prefetch Job and mounted read-only by every ModelDeployment serving that revision.

Pure functions, no I/O. The PVC and the Job have no ownerReferences: several ModelDeployments
share them, so they are found by the cache-key label and their lifetime is decided by
`users` and `should_delete`. The Job runs `prefetch.py`'s source in the TGI image (see there for
the files fetched and the exit codes), and `cache_status` turns the PVC, the Job and its pods into
a CacheStatus with a condition reason and a message that says what to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from importlib import resources
from typing import Any, NamedTuple

from kubernetes.utils import parse_quantity

from modeldeploy import FIELD_MANAGER, GROUP, planner, render, tgi
from modeldeploy import prefetch as program
from modeldeploy.api import Cache, CacheStatus, ModelArchitecture, Scheduling, SecretKeyRef
from modeldeploy.catalog import CatalogError, get_preset
from modeldeploy.errors import SpecError

Obj = dict[str, Any]

CACHE_KEY_LABEL = f"{GROUP}/cache-key"
MODEL_ID_ANNOTATION = f"{GROUP}/model-id"
REVISION_ANNOTATION = f"{GROUP}/revision"
RETAIN_ANNOTATION = f"{GROUP}/retain"
JOB_HASH_ANNOTATION = f"{GROUP}/prefetch-hash"
CLAIM_UID_ANNOTATION = f"{GROUP}/claim-uid"  # the volume a prefetch Job fills
CLAIM_SIZE_ANNOTATION = f"{GROUP}/claim-size"  # its requested size when the Job was made
CREATED_FOR_ANNOTATION = f"{GROUP}/created-for"  # the model whose settings the Job runs with

CONTAINER = "prefetch"
VOLUME = "data"
MOUNT_PATH = tgi.DATA_DIR  # HF_HOME, as in the serving pods
TERMINATION_LOG = "/dev/termination-log"
BACKOFF_LIMIT = 3
ACTIVE_DEADLINE_SECONDS = 6 * 3600  # ~1 TB at 50 MB/s; a stuck download must end some time
CPU_REQUEST = "1"
MEMORY = "2Gi"

# size "auto": weights on disk, plus 20% and 2 GiB for tokenizer, configs and filesystem overhead.
HEADROOM_FACTOR = 1.2
HEADROOM_GIB = 2.0
GIB = 1024**3

_NAME_PREFIX = "mdcache"
_NAME_MAX = 63


# ---- names and sizes ------------------------------------------------------------------------


def cache_key(model_id: str, revision: str) -> str:
    """Stable key of (model id, revision): 16 hex digits, usable as a label value."""
    return hashlib.sha256(f"{model_id}@{revision}".encode()).hexdigest()[:16]


def claim_name(model_id: str, revision: str) -> str:
    """mdcache-<slug of the id>-<8 hex of the key>: a DNS-1123 label of at most 63 characters.

    The Job has the same name. The hash part keeps names of different revisions (and of ids that
    slug alike) apart.
    """
    suffix = cache_key(model_id, revision)[:8]
    room = _NAME_MAX - len(_NAME_PREFIX) - len(suffix) - 2
    slug = re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")[:room].strip("-")
    return f"{_NAME_PREFIX}-{slug}-{suffix}" if slug else f"{_NAME_PREFIX}-{suffix}"


def labels(key: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "model-cache",
        "app.kubernetes.io/component": "weight-cache",
        "app.kubernetes.io/part-of": "modeldeploy",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        CACHE_KEY_LABEL: key,
    }


def selector_string(key: str) -> str:
    """Label selector for the PVC, the Job and the Job's pods of one cache."""
    return f"{CACHE_KEY_LABEL}={key}"


def disk_weight_gib(arch: ModelArchitecture) -> float:
    """Size of the published weights: pre-quantized at their method's width, else 16-bit."""
    return arch.parameters_billions * 1e9 * planner.weight_bytes_per_parameter(arch.quantization) / GIB


def _with_headroom(gib: float) -> int:
    return math.ceil(gib * HEADROOM_FACTOR + HEADROOM_GIB)


def cache_size(cache: Cache, weight_gib: float | None) -> str:
    """The PVC request: spec.cache.size, or for "auto" the weights with headroom, in whole GiB."""
    if cache.size != "auto":
        return cache.size
    if weight_gib is None:
        raise SpecError(
            "spec.cache.size",
            "auto needs the model's size, which is not known for this model: "
            "set spec.cache.size (e.g. 100Gi) or spec.model.architecture",
        )
    return f"{_with_headroom(weight_gib)}Gi"


# ---- rendering ------------------------------------------------------------------------------


def _meta(model_id: str, revision: str, namespace: str, extra: Mapping[str, str] | None = None) -> Obj:
    key = cache_key(model_id, revision)
    annotations = {MODEL_ID_ANNOTATION: model_id, REVISION_ANNOTATION: revision, **(extra or {})}
    return {
        "name": claim_name(model_id, revision),
        "namespace": namespace,
        "labels": labels(key),
        "annotations": annotations,
    }


def render_pvc(model_id: str, revision: str, namespace: str, cache: Cache, size: str) -> Obj:
    """The cache's PVC (no ownerReferences: shared). `size` comes from cache_size."""
    meta = _meta(model_id, revision, namespace, {RETAIN_ANNOTATION: "true" if cache.retain else "false"})
    spec: Obj = {
        "accessModes": [cache.access_mode.value],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": size}},
    }
    if cache.storage_class_name:
        # Left out (not "") when unset: "" would mean "no class" and disable the cluster default.
        spec["storageClassName"] = cache.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


@functools.cache
def prefetch_source() -> str:
    """The prefetch program's source, run with `python -c` (the TGI image lacks this package)."""
    return resources.files("modeldeploy").joinpath("prefetch.py").read_text(encoding="utf-8")


def _env(hf_endpoint: str, token_ref: SecretKeyRef | None) -> list[Obj]:
    env: list[Obj] = [
        {"name": "HF_HOME", "value": MOUNT_PATH},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "HF_HUB_DISABLE_PROGRESS_BARS", "value": "1"},
        # Keep hf_xet's chunk cache (up to 10 GB by default) off the volume.
        {"name": "HF_XET_CHUNK_CACHE_SIZE_BYTES", "value": "0"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if hf_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": hf_endpoint})
    if token_ref is not None:
        # Only a reference: the token value never passes through the operator.
        ref = {"name": token_ref.name, "key": token_ref.key}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    return env


def render_job(
    model_id: str,
    revision: str,
    namespace: str,
    *,
    image: str,
    hf_endpoint: str = "",
    token_ref: SecretKeyRef | None = None,
    scheduling: Scheduling | None = None,
    affinity: Obj | None = None,
    security: render.PodSecurity | None = None,
) -> Obj:
    """The prefetch Job (no ownerReferences: shared; no TTL: the operator reads its status).

    `scheduling` and `affinity` (the first user's) matter for zonal ReadWriteOnce volumes: the
    volume is provisioned where the Job's pod lands, so that should be where the GPU nodes are.
    """
    key = cache_key(model_id, revision)
    security = security or render.PodSecurity()
    tmp, tmp_mount = render.tmp_volume()
    container: Obj = {
        "name": CONTAINER,
        "image": image,
        "command": ["python", "-c", prefetch_source()],
        "args": [
            "--model-id", model_id,
            "--revision", revision,
            "--cache-key", key,
            "--termination-log", TERMINATION_LOG,
        ],
        "env": _env(hf_endpoint, token_ref) + security.env(),
        "resources": {"requests": {"cpu": CPU_REQUEST, "memory": MEMORY}, "limits": {"memory": MEMORY}},
        "volumeMounts": [{"name": VOLUME, "mountPath": MOUNT_PATH}, tmp_mount],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": security.container(),
    }  # fmt: skip
    # It uses no GPU, but may run on a GPU node (where a zonal volume then lands).
    tolerations: list[Obj] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        # It talks to the Hub only; the token it may hold is the model's, never an API token.
        "automountServiceAccountToken": False,
        "securityContext": security.pod(),
        "containers": [container],
        "volumes": [
            {"name": VOLUME, "persistentVolumeClaim": {"claimName": claim_name(model_id, revision)}},
            tmp,
        ],
    }
    if scheduling is not None:
        for t in scheduling.tolerations:
            tol = t.model_dump(by_alias=True, exclude_defaults=True)
            tol["operator"] = t.operator
            tolerations.append(tol)
        if scheduling.node_selector:
            pod_spec["nodeSelector"] = dict(sorted(scheduling.node_selector.items()))
        if scheduling.priority_class_name:
            pod_spec["priorityClassName"] = scheduling.priority_class_name
    pod_spec["tolerations"] = tolerations
    if affinity:
        pod_spec["affinity"] = affinity
    template: Obj = {"metadata": {"labels": labels(key)}, "spec": pod_spec}
    spec: Obj = {
        "backoffLimit": BACKOFF_LIMIT,
        "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
        "podFailurePolicy": {
            "rules": [
                # Gated, not found, too small, no weights: another try gives the same answer.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(program.FATAL_EXIT_CODES),
                    },
                },
                # Evictions and preemptions are not the download's fault: not counted.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": template,
    }
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    meta = _meta(model_id, revision, namespace, {JOB_HASH_ANNOTATION: digest})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def should_replace_job(
    existing: Obj,
    desired: Obj,
    claim_uid: str = "",
    pods: Sequence[Obj] = (),
    requester: str = "",
    users: Sequence[str] = (),
) -> bool:
    """Whether `requester` (a model using the cache) deletes the prefetch Job to start over.

    - A Job that filled another volume (its claim was deleted and made anew, e.g. after
      VolumeLost) says nothing about this one: replaced.
    - A completed download is done, whatever changed since: kept.
    - A Job that failed is replaced by a user whose inputs differ (a token added, another image
      or toleration, a volume grown after it ran out of space): a failure takes a whole attempt,
      so two users with different settings cannot loop fast.
    - A Job whose pod cannot start (a missing token Secret, an image it cannot pull, nowhere to
      schedule) is replaced on changed inputs only by the model it was made for, or by another
      user once that model no longer uses the cache: two models that share a cache never take
      turns deleting each other's Job. A download that is running is never interrupted."""
    meta = existing.get("metadata", {})
    have = meta.get("annotations") or {}
    filled = have.get(CLAIM_UID_ANNOTATION)
    if claim_uid and filled and filled != claim_uid:
        return True
    if _job_condition(existing, "Complete", "SuccessCriteriaMet") is not None:
        return False
    want = desired.get("metadata", {}).get("annotations") or {}
    changed = any(
        have.get(k) != want.get(k) for k in (JOB_HASH_ANNOTATION, CLAIM_SIZE_ANNOTATION) if k in want
    )
    if not changed:
        return False
    if _job_condition(existing, "Failed", "FailureTarget") is not None:
        return True  # finished, failed: any user with other settings may try its own
    if _pod_problem(pods) is None:
        return False
    owner = have.get(CREATED_FOR_ANNOTATION, "")
    return not owner or owner == requester or owner not in users


def _quantity(text: str) -> Decimal:
    return Decimal(parse_quantity(text))  # type: ignore[no-untyped-call]


def requested(pvc: Obj) -> str:
    return str(((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", ""))


def grows(cache: Cache, pvc: Obj) -> bool:
    """Whether spec.cache.size asks for more than the claim requests (a claim only grows)."""
    have = requested(pvc)
    if cache.size == "auto" or not have:
        return False
    return bool(_quantity(cache.size) > _quantity(have))


def drift(cache: Cache, pvc: Obj) -> list[str]:
    """What the spec asks of the cache that the existing claim cannot take (claims are mostly
    immutable): said in the cache's message, never a reason to stop serving."""
    spec = pvc.get("spec") or {}
    name = (pvc.get("metadata") or {}).get("name", "")
    fix = f"delete PersistentVolumeClaim {name} (and Job {name}) to have it made anew"
    notes = []
    modes = spec.get("accessModes") or []
    if modes and cache.access_mode.value not in modes:
        notes.append(
            f"spec.cache.accessMode {cache.access_mode.value} differs from the volume's {modes[0]}: {fix}"
        )
    sc = spec.get("storageClassName")
    if cache.storage_class_name and sc and cache.storage_class_name != sc:
        notes.append(
            f"spec.cache.storageClassName {cache.storage_class_name} differs from the volume's {sc}: {fix}"
        )
    have = requested(pvc)
    if cache.size != "auto" and have and _quantity(cache.size) < _quantity(have):
        notes.append(f"spec.cache.size {cache.size} is below the volume's {have}: a volume never shrinks")
    return notes


# ---- status ---------------------------------------------------------------------------------


class Reason(StrEnum):
    """Condition reasons for the cache; the phase each comes with is in cache_status."""

    creating = "CacheCreating"
    volume_terminating = "VolumeTerminating"
    volume_lost = "VolumeLost"
    storage_class_not_found = "StorageClassNotFound"
    no_default_storage_class = "NoDefaultStorageClass"
    provisioning_failed = "VolumeProvisioningFailed"
    provisioning = "VolumeProvisioning"
    prefetch_starting = "PrefetchStarting"
    prefetch_unschedulable = "PrefetchUnschedulable"
    token_secret_invalid = "TokenSecretInvalid"
    image_pull_failed = "ImagePullFailed"
    downloading = "Downloading"
    ready = "CacheReady"
    volume_bound = "VolumeBound"
    gated_model = "GatedModel"
    model_not_found = "ModelNotFound"
    volume_too_small = "VolumeTooSmall"
    no_weights = "NoWeights"
    download_failed = "DownloadFailed"
    timed_out = "PrefetchTimedOut"


STALLED = frozenset(
    {
        Reason.volume_lost, Reason.storage_class_not_found, Reason.no_default_storage_class,
        Reason.provisioning_failed, Reason.token_secret_invalid, Reason.image_pull_failed,
        Reason.gated_model, Reason.model_not_found, Reason.volume_too_small, Reason.no_weights,
        Reason.download_failed, Reason.timed_out,
    }
)  # fmt: skip
"""Reasons that will not clear without someone changing something."""

_EXIT_REASONS = {
    program.EXIT_ACCESS: Reason.gated_model,
    program.EXIT_NOT_FOUND: Reason.model_not_found,
    program.EXIT_NO_SPACE: Reason.volume_too_small,
    program.EXIT_NO_WEIGHTS: Reason.no_weights,
}
_IMAGE_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")


class CacheVerdict(NamedTuple):
    status: CacheStatus
    reason: str
    message: str
    # The weights are .bin only: TGI converts them to safetensors next to them at start-up, so
    # the serving pods need the volume writable.
    bin_only: bool = False

    @property
    def ready(self) -> bool:
        return self.status.phase == "Ready"

    @property
    def stalled(self) -> bool:
        """True when waiting will not help: report Stalled=True with this reason."""
        return self.reason in STALLED


def mount(verdict: CacheVerdict, prefetch: bool) -> render.CacheMount:
    """How serving pods mount a ready cache. Without prefetch the first pod downloads into it,
    and .bin-only weights are converted to safetensors by TGI at start-up next to them: both
    need the volume writable. Otherwise it is read-only."""
    return render.CacheMount(verdict.status.claim_name, prefetched=prefetch, writable=verdict.bin_only)


def _verdict(claim: str, phase: str, reason: Reason, message: str, revision: str = "") -> CacheVerdict:
    status = CacheStatus.model_validate(
        {"claimName": claim, "phase": phase, "revision": revision, "message": message}
    )
    return CacheVerdict(status, reason.value, message)


def _job_condition(job: Obj, *types: str) -> Obj | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in types and c.get("status") == "True":
            return dict(c)
    return None


def _newest(objs: Iterable[Obj]) -> list[Obj]:
    return sorted(objs, key=lambda o: (o.get("metadata") or {}).get("creationTimestamp") or "", reverse=True)


def _terminated(pod: Obj) -> Obj | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            state = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            return dict(state) if state else None
    return None


def prefetch_summary(pod: Obj) -> Obj:
    """The summary a finished prefetch pod left in its termination message ({} if none)."""
    state = _terminated(pod)
    if not state or state.get("exitCode") != 0:
        return {}
    return termination_summary(str(state.get("message") or ""))


def termination_summary(message: str) -> Obj:
    """The prefetch program's JSON summary from a termination message (or the log tail)."""
    text = (message or "").strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        if candidate.startswith("{"):
            try:
                parsed = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed
    if re.fullmatch(r"[0-9a-f]{40}", text):
        return {"commit": text}
    return {"message": text[-500:]} if text else {}


def _failure(job: Obj, pods: Sequence[Obj]) -> tuple[int | None, Obj]:
    """(exit code, summary) of the failed attempt that decided the Job's fate."""
    for pod in _newest(pods):
        term = _terminated(pod)
        if term and term.get("exitCode", 0) != 0:
            summary = termination_summary(term.get("message", ""))
            if term.get("reason") and "message" not in summary:
                summary["message"] = str(term["reason"])
            return int(term["exitCode"]), summary
    cond = _job_condition(job, "Failed", "FailureTarget") or {}
    m = re.search(r"failed with exit code (\d+)", cond.get("message", ""))
    return (int(m[1]) if m else None), {}


def _token_ref(job: Obj) -> Obj | None:
    for c in ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
        for e in c.get("env") or []:
            if e.get("name") == "HF_TOKEN":
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                return dict(ref) if ref else None
    return None


def _capacity(pvc: Obj) -> str:
    cap = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
    return str(
        cap or ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "?")
    )


def _failed_verdict(
    claim: str, pvc: Obj, job: Obj, pods: Sequence[Obj], model: str, rev: str
) -> CacheVerdict:
    cond = _job_condition(job, "Failed", "FailureTarget") or {}
    code, summary = _failure(job, pods)
    detail = str(summary.get("message", "")).strip()
    if cond.get("reason") == "DeadlineExceeded" and code not in _EXIT_REASONS:
        hours = int((job.get("spec") or {}).get("activeDeadlineSeconds") or ACTIVE_DEADLINE_SECONDS) / 3600
        msg = f"downloading {model}@{rev} did not finish within {hours:g} h"
        return _verdict(
            claim, "Failed", Reason.timed_out, msg + (f" (last error: {detail})" if detail else "")
        )
    reason = _EXIT_REASONS.get(code or 0, Reason.download_failed)
    ref = _token_ref(job)
    if reason is Reason.gated_model:
        if ref is None:
            msg = (
                f"model {model} is gated or private and no usable token was given: set "
                "spec.model.tokenSecretRef to a Secret with a Hugging Face token that has access"
            )
        else:
            msg = (
                f"model {model}: the Hugging Face token in Secret {ref.get('name')} (key {ref.get('key')}) "
                f"was refused or has no access ({detail or 'gated or private'}): accept the model's terms on "
                "its Hub page with the token's account (then delete Job "
                f"{claim} to try again), or set spec.model.tokenSecretRef to another token"
            )
    elif reason is Reason.model_not_found:
        if summary.get("error") == "RevisionNotFound":
            msg = f"model {model} has no revision {rev!r}: check spec.model.revision"
        else:
            private = "" if ref is not None else " (or it is private: set spec.model.tokenSecretRef)"
            msg = f"model {model} was not found on the Hub{private}: check spec.model.id"
    elif reason is Reason.volume_too_small:
        need = summary.get("needBytes")
        if isinstance(need, int) and need > 0:
            need_gib = need / GIB
            msg = (
                f"model {model}@{rev} needs ~{math.ceil(need_gib)} GiB but volume {claim} ({_capacity(pvc)}) "
                f"is too small: set spec.cache.size to at least {_with_headroom(need_gib)}Gi"
            )
        else:
            msg = (
                f"volume {claim} ({_capacity(pvc)}) ran out of space for {model}@{rev}: raise spec.cache.size"
            )
    elif reason is Reason.no_weights:
        msg = f"model {model}@{rev} has no safetensors or .bin weights at its top level: TGI cannot serve it"
    else:
        attempts = int((job.get("status") or {}).get("failed") or 0)
        why = detail or (f"exit code {code}" if code is not None else cond.get("message", "unknown error"))
        msg = (
            f"downloading {model}@{rev} failed after {attempts} attempt{'s' if attempts != 1 else ''}: {why}"
            f" (delete Job {claim} to try again)"
        )
    return _verdict(claim, "Failed", reason, msg)


def _pod_problem(pods: Sequence[Obj]) -> tuple[Reason, str] | None:
    for pod in _newest(pods)[:1]:
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            why, detail = waiting.get("reason", ""), waiting.get("message", "")
            if why == "CreateContainerConfigError":
                return Reason.token_secret_invalid, (
                    f"the prefetch pod cannot start: {detail or why}: check spec.model.tokenSecretRef"
                )
            if why in _IMAGE_PULL:
                return (
                    Reason.image_pull_failed,
                    f"the prefetch pod cannot pull its image: {why}: {detail}".rstrip(": "),
                )
        for c in status.get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                return (
                    Reason.prefetch_unschedulable,
                    f"the prefetch pod cannot be scheduled: {c.get('message', '')}",
                )
    return None


def _provisioning_failure(events: Sequence[Obj]) -> str:
    def when(e: Obj) -> str:
        return str(
            e.get("lastTimestamp")
            or e.get("eventTime")
            or (e.get("metadata") or {}).get("creationTimestamp")
            or ""
        )

    failed = [e for e in events if e.get("reason") == "ProvisioningFailed"]
    if not failed:
        return ""
    newest = max(failed, key=when)
    return str(newest.get("message") or newest.get("note") or "")


def cache_status(
    claim: str,
    pvc: Obj | None,
    job: Obj | None,
    pods: Sequence[Obj] = (),
    *,
    prefetch: bool = True,
    storage_class_exists: bool | None = None,
    events: Sequence[Obj] = (),
    progress: str = "",
) -> CacheVerdict:
    """Where the cache stands, from what the operator observed.

    progress: the prefetch program's latest progress line ("7.2 GiB of 14.5 GiB (50%) ..."),
        read from the running pod's log; shown while Downloading.

    pods: the Job's pods (label selector_string(key)); their termination messages carry the
        resolved commit and the failure details.
    prefetch: spec.cache.prefetch; without it the volume is Ready once bound (the first serving
        pod downloads into it).
    storage_class_exists: whether the StorageClass the PVC asks for (its storageClassName, or a
        cluster default when it names none) exists; None when not looked up.
    events: the PVC's Events, for the provisioner's ProvisioningFailed message.
    """
    if pvc is None:
        return _verdict(claim, "Pending", Reason.creating, f"creating volume {claim}")
    meta = pvc.get("metadata") or {}
    ann = meta.get("annotations") or {}
    model = ann.get(MODEL_ID_ANNOTATION, "?")
    rev = ann.get(REVISION_ANNOTATION, "main")
    if meta.get("deletionTimestamp"):
        return _verdict(claim, "Pending", Reason.volume_terminating, f"volume {claim} is being deleted")
    phase = (pvc.get("status") or {}).get("phase", "Pending")
    if phase == "Lost":
        msg = (
            f"volume {claim} lost its PersistentVolume: delete the PVC to have it recreated and filled again"
        )
        return _verdict(claim, "Failed", Reason.volume_lost, msg)
    if phase != "Bound":
        sc = (pvc.get("spec") or {}).get("storageClassName")
        provisioning_error = _provisioning_failure(events)
        if storage_class_exists is False or (sc and f'"{sc}" not found' in provisioning_error):
            if sc:
                msg = f"storageClassName {sc!r} not found: create it or set spec.cache.storageClassName"
                return _verdict(claim, "Pending", Reason.storage_class_not_found, msg)
            msg = "the cluster has no default StorageClass: set spec.cache.storageClassName"
            return _verdict(claim, "Pending", Reason.no_default_storage_class, msg)
        if provisioning_error:
            msg = f"volume {claim} cannot be provisioned: {provisioning_error}"
            return _verdict(claim, "Pending", Reason.provisioning_failed, msg)
    if not prefetch:
        if phase == "Bound":
            msg = f"volume {claim} is bound; the first pod downloads {model}@{rev} into it"
            return _verdict(claim, "Ready", Reason.volume_bound, msg)
        msg = f"waiting for volume {claim} (provisioned when the first pod uses it, for some storage classes)"
        return _verdict(claim, "Pending", Reason.provisioning, msg)
    if job is None:
        return _verdict(claim, "Pending", Reason.prefetch_starting, f"starting the download of {model}@{rev}")
    if _job_condition(job, "Complete", "SuccessCriteriaMet") is not None:
        summary: Obj = {}
        for pod in _newest(pods):
            term = _terminated(pod)
            if term and term.get("exitCode") == 0:
                summary = termination_summary(term.get("message", ""))
                break
        commit = str(summary.get("commit", ""))
        msg = f"{model}@{rev} is cached in {claim}"
        if commit:
            msg += f" (commit {commit[:12]}"
            size = summary.get("bytes")
            msg += f", {size / GIB:.1f} GiB)" if isinstance(size, int) else ")"
        bin_only = summary.get("format") == "bin"
        if bin_only:
            # TGI converts .bin weights to safetensors at start-up and writes them into the cache.
            msg += "; the weights are .bin only, which TGI converts at start-up into the volume"
        return _verdict(claim, "Ready", Reason.ready, msg, revision=commit)._replace(bin_only=bin_only)
    if _job_condition(job, "Failed", "FailureTarget") is not None:
        return _failed_verdict(claim, pvc, job, pods, model, rev)
    problem = _pod_problem(pods)
    if problem is not None:
        return _verdict(claim, "Pending", problem[0], problem[1])
    if phase != "Bound":
        msg = f"waiting for volume {claim} to be provisioned"
        return _verdict(claim, "Pending", Reason.provisioning, msg)
    msg = f"downloading {model}@{rev} into {claim}"
    if progress:
        msg += f": {progress}"
    failed = int((job.get("status") or {}).get("failed") or 0)
    if failed:
        _, summary = _failure(job, pods)
        last = str(summary.get("message", "")).strip()
        msg += f" (attempt {failed + 1} of {BACKOFF_LIMIT + 1}{'; last error: ' + last if last else ''})"
    return _verdict(claim, "Downloading", Reason.downloading, msg)


# ---- sharing and retention ------------------------------------------------------------------


def model_ref(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(model id, revision) a ModelDeployment body serves, the preset resolved; None if unknown."""
    model = (body.get("spec") or {}).get("model") or {}
    model_id = model.get("id") or ""
    if not model_id and model.get("preset"):
        try:
            model_id = get_preset(model["preset"]).id
        except CatalogError:
            return None
    return (model_id, model.get("revision") or "main") if model_id else None


def _uses(body: Mapping[str, Any], key: str) -> bool:
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False  # on its way out: it must not keep the cache alive
    if not (((body.get("spec") or {}).get("cache") or {}).get("enabled")):
        return False
    ref = model_ref(body)
    return ref is not None and cache_key(*ref) == key


def users(models: Iterable[Mapping[str, Any]], key: str) -> list[str]:
    """Names of the ModelDeployments (bodies, one namespace) using the cache `key`, sorted."""
    return sorted(str((m.get("metadata") or {}).get("name", "")) for m in models if _uses(m, key))


def desired_retain(models: Iterable[Mapping[str, Any]], key: str) -> bool | None:
    """The retain annotation the cache should carry: True if any user asks to retain it, None
    without users (keep what the last users said)."""
    using = [m for m in models if _uses(m, key)]
    if not using:
        return None
    return any(((m.get("spec") or {}).get("cache") or {}).get("retain", True) for m in using)


def should_delete(pvc: Obj | None, users: Sequence[str]) -> bool:
    """Delete the cache (PVC and Job) only when nobody uses it and it is not to be retained."""
    if pvc is None or users or (pvc.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return ((pvc.get("metadata") or {}).get("annotations") or {}).get(RETAIN_ANNOTATION) == "false"
