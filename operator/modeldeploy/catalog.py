"""Built-in catalogs shipped as package data: GPU types (data/gpus.yaml) and model presets
(data/models.yaml).

The GPU catalog can be extended or overridden at run time (the operator's Helm values pass extra
GPU types); every lookup takes those extras as an argument, so nothing here holds mutable state.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Annotated, Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from modeldeploy.api import Model, ModelArchitecture

PRODUCT_LABEL = "nvidia.com/gpu.product"
"""Node label GPU Feature Discovery sets to the NVML device name, spaces replaced by hyphens."""
MEMORY_LABEL = "nvidia.com/gpu.memory"
"""Node label GPU Feature Discovery sets to the GPU's total memory in MiB."""

# GPU Feature Discovery appends this to the product label when the GPU is time-sliced.
_SHARED_SUFFIX = "-SHARED"
# A MIG slice is not the whole GPU: its product label carries "-MIG-<profile>".
_MIG_MARKER = "-MIG-"

GpuOverrides = Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]
"""Extra GPU types: {name: fields} or [{name: ..., fields}], fields in the gpus.yaml form."""


class CatalogError(ValueError):
    """Unknown catalog name or invalid catalog data; the message is meant for users."""


class GpuType(Model):
    """One GPU model as the planner sees it."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)]
    memory_mib: Annotated[
        int,
        Field(
            ge=1,
            alias="memoryMiB",
            description="Total memory NVML reports, in MiB (the nvidia.com/gpu.memory label value).",
        ),
    ]
    compute_capability: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+$", description="e.g. 8.9")]
    products: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=1, description="nvidia.com/gpu.product label values of this GPU type."),
    ]

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _capability_from_number(cls, value: object) -> object:
        # Helm values often carry 8.9 unquoted; 9 would otherwise fail the pattern.
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return f"{value}.0"
        if isinstance(value, float):
            return f"{value:.1f}"
        return value

    @property
    def memory_gib(self) -> float:
        """Memory in GiB: memoryMiB / 1024 (an "80GB" H100 reports 81559 MiB = 79.6 GiB)."""
        return self.memory_mib / 1024

    @property
    def capability(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


class Recommended(Model):
    """Optional launcher settings that suit a preset; hints, not limits."""

    max_input_tokens: Annotated[int | None, Field(ge=1)] = None
    max_total_tokens: Annotated[int | None, Field(ge=2)] = None
    note: str = ""


class Preset(Model):
    """A model catalog entry: Hugging Face id plus the facts the planner needs."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=128)]
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")]
    gated: Annotated[bool, Field(description="Needs a Hugging Face token with access granted.")] = False
    architecture: ModelArchitecture
    recommended: Recommended = Recommended()


def _read_yaml(filename: str) -> Any:
    text = resources.files("modeldeploy").joinpath("data", filename).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _validation_message(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())


@functools.cache
def _base_gpu_entries() -> dict[str, dict[str, Any]]:
    data = _read_yaml("gpus.yaml")
    entries: dict[str, dict[str, Any]] = {}
    for raw in data["gpus"]:
        name = raw["name"]
        if name in entries:
            raise CatalogError(f"gpus.yaml: GPU type {name!r} is listed twice")
        entries[name] = dict(raw)
    return entries


@functools.cache
def _base_gpu_types() -> tuple[GpuType, ...]:
    return tuple(_validate_gpu(name, raw) for name, raw in _base_gpu_entries().items())


def _validate_gpu(name: str, raw: Mapping[str, Any]) -> GpuType:
    try:
        return GpuType.model_validate({**raw, "name": name})
    except ValidationError as err:
        raise CatalogError(f"GPU type {name!r}: {_validation_message(err)}") from None


def _normalise_overrides(extra: GpuOverrides) -> dict[str, Mapping[str, Any]]:
    if isinstance(extra, Mapping):
        out: dict[str, Mapping[str, Any]] = {}
        for name, fields in extra.items():
            if not isinstance(fields, Mapping):
                raise CatalogError(f"GPU type {name!r}: expected a mapping of fields")
            if "name" in fields and fields["name"] != name:
                raise CatalogError(f"GPU type {name!r}: name field {fields['name']!r} differs from its key")
            out[str(name)] = fields
        return out
    out = {}
    for i, fields in enumerate(extra):
        if not isinstance(fields, Mapping) or not isinstance(fields.get("name"), str):
            raise CatalogError(f"extra GPU type #{i}: needs a name")
        if fields["name"] in out:
            raise CatalogError(f"extra GPU type {fields['name']!r} is listed twice")
        out[fields["name"]] = fields
    return out


def gpu_types(extra: GpuOverrides | None = None) -> list[GpuType]:
    """Built-in GPU types plus `extra`, in catalog order (new names last).

    An extra entry whose name is already in the catalog is merged over it key by key (so it can,
    for instance, add product labels); a new name must give every field.
    """
    if not extra:
        return list(_base_gpu_types())
    base = _base_gpu_entries()
    merged: dict[str, dict[str, Any]] = {name: dict(raw) for name, raw in base.items()}
    for name, fields in _normalise_overrides(extra).items():
        merged[name] = {**merged.get(name, {}), **fields}
    return [_validate_gpu(name, raw) for name, raw in merged.items()]


def find_gpu(name: str, extra: GpuOverrides | None = None) -> GpuType:
    """The GPU type called `name`; CatalogError lists the known names otherwise."""
    types = gpu_types(extra)
    for gpu in types:
        if gpu.name == name:
            return gpu
    known = ", ".join(g.name for g in types)
    raise CatalogError(f"unknown GPU type {name!r}; known GPU types: {known}")


def _normalise_product(product: str) -> str:
    product = product.strip()
    if product.upper().endswith(_SHARED_SUFFIX):
        product = product[: -len(_SHARED_SUFFIX)]
    return product.casefold()


def find_gpu_for_node(labels: Mapping[str, str], extra: GpuOverrides | None = None) -> GpuType | None:
    """The GPU type of a node, from the nvidia.com/gpu.product label GPU Feature Discovery sets.

    Time-sliced GPUs ("-SHARED" suffix) count as their GPU type; MIG slices and unknown products
    give None, since the planner's figures are for whole GPUs.
    """
    product = labels.get(PRODUCT_LABEL, "")
    if not product or _MIG_MARKER.casefold() in product.casefold():
        return None
    wanted = _normalise_product(product)
    for gpu in gpu_types(extra):
        if any(_normalise_product(p) == wanted for p in gpu.products):
            return gpu
    return None


@functools.cache
def _presets() -> dict[str, Preset]:
    data = _read_yaml("models.yaml")
    out: dict[str, Preset] = {}
    for raw in data["presets"]:
        name = raw.get("name", "<unnamed>")
        try:
            preset = Preset.model_validate(raw)
        except ValidationError as err:
            raise CatalogError(f"preset {name!r}: {_validation_message(err)}") from None
        if preset.name in out:
            raise CatalogError(f"models.yaml: preset {preset.name!r} is listed twice")
        out[preset.name] = preset
    return out


def list_presets() -> list[Preset]:
    """All model presets, in catalog order (copies: callers may change them freely)."""
    return [p.model_copy(deep=True) for p in _presets().values()]


def get_preset(name: str) -> Preset:
    """The preset called `name`; CatalogError lists the known names otherwise."""
    presets = _presets()
    try:
        return presets[name].model_copy(deep=True)
    except KeyError:
        known = ", ".join(presets)
        raise CatalogError(f"unknown model preset {name!r}; known presets: {known}") from None
