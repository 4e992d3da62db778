"""The `llamacpp` recipe's program: llama.cpp's OpenAI-compatible server, with metrics and timings.

    python -m aifb.recipes.llamacpp --model gemma3-270m --port 8000 --threads 1

It serves a GGUF model with llama-cpp-python's server (`/v1/models`, `/v1/chat/completions`,
`/v1/completions`, SSE streaming) and adds what a benchmarked service needs around it:

- `/health` (200 once the model is loaded: the app only exists after that);
- `/metrics` in the Prometheus text format with the names llama.cpp's own server uses
  (`llamacpp:prompt_tokens_total`, `llamacpp:prompt_seconds_total`,
  `llamacpp:tokens_predicted_total`, `llamacpp:tokens_predicted_seconds_total`,
  `llamacpp:requests_processing`, `llamacpp:requests_deferred`), counted from llama.cpp's own
  per-request performance counters, not from the client's view;
- `--timings FILE`: one JSON line per request with those counters (prompt tokens evaluated and
  the milliseconds it took, decode runs and their milliseconds): the server's truth that a
  benchmark's TTFT and ITL are compared with (`bench/llm_client_overhead.py`, the tests).

Choices made for load tests (see docs/workloads.md): requests queue instead of interrupting each
other (`interrupt_requests` off: by default a new request aborts the running one), and a GGUF
without a chat template (Gemma 3 270M has none) gets Gemma's turn format through a tokenizer
config written next to the timings, accepting message content as a string or as a list of
text parts (what several clients send). llama-cpp-python's server has one slot: requests are
served one at a time, in arrival order.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["GEMMA_TEMPLATE", "main"]

# Gemma's turns: `<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`. A system message
# becomes a user turn (Gemma has no system role). llama-cpp-python appends an empty assistant
# message to ask for the reply: the last such message opens the model's turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['content'] is none %}{% set text = '' %}"
    "{% elif m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') %}{% endif %}"
    "{% if m['role'] == 'assistant' and loop.last and not text %}"
    "<start_of_turn>model\n"
    "{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ text }}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="aifb-llamacpp", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", required=True,
                    help="A GGUF file, or a packaged model's name (gemma3-270m).")
    ap.add_argument("--alias", default="", help="Model name served (default: the file's stem).")
    ap.add_argument("--threads", type=int, default=1, help="Threads for decode and prefill.")
    ap.add_argument("--ctx-size", type=int, default=2048, help="Context size in tokens.")
    ap.add_argument("--batch-size", type=int, default=512, help="Prompt batch size in tokens.")
    ap.add_argument("--chat-format", default="auto",
                    help="auto (the GGUF's own template, else Gemma turns), gemma-turns, or a "
                         "llama-cpp-python chat format name.")
    ap.add_argument("--timings", default="", help="Append one JSON line per request here.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name, low, high in (("threads", 1, 1024), ("ctx_size", 16, 1 << 20),
                            ("batch_size", 1, 1 << 20), ("port", 0, 65535)):
        value = getattr(args, name)
        if not low <= value <= high:
            ap.error(f"--{name.replace('_', '-')} must be in {low}..{high}, got {value}")
    return args


class Timings:
    """The server's own per-request figures, measured around llama.cpp's decode calls.

    llama.cpp's perf counters cannot be used on CPU: the CPU backend computes inside
    `llama_decode`, before the counter's clock starts, so its "prompt eval time" reads ~0 ms for
    any prompt (measured: 0.28 ms for 385 tokens that took 3.7 s). So the first `Llama.eval`
    of a completion (the prompt tokens not already in the KV cache) is timed as prefill, every
    later one (one token each) as decode; samples that are not end-of-generation tokens are the
    reply's tokens, as llama-cpp-python counts them for `usage`.
    """

    def __init__(self, path: str) -> None:
        self.lock = threading.Lock()
        self.prompt_tokens = 0
        self.prompt_s = 0.0
        self.predicted = 0
        self.predicted_s = 0.0
        self.requests = 0
        self._path = path

    def record(self, r: dict[str, Any]) -> None:
        line = {"time": round(time.time(), 6), "prompt_tokens": r["prompt_tokens"],
                "prompt_evaluated": r["prompt_evaluated"], "prompt_ms": round(r["prompt_ms"], 3),
                "completion_tokens": r["completion_tokens"], "eval_runs": r["eval_runs"],
                "eval_ms": round(r["eval_ms"], 3)}
        with self.lock:
            self.requests += 1
            self.prompt_tokens += r["prompt_evaluated"]
            self.prompt_s += r["prompt_ms"] / 1000
            self.predicted += r["eval_runs"]
            self.predicted_s += r["eval_ms"] / 1000
            if self._path:  # one line a request (hundreds of ms each): open, append, close
                with open(self._path, "a") as fh:
                    fh.write(json.dumps(line) + "\n")


# The figures of the completion being served: set per HTTP request by the middleware (contexts
# are copied into the tasks and worker threads that serve it), else one shared record.
_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "aifb_llamacpp_request", default=None)


def _fresh() -> dict[str, Any]:
    return {"prompt_tokens": 0, "prompt_evaluated": 0, "prompt_ms": 0.0, "eval_runs": 0,
            "eval_ms": 0.0, "completion_tokens": 0, "started": False, "done": False}


def _hook(timings: Timings) -> None:
    """Time llama-cpp-python's eval and count its samples, per completion (verbose mode resets
    the context's timings when a completion starts and prints them when it ends)."""
    import llama_cpp
    from llama_cpp import _internals

    shared = _fresh()

    def current() -> dict[str, Any]:
        r = _CURRENT.get()
        return r if r is not None else shared

    reset: Any = _internals.LlamaContext.reset_timings
    printer: Any = _internals.LlamaContext.print_timings
    evaluate: Any = llama_cpp.Llama.eval
    sample: Any = llama_cpp.Llama.sample

    def reset_timings(ctx: Any) -> None:
        r = current()
        r.update(_fresh())
        r["started"] = True
        reset(ctx)

    def print_timings(ctx: Any) -> None:
        r = current()
        r["done"] = True
        timings.record(r)
        printer(ctx)

    def timed_eval(llama: Any, tokens: Any) -> None:
        r = current()
        t0 = time.perf_counter()
        evaluate(llama, tokens)
        ms = (time.perf_counter() - t0) * 1000
        if r["started"] and not r["prompt_tokens"]:
            r["prompt_ms"] += ms
            r["prompt_evaluated"] += len(tokens)
            r["prompt_tokens"] = int(llama.n_tokens)  # the whole prompt, cached part included
        else:
            r["eval_ms"] += ms
            r["eval_runs"] += 1

    def counted_sample(llama: Any, *args: Any, **kwargs: Any) -> Any:
        token = sample(llama, *args, **kwargs)
        if not llama_cpp.llama_token_is_eog(llama._model.vocab, token):
            current()["completion_tokens"] += 1
        return token

    _internals.LlamaContext.reset_timings = reset_timings  # type: ignore[method-assign]
    _internals.LlamaContext.print_timings = print_timings  # type: ignore[method-assign]
    llama_cpp.Llama.eval = timed_eval  # type: ignore[method-assign, assignment]
    llama_cpp.Llama.sample = counted_sample  # type: ignore[method-assign, assignment]


