"""`modeldeploy run` refuses peering settings that would do nothing or break peering."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeldeploy import cli


@pytest.mark.parametrize("args", [["--priority=5"], ["--peering-lifetime=30"]])
def test_peering_settings_need_peering(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", *args]) == 2
    assert "need --peering" in capsys.readouterr().err


def test_peering_lifetime_has_a_floor(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["run", "--peering", f"--peering-lifetime={cli.MIN_PEERING_LIFETIME - 1}"])
    assert f"at least {cli.MIN_PEERING_LIFETIME} seconds" in capsys.readouterr().err
    parsed = cli.parser().parse_args(["run", "--peering", f"--peering-lifetime={cli.MIN_PEERING_LIFETIME}"])
    assert parsed.peering_lifetime == cli.MIN_PEERING_LIFETIME


def test_plan_applies_rules_that_need_no_architecture_facts(tmp_path: Path) -> None:
    # exl2 cannot be sharded: the operator refuses it, and so must the preview, with or without
    # architecture facts for the model.
    f = tmp_path / "m.yaml"
    f.write_text(
        "apiVersion: modeldeploy.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\n"
        "spec: {model: {id: someone/unlisted-exl2}, engine: {quantize: exl2}, resources: {gpus: 2}}\n"
    )
    assert cli.main(["plan", "-f", str(f)]) == 1
    assert cli.main(["render", "-f", str(f)]) == 1


def test_render_refuses_a_name_no_child_can_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(
        "apiVersion: modeldeploy.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: my.model}\n"
        "spec: {model: {id: cognitivecomputations/dolphin-2.8-mistral-7b-v02}, resources: {gpus: 1}}\n"
    )
    assert cli.main(["render", "-f", str(f)]) == 1
    assert "metadata.name" in capsys.readouterr().err
