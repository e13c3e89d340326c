"""Stand-in for the Hugging Face Hub: a small local HTTP server speaking the part of the Hub's HTTP
API that huggingface_hub's snapshot_download and hf_hub_download use. It is not the Hub; it serves
small generated repositories so downloads can be tested without network access.

Served (repo ids "org/name" or "name", revisions a branch, a tag or the full commit sha):
  GET  /api/models/{repo}[/revision/{rev}]       model info: id, sha, siblings (with sizes, blob ids
                                                 and LFS info when ?blobs=true)
  GET  /api/models/{repo}/tree/{rev}[/{path}]    file listing (huggingface_hub >= 1.x uses it)
  HEAD /{repo}/resolve/{rev}/{path}              X-Repo-Commit, ETag, X-Linked-Etag and X-Linked-Size
  GET  /{repo}/resolve/{rev}/{path}              for LFS files, Content-Length; Range supported

Errors carry X-Error-Code / X-Error-Message as the Hub sends them, which is what huggingface_hub
turns into its exceptions: RepoNotFound (401 without a token, 404 with one), RevisionNotFound
(404), EntryNotFound (404), GatedRepo (401 without a token, 403 with a token not granted), and a
401 "Invalid credentials in Authorization header" for a token the server does not know.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.standins.server import LocalServer

GRANTED_TOKEN = "hf_standin_granted"
"""A token the server knows and that has been granted access to the gated repositories."""
OTHER_TOKEN = "hf_standin_not_granted"
"""A token the server knows but that has no access to the gated repositories."""

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class RepoFile:
    path: str
    content: bytes
    lfs: bool = False

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def git_oid(self) -> str:
        """The git blob id of the content (of the LFS pointer file for LFS files)."""
        data = self.pointer if self.lfs else self.content
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        spec = "https://git-lfs.github.com/spec/v1"
        return f"version {spec}\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


@dataclass
class Repo:
    id: str
    sha: str
    files: dict[str, RepoFile]
    gated: bool = False
    granted: frozenset[str] = frozenset()
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit

    def resolve(self, revision: str) -> str | None:
        if revision == self.sha:
            return self.sha
        return self.refs.get(revision)


def safetensors_bytes(tensors: Mapping[str, tuple[str, list[int]]], seed: int) -> bytes:
    """A file in the safetensors format (8-byte little-endian header length, JSON header padded
    with spaces to 8 bytes, then the tensor data) filled with random bytes."""
    width = {"BF16": 2, "F16": 2, "F32": 4, "I8": 1}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = width[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + random.Random(seed).randbytes(offset)


def tiny_model_files(seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int = 256) -> list[RepoFile]:
    """A generated LLaMA-shaped checkpoint small enough for tests, plus the files around it."""

    def js(obj: Any) -> bytes:
        return (json.dumps(obj, indent=2) + "\n").encode()

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "vocab_size": vocab,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    tensors: dict[str, tuple[str, list[int]]] = {"model.embed_tokens.weight": ("BF16", [vocab, hidden])}
    for i in range(layers):
        p = f"model.layers.{i}"
        tensors[f"{p}.self_attn.q_proj.weight"] = ("BF16", [hidden, hidden])
        tensors[f"{p}.self_attn.k_proj.weight"] = ("BF16", [hidden // 2, hidden])
        tensors[f"{p}.self_attn.v_proj.weight"] = ("BF16", [hidden // 2, hidden])
        tensors[f"{p}.self_attn.o_proj.weight"] = ("BF16", [hidden, hidden])
        tensors[f"{p}.mlp.gate_proj.weight"] = ("BF16", [hidden * 2, hidden])
        tensors[f"{p}.mlp.up_proj.weight"] = ("BF16", [hidden * 2, hidden])
        tensors[f"{p}.mlp.down_proj.weight"] = ("BF16", [hidden, hidden * 2])
        tensors[f"{p}.input_layernorm.weight"] = ("BF16", [hidden])
        tensors[f"{p}.post_attention_layernorm.weight"] = ("BF16", [hidden])
    tensors["model.norm.weight"] = ("BF16", [hidden])
    tensors["lm_head.weight"] = ("BF16", [vocab, hidden])
    tokens = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{i:02X}>": i + 3 for i in range(vocab - 3)}
    tokenizer = {
        "version": "1.0",
        "added_tokens": [
            {"id": i, "content": t, "special": True, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False}
            for t, i in list(tokens.items())[:3]
        ],
        "model": {"type": "BPE", "vocab": tokens, "merges": [], "byte_fallback": True, "unk_token": "<unk>"},
    }  # fmt: skip
    return [
        RepoFile(".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"),
        RepoFile("README.md", b"# tiny model\n\nGenerated for tests.\n"),
        RepoFile("config.json", js(config)),
        RepoFile("generation_config.json", js({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False})),
        RepoFile("tokenizer.json", js(tokenizer)),
        RepoFile(
            "tokenizer_config.json", js({"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 512})
        ),
        RepoFile("model.safetensors", safetensors_bytes(tensors, seed), lfs=True),
        # Not read by TGI: a prefetch must leave these out.
        RepoFile("original/consolidated.pth", random.Random(seed + 1).randbytes(4096), lfs=True),
        RepoFile("onnx/model.onnx", random.Random(seed + 2).randbytes(2048), lfs=True),
    ]


def commit_sha(repo_id: str, files: Iterable[RepoFile]) -> str:
    h = hashlib.sha1(repo_id.encode())
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.git_oid}\0".encode())
    return h.hexdigest()


def make_repo(
    repo_id: str,
    files: list[RepoFile],
    *,
    gated: bool = False,
    granted: Iterable[str] = (),
    tags: Iterable[str] = (),
) -> Repo:
    sha = commit_sha(repo_id, files)
    refs = {"main": sha} | {t: sha for t in tags}
    return Repo(repo_id, sha, {f.path: f for f in files}, gated, frozenset(granted), refs)


def default_repos() -> list[Repo]:
    """acme/tiny-llm (public, tag v1.0) and acme/tiny-llm-gated (gated; GRANTED_TOKEN has access)."""
    return [
        make_repo("acme/tiny-llm", tiny_model_files(seed=1), tags=["v1.0"]),
        make_repo("acme/tiny-llm-gated", tiny_model_files(seed=2), gated=True, granted=[GRANTED_TOKEN]),
    ]


class _RefusalError(Exception):
    def __init__(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit


_REPO_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?"
_API = re.compile(
    rf"^/api/models/(?P<repo>{_REPO_ID})(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<path>/.*)?)?$"
)
_RESOLVE = re.compile(rf"^/(?P<repo>{_REPO_ID})/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class HubStandIn(LocalServer):
    """HTTP server on 127.0.0.1 (an ephemeral port); use as a context manager.

    `requests` records (method, path, Authorization header) of every request, for assertions.
    """

    def __init__(
        self, repos: Iterable[Repo] | None = None, tokens: Iterable[str] = (GRANTED_TOKEN, OTHER_TOKEN)
    ):
        self.repos = {r.id: r for r in (default_repos() if repos is None else repos)}
        self.tokens = frozenset(tokens)
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        super().__init__(self._handler_class())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- request handling (called from the handler threads) ----

    def _record(self, method: str, path: str, auth: str) -> None:
        with self._lock:
            self.requests.append((method, path, auth))

    def _token(self, auth: str) -> str | None:
        """The bearer token, None when absent; _RefusalError for a token the server does not know."""
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise _RefusalError(401, "", INVALID_CREDENTIALS)
        return token

    def _repo(self, repo_id: str, token: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            # The Hub answers 401 to anonymous callers so private repos do not leak their existence.
            raise _RefusalError(404 if token else 401, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: Repo, revision: str) -> str:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise _RefusalError(404, "RevisionNotFound", "Invalid rev id: " + unquote(revision))
        return commit

    def api(self, path: str, query: dict[str, list[str]], auth: str) -> Any:
        m = _API.match(path)
        if m is None:
            raise _RefusalError(404, "", "Not found")
        token = self._token(auth)
        repo = self._repo(m["repo"], token)
        commit = self._commit(repo, m["rev"] or "main")
        if m["kind"] == "tree":
            prefix = unquote((m["path"] or "/")[1:])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._tree(repo, prefix, recursive)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s |= {"size": f.size, "blobId": f.git_oid}
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": len(f.pointer)}
            siblings.append(s)
        return {
            "_id": hashlib.md5(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "modelId": repo.id,
            "author": repo.id.split("/")[0] if "/" in repo.id else None,
            "sha": commit,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["safetensors", "llama"],
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "siblings": siblings,
        }

    def _tree(self, repo: Repo, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        folders: set[str] = set()
        base = f"{prefix}/" if prefix else ""
        for f in sorted(repo.files.values(), key=lambda f: f.path):
            if not f.path.startswith(base):
                continue
            rest = f.path[len(base) :]
            if "/" in rest and not recursive:
                folders.add(base + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            out.append(entry)
        out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(folders)]  # fmt: skip
        return out

    def resolve(self, path: str, auth: str) -> tuple[RepoFile, str]:
        m = _RESOLVE.match(path)
        if m is None:
            raise _RefusalError(404, "", "Not found")
        token = self._token(auth)
        repo = self._repo(m["repo"], token)
        if repo.gated and token not in repo.granted:
            if token is None:
                msg = f"Access to model {repo.id} is restricted. You must be authenticated to access it."
                raise _RefusalError(401, "GatedRepo", msg)
            raise _RefusalError(
                403,
                "GatedRepo",
                f"Access to model {repo.id} is restricted and you are not in the authorized list.",
            )
        commit = self._commit(repo, m["rev"])
        f = repo.files.get(unquote(m["path"]))
        if f is None:
            raise _RefusalError(404, "EntryNotFound", "Entry not found", commit=commit)
        return f, commit

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "hf-hub-standin/1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def _send(self, status: int, body: bytes, headers: Mapping[str, str], head: bool = False) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _refuse(self, r: _RefusalError, head: bool) -> None:
                headers = {"Content-Type": "application/json", "X-Error-Message": r.message}
                if r.code:
                    headers["X-Error-Code"] = r.code
                if r.commit:
                    headers["X-Repo-Commit"] = r.commit
                self._send(r.status, json.dumps({"error": r.message}).encode(), headers, head)

            def _serve(self, head: bool) -> None:
                url = urlsplit(self.path)
                auth = self.headers.get("Authorization", "")
                hub._record(self.command, url.path, auth)
                try:
                    if url.path.startswith("/api/"):
                        body = json.dumps(hub.api(url.path, parse_qs(url.query), auth)).encode()
                        self._send(200, body, {"Content-Type": "application/json"}, head)
                        return
                    f, commit = hub.resolve(url.path, auth)
                except _RefusalError as r:
                    self._refuse(r, head)
                    return
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Accept-Ranges": "bytes",
                    "X-Repo-Commit": commit,
                    "ETag": f'"{f.git_oid}"',
                }
                if f.lfs:
                    headers |= {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}
                body = f.content
                status = 200
                rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if rng and int(rng[1]) < f.size:
                    start, end = int(rng[1]), int(rng[2]) if rng[2] else f.size - 1
                    body = f.content[start : end + 1]
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{f.size}"
                self._send(status, body, headers, head)

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

        return Handler


def main() -> None:
    """Run the stand-in in the foreground, printing its URL (for trying TGI or the CLI by hand)."""
    import argparse
    import time

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=600.0, help="Stop after this long.")
    args = p.parse_args()
    with HubStandIn() as hub:
        print(f"HF_ENDPOINT={hub.url}", flush=True)
        for repo in hub.repos.values():
            print(f"  {repo.id} @ {repo.sha}{' (gated)' if repo.gated else ''}", flush=True)
        time.sleep(args.seconds)


if __name__ == "__main__":
    main()
