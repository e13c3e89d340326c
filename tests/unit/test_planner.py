"""GPU planner, quantization rules and catalogs.

Most planner checks are table-driven from data/planner_cases.yaml, whose expected figures are
worked out by hand (the arithmetic is in the comments there), not by calling the planner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import catalog, planner
from modeldeploy.api import Dtype, KvCacheDtype, ModelArchitecture, Quantize

TOLERANCE_GIB = 0.01
CASES: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "data" / "planner_cases.yaml").read_text(encoding="utf-8")
)["cases"]

FIGURES = {
    "weightsGiBPerGpu": "weights_gib_per_gpu",
    "kvCacheGiBPerGpu": "kv_cache_gib_per_gpu",
    "overheadGiBPerGpu": "overhead_gib_per_gpu",
    "totalGiBPerGpu": "total_gib_per_gpu",
}


def _facts(case: dict[str, Any]) -> ModelArchitecture:
    if "preset" in case:
        facts = catalog.get_preset(case["preset"]).architecture
    else:
        facts = ModelArchitecture.model_validate(case["architecture"])
    overrides = case.get("architectureOverrides", {})
    return ModelArchitecture.model_validate({**facts.model_dump(by_alias=True), **overrides})


def _request(case: dict[str, Any]) -> dict[str, Any]:
    raw = case.get("request", {})
    out: dict[str, Any] = {"gpus": raw.get("gpus", "auto")}
    if "quantize" in raw:
        out["quantize"] = Quantize(raw["quantize"])
    if "dtype" in raw:
        out["dtype"] = Dtype(raw["dtype"])
    if "kvCacheDtype" in raw:
        out["kv_cache_dtype"] = KvCacheDtype(raw["kvCacheDtype"])
    if "maxTotalTokens" in raw:
        out["max_total_tokens"] = raw["maxTotalTokens"]
    if "concurrentSequences" in raw:
        out["concurrent_sequences"] = raw["concurrentSequences"]
    return out


def _run(case: dict[str, Any]) -> planner.Plan:
    return planner.plan(
        _facts(case), catalog.find_gpu(case["gpu"]), catalog=catalog.gpu_types(), **_request(case)
    )


def _replan(case: dict[str, Any], alt: planner.Alternative) -> planner.Plan:
    """Plan the request again with the alternative's changes applied, from scratch."""
    facts = _facts(case)
    kwargs = _request(case)
    if alt.needs_prequantized_weights:
        facts = facts.model_copy(update={"quantization": alt.quantize})
    if alt.quantize is not None:
        kwargs["quantize"] = alt.quantize
        kwargs.pop("dtype", None)
    if alt.kv_cache_dtype is not None:
        kwargs["kv_cache_dtype"] = alt.kv_cache_dtype
    if alt.max_total_tokens is not None:
        kwargs["max_total_tokens"] = alt.max_total_tokens
    kwargs["gpus"] = alt.gpus
    return planner.plan(facts, catalog.find_gpu(alt.gpu_type), **kwargs)


@pytest.mark.parametrize("case", [c for c in CASES if "expect" in c], ids=lambda c: c["name"])
def test_plan_case(case: dict[str, Any]) -> None:
    expect = case["expect"]
    result = _run(case)
    assert result.gpus_per_replica == expect["gpus"]
    assert result.num_shard == expect["gpus"]
    assert result.gpu_type == case["gpu"]
    for key, attr in FIGURES.items():
        if key in expect:
            assert getattr(result, attr) == pytest.approx(expect[key], abs=TOLERANCE_GIB), key
    assert result.total_gib_per_gpu <= result.usable_gib_per_gpu
    if "quantize" in expect:
        assert result.quantize == Quantize(expect["quantize"])
    if "prequantized" in expect:
        assert result.prequantized is expect["prequantized"]
    if "maxTotalTokens" in expect:
        assert result.max_total_tokens == expect["maxTotalTokens"]
    rows = {c.num_shard: c for c in result.candidates}
    for count, want in expect.get("candidates", {}).items():
        row = rows[int(count)]
        for key in ("valid", "fits"):
            if key in want:
                assert getattr(row, key) is want[key], f"{count} shards: {key}"
        if "totalGiBPerGpu" in want:
            assert row.total_gib_per_gpu == pytest.approx(want["totalGiBPerGpu"], abs=TOLERANCE_GIB)
    # Never pick an invalid count, and never skip a smaller valid one that fits.
    assert rows[result.num_shard].valid and rows[result.num_shard].fits
    if case.get("request", {}).get("gpus", "auto") == "auto":
        assert not any(c.fits for c in result.candidates if c.num_shard < result.num_shard)


