"""The TGI launcher flags the operator knows, against a committed copy of TGI 3.3.x's launcher
flag reference (docs/reference/tgi-launcher-3.3.yaml: facts, with source and version)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import tgi
from modeldeploy.api import DEFAULT_IMAGE, Dtype, KvCacheDtype, Quantize

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "tgi-launcher-3.3.yaml"


def reference() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    return data


def flags() -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in reference()["flags"]}


def test_reference_is_for_the_default_image() -> None:
    src = reference()["source"]
    tag = DEFAULT_IMAGE.rpartition(":")[2]
    assert src["tag"] == f"v{tag}"
    assert src["repository"] == "https://github.com/huggingface/text-generation-inference"
    assert len(src["commit"]) == 40


def test_every_known_flag_is_a_launcher_flag() -> None:
    unknown = tgi.KNOWN_FLAGS - flags().keys()
    assert not unknown, f"not text-generation-launcher 3.3 flags: {sorted(unknown)}"


def test_every_launcher_flag_is_known() -> None:
    missing = flags().keys() - tgi.KNOWN_FLAGS
    assert not missing, f"launcher flags missing from tgi.KNOWN_FLAGS: {sorted(missing)}"


def test_boolean_flags_are_exactly_the_switches() -> None:
    switches = {name for name, f in flags().items() if not f["takesValue"]}
    assert switches == tgi.BOOLEAN_FLAGS


@pytest.mark.parametrize(("flag", "enum"), [("quantize", Quantize), ("dtype", Dtype),
                                            ("kv-cache-dtype", KvCacheDtype)])  # fmt: skip
def test_typed_enums_are_the_launchers_values(flag: str, enum: type[Any]) -> None:
    assert [e.value for e in enum] == flags()[flag]["values"]


def test_owned_and_secret_flags_are_launcher_flags() -> None:
    known = flags().keys()
    assert known >= set(tgi.OWNED_FLAGS)
    assert known >= tgi.SECRET_FLAGS


def test_every_launcher_flag_is_judged_exactly_once() -> None:
    # Owned by a field, a credential, refused with a reason, or safe with a value shape: a flag a
    # new TGI adds must be judged here before a ModelDeployment may pass it.
    groups = [set(tgi.OWNED_FLAGS), set(tgi.SECRET_FLAGS), set(tgi.REFUSED_FLAGS), set(tgi.SAFE_FLAGS)]
    judged = [name for group in groups for name in group]
    assert sorted(judged) == sorted(set(judged)), "a flag is in two groups"
    assert set(judged) == set(flags())


def test_safe_switches_are_the_launchers_switches() -> None:
    for name, shape in tgi.SAFE_FLAGS.items():
        assert (shape is None) == (not flags()[name]["takesValue"]), name


@pytest.mark.parametrize("flag", ["rope-scaling", "usage-stats"])
def test_enumerated_values_are_the_launchers(flag: str) -> None:
    for value in flags()[flag]["values"]:
        assert tgi.value_ok(flag, value), value
    assert not tgi.value_ok(flag, "other")


def test_defaults_of_safe_flags_fit_their_shapes() -> None:
    for name, shape in tgi.SAFE_FLAGS.items():
        default = flags()[name].get("default")
        if shape is not None and default is not None:
            assert tgi.value_ok(name, str(default)), (name, default)