_COMPLETIONS = ("/v1/chat/completions", "/v1/completions")
_MAX_BODY = 16 * 1024 * 1024
_DONE = b"data: [DONE]"


class _InFlight:
    n = 0  # completions received and not yet answered


class _Requests:
    """ASGI middleware around completions: counts them (requests_processing/deferred), gives
    each its own figures, and adds what llama-cpp-python's server leaves out of a stream that
    asked for it (`stream_options.include_usage`): a last chunk with `usage` (the server's
    token counts) and `timings` (its prefill and decode times, as llama.cpp's own server
    sends them), before `[DONE]`; and maps `max_completion_tokens` to `max_tokens`.

    A client that hangs up stops the generation at the next token (llama-cpp-python's server
    checks for it between chunks): the slot is free at once, and the request, never finished,
    has no timings line."""

    def __init__(self, app: Any, counts: _InFlight) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope.get("path") not in _COMPLETIONS):
            await self.app(scope, receive, send)
            return
        parts, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            parts.append(msg.get("body", b""))
            size += len(parts[-1])
            if size > _MAX_BODY:
                await _reply(send, 413, b'{"error": {"message": "request body over 16 MiB"}}')
                return
            if not msg.get("more_body", False):
                break
        body, usage = _adapted(b"".join(parts))
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        record = _fresh()
        first: dict[str, Any] = {}

        async def send_usage(message: Any) -> None:
            if usage and message["type"] == "http.response.body":
                data = message.get("body", b"")
                if not first and b"data: {" in data:
                    first.update(_first_event(data))
                at = data.find(_DONE)
                if at >= 0 and record["done"]:
                    extra = b"data: " + json.dumps(_usage_chunk(first, record)).encode()
                    message = {**message, "body": data[:at] + extra + b"\r\n\r\n" + data[at:]}
            await send(message)

        token = _CURRENT.set(record)
        self.counts.n += 1
        try:
            await self.app(scope, replay, send_usage)
        finally:
            self.counts.n -= 1
            _CURRENT.reset(token)