@pytest.mark.parametrize("case", [c for c in CASES if "error" in c], ids=lambda c: c["name"])
def test_plan_error_case(case: dict[str, Any]) -> None:
    want = case["error"]
    with pytest.raises(planner.PlanError) as info:
        _run(case)
    err = info.value
    assert err.reason == planner.PlanFailure(want["reason"])
    assert str(err) == err.message
    for fragment in want.get("contains", []):
        assert fragment in err.message
    for fragment in want.get("excludes", []):
        assert fragment not in err.message
    # Every alternative the message offers really fits when applied.
    for alt in err.alternatives:
        assert alt.describe() in err.message
        replanned = _replan(case, alt)
        assert replanned.gpus_per_replica == alt.gpus
        assert replanned.total_gib_per_gpu <= replanned.usable_gib_per_gpu


def test_rejection_lists_a_fitting_alternative() -> None:
    facts = catalog.get_preset("qwen2.5-72b-instruct").architecture
    with pytest.raises(planner.PlanError) as info:
        planner.plan(facts, catalog.find_gpu("nvidia-h100-80gb"), gpus=1, catalog=catalog.gpu_types())
    err = info.value
    assert "Fits: " in err.message
    assert err.alternatives
    first = err.alternatives[0]
    assert (first.gpu_type, first.gpus, first.quantize) == ("nvidia-h100-80gb", 2, None)
    assert first.plan.gpus_per_replica == 2


def test_no_catalog_means_no_other_gpu_suggestions() -> None:
    facts = catalog.get_preset("qwen2.5-72b-instruct").architecture
    with pytest.raises(planner.PlanError) as info:
        planner.plan(facts, catalog.find_gpu("nvidia-h100-80gb"), gpus=1)
    assert {a.gpu_type for a in info.value.alternatives} == {"nvidia-h100-80gb"}


def test_fp8_kv_cache_halves_kv_memory() -> None:
    facts = catalog.get_preset("qwen2.5-72b-instruct").architecture
    h100 = catalog.find_gpu("nvidia-h100-80gb")
    base = planner.plan(facts, h100, gpus=2)
    for kv_dtype in KvCacheDtype:
        halved = planner.plan(facts, h100, gpus=2, kv_cache_dtype=kv_dtype)
        assert halved.kv_cache_gib_per_gpu == pytest.approx(base.kv_cache_gib_per_gpu / 2)
        assert halved.weights_gib_per_gpu == pytest.approx(base.weights_gib_per_gpu)


def test_kv_cache_scales_with_tokens_and_sequences() -> None:
    facts = catalog.get_preset("mistral-7b-instruct").architecture
    l40s = catalog.find_gpu("nvidia-l40s")
    one = planner.plan(facts, l40s, max_total_tokens=4096, concurrent_sequences=1)
    many = planner.plan(facts, l40s, max_total_tokens=8192, concurrent_sequences=3)
    assert many.kv_cache_gib_per_gpu == pytest.approx(one.kv_cache_gib_per_gpu * 6)
    # 131,072 B/token (see mistral case) * 4096 tokens = 0.5 GiB
    assert one.kv_cache_gib_per_gpu == pytest.approx(0.5)


def test_default_max_total_tokens_is_capped_by_the_model() -> None:
    qwen = catalog.get_preset("qwen2.5-7b-instruct").architecture
    llama = catalog.get_preset("llama-2-7b-chat").architecture
    h100 = catalog.find_gpu("nvidia-h100-80gb")
    assert planner.plan(qwen, h100).max_total_tokens == planner.DEFAULT_MAX_TOTAL_TOKENS
    assert planner.plan(llama, h100).max_total_tokens == 4096


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    qwen3 = catalog.get_preset("qwen3-8b").architecture
    assert planner.head_dim(qwen3) == 128
    falcon = catalog.get_preset("falcon-40b").architecture
    assert planner.head_dim(falcon) == 64
    # 2 * 60 layers * 8 KV heads * 64 * 2 B
    assert planner.kv_cache_bytes_per_token(falcon) == 122_880
    assert planner.kv_cache_bytes_per_token(falcon, KvCacheDtype.fp8_e4m3fn) == 61_440


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (None, 2.0),
        (Quantize.fp8, 1.05),
        (Quantize.eetq, 1.05),
        (Quantize.bitsandbytes, 1.05),
        (Quantize.bitsandbytes_nf4, 0.575),
        (Quantize.bitsandbytes_fp4, 0.575),
        (Quantize.awq, 0.575),
        (Quantize.gptq, 0.575),
        (Quantize.marlin, 0.575),
        (Quantize.exl2, 0.575),
        (Quantize.compressed_tensors, 0.575),
    ],
)
def test_weight_bytes_per_parameter(method: Quantize | None, expected: float) -> None:
    assert planner.weight_bytes_per_parameter(method) == pytest.approx(expected)


