"""tests/conftest.py makes a session with any skipped (or xfailed) test fail: checked by running
pytest on small generated test files with that hook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_configure  # noqa: F401\n")
    (tmp_path / "test_sample.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "devtools")])}
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--rootdir",
        str(tmp_path),
    ]
    return subprocess.run(
        [*argv, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


PASSING = "def test_ok():\n    pass\n"


def test_all_passing_is_a_success(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, PASSING)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            PASSING + "import pytest\ndef test_skipped():\n    pytest.skip('no Lua runtime')\n",
            "no Lua runtime",
        ),
        (
            PASSING
            + "import pytest\n@pytest.mark.skipif(True, reason='not here')\ndef test_skipif():\n    pass\n",
            "not here",
        ),
        ("import pytest\npytest.importorskip('no_such_module_xyz')\n" + PASSING, "no_such_module_xyz"),
        (
            PASSING + "import pytest\n@pytest.mark.xfail(reason='known bug')\ndef test_x():\n    assert 0\n",
            "known bug",
        ),
        (PASSING + "import pytest\n@pytest.mark.xfail(reason='flaky')\ndef test_xp():\n    pass\n", "flaky"),
    ],
    ids=["skip", "skipif", "importorskip", "xfail", "xpass"],
)
def test_a_skip_fails_the_session(tmp_path: Path, source: str, expected: str) -> None:
    res = run_pytest(tmp_path, source)
    assert res.returncode == pytest.ExitCode.TESTS_FAILED, res.stdout + res.stderr
    assert "skipped tests fail the suite" in res.stdout
    assert expected in res.stdout