def _adapted(body: bytes) -> tuple[bytes, bool]:
    """The body the server gets, and whether the stream asked for usage. OpenAI's newer
    `max_completion_tokens` becomes `max_tokens` when that is absent: llama-cpp-python reads
    only `max_tokens`, and a client sending the other would get replies that run to the
    context's end. A body that is not a JSON object goes on as it came (the server answers)."""
    try:
        req = json.loads(body)
    except (ValueError, RecursionError):
        return body, False
    if not isinstance(req, dict):
        return body, False
    opts = req.get("stream_options")
    usage = bool(req.get("stream")) and isinstance(opts, dict) and bool(opts.get("include_usage"))
    if "max_completion_tokens" in req and req.get("max_tokens") is None:
        req["max_tokens"] = req.pop("max_completion_tokens")
        body = json.dumps(req).encode()
    return body, usage


def _first_event(data: bytes) -> dict[str, Any]:
    line = data[data.find(b"data: {") + 6:].split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    try:
        obj = json.loads(line)
    except ValueError:
        return {}
    return {k: obj[k] for k in ("id", "object", "created", "model") if k in obj} \
        if isinstance(obj, dict) else {}


def _usage_chunk(first: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    return {**first, "choices": [],
            "usage": {"prompt_tokens": r["prompt_tokens"],
                      "completion_tokens": r["completion_tokens"],
                      "total_tokens": r["prompt_tokens"] + r["completion_tokens"]},
            "timings": {"prompt_n": r["prompt_evaluated"], "prompt_ms": round(r["prompt_ms"], 3),
                        "predicted_n": r["eval_runs"], "predicted_ms": round(r["eval_ms"], 3),
                        "cache_n": r["prompt_tokens"] - r["prompt_evaluated"]}}


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _chat_settings(args: argparse.Namespace, model: Path, workdir: Path) -> dict[str, Any]:
    fmt = args.chat_format
    if fmt == "auto":
        import llama_cpp

        probe = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
        has_template = "tokenizer.chat_template" in probe.metadata
        del probe
        fmt = "" if has_template else "gemma-turns"
    if fmt == "":
        return {}
    if fmt != "gemma-turns":
        return {"chat_format": fmt}
    config = workdir / "chat-template.json"
    config.write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                  "chat_template": GEMMA_TEMPLATE}))
    return {"chat_format": "hf-tokenizer-config", "hf_tokenizer_config_path": str(config)}


class _Collector:
    """/metrics: llama.cpp's counters as its own server names them (one slot: processing <= 1)."""

    def __init__(self, timings: Timings, counts: _InFlight) -> None:
        self.timings = timings
        self.counts = counts

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        t = self.timings
        with t.lock:
            counters = (("prompt_tokens", "Prompt tokens evaluated.", t.prompt_tokens),
                        ("prompt_seconds", "Prompt evaluation time.", t.prompt_s),
                        ("tokens_predicted", "Decode runs (tokens after the first).",
                         t.predicted),
                        ("tokens_predicted_seconds", "Decode time.", t.predicted_s),
                        ("requests", "Completions finished.", t.requests))
        for name, doc, value in counters:
            yield CounterMetricFamily(f"llamacpp:{name}", doc, value=value)
        n = self.counts.n
        yield GaugeMetricFamily("llamacpp:requests_processing",
                                "Completions being served.", value=min(n, 1))
        yield GaugeMetricFamily("llamacpp:requests_deferred",
                                "Completions waiting for the slot.", value=max(n - 1, 0))


def build_app(args: argparse.Namespace) -> Any:
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from starlette.requests import Request
    from starlette.responses import Response

    from aifb.recipes.llm_models import resolve_model

    model = resolve_model(args.model)
    workdir = Path(args.timings).parent if args.timings else Path(tempfile.mkdtemp())
    timings = Timings(args.timings)
    _hook(timings)
    settings = ModelSettings(model=str(model), model_alias=args.alias or model.stem,
                             n_ctx=args.ctx_size, n_batch=args.batch_size,
                             n_threads=args.threads, n_threads_batch=args.threads,
                             seed=args.seed, verbose=True,
                             **_chat_settings(args, model, workdir))
    app = create_app(server_settings=ServerSettings(host=args.host, port=args.port,
                                                    interrupt_requests=False),
                     model_settings=[settings])

    counts = _InFlight()
    app.add_middleware(_Requests, counts=counts)
    registry = CollectorRegistry()
    registry.register(_Collector(timings, counts))

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/metrics", metrics, methods=["GET"])
    return app


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    try:
        app = build_app(args)
    except ValueError as exc:
        print(f"aifb-llamacpp: {exc}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                            access_log=False)
    server = uvicorn.Server(config)
    print(f"llamacpp serving {args.model} on http://{args.host}:{args.port} "
          f"(threads {args.threads}, ctx {args.ctx_size})", file=sys.stderr, flush=True)
    server.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
