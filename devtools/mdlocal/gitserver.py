"""Git repositories served over git's smart HTTP protocol on 127.0.0.1, the one Flux's git client
speaks: a small HTTP server that hands each request to git's own CGI program, `git http-backend`.

A development tool for the Flux tests and `make demo-gitops`. As a process:
`PYTHONPATH=devtools python -m mdlocal.gitserver ROOT PORT` serves every repository under ROOT at
http://127.0.0.1:PORT/<name>.git (read-only: pushes are refused; write to the repositories on disk).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def http_backend() -> list[str]:
    git = shutil.which("git")
    if git is None:
        raise FileNotFoundError("git is not installed: repositories are served by `git http-backend`")
    return [git, "http-backend"]


class _Handler(BaseHTTPRequestHandler):
    server: _GitHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self) -> None:
        url = urlsplit(self.path)
        if url.path.endswith("/git-receive-pack") or "service=git-receive-pack" in url.query:
            self.send_error(403, "read-only: push to the repository on disk")
            return
        body = self._body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "GIT_PROTOCOL")):
            if self.headers.get(header):
                env[var] = self.headers[header]
        res = subprocess.run(http_backend(), input=body, capture_output=True, env=env, timeout=120)
        head, sep, payload = res.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = res.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name.strip(), value.strip()))
        if res.returncode != 0 and not sep:
            self.send_error(500, res.stderr.decode(errors="replace")[:200])
            return
        self.send_response(status)
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GitHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, port: int, verbose: bool) -> None:
        self.root = root
        self.verbose = verbose
        super().__init__(("127.0.0.1", port), _Handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdlocal.gitserver")
    ap.add_argument("root", type=Path, help="directory holding the repositories (NAME.git)")
    ap.add_argument("port", type=int)
    ap.add_argument("--verbose", action="store_true", help="log every request")
    args = ap.parse_args(argv)
    http_backend()
    server = _GitHTTPServer(args.root.resolve(), args.port, args.verbose)
    print(f"serving {args.root} at http://127.0.0.1:{server.server_address[1]}/", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