def test_check_quantization_rules() -> None:
    mistral = catalog.get_preset("mistral-7b-instruct").architecture
    t4, h100 = catalog.find_gpu("nvidia-t4"), catalog.find_gpu("nvidia-h100-80gb")
    planner.check_quantization(mistral, quantize=Quantize.eetq, gpu=t4)
    planner.check_quantization(mistral, quantize=Quantize.fp8, gpu=h100)
    with pytest.raises(planner.PlanError, match="compute capability"):
        planner.check_quantization(mistral, quantize=Quantize.fp8, gpu=t4)
    with pytest.raises(planner.PlanError, match="exclusive"):
        planner.check_quantization(mistral, quantize=Quantize.fp8, dtype=Dtype.float16)
    exl2 = mistral.model_copy(update={"quantization": Quantize.exl2})
    planner.check_quantization(exl2, num_shard=1)
    with pytest.raises(planner.PlanError, match="cannot be sharded") as info:
        planner.check_quantization(exl2, num_shard=2)
    assert info.value.reason == planner.PlanFailure.unsupported_quantization


def test_plan_to_status() -> None:
    facts = catalog.get_preset("falcon-40b").architecture
    status = planner.plan(facts, catalog.find_gpu("nvidia-h100-80gb")).to_status()
    assert (status.gpus_per_replica, status.num_shard, status.gpu_type) == (2, 2, "nvidia-h100-80gb")
    assert status.estimated_gi_b_per_gpu == pytest.approx(41.2)
    assert status.model_dump(by_alias=True)["estimatedGiBPerGpu"] == pytest.approx(41.2)


def test_out_of_range_requests() -> None:
    facts = catalog.get_preset("mistral-7b-instruct").architecture
    l4 = catalog.find_gpu("nvidia-l4")
    with pytest.raises(planner.PlanError) as info:
        planner.plan(facts, l4, gpus=9)
    assert info.value.reason == planner.PlanFailure.invalid_settings
    with pytest.raises(ValueError, match="concurrent_sequences"):
        planner.plan(facts, l4, concurrent_sequences=0)


# ---- catalogs -------------------------------------------------------------------------------


def test_every_preset_validates() -> None:
    presets = catalog.list_presets()
    assert len({p.name for p in presets}) == len(presets)
    for preset in presets:
        assert preset == catalog.get_preset(preset.name)
        facts = preset.architecture
        assert facts.num_attention_heads % facts.num_key_value_heads == 0, preset.name
        if facts.head_dim is None:
            assert facts.hidden_size % facts.num_attention_heads == 0, preset.name
        # Every preset plans somewhere in the catalog with the defaults.
        plans = []
        for gpu in catalog.gpu_types():
            try:
                plans.append(planner.plan(facts, gpu))
            except planner.PlanError:
                continue
        assert plans, preset.name


def test_presets_cover_the_catalog() -> None:
    names = {p.name for p in catalog.list_presets()}
    assert {
        "dolphin-2.8-mistral-7b-v02",
        "mistral-7b-instruct",
        "mixtral-8x7b-instruct",
        "deepseek-r1-distill-qwen-1.5b",
        "deepseek-r1-distill-qwen-7b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-qwen-32b",
        "qwen2.5-7b-instruct",
        "qwen2.5-7b-instruct-awq",
        "qwen2.5-32b-instruct",
        "qwen2.5-32b-instruct-awq",
        "qwen2.5-72b-instruct",
        "qwen2.5-72b-instruct-awq",
        "qwen2.5-coder-32b-instruct",
        "qwq-32b",
        "qwen3-8b",
        "llama-2-7b-chat",
        "falcon-40b",
        "olmo-7b",
        "biomistral-7b",
    } <= names
    llama = catalog.get_preset("llama-2-7b-chat")
    assert llama.gated and llama.id == "meta-llama/Llama-2-7b-chat-hf"
    awq = catalog.get_preset("qwen2.5-72b-instruct-awq")
    assert awq.id == "Qwen/Qwen2.5-72B-Instruct-AWQ"
    assert awq.architecture.quantization == Quantize.awq


def test_get_preset_unknown_lists_known_names() -> None:
    with pytest.raises(catalog.CatalogError, match="falcon-40b"):
        catalog.get_preset("no-such-model")


def test_presets_are_copies() -> None:
    catalog.get_preset("falcon-40b").architecture.num_layers = 1
    assert catalog.get_preset("falcon-40b").architecture.num_layers == 60


def test_every_gpu_has_product_labels() -> None:
    gpus = catalog.gpu_types()
    assert {g.name for g in gpus} >= {
        "nvidia-t4",
        "nvidia-a10g",
        "nvidia-l4",
        "nvidia-l40s",
        "nvidia-a100-40gb",
        "nvidia-a100-80gb",
        "nvidia-h100-80gb",
        "nvidia-h200-141gb",
    }
    seen: set[str] = set()
    for gpu in gpus:
        assert gpu.products, gpu.name
        for product in gpu.products:
            assert product.casefold() not in seen, product
            seen.add(product.casefold())
            assert catalog.find_gpu_for_node({catalog.PRODUCT_LABEL: product}) == gpu
        assert gpu.memory_gib == pytest.approx(gpu.memory_mib / 1024)


