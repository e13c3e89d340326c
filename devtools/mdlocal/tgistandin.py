"""A stand-in for Hugging Face Text Generation Inference (TGI), for tests and the demo.

It is not TGI and runs no model: it follows TGI's documented HTTP API (routes, JSON shapes,
error bodies and status codes of TGI's OpenAPI document) and answers with canned text. Each
model gets its own port, as each TGI deployment has its own Service:

    GET  /health                200, or 503 {"error": "unhealthy", "error_type": "healthcheck"}
    GET  /info                  model_id, model_sha, max_input_tokens, max_total_tokens, version ...
    POST /  and /generate       [GenerateResponse] (compat route, a list) / GenerateResponse
    POST /generate_stream       Server-Sent Events of StreamResponse
    POST /v1/chat/completions   ChatCompletion (or chunks with "stream": true, then [DONE])
    GET  /v1/models, /metrics   the OpenAI-style model list; Prometheus text with TGI's names
    POST /_standin/config       (not TGI) change the behaviour at runtime: a JSON merge
    GET  /_standin/counts       (not TGI) requests per route, so tests can bound traffic

Behaviours (per model, at start and at runtime): answer, refuse, overload (429 overloaded),
fail (424 generation), incomplete (500 incomplete_generation), validation (422), unhealthy
(503 on /health), slow answers (`delay`), another model id, no chat template (422
template_error on the chat route), and `loading`: nothing listens on the port, as TGI while it
downloads and warms up.

    python -m mdlocal.tgistandin --model-id mistralai/Mistral-7B-Instruct-v0.2 --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from aiohttp import web

Obj = dict[str, Any]
VERSION = "3.3.7"
MODES = ("answer", "refuse", "overload", "fail", "incomplete", "validation")
# TGI's error bodies: (HTTP status, error_type, message).
ERRORS: dict[str, tuple[int, str, str]] = {
    "overload": (429, "overloaded", "Model is overloaded"),
    "fail": (424, "generation", "Request failed during generation: CUDA out of memory"),
    "incomplete": (500, "incomplete_generation", "Incomplete generation"),
    "validation": (422, "validation", "Input validation error: `inputs` must have less than 4096 tokens"),
}
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Behaviour:
    model_id: str
    model_sha: str = "0123456789abcdef0123456789abcdef01234567"
    version: str = VERSION
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    mode: str = "answer"
    answer: str = "Paris is the capital of France. It lies on the Seine."
    refusal: str = "I'm sorry, but I can't help with that request."
    # prompt substring (case-insensitive) -> reply, before the mode's canned text
    replies: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before each generation answers
    healthy: bool = True
    chat_template: bool = True
    loading: bool = False  # nothing listening

    def merged(self, changes: Obj) -> Behaviour:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        if "mode" in changes and changes["mode"] not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        return replace(self, **changes)


def _error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status)


class ModelServer:
    """One model's stand-in on its own port."""

    def __init__(self, behaviour: Behaviour, port: int = 0, host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour
        self.host, self.port = host, port
        self.counts: Counter[str] = Counter()
        self.queue = 0  # requests being answered (tgi_queue_size / tgi_batch_current_size)
        self.durations: list[float] = []
        self.generated = 0
        self.failures: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/health", self.health), web.get("/info", self.info), web.post("/", self.compat),
            web.post("/generate", self.generate), web.post("/generate_stream", self.generate_stream),
            web.post("/v1/chat/completions", self.chat), web.get("/v1/models", self.models),
            web.get("/metrics", self.metrics), web.post("/_standin/config", self.configure),
            web.get("/_standin/counts", self.get_counts),
        ])  # fmt: skip
        return app

    async def listen(self) -> None:
        if self._runner is not None:
            return
        # A slow answer in flight must not hold a stop for long.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def apply(self, changes: Obj) -> None:
        with self._lock:
            self.behaviour = self.behaviour.merged(changes)
        if self.behaviour.loading:
            await self.close()
        else:
            await self.listen()

    def count(self, route: str) -> None:
        with self._lock:
            self.counts[route] += 1

    # -- TGI routes -----------------------------------------------------------------------------

    async def health(self, _: web.Request) -> web.Response:
        self.count("/health")
        if not self.behaviour.healthy:
            return _error(503, "healthcheck", "unhealthy")
        return web.Response(status=200)

    async def info(self, _: web.Request) -> web.Response:
        self.count("/info")
        b = self.behaviour
        return web.json_response({
            "model_id": b.model_id, "model_sha": b.model_sha, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": b.max_input_tokens, "max_total_tokens": b.max_total_tokens,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
            "version": b.version, "sha": None, "docker_label": None,
        })  # fmt: skip

    async def models(self, _: web.Request) -> web.Response:
        self.count("/v1/models")
        model = {
            "id": self.behaviour.model_id,
            "object": "model",
            "created": 0,
            "owned_by": self.behaviour.model_id,
        }
        return web.json_response({"object": "list", "data": [model]})

    def _reply(self, prompt: str, max_new: int) -> tuple[list[str], str]:
        """The tokens of the answer (words, at most max_new) and the finish reason."""
        b = self.behaviour
        text = next((r for k, r in b.replies.items() if k.casefold() in prompt.casefold()), None)
        if text is None:
            text = b.refusal if b.mode == "refuse" else b.answer
        words = text.split(" ")
        tokens = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        if len(tokens) > max_new:
            return tokens[:max_new], "length"
        return tokens, "eos_token"

    async def _begin(self, route: str) -> web.Response | None:
        """Count, wait the configured delay, and answer the configured error, if any."""
        self.count(route)
        b = self.behaviour
        if b.delay:
            self.queue += 1
            try:
                await asyncio.sleep(b.delay)
            finally:
                self.queue -= 1
        if b.mode in ERRORS:
            status, kind, message = ERRORS[b.mode]
            self.failures[kind] += 1
            return _error(status, kind, message)
        return None

    def _done(self, started: float, n: int) -> None:
        self.durations.append(time.monotonic() - started)
        self.generated += n

    @staticmethod
    async def _body(request: web.Request) -> Obj:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPUnprocessableEntity(
                text=json.dumps({"error": "Failed to deserialize the JSON body", "error_type": "validation"}),
                content_type="application/json",
            )
        return body

    def _generate_response(self, body: Obj) -> Obj:
        params = body.get("parameters") or {}
        tokens, finish = self._reply(str(body.get("inputs", "")), int(params.get("max_new_tokens") or 100))
        details = {
            "finish_reason": finish, "generated_tokens": len(tokens), "seed": params.get("seed"),
            "prefill": [], "tokens": [{"id": i, "text": t, "logprob": -0.5, "special": False}
                                      for i, t in enumerate(tokens)],
            "top_tokens": None, "best_of_sequences": None,
        }  # fmt: skip
        out: Obj = {"generated_text": "".join(tokens)}
        if params.get("details", True):
            out["details"] = details
        return out

    async def generate(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await self._body(request)
        if (err := await self._begin("/generate")) is not None:
            return err
        out = self._generate_response(body)
        self._done(started, len(out["generated_text"].split()))
        return web.json_response(out)

    async def compat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if body.get("stream"):
            return await self._stream(request, body, "/")
        started = time.monotonic()
        if (err := await self._begin("/")) is not None:
            return err
        out = self._generate_response(body)
        self._done(started, len(out["generated_text"].split()))
        return web.json_response([out])  # the compat route answers a list

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, await self._body(request), "/generate_stream")

    async def _stream(self, request: web.Request, body: Obj, route: str) -> web.StreamResponse:
        started = time.monotonic()
        if (err := await self._begin(route)) is not None:
            return err
        params = body.get("parameters") or {}
        tokens, finish = self._reply(str(body.get("inputs", "")), int(params.get("max_new_tokens") or 100))

        async def events() -> AsyncIterator[Obj]:
            for i, t in enumerate(tokens):
                last = i == len(tokens) - 1
                yield {
                    "index": i, "token": {"id": i, "text": t, "logprob": -0.5, "special": False},
                    "top_tokens": None, "generated_text": "".join(tokens) if last else None,
                    "details": {"finish_reason": finish, "generated_tokens": len(tokens),
                                "input_length": len(str(body.get("inputs", "")).split()),
                                "seed": params.get("seed")} if last else None,
                }  # fmt: skip

        resp = await self._sse(request, events())
        self._done(started, len(tokens))
        return resp

    @staticmethod
    async def _sse(
        request: web.Request, events: AsyncIterator[Obj], done: bool = False
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        async for e in events:
            await resp.write(f"data:{json.dumps(e)}\n\n".encode())
        if done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await self._body(request)
        if not self.behaviour.chat_template:
            self.count("/v1/chat/completions")
            return _error(422, "template_error", "Template error: template not found")
        if (err := await self._begin("/v1/chat/completions")) is not None:
            return err
        messages = body.get("messages") or []
        prompt = str(next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), ""))
        tokens, finish = self._reply(prompt, int(body.get("max_tokens") or 100))
        finish = "length" if finish == "length" else "stop"
        b, created = self.behaviour, int(time.time())
        common = {
            "id": "",
            "created": created,
            "model": b.model_id,
            "system_fingerprint": f"{b.version}-native",
        }
        self._done(started, len(tokens))
        if body.get("stream"):

            async def chunks() -> AsyncIterator[Obj]:
                for i, t in enumerate(tokens):
                    last = i == len(tokens) - 1
                    yield {**common, "object": "chat.completion.chunk", "choices": [{
                        "index": 0, "delta": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": finish if last else None}], "usage": None}  # fmt: skip

            return await self._sse(request, chunks(), done=True)
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        return web.json_response({
            **common, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                      "total_tokens": prompt_tokens + len(tokens)},
        })  # fmt: skip

    async def metrics(self, _: web.Request) -> web.Response:
        self.count("/metrics")
        ok = len(self.durations)
        failed = sum(self.failures.values())
        lines = [
            "# TYPE tgi_request_count counter", f"tgi_request_count {ok + failed}",
            "# TYPE tgi_request_success counter", f"tgi_request_success {ok}",
            "# TYPE tgi_request_failure counter",
            *(f'tgi_request_failure{{err="{k}"}} {v}' for k, v in sorted(self.failures.items())),
            "# TYPE tgi_queue_size gauge", f"tgi_queue_size {self.queue}",
            "# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {min(self.queue, 32)}",
            "# TYPE tgi_batch_current_max_tokens gauge", "tgi_batch_current_max_tokens 0",
            "# TYPE tgi_request_generated_tokens_sum counter",
            f"tgi_request_generated_tokens_sum {self.generated}",
            "# TYPE tgi_request_duration histogram",
        ]  # fmt: skip
        for le in DURATION_BUCKETS:
            lines.append(
                f'tgi_request_duration_bucket{{le="{le}"}} {sum(1 for d in self.durations if d <= le)}'
            )
        lines += [
            f'tgi_request_duration_bucket{{le="+Inf"}} {ok}',
            f"tgi_request_duration_sum {sum(self.durations):.6f}",
            f"tgi_request_duration_count {ok}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # -- control (not TGI) -----------------------------------------------------------------------

    async def configure(self, request: web.Request) -> web.Response:
        try:
            await self.apply(await request.json())
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(asdict(self.behaviour))

    async def get_counts(self, _: web.Request) -> web.Response:
        return web.json_response(dict(self.counts))


class StandIn:
    """Many models' stand-ins, each on its own port, served by one asyncio loop in a thread.
    Thread-safe entry points for tests and the demo."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.servers: dict[str, ModelServer] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tgi-standin", daemon=True)

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        async def close_all() -> None:
            for s in self.servers.values():
                await s.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def add(self, key: str, behaviour: Behaviour, port: int = 0) -> str:
        """Serve `key` (e.g. "namespace/name") with this behaviour; returns its base URL."""
        server = ModelServer(behaviour, port, self.host)
        self.servers[key] = server
        if not behaviour.loading:
            self._run(server.listen())
        else:
            # Reserve a port now so the URL is known before it listens.
            self._run(server.listen())
            self._run(server.close())
        return server.url

    def configure(self, key: str, **changes: Any) -> None:
        self._run(self.servers[key].apply(changes))

    def counts(self, key: str) -> dict[str, int]:
        return dict(self.servers[key].counts)

    def endpoint_map(self) -> dict[str, str]:
        return {k: s.url for k, s in self.servers.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdlocal.tgistandin", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--mode", choices=MODES, default="answer")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--reply", action="append", default=[], metavar="PROMPT_PART=TEXT",
                    help="answer prompts containing PROMPT_PART with TEXT (repeatable)")  # fmt: skip
    args = ap.parse_args(argv)
    replies = dict(r.split("=", 1) for r in args.reply)
    behaviour = Behaviour(args.model_id, mode=args.mode, delay=args.delay, replies=replies)
    server = ModelServer(behaviour, args.port, args.host)
    web.run_app(server.app(), host=args.host, port=args.port, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
