"""Architecture facts of a model outside the catalog, read from its Hugging Face repository:
config.json for the shape, and the safetensors headers (or the shard index) for the parameter
count, fetched with HTTP range requests as the Hub's own safetensors metadata is.

`parse_config` and `parameters_from_header` are pure; `HubFacts` does the reading, remembers
answers per (model, revision) and failures for a while, so a reconcile never waits twice.
"""

from __future__ import annotations

import http.client
import json
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy.api import Dtype, ModelArchitecture, Quantize
from modeldeploy.planner import weight_bytes_per_parameter
from modeldeploy.prefetch import PACKED_4BIT, count_parameters

# Bytes per element of the safetensors dtypes a checkpoint uses.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}  # fmt: skip
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def parse_config(cfg: Mapping[str, Any], parameters: float) -> ModelArchitecture:
    """config.json to planner facts. Key names differ by family (Llama/Mistral/Qwen, Falcon, GPT)."""
    heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
    kv = _first(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv") or heads
    if cfg.get("multi_query") and not cfg.get("new_decoder_architecture"):
        kv = 1  # Falcon-7B style multi-query attention
    quant = (cfg.get("quantization_config") or {}).get("quant_method") or cfg.get("quant_method")
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    facts: dict[str, Any] = {
        "parametersBillions": parameters / 1e9,
        "numLayers": _first(cfg, "num_hidden_layers", "n_layer", "num_layers"),
        "hiddenSize": _first(cfg, "hidden_size", "n_embd", "d_model"),
        "numAttentionHeads": heads,
        "numKeyValueHeads": kv,
        "maxPositionEmbeddings": _first(cfg, "max_position_embeddings", "n_positions", "max_sequence_length")
        or 2048,
        # TGI serves float32 checkpoints in float16; anything else keeps its own 16-bit type.
        "torchDtype": Dtype.bfloat16.value if dtype == "bfloat16" else Dtype.float16.value,
    }
    if cfg.get("head_dim"):
        facts["headDim"] = cfg["head_dim"]
    if quant in {q.value for q in Quantize}:
        facts["quantization"] = quant
    return ModelArchitecture.model_validate(facts)


def parameters_from_index(index: Mapping[str, Any], bytes_per_parameter: float) -> float:
    """A sharded checkpoint's index gives total bytes; divide by the bytes each parameter takes."""
    return float(index["metadata"]["total_size"]) / bytes_per_parameter


class FactsUnavailableError(Exception):
    """The repository could not be read (gated, missing, offline): plan without facts."""


@dataclass
class HubFacts:
    endpoint: str
    timeout: float = 10.0
    retry_seconds: float = 300.0
    _known: dict[tuple[str, str], ModelArchitecture] = field(default_factory=dict)
    _failed: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _get(self, url: str, byte_range: tuple[int, int] | None = None) -> bytes:
        req = urllib.request.Request(url, headers={"User-Agent": "modeldeploy"})
        if byte_range is not None:
            req.add_header("Range", f"bytes={byte_range[0]}-{byte_range[1]}")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return bytes(resp.read())

    def _file(self, model_id: str, revision: str, name: str) -> str:
        # The revision is quoted whole (a branch may hold "/"), as the Hub's own client does.
        rev = urllib.parse.quote(revision, safe="")
        return f"{self.endpoint.rstrip('/')}/{model_id}/resolve/{rev}/{name}"

    def _safetensors_header(self, url: str) -> dict[str, Any]:
        (length,) = struct.unpack("<Q", self._get(url, (0, 7))[:8])
        if length > MAX_HEADER:
            raise FactsUnavailableError(f"safetensors header of {length} bytes is not plausible")
        parsed: dict[str, Any] = json.loads(self._get(url, (8, 8 + length - 1)))
        return parsed

    def read(self, model_id: str, revision: str) -> ModelArchitecture:
        """Facts for the model, or FactsUnavailableError (remembered for retry_seconds)."""
        key = (model_id, revision)
        with self._lock:
            if key in self._known:
                return self._known[key]
            failed = self._failed.get(key)
            if failed and time.monotonic() - failed[0] < self.retry_seconds:
                raise FactsUnavailableError(failed[1])
        try:
            arch = self._read(model_id, revision)
        except (OSError, ValueError, KeyError, struct.error, http.client.HTTPException) as e:
            msg = f"could not read {model_id}@{revision} from {self.endpoint}: {e}"
            with self._lock:
                self._failed[key] = (time.monotonic(), msg)
            raise FactsUnavailableError(msg) from e
        with self._lock:
            self._known[key] = arch
        return arch

    def _read(self, model_id: str, revision: str) -> ModelArchitecture:
        cfg = json.loads(self._get(self._file(model_id, revision, "config.json")))
        quant = (cfg.get("quantization_config") or {}).get("quant_method") or cfg.get("quant_method")
        packed = quant in PACKED_4BIT
        try:
            index = json.loads(self._get(self._file(model_id, revision, "model.safetensors.index.json")))
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            header = self._safetensors_header(self._file(model_id, revision, "model.safetensors"))
            params = float(count_parameters(header, packed))
        else:
            if packed:
                per_param = weight_bytes_per_parameter(Quantize(str(quant)))
            else:
                first = next(iter(index["weight_map"].values()))
                header = self._safetensors_header(self._file(model_id, revision, first))
                dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
                per_param = float(max((DTYPE_BYTES.get(d, 2) for d in dtypes), default=2))
            params = parameters_from_index(index, per_param)
        return parse_config(cfg, params)