@pytest.mark.parametrize(
    ("name", "memory_gib", "capability"),
    [
        ("nvidia-t4", 15.0, (7, 5)),
        ("nvidia-a10g", 22.49, (8, 6)),
        ("nvidia-l4", 22.49, (8, 9)),
        ("nvidia-l40s", 44.99, (8, 9)),
        ("nvidia-a100-40gb", 40.0, (8, 0)),
        ("nvidia-a100-80gb", 80.0, (8, 0)),
        ("nvidia-h100-80gb", 79.65, (9, 0)),
        ("nvidia-h200-141gb", 140.40, (9, 0)),
    ],
)
def test_gpu_figures(name: str, memory_gib: float, capability: tuple[int, int]) -> None:
    gpu = catalog.find_gpu(name)
    assert gpu.memory_gib == pytest.approx(memory_gib, abs=0.01)
    assert gpu.capability == capability


def test_find_gpu_for_node() -> None:
    label = catalog.PRODUCT_LABEL
    assert catalog.find_gpu_for_node({label: "NVIDIA-H100-80GB-HBM3"}) == catalog.find_gpu("nvidia-h100-80gb")
    assert catalog.find_gpu_for_node({label: "Tesla-T4-SHARED"}) == catalog.find_gpu("nvidia-t4")
    assert catalog.find_gpu_for_node({label: "nvidia-a100-80gb-pcie"}) == catalog.find_gpu("nvidia-a100-80gb")
    assert catalog.find_gpu_for_node({label: "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}) is None
    assert catalog.find_gpu_for_node({label: "NVIDIA-B200"}) is None
    assert catalog.find_gpu_for_node({}) is None


def test_find_gpu_unknown_lists_known_names() -> None:
    with pytest.raises(catalog.CatalogError, match="nvidia-l4"):
        catalog.find_gpu("nvidia-b200")


def test_extra_gpu_types_extend_and_override() -> None:
    extra: dict[str, dict[str, Any]] = {
        "nvidia-b200": {"memoryMiB": 183359, "computeCapability": 10.0, "products": ["NVIDIA-B200"]},
        "nvidia-l4": {"products": ["NVIDIA-L4", "NVIDIA-L4-Custom"]},
    }
    gpus = catalog.gpu_types(extra)
    assert [g.name for g in gpus][-1] == "nvidia-b200"
    b200 = catalog.find_gpu("nvidia-b200", extra)
    assert b200.capability == (10, 0)
    assert b200.memory_gib == pytest.approx(179.06, abs=0.01)
    l4 = catalog.find_gpu("nvidia-l4", extra)
    assert l4.memory_mib == 23034  # merged over the built-in entry
    assert catalog.find_gpu_for_node({catalog.PRODUCT_LABEL: "NVIDIA-L4-Custom"}, extra) == l4
    assert catalog.find_gpu_for_node({catalog.PRODUCT_LABEL: "NVIDIA-B200"}, extra) == b200
    # The list form works too, and the built-in catalog is left alone.
    listed = catalog.gpu_types([{"name": "nvidia-b200", **extra["nvidia-b200"]}])
    assert listed[-1] == b200
    assert "nvidia-b200" not in {g.name for g in catalog.gpu_types()}


def test_extra_gpu_types_are_validated() -> None:
    with pytest.raises(catalog.CatalogError, match="nvidia-x"):
        catalog.gpu_types({"nvidia-x": {"memoryMiB": 1000}})
    with pytest.raises(catalog.CatalogError, match="nvidia-l4"):
        catalog.gpu_types({"nvidia-l4": {"computeCapability": "fast"}})
    with pytest.raises(catalog.CatalogError, match="needs a name"):
        catalog.gpu_types([{"memoryMiB": 1000}])


def test_extra_gpu_used_by_the_planner() -> None:
    extra = {"nvidia-b200": {"memoryMiB": 183359, "computeCapability": "10.0", "products": ["NVIDIA-B200"]}}
    facts = catalog.get_preset("qwen2.5-72b-instruct").architecture
    with pytest.raises(planner.PlanError) as info:
        planner.plan(facts, catalog.find_gpu("nvidia-h100-80gb"), gpus=1, catalog=catalog.gpu_types(extra))
    # 135.4143 + 10.0 + 1.0 + 2.7083 = 149.12 GiB <= 0.95 * 179.06 = 170.11
    assert "gpus 1 on nvidia-b200" in info.value.message
