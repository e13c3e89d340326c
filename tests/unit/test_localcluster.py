"""The local control-plane harness (devtools/mdlocal), without a cluster: what `wait_for` reports
when a check keeps failing, and that the harness stays out of the operator's package."""

from __future__ import annotations

import ast
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mdlocal.localcluster import ProcessExitedError, wait_for

REPO = Path(__file__).resolve().parents[2]


def failing_then(exc: BaseException, times: int) -> tuple[Callable[[], bool], list[int]]:
    """A check that raises `exc` `times` times, then returns True; and its call counter."""
    calls = [0]

    def check() -> bool:
        calls[0] += 1
        if calls[0] <= times:
            raise exc
        return True

    return check, calls


def test_timeout_names_the_last_error_of_the_check() -> None:
    def check() -> bool:
        raise AssertionError("replicas: 1 != 2")

    with pytest.raises(TimeoutError) as info:
        wait_for("two replicas", check, timeout=0.3, interval=0.05)
    msg = str(info.value)
    assert "two replicas" in msg
    assert "AssertionError: replicas: 1 != 2" in msg
    assert isinstance(info.value.__cause__, AssertionError)


def test_timeout_says_when_the_check_last_returned_false() -> None:
    calls = [0]

    def check() -> bool:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyError("status")
        return False

    with pytest.raises(TimeoutError) as info:
        wait_for("status", check, timeout=0.3, interval=0.05)
    msg = str(info.value)
    assert "returned False" in msg
    assert "KeyError: 'status'" in msg  # the earlier error is still worth seeing


@pytest.mark.parametrize(
    "exc",
    [
        TypeError("check() got an unexpected keyword argument 'namespace'"),
        TypeError("'<' not supported between instances of 'str' and 'int'"),
        AttributeError("'Cluster' object has no attribute 'lsit'"),
        NameError("name 'namespcae' is not defined"),
        UnboundLocalError("cannot access local variable 'obj'"),
        ImportError("cannot import name 'gone'"),
        ProcessExitedError("apiserver exited with 1"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_programming_errors_end_the_wait_at_once(exc: Exception) -> None:
    check, calls = failing_then(exc, times=1000)
    started = time.monotonic()
    with pytest.raises(type(exc)) as info:
        wait_for("anything", check, timeout=5, interval=0.01)
    assert info.value is exc
    assert calls[0] == 1
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "exc",
    [
        # An object read back as None (not created yet), then indexed or read.
        TypeError("'NoneType' object is not subscriptable"),
        AttributeError("'NoneType' object has no attribute 'get'"),
        KeyError("status"),
        IndexError("list index out of range"),
        AssertionError("kubectl get failed"),
        ConnectionRefusedError(111, "Connection refused"),
        OSError("server not up"),
    ],
    ids=lambda e: f"{type(e).__name__}:{e}",
)
def test_not_yet_errors_keep_the_wait_going(exc: Exception) -> None:
    check, calls = failing_then(exc, times=3)
    wait_for("anything", check, timeout=5, interval=0.01)
    assert calls[0] == 4


def test_harness_is_not_in_the_operator_package() -> None:
    assert importlib.util.find_spec("modeldeploy.localcluster") is None
    package = REPO / "operator" / "modeldeploy"
    assert not (package / "localcluster.py").exists()
    # Nothing the operator ships imports a development tool or the tests.
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in {"mdlocal", "tests"}, f"{path.name} imports {name}"
