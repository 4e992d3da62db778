"""A fake OpenAI-compatible LLM server with exact, configured token timing (tests, demos, recipes).

    python -m aifb.recipes.fake_llm --port 8000 --ttft-ms 50 --itl-ms 10 --tokens 64

It answers `/v1/chat/completions` and `/v1/completions` (streaming by SSE, or whole), `/v1/models`,
`/health`, `/stats` (its own counters, for tests) and `/metrics` (a few vLLM-style counters in the
Prometheus text format, so the telemetry agents have a real scrape target). `/stats` counts as
`aborted` the replies a client cut short by closing its connection. No model runs: the first
token is due `ttft_ms` after the request arrived and token i `itl_ms` after token i-1, on an
absolute schedule so sleeps never add up. A reply has `tokens` tokens (its natural length) capped by
the request's `max_tokens`; with `ignore_eos` (a vLLM extension) it has exactly `max_tokens`. The
prompt's token count is its word count. `error_rate` turns that share of requests (seeded) into HTTP
500s with an OpenAI-style error body. Requests are validated as an OpenAI server would: a 400 (or
404 for an unknown model or path) with `{"error": {...}}` naming what was wrong.

It exists so that an LLM benchmark can run end to end on a machine without a GPU (the `fake-llm`
recipe runs it as a service) and so that tests can check measured TTFT/ITL/TPOT against known
delays. It prints `fake-llm listening on http://HOST:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeLlmConfig", "main", "serve"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error"}
_MAX_BODY = 16 * 1024 * 1024
_VOCAB = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


@dataclass(slots=True)
class FakeLlmConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "fake-llm"
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    tokens: int = 64  # natural reply length (before max_tokens)
    chunk_tokens: int = 1  # tokens per streamed chunk (some servers send several)
    error_rate: float = 0.0
    seed: int = 0


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    completed: int = 0
    errors_injected: int = 0
    bad_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    running: int = 0
    aborted: int = 0  # replies cut short because the client closed the connection
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def doc(self) -> dict[str, int]:
        return {"requests": self.requests, "completed": self.completed, "aborted": self.aborted,
                "errors_injected": self.errors_injected, "bad_requests": self.bad_requests,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def exposition(self, model: str) -> str:
        """The counters as vLLM names them (`vllm:*`, labelled with model_name)."""
        name = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lab = f'model_name="{name}"'
        return (
            "# HELP vllm:num_requests_running Number of requests being answered.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{lab}}} {self.running}\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{{{lab}}} {self.prompt_tokens}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{lab}}} {self.completion_tokens}\n"
            "# HELP vllm:request_success_total Count of successfully answered requests.\n"
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{finished_reason="length",{lab}}} {self.completed}\n')


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class FakeLlm:
    def __init__(self, config: FakeLlmConfig) -> None:
        self.config = config
        self.stats = _Stats()
        self._rng = random.Random(config.seed)

    # -- HTTP/1.1, keep-alive, Content-Length request bodies
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                arrived = time.monotonic()
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    await self._send_error(writer, _BadRequest(400, "bad request line"))
                    return
                method, target = parts[0], parts[1]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await self._send_error(writer, _BadRequest(400, "chunked bodies unsupported"))
                    return
                try:
                    length = int(headers.get("content-length", "0"))
                except ValueError:
                    await self._send_error(writer, _BadRequest(400, "bad Content-Length"))
                    return
                if not 0 <= length <= _MAX_BODY:
                    await self._send_error(writer, _BadRequest(413, "body too large"))
                    return
                body = await reader.readexactly(length) if length else b""
                await self._route(writer, method, target.split("?", 1)[0], body, arrived)
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes,
                     arrived: float) -> None:
        if path in ("/v1/chat/completions", "/v1/completions"):
            if method != "POST":
                await self._send_error(writer, _BadRequest(405, "use POST"))
                return
            self.stats.requests += 1
            try:
                req = self._validate(path, body)
            except _BadRequest as exc:
                self.stats.bad_requests += 1
                await self._send_error(writer, exc)
                return
            if self.config.error_rate and self._rng.random() < self.config.error_rate:
                self.stats.errors_injected += 1
                await self._send_error(writer, _BadRequest(500, "injected failure"))
                return
            self.stats.running += 1
            try:
                await self._complete(writer, path == "/v1/chat/completions", req, arrived)
            except ConnectionError:  # the client hung up mid-reply (it cancelled the request)
                self.stats.aborted += 1
                raise
            finally:
                self.stats.running -= 1
        elif path == "/v1/models" and method == "GET":
            await self._send_json(writer, 200, {"object": "list", "data": [
                {"id": self.config.model, "object": "model", "created": 0, "owned_by": "aifb"}]})
        elif path == "/health" and method == "GET":
            await self._send_json(writer, 200, {"status": "ok"})
        elif path == "/stats" and method == "GET":
            await self._send_json(writer, 200, self.stats.doc())
        elif path == "/metrics" and method == "GET":
            body = self.stats.exposition(self.config.model).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
                         b"charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        else:
            await self._send_error(writer, _BadRequest(404, f"no route for {method} {path}"))

    def _validate(self, path: str, body: bytes) -> dict[str, Any]:
        try:
            req = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadRequest(400, f"request body is not JSON: {exc}") from None
        if not isinstance(req, dict):
            raise _BadRequest(400, "request body must be a JSON object")
        model = req.get("model")
        if not isinstance(model, str):
            raise _BadRequest(400, "'model' is required", "model")
        if model != self.config.model:
            raise _BadRequest(404, f"The model `{model}` does not exist.", "model")
        if path == "/v1/chat/completions":
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise _BadRequest(400, "'messages' must be a non-empty list", "messages")
            words = 0
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise _BadRequest(400, f"messages[{i}] needs a string 'role'", "messages")
                words += _words(m.get("content"), f"messages[{i}].content")
        else:
            prompt = req.get("prompt")
            if not isinstance(prompt, str):
                raise _BadRequest(400, "'prompt' must be a string", "prompt")
            words = len(prompt.split())
        limit = req.get("max_completion_tokens", req.get("max_tokens"))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise _BadRequest(400, "'max_tokens' must be a positive integer", "max_tokens")
        for key in ("stream", "ignore_eos"):
            if not isinstance(req.get(key, False), bool):
                raise _BadRequest(400, f"'{key}' must be a boolean", key)
        options = req.get("stream_options")
        if options is not None and (not isinstance(options, dict) or not req.get("stream")):
            raise _BadRequest(400, "'stream_options' needs an object and stream=true",
                              "stream_options")
        if req.get("ignore_eos") and limit is not None:
            n = limit
        else:
            n = self.config.tokens if limit is None else min(limit, self.config.tokens)
        req["_prompt_tokens"], req["_tokens"] = words, n
        return req

    async def _complete(self, writer: asyncio.StreamWriter, chat: bool, req: dict[str, Any],
                        arrived: float) -> None:
        cfg, n = self.config, int(req["_tokens"])
        prompt_tokens = int(req["_prompt_tokens"])
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{next(self.stats.ids)}"
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": cfg.model}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                 "total_tokens": prompt_tokens + n}
        words = [" " + _VOCAB[i % len(_VOCAB)] for i in range(n)]
        if not req.get("stream"):
            await _sleep_until(arrived + (cfg.ttft_ms + (n - 1) * cfg.itl_ms) / 1000)
            text = "".join(words)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "length"} if chat else
                {"index": 0, "text": text, "finish_reason": "length"})
            await self._send_json(writer, 200, {**base, "object": "chat.completion" if chat
                                                else "text_completion", "choices": [choice],
                                                "usage": usage})
            self._count(prompt_tokens, n)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        if chat:  # OpenAI sends the role first, at once, with empty content
            _chunk(writer, {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                       "content": ""},
                                                 "finish_reason": None}]})
        await writer.drain()
        step = max(cfg.chunk_tokens, 1)
        for first in range(0, n, step):
            last = min(first + step, n) - 1
            await _sleep_until(arrived + (cfg.ttft_ms + last * cfg.itl_ms) / 1000)
            text = "".join(words[first:last + 1])
            finish = "length" if last == n - 1 else None
            choice = ({"index": 0, "delta": {"content": text}, "finish_reason": finish} if chat
                      else {"index": 0, "text": text, "finish_reason": finish})
            _chunk(writer, {**base, "choices": [choice]})
            await writer.drain()
        if (req.get("stream_options") or {}).get("include_usage"):
            _chunk(writer, {**base, "choices": [], "usage": usage})
        _write(writer, _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        self._count(prompt_tokens, n)

    def _count(self, prompt_tokens: int, n: int) -> None:
        self.stats.completed += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += n

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        await writer.drain()

    async def _send_error(self, writer: asyncio.StreamWriter, exc: _BadRequest) -> None:
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(exc.status, "InternalError")
        await self._send_json(writer, exc.status, {"error": {
            "message": exc.message, "type": kind, "param": exc.param, "code": exc.status}})


def _words(content: Any, where: str) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        total = 0
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise _BadRequest(400, f"{where}: bad content part", "messages")
            total += len(str(part.get("text", "")).split())
        return total
    raise _BadRequest(400, f"{where} must be a string or a list of parts", "messages")


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write to a client that may have hung up: uvloop raises RuntimeError on a closed
    transport (asyncio ignores the write), so a closed one is a ConnectionResetError here."""
    if writer.is_closing():
        raise ConnectionResetError("the client closed the connection")
    writer.write(data)


