"""The llamacpp recipe's program around llama-cpp-python's server, without a model: its ASGI
middleware (usage and timings added to a stream that asks for them, a body bound, in-flight
counts), its per-request timings file, its /metrics names, and its option checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from aifb.recipes import llamacpp as L


def _sse_app(record_done: bool) -> Any:
    """An ASGI app that streams two token chunks and [DONE], like llama-cpp-python's server,
    filling in the request's figures as its hooks would."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        assert json.loads(body)["messages"]  # the middleware replays the body it read
        r = L._CURRENT.get()
        assert r is not None
        r.update(prompt_tokens=12, prompt_evaluated=10, prompt_ms=150.5, eval_runs=1,
                 eval_ms=20.25, completion_tokens=2, done=record_done)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for data in (b'{"id": "c1", "object": "chat.completion.chunk", "created": 5, '
                     b'"model": "m", "choices": [{"delta": {"content": "a"}}]}',
                     b'{"id": "c1", "choices": [{"delta": {"content": "b"}}]}', b"[DONE]"):
            await send({"type": "http.response.body", "body": b"data: " + data + b"\r\n\r\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _call(app: Any, body: bytes, path: str = "/v1/chat/completions",
          chunks: int = 1) -> tuple[list[dict[str, Any]], L._InFlight]:
    counts = L._InFlight()
    mw = L._Requests(app, counts=counts)
    sent: list[dict[str, Any]] = []
    size = -(-len(body) // chunks)
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    queue = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
             for i, p in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw({"type": "http", "method": "POST", "path": path}, receive, send))
    return sent, counts


def _events(sent: list[dict[str, Any]]) -> list[bytes]:
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return [e.removeprefix(b"data: ") for e in raw.split(b"\r\n\r\n") if e]


def test_a_stream_that_asks_for_usage_gets_it_with_the_servers_timings_before_done() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    sent, counts = _call(_sse_app(True), body)
    events = _events(sent)
    assert events[-1] == b"[DONE]" and len(events) == 4
    last = json.loads(events[-2])
    assert last == {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                    "choices": [],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
                    "timings": {"prompt_n": 10, "prompt_ms": 150.5, "predicted_n": 1,
                                "predicted_ms": 20.25, "cache_n": 2}}
    assert counts.n == 0  # in flight while served, not after


@pytest.mark.parametrize("request_body", [
    {"messages": [{"role": "user", "content": "hi"}], "stream": True},
    {"messages": [{"role": "user", "content": "hi"}], "stream": True,
     "stream_options": {"include_usage": False}},
])
def test_a_stream_that_does_not_ask_is_passed_through_unchanged(request_body: Any) -> None:
    sent, _ = _call(_sse_app(True), json.dumps(request_body).encode())
    assert len(_events(sent)) == 3


def test_a_body_read_in_several_parts_is_replayed_whole() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 3000}], "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    sent, _ = _call(_sse_app(True), body, chunks=3)
    assert json.loads(_events(sent)[-2])["usage"]["total_tokens"] == 14


def test_a_body_over_16_mib_is_refused_before_the_server_sees_it() -> None:
    def never(*args: Any) -> Any:
        raise AssertionError("the app was called")

    sent, counts = _call(never, b"x" * (16 * 1024 * 1024 + 1), chunks=3)
    assert sent[0]["status"] == 413 and b"16 MiB" in sent[1]["body"] and counts.n == 0


def test_other_paths_and_methods_pass_straight_through() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])

    counts = L._InFlight()
    mw = L._Requests(app, counts=counts)
    for path in ("/metrics", "/v1/models"):
        asyncio.run(mw({"type": "http", "method": "GET", "path": path}, None, None))
    assert seen == ["/metrics", "/v1/models"]


