"""Operator-wide settings, from environment variables (set by the Helm chart's values)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from modeldeploy.api import DEFAULT_IMAGE
from modeldeploy.tgi import DEFAULT_STARTUP_TIMEOUT_SECONDS


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
        return cls(**values)
