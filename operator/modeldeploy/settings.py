"""Operator-wide settings, from environment variables (set by the Helm chart's values)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from modeldeploy.api import DEFAULT_IMAGE
from modeldeploy.tgi import DEFAULT_STARTUP_TIMEOUT_SECONDS, IMAGE_REPOSITORY


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("", "0", "false", "no", "off")


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    default_image: str = DEFAULT_IMAGE
    startup_timeout_seconds: int = Field(default=DEFAULT_STARTUP_TIMEOUT_SECONDS, ge=60)
    # Extra GPU types merged into the built-in catalog (name -> GPU type fields).
    extra_gpu_types: dict[str, dict[str, Any]] = {}
    # Hugging Face endpoint the prefetch Job uses (HF_ENDPOINT; empty = the image's default) and
    # the operator reads config.json of models outside the catalog from (empty = huggingface.co).
    hf_endpoint: str = ""
    read_model_config: bool = True
    resync_seconds: float = Field(default=60.0, gt=0)
    # Prometheus that scrapes TGI's /metrics, for KEDA's prometheus trigger.
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"

    # -- what a ModelDeployment may ask (policy.py) --
    # Image repositories spec.engine.image may name: "repo" (any tag or digest of it), "prefix/"
    # (every repository under it) or "*" (any image). The default image is always allowed.
    allowed_image_repositories: tuple[str, ...] = (IMAGE_REPOSITORY,)
    # PriorityClasses spec.scheduling.priorityClassName may name; empty: any but system-*.
    allowed_priority_classes: tuple[str, ...] = ()
    # Whether a toleration of every taint (operator Exists, no key) is allowed.
    allow_tolerate_all: bool = False
    # Secrets spec.model.tokenSecretRef may name; empty: any Secret of the model's namespace.
    allowed_token_secrets: tuple[str, ...] = ()

    # -- the pods' security context (render.py, cache.py) --
    # Run TGI and the prefetch as this non-root user (and group); None: as the image says
    # (root for TGI's image). See docs/security.md for what the image needs.
    run_as_user: int | None = Field(default=None, ge=1, le=2**31 - 1)
    read_only_root_filesystem: bool = True

    # Namespaces where the operator reads the running prefetch pod's log for its progress line
    # ("*": all); empty: never (the chart then grants no pods/log).
    prefetch_log_namespaces: tuple[str, ...] = ()

    def reads_prefetch_log(self, namespace: str) -> bool:
        return "*" in self.prefetch_log_namespaces or namespace in self.prefetch_log_namespaces

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        if v := env.get("MODELDEPLOY_DEFAULT_IMAGE"):
            values["default_image"] = v
        if v := env.get("MODELDEPLOY_STARTUP_TIMEOUT_SECONDS"):
            values["startup_timeout_seconds"] = int(v)
        if v := env.get("MODELDEPLOY_GPU_CATALOG"):
            values["extra_gpu_types"] = yaml.safe_load(Path(v).read_text()) or {}
        if v := env.get("MODELDEPLOY_HF_ENDPOINT"):
            values["hf_endpoint"] = v
        if v := env.get("MODELDEPLOY_READ_MODEL_CONFIG"):
            values["read_model_config"] = v.lower() not in ("0", "false", "no")
        if v := env.get("MODELDEPLOY_PROMETHEUS_URL"):
            values["prometheus_url"] = v
        if v := env.get("MODELDEPLOY_RESYNC_SECONDS"):
            values["resync_seconds"] = float(v)
        # Set but empty is a value: no repository but the default image's.
        if (v := env.get("MODELDEPLOY_ALLOWED_IMAGE_REPOSITORIES")) is not None:
            values["allowed_image_repositories"] = _names(v)
        if v := env.get("MODELDEPLOY_ALLOWED_PRIORITY_CLASSES"):
            values["allowed_priority_classes"] = _names(v)
        if v := env.get("MODELDEPLOY_ALLOW_TOLERATE_ALL"):
            values["allow_tolerate_all"] = _flag(v)
        if v := env.get("MODELDEPLOY_ALLOWED_TOKEN_SECRETS"):
            values["allowed_token_secrets"] = _names(v)
        if v := env.get("MODELDEPLOY_RUN_AS_USER"):
            values["run_as_user"] = int(v)
        if v := env.get("MODELDEPLOY_READ_ONLY_ROOT_FILESYSTEM"):
            values["read_only_root_filesystem"] = _flag(v)
        if v := env.get("MODELDEPLOY_PREFETCH_LOG_NAMESPACES"):
            values["prefetch_log_namespaces"] = _names(v)
        return cls(**values)
