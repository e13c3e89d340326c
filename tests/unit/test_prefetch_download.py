"""The prefetch program, run for real against the local Hub stand-in (tests/standins/hf_hub.py).

Each download runs the exact source and arguments the rendered Job carries, in a subprocess with
the Job's environment (HF_HOME pointed at a temporary directory instead of the volume, the token
Secret reference replaced by its value), so what is tested is what the cluster would run.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modeldeploy import cache, prefetch, render
from modeldeploy.api import Cache, ModelDeploymentSpec, SecretKeyRef
from tests.standins.hf_hub import GRANTED_TOKEN, OTHER_TOKEN, HubStandIn, RepoFile, default_repos, make_repo

Obj = dict[str, Any]
EXPECTED_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "model.safetensors"}  # fmt: skip
SECRET = SecretKeyRef(name="hf-token", key="token")
CONFIG = RepoFile("config.json", b"{}\n")


# Counted by hand from tiny_model_files(): see tests/unit/test_hubfacts.py.
TINY_PARAMS = 2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64) + 64


def lfs(name: str, size: int) -> RepoFile:
    return RepoFile(name, os.urandom(size), lfs=True)


def _sharded_files() -> list[RepoFile]:
    shards = {f"model-0000{i}-of-00002.safetensors": os.urandom(1000 + i) for i in (1, 2)}
    index = {"metadata": {"total_size": 2001}, "weight_map": {"a": next(iter(shards)), "b": list(shards)[1]}}
    return [
        RepoFile("config.json", b"{}\n"),
        RepoFile("model.safetensors.index.json", json.dumps(index).encode()),
        *(RepoFile(name, data, lfs=True) for name, data in shards.items()),
        # A second copy of the same weights in another layout, as some repos ship: not fetched.
        RepoFile("consolidated.safetensors", os.urandom(2001), lfs=True),
        RepoFile("pytorch_model.bin", os.urandom(500), lfs=True),
    ]


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandIn]:
    repos = [
        *default_repos(),
        make_repo("acme/sharded", _sharded_files()),
        make_repo("acme/bin-only", [CONFIG, lfs("pytorch_model.bin", 64), lfs("training_args.bin", 8)]),
        make_repo("acme/no-weights", [CONFIG, lfs("model.gguf", 64)]),
    ]
    with HubStandIn(repos) as server:
        yield server


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    home: Path
    summary: Obj

    def repo_dir(self, model_id: str) -> Path:
        return self.home / "hub" / ("models--" + model_id.replace("/", "--"))


def run_job(
    endpoint: str, home: Path, model_id: str, revision: str = "main", token: str | None = None
) -> Run:
    """Run the rendered Job's container command locally."""
    job = cache.render_job(model_id, revision, "ml", image="tgi", hf_endpoint=endpoint,
                           token_ref=SECRET if token is not None else None)  # fmt: skip
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["python", "-c"]
    term = home / "termination-log"
    args = [str(term) if a == cache.TERMINATION_LOG else a for a in c["args"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    for e in c["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (SECRET.name, SECRET.key)
            env[e["name"]] = token or ""
        else:
            env[e["name"]] = str(home) if e["name"] == "HF_HOME" else e["value"]
    proc = subprocess.run(
        [sys.executable, "-c", c["command"][2], *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    summary = json.loads(term.read_text()) if term.exists() else {}
    return Run(proc.returncode, proc.stdout, proc.stderr, home, summary)


def operator_view(model_id: str, condition: str, code: int, message: str) -> cache.CacheVerdict:
    """cache_status for a bound PVC and a finished Job whose pod ended with `code` and `message`."""
    pvc = cache.render_pvc(model_id, "main", "ml", Cache(enabled=True), "1Mi")
    pvc["status"] = {"phase": "Bound", "capacity": {"storage": "1Mi"}}
    job = cache.render_job(model_id, "main", "ml", image="tgi")
    job["status"] = {"conditions": [{"type": condition, "status": "True"}]}
    terminated = {"exitCode": code, "message": message}
    pod = {
        "metadata": {"name": "x"},
        "status": {"containerStatuses": [{"name": "prefetch", "state": {"terminated": terminated}}]},
    }
    return cache.cache_status(cache.claim_name(model_id, "main"), pvc, job, [pod])


def test_the_job_embeds_the_module_source_unchanged() -> None:
    (c,) = cache.render_job("acme/tiny-llm", "main", "ml", image="tgi")["spec"]["template"]["spec"][
        "containers"
    ]
    source = Path(prefetch.__file__).read_text(encoding="utf-8")
    assert c["command"][2] == source == cache.prefetch_source()
    compile(source, "<prefetch>", "exec")
    assert "import modeldeploy" not in source and "from modeldeploy" not in source


def test_download_gives_the_hub_cache_layout(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/tiny-llm")
    assert run.code == 0, run.stderr
    repo = hub.repos["acme/tiny-llm"]
    root = run.repo_dir("acme/tiny-llm")
    assert (root / "refs" / "main").read_text() == repo.sha
    snapshot = root / "snapshots" / repo.sha
    assert {p.name for p in snapshot.iterdir()} == EXPECTED_FILES
    for name in EXPECTED_FILES:
        assert (snapshot / name).read_bytes() == repo.files[name].content
    # LFS files are stored under their sha256, as huggingface_hub does for the real Hub.
    weights = snapshot / "model.safetensors"
    assert weights.is_symlink()
    assert weights.resolve().name == hashlib.sha256(weights.read_bytes()).hexdigest()
    header_len = struct.unpack("<Q", weights.read_bytes()[:8])[0]
    header = json.loads(weights.read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "pt"} and "lm_head.weight" in header

    marker = json.loads(
        (tmp_path / ".modeldeploy" / f"{cache.cache_key('acme/tiny-llm', 'main')}.json").read_text()
    )
    size = sum(repo.files[n].size for n in EXPECTED_FILES)
    assert marker["modelId"] == "acme/tiny-llm"
    assert marker["revision"] == "main"
    assert marker["commit"] == repo.sha
    assert marker["bytes"] == size
    assert sorted(marker["files"]) == sorted(EXPECTED_FILES)
    facts = run.summary.pop("architecture")
    assert run.summary == {
        "commit": repo.sha,
        "bytes": size,
        "files": len(EXPECTED_FILES),
        "format": "safetensors",
    }
    # The planner's inputs, read from the downloaded files (so gated models are planned too).
    assert facts["parameters"] == TINY_PARAMS
    assert (facts["num_hidden_layers"], facts["hidden_size"], facts["num_key_value_heads"]) == (2, 64, 2)
    assert len(json.dumps(facts)) < 1024  # the termination message keeps 4096 bytes in all
    assert f"= {repo.sha}" in run.stdout

    # What the operator makes of that pod: Ready at the resolved commit.
    verdict = operator_view("acme/tiny-llm", "Complete", run.code, json.dumps(run.summary))
    assert (verdict.status.phase, verdict.status.revision) == ("Ready", repo.sha)


def test_a_second_run_reuses_the_volume(hub: HubStandIn, tmp_path: Path) -> None:
    assert run_job(hub.url, tmp_path, "acme/tiny-llm").code == 0
    before = len(hub.requests)
    again = run_job(hub.url, tmp_path, "acme/tiny-llm")
    assert again.code == 0, again.stderr
    fetched = [p for m, p, _ in hub.requests[before:] if m == "GET" and "/resolve/" in p]
    assert fetched == []


def test_tag_revision_writes_its_ref(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/tiny-llm", "v1.0")
    assert run.code == 0, run.stderr
    sha = hub.repos["acme/tiny-llm"].sha
    assert (run.repo_dir("acme/tiny-llm") / "refs" / "v1.0").read_text() == sha
    assert run.summary["commit"] == sha


def test_commit_revision(hub: HubStandIn, tmp_path: Path) -> None:
    sha = hub.repos["acme/tiny-llm"].sha
    run = run_job(hub.url, tmp_path, "acme/tiny-llm", sha)
    assert run.code == 0, run.stderr
    assert (run.repo_dir("acme/tiny-llm") / "snapshots" / sha / "config.json").is_file()


def test_gated_without_token(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/tiny-llm-gated")
    assert run.code == prefetch.EXIT_ACCESS == 10, run.stderr
    assert run.summary["error"] == "GatedRepo"
    assert "no token was given" in run.summary["message"]
    assert not list(tmp_path.glob("hub/*/snapshots/*/model.safetensors"))
    assert not (tmp_path / ".modeldeploy").exists()


def test_gated_with_a_token_not_granted(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/tiny-llm-gated", token=OTHER_TOKEN)
    assert run.code == 10, run.stderr
    assert "the token given has no access" in run.summary["message"]


def test_unknown_token(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/tiny-llm-gated", token="hf_not_a_token")
    assert run.code == 10, run.stderr
    assert run.summary["error"] == "Unauthorized"


def test_gated_with_the_right_token(hub: HubStandIn, tmp_path: Path) -> None:
    before = len(hub.requests)
    run = run_job(hub.url, tmp_path, "acme/tiny-llm-gated", token=GRANTED_TOKEN)
    assert run.code == 0, run.stderr
    repo = hub.repos["acme/tiny-llm-gated"]
    assert (run.repo_dir(repo.id) / "snapshots" / repo.sha / "model.safetensors").read_bytes() == repo.files[
        "model.safetensors"
    ].content
    downloads = [a for m, p, a in hub.requests[before:] if m == "GET" and "/resolve/" in p]
    assert downloads and all(a == f"Bearer {GRANTED_TOKEN}" for a in downloads)
    assert GRANTED_TOKEN not in run.stdout + run.stderr


def test_unknown_repo(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/does-not-exist")
    assert run.code == prefetch.EXIT_NOT_FOUND == 11, run.stderr
    assert run.summary["error"] == "RepositoryNotFound"


@pytest.mark.parametrize("revision", ["no-such-branch", "0" * 40])
def test_unknown_revision(hub: HubStandIn, tmp_path: Path, revision: str) -> None:
    run = run_job(hub.url, tmp_path, "acme/tiny-llm", revision)
    assert run.code == 11, run.stderr
    assert run.summary["error"] == "RevisionNotFound"


def test_sharded_repo_fetches_only_the_indexed_shards(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/sharded")
    assert run.code == 0, run.stderr
    snapshot = run.repo_dir("acme/sharded") / "snapshots" / hub.repos["acme/sharded"].sha
    assert {p.name for p in snapshot.iterdir()} == {
        "config.json", "model.safetensors.index.json",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    }  # fmt: skip


def test_bin_weights_only_when_there_are_no_safetensors(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/bin-only")
    assert run.code == 0, run.stderr
    assert run.summary["format"] == "bin"
    snapshot = run.repo_dir("acme/bin-only") / "snapshots" / hub.repos["acme/bin-only"].sha
    assert {p.name for p in snapshot.iterdir()} == {"config.json", "pytorch_model.bin"}


def test_no_weights(hub: HubStandIn, tmp_path: Path) -> None:
    run = run_job(hub.url, tmp_path, "acme/no-weights")
    assert run.code == prefetch.EXIT_NO_WEIGHTS == 14, run.stderr
    assert run.summary["error"] == "NoWeights"


def test_unreachable_hub_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = run_job(f"http://127.0.0.1:{port}", tmp_path, "acme/tiny-llm")
    assert run.code == prefetch.EXIT_OTHER == 13, run.stderr
    assert (
        run.code
        not in cache.render_job("a/b", "main", "ml", image="x")["spec"]["podFailurePolicy"]["rules"][0][
            "onExitCodes"
        ]["values"]
    )


def test_volume_too_small(hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, with the free space faked: exit 12 with the bytes needed, then VolumeTooSmall."""
    import shutil

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    term = tmp_path / "term"
    code = prefetch.main(["--model-id", "acme/tiny-llm", "--cache-key", "k", "--termination-log", str(term),
                          "--progress-seconds", "0"])  # fmt: skip
    assert code == prefetch.EXIT_NO_SPACE == 12
    summary = json.loads(term.read_text())
    repo = hub.repos["acme/tiny-llm"]
    assert summary["needBytes"] == sum(repo.files[n].size for n in EXPECTED_FILES)

    verdict = operator_view("acme/tiny-llm", "Failed", code, term.read_text())
    assert verdict.reason == "VolumeTooSmall"
    assert "set spec.cache.size to at least 3Gi" in verdict.message


# ---- file selection (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "weight_map", "files", "fmt"),
    [
        (["config.json", "model.safetensors", "pytorch_model.bin", "README.md", ".gitattributes"], None,
         ["config.json", "model.safetensors"], "safetensors"),
        (["config.json", "pytorch_model.bin", "training_args.bin", "tokenizer.model", "merges.txt"],
         None, ["config.json", "merges.txt", "pytorch_model.bin", "tokenizer.model"], "bin"),
        (["a.safetensors", "b.safetensors", "consolidated.safetensors", "model.safetensors.index.json"],
         {"x": "a.safetensors", "y": "b.safetensors"},
         ["a.safetensors", "b.safetensors", "model.safetensors.index.json"], "safetensors"),
        (["model.safetensors", "onnx/model.safetensors", "original/params.json", "chat_template.jinja"], None,
         ["chat_template.jinja", "model.safetensors"], "safetensors"),
        (["config.json", "modeling_custom.py", "tokenizer.tiktoken", "model.safetensors"], None,
         ["config.json", "model.safetensors", "modeling_custom.py", "tokenizer.tiktoken"], "safetensors"),
        (["config.json", "model.gguf"], None, ["config.json"], ""),
    ],
)  # fmt: skip
def test_plan_files(names: list[str], weight_map: dict[str, str] | None, files: list[str], fmt: str) -> None:
    assert prefetch.plan_files(names, weight_map) == (files, fmt)


@pytest.mark.parametrize("name", ["model.safetensors", "we[ird]*?.json", "a-b_c.txt"])
def test_glob_escape_matches_only_the_name(name: str) -> None:
    import fnmatch

    pattern = prefetch.glob_escape(name)
    assert fnmatch.fnmatch(name, pattern)
    assert not fnmatch.fnmatch(name + "x", pattern)
    assert not fnmatch.fnmatch("x" + name, pattern)


def test_the_operator_imports_it_without_huggingface_hub() -> None:
    code = "import sys, modeldeploy.cache, modeldeploy.prefetch; assert 'huggingface_hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    blobs = tmp_path / "blobs"
    blobs.mkdir()
    with prefetch.Progress(str(blobs), total=2 * 1024**2, interval=0.02):
        (blobs / "x.incomplete").write_bytes(b"\0" * 1024**2)
        time.sleep(0.2)
    out = capsys.readouterr().out
    assert "progress: 1.00 MiB of 2.00 MiB (50%)" in out


def test_bin_only_weights_are_mounted_writable_for_tgi_to_convert(hub: HubStandIn, tmp_path: Path) -> None:
    # The real program's termination message, as the kubelet would hand it to the operator.
    run = run_job(hub.url, tmp_path, "acme/bin-only")
    assert run.code == 0, run.stderr
    message = (tmp_path / "termination-log").read_text()
    verdict = operator_view("acme/bin-only", "Complete", 0, message)
    assert verdict.ready and verdict.bin_only
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"id": "acme/bin-only"}, "resources": {"gpus": 1}, "cache": {"enabled": True}}
    )
    res = render.Resolved(model_id="acme/bin-only", gpus=1, num_shard=1, cache=cache.mount(verdict, True))
    (c,) = render.deployment("m", "ml", spec, res, None)["spec"]["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/data", "readOnly": False} in c["volumeMounts"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]
    # safetensors weights stay read-only.
    safe = run_job(hub.url, tmp_path / "safe", "acme/tiny-llm")
    assert safe.code == 0, safe.stderr
    verdict = operator_view(
        "acme/tiny-llm", "Complete", 0, (tmp_path / "safe" / "termination-log").read_text()
    )
    assert verdict.ready and not verdict.bin_only
    assert cache.mount(verdict, True).writable is False
