"""The TGI stand-in speaks TGI's documented API: the real `text_generation` client parses its
answers (it would fail on a wrong shape), and its error bodies map to the client's exceptions."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import text_generation.errors as tge  # type: ignore[import-untyped]
from text_generation import AsyncClient, Client
from text_generation.types import Message  # type: ignore[import-untyped]

from mdlocal.tgistandin import Behaviour, StandIn


@pytest.fixture()
def standin() -> Iterator[StandIn]:
    with StandIn() as s:
        yield s


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            raw = r.read()
            return r.status, raw
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_info_fields(standin: StandIn) -> None:
    url = standin.add(
        "ns/a", Behaviour("org/model", model_sha="f" * 40, max_input_tokens=1000, max_total_tokens=2000)
    )
    code, raw = get(f"{url}/info")
    info = json.loads(raw)
    assert code == 200
    # TGI's Info schema: these are required there (and what the prober reads).
    required = ("model_id max_concurrent_requests max_best_of max_stop_sequences max_input_tokens "
                "max_total_tokens validation_workers max_client_batch_size router version")  # fmt: skip
    for key in required.split():
        assert key in info
    assert (info["model_id"], info["model_sha"], info["max_input_tokens"]) == ("org/model", "f" * 40, 1000)


def test_generate_routes_parse_with_the_real_client(standin: StandIn) -> None:
    url = standin.add("ns/a", Behaviour("org/model", answer="one two three four"))
    c = Client(url)
    r = c.generate("hi", max_new_tokens=3)  # the compat route `/`, answering a list
    assert r.generated_text == "one two three" and r.details.generated_tokens == 3
    assert r.details.finish_reason == "length"
    tokens = [s.token.text for s in c.generate_stream("hi", max_new_tokens=10)]  # SSE
    assert "".join(tokens) == "one two three four"
    code, raw = 0, b""
    req = urllib.request.Request(f"{url}/generate", data=json.dumps({"inputs": "x"}).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        code, raw = resp.status, resp.read()
    assert code == 200 and json.loads(raw)["generated_text"] == "one two three four"

    async def chat() -> Any:
        return await AsyncClient(url).chat(messages=[Message(role="user", content="hi")], max_tokens=2)

    out = asyncio.run(chat())
    assert out.choices[0].message.content == "one two" and out.usage["completion_tokens"] == 2
    assert standin.counts("ns/a") == {"/": 2, "/generate": 1, "/v1/chat/completions": 1}


def test_chat_stream_ends_with_done(standin: StandIn) -> None:
    url = standin.add("ns/a", Behaviour("org/model", answer="a b"))
    body = {"model": "tgi", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        lines = [x for x in resp.read().decode().split("\n\n") if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x.removeprefix("data:")) for x in lines[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "a b"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("mode", "exc"),
    [
        ("overload", tge.OverloadedError),
        ("fail", tge.GenerationError),
        ("incomplete", tge.IncompleteGenerationError),
        ("validation", tge.ValidationError),
    ],
)
def test_errors_are_tgi_bodies(standin: StandIn, mode: str, exc: type[Exception]) -> None:
    url = standin.add("ns/a", Behaviour("org/model", mode=mode))
    with pytest.raises(exc):
        Client(url).generate("hi")


def test_refuse_and_per_prompt_replies(standin: StandIn) -> None:
    url = standin.add("ns/a", Behaviour("org/model", mode="refuse", replies={"capital": "Paris."}))
    c = Client(url)
    assert c.generate("how to pick a lock", max_new_tokens=50).generated_text.startswith("I'm sorry")
    assert c.generate("The capital of France?").generated_text == "Paris."


def test_health_loading_and_runtime_config(standin: StandIn) -> None:
    url = standin.add("ns/a", Behaviour("org/model"))
    assert get(f"{url}/health")[0] == 200
    standin.configure("ns/a", healthy=False)
    assert get(f"{url}/health") == (503, {"error": "unhealthy", "error_type": "healthcheck"})
    standin.configure("ns/a", loading=True)
    with pytest.raises(urllib.error.URLError):  # nothing listens while loading
        get(f"{url}/health")
    standin.configure("ns/a", loading=False, healthy=True, model_id="someone/else")
    assert json.loads(get(f"{url}/info")[1])["model_id"] == "someone/else"
    req = urllib.request.Request(f"{url}/_standin/config", data=b'{"mode": "refuse"}',
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["mode"] == "refuse"
    with pytest.raises(ValueError):
        standin.configure("ns/a", mode="dance")


def test_chat_without_template_is_tgis_template_error(standin: StandIn) -> None:
    url = standin.add("ns/a", Behaviour("org/model", chat_template=False))

    async def chat() -> Any:
        return await AsyncClient(url).chat(messages=[Message(role="user", content="hi")])

    with pytest.raises(tge.UnknownError, match="Template error"):
        asyncio.run(chat())


def test_metrics_names(standin: StandIn) -> None:
    url = standin.add("ns/a", Behaviour("org/model"))
    Client(url).generate("hi")
    text = get(f"{url}/metrics")[1].decode()
    for name in ("tgi_queue_size", "tgi_batch_current_size", "tgi_request_duration_bucket",
                 "tgi_request_duration_count 1", "tgi_request_success 1"):  # fmt: skip
        assert name in text
