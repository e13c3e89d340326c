"""`modeldeploy run` refuses peering settings that would do nothing or break peering."""

from __future__ import annotations

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
