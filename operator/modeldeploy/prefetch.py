"""Prefetch one model revision into a Hugging Face hub cache: the weight-cache Job's program.

The Job runs this file's source with `python -c` in the TGI image, which has huggingface_hub but
not modeldeploy, so it may import only the standard library and huggingface_hub (imported inside
functions, so the operator can import this module without it). It downloads into HF_HOME with
huggingface_hub.snapshot_download, giving exactly the layout TGI reads offline:
`$HF_HOME/hub/models--org--name/{refs/<revision>, blobs/, snapshots/<commit>/...}`.

Files fetched (top level of the repo only, as TGI only looks there for weights):
  - weights: the *.safetensors files; only when there are none, the *.bin files. When the weight
    index (model.safetensors.index.json) is present, just the shards it names, so a repo that
    also ships a consolidated copy is not downloaded twice. Names containing "args",
    "arguments" or "training" are skipped, as TGI does.
  - everything else TGI or the tokenizer reads: *.json, tokenizer*, *.model, *.txt, *.jinja,
    *.tiktoken, and *.py (custom modeling code, used with trust_remote_code).

At the end it writes `$HF_HOME/.modeldeploy/<cache key>.json` (model id, requested revision,
resolved commit, bytes, files) and a one-line JSON summary to the termination log, which the
operator reads from the pod status instead of the logs.

Exit codes, so the operator can name the cause without reading logs:
  0  the snapshot is complete
  10 the repo is gated or private and the token is missing, invalid or not granted access
  11 the repo or the revision does not exist
  12 the volume is too small (the summary carries needBytes)
  13 anything else (network, hub errors); the Job retries these
  14 the revision has no safetensors or .bin weights at its top level
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import json
import os
import shutil
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

EXIT_OK = 0
EXIT_ACCESS = 10
EXIT_NOT_FOUND = 11
EXIT_NO_SPACE = 12
EXIT_OTHER = 13
EXIT_NO_WEIGHTS = 14
FATAL_EXIT_CODES = (EXIT_ACCESS, EXIT_NOT_FOUND, EXIT_NO_SPACE, EXIT_NO_WEIGHTS)
"""Retrying cannot help these: the Job's podFailurePolicy fails the Job on them at once."""

MARKER_DIR = ".modeldeploy"
SUPPORT_PATTERNS = ("*.json", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py")
WEIGHT_INDEX = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}
# TGI's own weight filter (text_generation_server/utils/hub.py) skips these names.
NOT_WEIGHTS = ("arguments", "args", "training")
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4096
GIB = 1024**3


