"""The fake LLM server's /metrics: vLLM-style counters the monitor's own parser reads."""

from __future__ import annotations

import asyncio
import json

import pytest

from aifb.monitor.model import COUNTER, GAUGE
from aifb.monitor.scrape import parse_exposition
from aifb.recipes.fake_llm import FakeLlmConfig, serve

pytestmark = pytest.mark.unit


async def _http(port: int, method: str, path: str, body: bytes = b"") -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1"), payload


def test_metrics_count_tokens_and_requests_in_vllm_names() -> None:
    async def scenario() -> tuple[str, str]:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(serve(FakeLlmConfig(port=0, model='m"1', ttft_ms=0,
                                                         itl_ms=0, tokens=5), ready))
        port = await ready
        try:
            req = json.dumps({"model": 'm"1', "prompt": "one two three", "max_tokens": 4})
            for _ in range(2):
                head, _ = await _http(port, "POST", "/v1/completions", req.encode())
                assert head.startswith("HTTP/1.1 200")
            head, body = await _http(port, "GET", "/metrics")
            return head, body.decode()
        finally:
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

    head, text = asyncio.run(scenario())
    assert "Content-Type: text/plain; version=0.0.4" in head
    samples = {s.name: s for s in parse_exposition(text, {"service": "services/f"})}
    assert samples["vllm:prompt_tokens_total"].value == 6
    assert samples["vllm:generation_tokens_total"].value == 8
    assert samples["vllm:request_success_total"].value == 2
    assert samples["vllm:num_requests_running"].value == 0
    assert samples["vllm:generation_tokens_total"].type == COUNTER
    assert samples["vllm:num_requests_running"].type == GAUGE
    assert dict(samples["vllm:prompt_tokens_total"].labels) == {
        "model_name": 'm"1', "service": "services/f"}