def test_each_request_is_a_line_of_timings_and_adds_to_the_totals(tmp_path: Path) -> None:
    path = tmp_path / "timings.jsonl"
    t = L.Timings(str(path))
    for n in (1, 2):
        t.record({"prompt_tokens": 70 + n, "prompt_evaluated": 60, "prompt_ms": 500.0,
                  "eval_runs": 31, "eval_ms": 620.5, "completion_tokens": 32})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["prompt_tokens"] for x in lines] == [71, 72]
    assert lines[0]["completion_tokens"] == 32 and lines[0]["eval_ms"] == 620.5
    families = {m.name: m.samples[0].value for m in L._Collector(t, L._InFlight()).collect()}
    assert families == {"llamacpp:prompt_tokens": 120, "llamacpp:prompt_seconds": 1.0,
                        "llamacpp:tokens_predicted": 62, "llamacpp:tokens_predicted_seconds":
                        1.241, "llamacpp:requests": 2, "llamacpp:requests_processing": 0,
                        "llamacpp:requests_deferred": 0}


def test_one_slot_three_waiting_is_one_processing_and_two_deferred() -> None:
    counts = L._InFlight()
    counts.n = 3
    gauges = {m.name: m.samples[0].value for m in L._Collector(L.Timings(""), counts).collect()}
    assert gauges["llamacpp:requests_processing"] == 1
    assert gauges["llamacpp:requests_deferred"] == 2


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--ctx-size", "8"], ["--port", "70000"],
                                  ["--batch-size", "-1"]])
def test_out_of_range_options_are_refused_naming_them(argv: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        L._parse(["--model", "m.gguf", *argv])
    assert ex.value.code == 2 and argv[0] in capsys.readouterr().err


def test_the_gemma_template_accepts_string_and_list_content_and_opens_the_reply() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(L.GEMMA_TEMPLATE).render(bos_token="<bos>", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "image_url"},
                                     {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": ""}])
    assert text == ("<bos><start_of_turn>user\nBe brief.<end_of_turn>\n"
                    "<start_of_turn>user\nHi there<end_of_turn>\n"
                    "<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nMore?<end_of_turn>\n"
                    "<start_of_turn>model\n")


def test_max_completion_tokens_becomes_max_tokens_when_that_is_absent() -> None:
    body, usage = L._adapted(json.dumps({"max_completion_tokens": 7, "stream": True,
                                         "stream_options": {"include_usage": True}}).encode())
    assert json.loads(body) == {"max_tokens": 7, "stream": True,
                                "stream_options": {"include_usage": True}} and usage
    both = json.dumps({"max_tokens": 3, "max_completion_tokens": 9}).encode()
    assert L._adapted(both) == (both, False)  # max_tokens wins; the body goes on untouched
    for raw in (b"not json", b"[1]", b"[" * 50_000):
        assert L._adapted(raw) == (raw, False)  # the server answers what it cannot read


def test_the_monitor_reads_the_servers_metrics_under_llamacpps_names() -> None:
    """What the monitor scrapes from /metrics (the recipe declares it): every llama.cpp series,
    counters as counters, with the service's labels added."""
    from prometheus_client import CollectorRegistry, generate_latest

    from aifb.monitor.model import COUNTER, GAUGE
    from aifb.monitor.scrape import parse_exposition

    t = L.Timings("")
    t.record({"prompt_tokens": 73, "prompt_evaluated": 69, "prompt_ms": 500.0,
              "eval_runs": 31, "eval_ms": 600.0, "completion_tokens": 32})
    registry = CollectorRegistry()
    registry.register(L._Collector(t, L._InFlight()))
    samples = {s.name: s for s in parse_exposition(generate_latest(registry).decode(),
                                                   {"service": "s1", "job_id": "7"})}
    assert samples["llamacpp:prompt_tokens_total"].value == 69
    assert samples["llamacpp:tokens_predicted_seconds_total"].value == 0.6
    assert samples["llamacpp:requests_total"].type == COUNTER
    assert samples["llamacpp:requests_deferred"].type == GAUGE
    assert ("service", "s1") in samples["llamacpp:requests_total"].labels