def _chunk(writer: asyncio.StreamWriter, doc: dict[str, Any]) -> None:
    _write(writer, _frame(b"data: " + json.dumps(doc, separators=(",", ":")).encode()
                          + b"\n\n"))


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def serve(config: FakeLlmConfig, ready: asyncio.Future[int] | None = None) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT when run as a program)."""
    app = FakeLlm(config)
    server = await asyncio.start_server(app.handle, config.host, config.port, backlog=1024)
    port = int(server.sockets[0].getsockname()[1])
    if ready is not None:
        ready.set_result(port)
    print(f"fake-llm listening on http://{config.host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def _parse(argv: list[str] | None) -> FakeLlmConfig:
    ap = argparse.ArgumentParser(prog="python -m aifb.recipes.fake_llm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    d = FakeLlmConfig()
    ap.add_argument("--host", default=d.host)
    ap.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    ap.add_argument("--model", default=d.model)
    ap.add_argument("--ttft-ms", type=float, default=d.ttft_ms)
    ap.add_argument("--itl-ms", type=float, default=d.itl_ms)
    ap.add_argument("--tokens", type=int, default=d.tokens)
    ap.add_argument("--chunk-tokens", type=int, default=d.chunk_tokens)
    ap.add_argument("--error-rate", type=float, default=d.error_rate)
    ap.add_argument("--seed", type=int, default=d.seed)
    a = ap.parse_args(argv)
    if not 0 <= a.port <= 65535:
        ap.error("--port must be in 0..65535")
    if a.ttft_ms < 0 or a.itl_ms < 0:
        ap.error("--ttft-ms and --itl-ms must be >= 0")
    if a.tokens < 1 or a.chunk_tokens < 1:
        ap.error("--tokens and --chunk-tokens must be >= 1")
    if not 0 <= a.error_rate <= 1:
        ap.error("--error-rate must be in [0, 1]")
    return FakeLlmConfig(a.host, a.port, a.model, a.ttft_ms, a.itl_ms, a.tokens, a.chunk_tokens,
                         a.error_rate, a.seed)


def main(argv: list[str] | None = None) -> None:
    config = _parse(argv)
    try:
        import uvloop  # a dependency; its timers keep the token schedule tight
        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # SLURM sends SIGTERM before SIGKILL
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(config)

    runner(run())
    sys.exit(0)


if __name__ == "__main__":
    main()
