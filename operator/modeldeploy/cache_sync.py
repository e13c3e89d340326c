"""API I/O for the weight cache: apply the shared PVC and prefetch Job, read back what they
report, and delete caches nobody uses when they are not to be retained. The decisions are the
pure functions in `cache.py`."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError

from modeldeploy import GROUP, VERSION, cache
from modeldeploy.api import ModelArchitecture, ModelDeploymentSpec
from modeldeploy.hubfacts import parse_config
from modeldeploy.kube import Kube
from modeldeploy.resolve import pod_security
from modeldeploy.settings import Settings

log = logging.getLogger("modeldeploy.cache")
Obj = dict[str, Any]


@dataclass
class CacheSync:
    kube: Kube
    settings: Settings
    # Facts per cache key: a (model, revision) never changes shape.
    _facts: dict[str, ModelArchitecture] = field(default_factory=dict)

    def ensure(
        self,
        namespace: str,
        spec: ModelDeploymentSpec,
        model_id: str,
        arch: ModelArchitecture | None,
        image: str,
        affinity: Obj | None,
        *,
        write: bool = True,
        requester: str = "",
    ) -> cache.CacheVerdict:
        """Create the cache for (model id, revision) if missing and say where it stands. May
        raise SpecError. With write=False nothing is created or changed (a status refresh).

        The PVC and the Job are created once and never re-applied: a bound claim's spec and a
        Job's pod template are immutable, and the weights of one revision are the same whatever
        image, scheduling or token a later user has. So a change of any of those, a second
        model sharing the cache, or a new operator version never blocks a model; only a failed
        Job whose inputs changed is replaced (see cache.should_replace_job)."""
        revision = spec.model.revision
        key = cache.cache_key(model_id, revision)
        claim = cache.claim_name(model_id, revision)
        size = cache.cache_size(spec.cache, cache.disk_weight_gib(arch) if arch else None)
        pvc_obj = self.kube.get("v1", "PersistentVolumeClaim", namespace, claim)
        notes: list[str] = []
        if write:
            pvc_obj = self._ensure_pvc(namespace, spec, model_id, key, size, pvc_obj)
            if pvc_obj is not None and cache.grows(spec.cache, pvc_obj):
                pvc_obj, note = self._grow(namespace, claim, spec.cache.size, pvc_obj)
                notes += [note] if note else []
        if pvc_obj is not None:
            notes += cache.drift(spec.cache, pvc_obj)

        job_obj: Obj | None = None
        pods: list[Obj] = []
        if spec.cache.prefetch:
            job_obj = self.kube.get("batch/v1", "Job", namespace, claim)
            pods = self.kube.list("v1", "Pod", namespace, cache.selector_string(key))
            if write and (job_obj is None or not job_obj["metadata"].get("deletionTimestamp")):
                job = cache.render_job(
                    model_id,
                    revision,
                    namespace,
                    image=image,
                    hf_endpoint=self.settings.hf_endpoint,
                    token_ref=spec.model.token_secret_ref,
                    scheduling=spec.scheduling,
                    affinity=affinity,
                    security=pod_security(self.settings),
                )
                claim_uid = str(((pvc_obj or {}).get("metadata") or {}).get("uid") or "")
                annotations = job["metadata"]["annotations"]
                annotations[cache.CREATED_FOR_ANNOTATION] = requester
                if claim_uid:
                    annotations[cache.CLAIM_UID_ANNOTATION] = claim_uid
                    annotations[cache.CLAIM_SIZE_ANNOTATION] = cache.requested(pvc_obj or {})
                replace = False
                if job_obj is not None:
                    models = self.kube.list(f"{GROUP}/{VERSION}", "ModelDeployment", namespace)
                    users = cache.users(models, key)
                    replace = cache.should_replace_job(job_obj, job, claim_uid, pods, requester, users)
                if replace and job_obj is not None:
                    # Unfinished with other inputs now, or it filled a volume since replaced.
                    log.info("%s: replacing prefetch Job %s", namespace, claim)
                    self.kube.delete(job_obj)
                    job_obj = None
                elif job_obj is None:
                    self.kube.create_if_absent(job)
                    job_obj = self.kube.get("batch/v1", "Job", namespace, claim)
                    pods = []  # a new Job has no pods yet; older ones are not its

        verdict = self._status(namespace, claim, spec, pvc_obj, job_obj, pods)
        if notes:
            message = f"{verdict.message}; " + "; ".join(notes)
            verdict = verdict._replace(
                message=message, status=verdict.status.model_copy(update={"message": message})
            )
        return verdict

    def _grow(self, namespace: str, claim: str, size: str, pvc: Obj) -> tuple[Obj, str]:
        """Ask for a larger volume (storage classes with allowVolumeExpansion); a refusal is
        said in the cache's message, never an error of the model."""
        try:
            out = self.kube.merge_patch(
                "v1",
                "PersistentVolumeClaim",
                namespace,
                claim,
                {"spec": {"resources": {"requests": {"storage": size}}}},
            )
        except (ApiException, DynamicApiError) as e:
            if e.status is None or e.status >= 500:
                raise
            why = str(getattr(e, "reason", "") or e)
            body = str(getattr(e, "body", "") or "")
            if '"message"' in body:
                with contextlib.suppress(ValueError):
                    why = str(json.loads(body).get("message") or why)
            return pvc, f"spec.cache.size {size}: volume {claim} cannot grow: {why[:300]}"
        log.info("%s: volume %s grows to %s", namespace, claim, size)
        return out, ""

    def _status(
        self, namespace: str, claim: str, spec: ModelDeploymentSpec, pvc_obj: Obj | None, job_obj: Obj | None,
        pods: list[Obj],
    ) -> cache.CacheVerdict:  # fmt: skip
        if pvc_obj is None:
            return cache.cache_status(claim, None, job_obj, pods, prefetch=spec.cache.prefetch)
        sc_name = pvc_obj["spec"].get("storageClassName")
        phase = (pvc_obj.get("status") or {}).get("phase")
        events: list[Obj] = []
        exists: bool | None = None
        if phase != "Bound":
            # Only an unbound claim can have a provisioning problem to explain.
            events = self.kube.list(
                "v1",
                "Event",
                namespace,
                field_selector=f"involvedObject.kind=PersistentVolumeClaim,involvedObject.name={claim}",
            )
            exists = self._storage_class_exists(sc_name)
        return cache.cache_status(
            claim,
            pvc_obj,
            job_obj,
            pods,
            prefetch=spec.cache.prefetch,
            storage_class_exists=exists,
            events=events,
            progress=self._progress(namespace, pods),
        )

    def _ensure_pvc(
        self,
        namespace: str,
        spec: ModelDeploymentSpec,
        model_id: str,
        key: str,
        size: str,
        existing: Obj | None,
    ) -> Obj | None:
        revision = spec.model.revision
        claim = cache.claim_name(model_id, revision)
        models = self.kube.list(f"{GROUP}/{VERSION}", "ModelDeployment", namespace)
        retain = cache.desired_retain(models, key)
        if existing is None:
            pvc = cache.render_pvc(model_id, revision, namespace, spec.cache, size)
            if retain is not None:
                pvc["metadata"]["annotations"][cache.RETAIN_ANNOTATION] = "true" if retain else "false"
            self.kube.create_if_absent(pvc)
            return self.kube.get("v1", "PersistentVolumeClaim", namespace, claim)
        # Only the retain annotation follows the users; the claim itself is never re-applied.
        want = None if retain is None else ("true" if retain else "false")
        have = (existing["metadata"].get("annotations") or {}).get(cache.RETAIN_ANNOTATION)
        if want is not None and want != have:
            return self.kube.merge_patch(
                "v1",
                "PersistentVolumeClaim",
                namespace,
                claim,
                {"metadata": {"annotations": {cache.RETAIN_ANNOTATION: want}}},
            )
        return existing

    def _progress(self, namespace: str, pods: list[Obj]) -> str:
        """The last progress line the running prefetch pod printed (best effort), only where
        the settings allow reading its log: reading pod logs is a power the chart grants only
        on request (prefetchProgress.fromLogs), for the namespaces named."""
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if not running or not self.settings.reads_prefetch_log(namespace):
            return ""
        try:
            tail = self.kube.pod_log_tail(namespace, running[-1]["metadata"]["name"], cache.CONTAINER, 20)
        except Exception:  # logs are a nicety: no kubelet, no permission, pod just gone ...
            return ""
        lines = [
            ln.removeprefix("progress:").strip() for ln in tail.splitlines() if ln.startswith("progress:")
        ]
        return lines[-1] if lines else ""

    def prefetched_architecture(
        self, namespace: str, model_id: str, spec: ModelDeploymentSpec
    ) -> ModelArchitecture | None:
        """Planner facts the finished prefetch reported in its termination message."""
        key = cache.cache_key(model_id, spec.model.revision)
        if key in self._facts:
            return self._facts[key]
        for pod in self.kube.list("v1", "Pod", namespace, cache.selector_string(key)):
            raw = cache.prefetch_summary(pod).get("architecture")
            if not isinstance(raw, dict) or not raw.get("parameters"):
                continue
            try:
                arch = parse_config(raw, float(raw["parameters"]))
            except ValueError:
                return None
            self._facts[key] = arch
            return arch
        return None

    def _storage_class_exists(self, name: str | None) -> bool:
        if name:
            return self.kube.get("storage.k8s.io/v1", "StorageClass", None, name) is not None
        return any(
            (sc["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class")
            == "true"
            for sc in self.kube.list("storage.k8s.io/v1", "StorageClass", None)
        )

    def collect_garbage(self, namespace: str) -> None:
        """Delete caches in `namespace` that no ModelDeployment uses and that are not retained."""
        models = self.kube.list(f"{GROUP}/{VERSION}", "ModelDeployment", namespace)
        pvcs = {
            p["metadata"]["labels"][cache.CACHE_KEY_LABEL]: p
            for p in self.kube.list("v1", "PersistentVolumeClaim", namespace, cache.CACHE_KEY_LABEL)
        }
        jobs = {
            j["metadata"]["labels"][cache.CACHE_KEY_LABEL]: j
            for j in self.kube.list("batch/v1", "Job", namespace, cache.CACHE_KEY_LABEL)
        }
        for key, pvc in pvcs.items():
            if cache.should_delete(pvc, cache.users(models, key)):
                log.info("deleting unused cache %s/%s (retain: false)", namespace, pvc["metadata"]["name"])
                if key in jobs:
                    self.kube.delete(jobs.pop(key))
                self.kube.delete(pvc)
        for key, job in jobs.items():
            # A Job whose volume is gone (deleted, or never made): nothing can use it.
            if key not in pvcs and not cache.users(models, key):
                self.kube.delete(job)
