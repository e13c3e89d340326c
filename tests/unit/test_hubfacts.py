"""Architecture facts read from a repository (the local Hub stand-in, never the internet)."""

from __future__ import annotations

import pytest

from modeldeploy.hubfacts import FactsUnavailableError, HubFacts, parse_config
from modeldeploy.prefetch import count_parameters
from tests.standins.hf_hub import HubStandIn

# tiny_model_files(hidden=64, layers=2, vocab=256): embeddings and lm_head 256x64 each; per layer
# q,o 64x64; k,v 32x64; gate,up 128x64; down 64x128; two norms of 64; a final norm of 64.
TINY_PARAMS = 2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64) + 64


def test_reads_config_and_counts_parameters() -> None:
    with HubStandIn() as hub:
        facts = HubFacts(hub.url).read("acme/tiny-llm", "main")
    assert facts.num_layers == 2
    assert facts.hidden_size == 64
    assert facts.num_attention_heads == 4
    assert facts.num_key_value_heads == 2
    assert facts.max_position_embeddings == 512
    assert facts.torch_dtype.value == "bfloat16"
    assert facts.parameters_billions == pytest.approx(TINY_PARAMS / 1e9, abs=1e-3)


def test_gated_and_missing_are_unavailable_and_remembered() -> None:
    with HubStandIn() as hub:
        reader = HubFacts(hub.url)
        with pytest.raises(FactsUnavailableError):
            reader.read("acme/tiny-llm-gated", "main")
        with pytest.raises(FactsUnavailableError):
            reader.read("acme/no-such-model", "main")
        before = len(hub.requests)
        with pytest.raises(FactsUnavailableError):
            reader.read("acme/no-such-model", "main")
        assert len(hub.requests) == before  # not asked again within the retry window


def test_parse_config_family_keys() -> None:
    falcon = {"n_layer": 60, "hidden_size": 8192, "num_attention_heads": 128, "num_kv_heads": 8,
              "new_decoder_architecture": True, "torch_dtype": "bfloat16"}  # fmt: skip
    f = parse_config(falcon, 41.8e9)
    assert (f.num_layers, f.num_key_value_heads, f.max_position_embeddings) == (60, 8, 2048)
    awq = {
        "num_hidden_layers": 80, "hidden_size": 8192, "num_attention_heads": 64, "num_key_value_heads": 8,
        "max_position_embeddings": 32768, "torch_dtype": "float16",
        "quantization_config": {"quant_method": "awq"},
    }  # fmt: skip
    assert parse_config(awq, 72.7e9).quantization is not None


def test_packed_4bit_counts_eight_per_int32() -> None:
    header = {"a.qweight": {"dtype": "I32", "shape": [64, 8]}, "a.scales": {"dtype": "F16", "shape": [64]}}
    assert count_parameters(header, packed_4bit=True) == 64 * 8 * 8 + 64
    assert count_parameters(header) == 64 * 8 + 64


@pytest.mark.parametrize("revision", ["has space", "line\nbreak", "../../etc/passwd", "feature/x"])
def test_odd_revisions_never_escape_the_reader(revision: str) -> None:
    # Whatever reaches it, the reader answers "no facts" (or facts), never an unexpected error.
    with HubStandIn() as hub:
        reader = HubFacts(hub.url)
        with pytest.raises(FactsUnavailableError):
            reader.read("acme/tiny-llm", revision)