class PrefetchError(Exception):
    """A failure with its exit code, the hub's error name and a message for users."""

    def __init__(self, code: int, error: str, message: str, need_bytes: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.message = message
        self.need_bytes = need_bytes


def plan_files(names: Sequence[str], weight_map: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """(files to fetch, weights format "safetensors" | "bin" | "") from a revision's file names.

    `weight_map` is the index's {tensor: shard file}, when the revision has one.
    """
    top = [n for n in names if "/" not in n]

    def weights(ext: str) -> list[str]:
        return [n for n in top if n.endswith(ext) and not any(w in n for w in NOT_WEIGHTS)]

    fmt = "safetensors" if weights(".safetensors") else ("bin" if weights(".bin") else "")
    chosen = weights(f".{fmt}") if fmt else []
    if weight_map:
        indexed = set(weight_map.values()) & set(chosen)
        if indexed:
            chosen = sorted(indexed)
    support = [n for n in top if any(fnmatch.fnmatchcase(n, p) for p in SUPPORT_PATTERNS)]
    return sorted(set(chosen) | set(support)), fmt


def glob_escape(name: str) -> str:
    """A pattern matching exactly `name` under fnmatch (snapshot_download's allow_patterns)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def classify(exc: BaseException, model_id: str, revision: str, has_token: bool) -> PrefetchError:
    """Map an exception from huggingface_hub (or the OS) to an exit code and a message."""
    # Imported here, not at the top: the operator imports this module without huggingface_hub.
    try:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # huggingface_hub before 0.24, in older TGI images
        from huggingface_hub.utils import (  # type: ignore[attr-defined]
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

    chain = list(_chain(exc))
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    token_hint = "the token given has no access to it" if has_token else "no token was given"
    if any(isinstance(e, GatedRepoError) for e in chain):
        return PrefetchError(EXIT_ACCESS, "GatedRepo", f"{model_id} is gated and {token_hint}")
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return PrefetchError(EXIT_NOT_FOUND, "RevisionNotFound", f"{model_id} has no revision {revision!r}")
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        hint = "" if has_token else " (or it is private and no token was given)"
        return PrefetchError(EXIT_NOT_FOUND, "RepositoryNotFound", f"{model_id} does not exist{hint}")
    for e in chain:
        status = _status_code(e) if isinstance(e, HfHubHTTPError) else None
        if status == 401:
            why = "the hub refused the token (invalid or expired)" if has_token else "it needs a token"
            return PrefetchError(EXIT_ACCESS, "Unauthorized", f"{model_id}: HTTP 401, {why}")
        if status == 403:
            return PrefetchError(EXIT_ACCESS, "Forbidden", f"{model_id}: HTTP 403, {token_hint}")
    for e in chain:
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return PrefetchError(EXIT_NO_SPACE, "NoSpace", f"the volume is full: {detail}")
    return PrefetchError(EXIT_OTHER, type(exc).__name__, detail)


def _tree_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            # A file renamed or removed while walking is counted on the next pass.
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


def _incomplete_bytes(blobs: str) -> int:
    if not os.path.isdir(blobs):
        return 0
    return sum(e.stat().st_size for e in os.scandir(blobs) if e.name.endswith(".incomplete") and e.is_file())


def _existing_dir(path: str) -> str:
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _gib(n: float) -> str:
    """Human-readable bytes (binary units), e.g. 14.50 GiB."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


class Progress:
    """Prints how much has landed in the blobs folder every `interval` seconds (no tty bars)."""

    def __init__(self, blobs: str, total: int, interval: float) -> None:
        self.blobs = blobs
        self.total = total
        self.interval = interval
        self.start_bytes = _tree_bytes(blobs)
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Progress:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            done = max(0, _tree_bytes(self.blobs) - self.start_bytes)
            secs = max(time.monotonic() - self.start, 1e-6)
            pct = 100.0 * done / self.total if self.total else 100.0
            print(
                f"progress: {_gib(done)} of {_gib(self.total)} ({pct:.0f}%), {done / secs / 1e6:.1f} MB/s",
                flush=True,
            )


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _terminate(path: str, summary: Mapping[str, Any]) -> None:
    if not path:
        return
    text = json.dumps(summary, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > TERMINATION_LIMIT and "message" in summary:
        text = json.dumps({**summary, "message": str(summary["message"])[:1000]}, separators=(",", ":"))
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        print(f"cannot write the termination log {path}: {err}", file=sys.stderr)


def fetch(model_id: str, revision: str, cache_key: str, progress_seconds: float) -> dict[str, Any]:
    """Download the revision into the hub cache; the summary dict on success, PrefetchError else."""
    from huggingface_hub import (
        HfApi,
        constants,
        hf_hub_download,
        snapshot_download,
    )

    # Read at call time, not at huggingface_hub's import, so the paths follow this process's env.
    hf_home = os.path.expanduser(os.environ.get("HF_HOME") or constants.HF_HOME)
    # The same precedence huggingface_hub (and so TGI) uses; older TGI images set the legacy name.
    hub_cache = (
        os.environ.get("HF_HUB_CACHE")
        or os.environ.get("HUGGINGFACE_HUB_CACHE")
        or os.path.join(hf_home, "hub")
    )
    endpoint = os.environ.get("HF_ENDPOINT") or None
    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)

    info = api.model_info(model_id, revision=revision, files_metadata=True)
    sizes = {s.rfilename: (s.lfs.size if s.lfs is not None else (s.size or 0)) for s in info.siblings or []}
    names, fmt = plan_files(list(sizes))
    if not fmt:
        raise PrefetchError(
            EXIT_NO_WEIGHTS,
            "NoWeights",
            f"{model_id} at {revision!r} has no *.safetensors or *.bin weights at its top level",
        )
    index = WEIGHT_INDEX[fmt]
    if index in sizes:
        path = hf_hub_download(
            model_id, index, revision=revision, cache_dir=hub_cache, endpoint=endpoint, token=token
        )
        with open(path, encoding="utf-8") as f:
            names, fmt = plan_files(list(sizes), json.load(f).get("weight_map") or {})

    total = sum(sizes[n] for n in names)
    repo_dir = os.path.join(hub_cache, "models--" + model_id.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", info.sha or "")
    have = sum(sizes[n] for n in names if info.sha and os.path.isfile(os.path.join(snapshot, n)))
    blobs = os.path.join(repo_dir, "blobs")
    # Bytes of interrupted downloads (an earlier attempt) that huggingface_hub resumes.
    partial = _incomplete_bytes(blobs)
    os.makedirs(blobs, exist_ok=True)
    free = shutil.disk_usage(_existing_dir(hub_cache)).free
    need = total - have
    print(
        f"{model_id}@{revision} -> commit {info.sha}: {len(names)} files, {fmt} weights, "
        f"{_gib(total)} in all, {_gib(max(0, need - partial))} to fetch, {_gib(free)} free",
        flush=True,
    )
    if need - partial > free:
        raise PrefetchError(
            EXIT_NO_SPACE,
            "NoSpace",
            f"{model_id}@{revision} needs {_gib(total)} ({_gib(need - partial)} more) but only "
            f"{_gib(free)} is free on the volume",
            need_bytes=total,
        )

    started = time.monotonic()
    try:
        with Progress(blobs, max(0, need - partial), progress_seconds):
            folder = snapshot_download(
                model_id,
                revision=revision,
                cache_dir=hub_cache,
                endpoint=endpoint,
                token=token,
                allow_patterns=[glob_escape(n) for n in names],
            )
    except Exception as exc:
        err = classify(exc, model_id, revision, token is not None)
        if err.code == EXIT_NO_SPACE:
            err.need_bytes = total
        raise err from exc
    commit = os.path.basename(os.path.normpath(folder))
    fetched = [n for n in names if os.path.isfile(os.path.join(folder, n))]
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in fetched)
    if len(fetched) != len(names):
        missing = sorted(set(names) - set(fetched))
        raise PrefetchError(
            EXIT_OTHER, "Incomplete", f"files missing after download: {', '.join(missing[:5])}"
        )
    marker = {
        "modelId": model_id,
        "revision": revision,
        "commit": commit,
        "format": fmt,
        "bytes": size,
        "files": fetched,
        "completedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_atomic(os.path.join(hf_home, MARKER_DIR, f"{cache_key}.json"), json.dumps(marker, indent=2) + "\n")
    secs = time.monotonic() - started
    print(
        f"done: {model_id}@{revision} = {commit}, {len(fetched)} files, {_gib(size)} in {secs:.0f} s",
        flush=True,
    )
    summary: dict[str, Any] = {"commit": commit, "bytes": size, "files": len(fetched), "format": fmt}
    facts = architecture(folder, fetched)
    if facts:
        summary["architecture"] = facts
    return summary


# config.json keys the operator's planner reads (names differ by model family).
CONFIG_KEYS = (
    "num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd", "d_model",
    "num_attention_heads", "n_head", "num_heads", "num_key_value_heads", "num_kv_heads", "n_head_kv",
    "multi_query", "new_decoder_architecture", "head_dim", "max_position_embeddings", "n_positions",
    "max_sequence_length", "torch_dtype", "dtype",
)  # fmt: skip


# Checkpoint formats that pack eight 4-bit weights into each int32 element.
PACKED_4BIT = ("awq", "gptq", "marlin")


def count_parameters(header: Mapping[str, Any], packed_4bit: bool = False) -> int:
    """Parameters in one safetensors header (tensor name -> dtype, shape). Stdlib only: the
    operator's Hub reader uses it too."""
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for d in info["shape"]:
            n *= int(d)
        total += n * (8 if packed_4bit and info.get("dtype") == "I32" else 1)
    return total


def _header(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        # The format caps its header at 100 MB; anything else is not a safetensors file.
        if length > min(os.path.getsize(path) - 8, 100 * 1024 * 1024):
            raise ValueError(f"{path}: not a safetensors header")
        parsed: dict[str, Any] = json.loads(f.read(length))
    return parsed


def architecture(folder: str, files: Sequence[str]) -> dict[str, Any]:
    """The planner's inputs from the downloaded files: the config keys it reads and the parameter
    count from the safetensors headers (a few hundred bytes, so it fits the termination log).
    Read here because the Job has the token: gated models get planned too."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        quant = (cfg.get("quantization_config") or {}).get("quant_method")
        packed = quant in PACKED_4BIT
        params = sum(
            count_parameters(_header(os.path.join(folder, name)), packed)
            for name in files
            if name.endswith(".safetensors")
        )
    except (OSError, ValueError, KeyError, struct.error):
        return {}
    if not params:
        return {}
    out: dict[str, Any] = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
    if quant:
        out["quant_method"] = quant
    out["parameters"] = params
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prefetch a model revision into the Hugging Face hub cache.")
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--cache-key", required=True)
    parser.add_argument("--termination-log", default="", help="Where to write the JSON summary.")
    parser.add_argument("--progress-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    # Plain progress lines in the Job log instead of tqdm's carriage-return bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    has_token = bool(os.environ.get("HF_TOKEN"))
    try:
        summary = fetch(args.model_id, args.revision, args.cache_key, args.progress_seconds)
    except Exception as exc:
        err = (
            exc if isinstance(exc, PrefetchError) else classify(exc, args.model_id, args.revision, has_token)
        )
        print(f"error [{err.error}] exit {err.code}: {err.message}", file=sys.stderr, flush=True)
        cause = exc.__cause__ if isinstance(exc, PrefetchError) else exc
        if cause is not None:
            print(f"cause: {type(cause).__name__}: {cause}", file=sys.stderr, flush=True)
        failure: dict[str, Any] = {"exitCode": err.code, "error": err.error, "message": err.message}
        if err.need_bytes is not None:
            failure["needBytes"] = err.need_bytes
        _terminate(args.termination_log, failure)
        return err.code
    _terminate(args.termination_log, summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
