"""The `openai-chat` and `openai-completions` workloads: streaming requests to OpenAI-style servers.

Each request posts one prompt (from a dataset or synthetic, see `aifb.client.workloads.datasets`) to
`/v1/chat/completions` or `/v1/completions` with `stream: true`, and reads the SSE reply. The
Outcome carries: `first_chunk_ns`, the arrival of the first chunk with a non-empty token (role-only
and empty chunks are not tokens), giving TTFT; `chunk_ns`, every token chunk's arrival, giving
ITL; and `values`: `input_tokens` and `output_tokens` (from the server's `usage` when it sends it
— asked for with `stream_options.include_usage` — else the prompt's estimate and the number of
token chunks), `usage_reported` (1 when those counts came from the server) and `good_requests`
(1 when the request met every SLO set: `slo_ttft_ms`, `slo_tpot_ms`). The recorder turns these
into the TTFT, ITL and TPOT histograms; a report divides the sums by the measured window for
output tokens/s and request goodput.

SLOs are judged from the moment `request()` is called (the intended send time, give or take the
schedule lag) to the first token (TTFT), and TPOT = (last byte - first token) / (output tokens - 1).

Transport: the fast client in `aifb.client.workloads.http_client`, which stamps every body read in
`data_received` itself, so token times do not include the wait for a task to be scheduled (a
busy loop with hundreds of streams delays an aiohttp/httpx reader by that wait on every token).
The hot callback only splits SSE events; JSON is parsed once the reply is complete.
Errors (stable kinds): `status_<code>`, `connect`, `closed`, `timeout`, `protocol` (bad framing),
`bad_event` (an event that is not JSON), `stream_error` (an `{"error": ...}` event),
`incomplete_stream` (no `[DONE]`), `no_tokens` (a reply without a single token).

Multi-turn sessions (`turns` > 1, openai-chat only): see `aifb.client.workloads.sessions`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from time import perf_counter_ns
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field

from aifb.client.engine.workload import Outcome
from aifb.client.workloads.datasets import LengthDist, Prompt, load_prompts, synthetic_prompts
from aifb.client.workloads.http_client import HttpConnection, HttpError, HttpPool, build_request
from aifb.client.workloads.registry import WorkloadKind, register
from aifb.client.workloads.sessions import (
    ChatSession,
    Conversations,
    SessionParams,
    check_session_params,
    reply_text,
)
from aifb.client.workloads.sse import SseError, SseReader
from aifb.client.workloads.tokenizer import Tokenizer, exact_text, load_tokenizer
from aifb.client.workloads.trace import BuiltOnAccess, TracePrompts, read_trace
from aifb.mesh.errors import InvalidArgument

__all__ = ["OpenAIParams", "OpenAIWorkload", "parse_extra_body"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Dist = Literal["fixed", "uniform", "normal", "lognormal"]


class OpenAIParams(SessionParams):
    """Parameters of the `openai-chat` and `openai-completions` workloads (with the multi-turn
    ones of SessionParams)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description="Model name sent in each request; empty = the first "
                       "model the server lists at /v1/models.")
    path: str = Field("", description="Endpoint path; empty = /v1/chat/completions or "
                      "/v1/completions.")
    dataset: str = Field("", description="Prompt file: JSONL ({\"prompt\"} or {\"messages\"} "
                         "per line) or ShareGPT JSON; empty = synthetic prompts.")
    dataset_format: Literal["auto", "jsonl", "sharegpt"] = Field(
        "auto", description="How to read `dataset` (auto: by its first character).")
    num_prompts: int = Field(1000, ge=1, le=1_000_000, description="Synthetic prompts to make, "
                             "or most prompts read from `dataset`; requests cycle through them.")
    input_tokens: int = Field(128, ge=1, le=1_000_000, description="Synthetic prompt length "
                              "(mean), in words (about one token each).")
    input_dist: Dist = Field("fixed", description="Prompt length law.")
    input_spread: float = Field(0.0, ge=0, description="Std dev (normal) or sigma (lognormal).")
    input_min: int = Field(1, ge=1, description="Shortest prompt; the low end of uniform.")
    input_max: int = Field(0, ge=0, description="Longest prompt (0 = none); uniform's high end.")
    output_tokens: int = Field(128, ge=1, le=1_000_000, description="max_tokens (mean).")
    output_dist: Dist = Field("fixed", description="max_tokens law.")
    output_spread: float = Field(0.0, ge=0, description="Std dev (normal) or sigma (lognormal).")
    output_min: int = Field(1, ge=1, description="Smallest max_tokens; the low end of uniform.")
    output_max: int = Field(0, ge=0, description="Largest max_tokens (0 = none).")
    dataset_output_tokens: bool = Field(True, description="Use a dataset entry's own reply "
                                        "length (output_tokens, or ShareGPT's reply) when it "
                                        "has one.")
    ignore_eos: bool = Field(True, description="Ask for exactly max_tokens (vLLM extension).")
    exact_output_tokens: bool = Field(False, description="Also send min_tokens = max_tokens "
                                      "and, with a tokenizer, a logit_bias forbidding its "
                                      "end-of-reply tokens: exact lengths on llama.cpp, vLLM.")
    tokenizer: str = Field("", max_length=4096, description="The model's tokenizer: a "
                           "tokenizer.json (or its folder), a .gguf model, or a packaged "
                           "model (gemma3-270m). Synthetic prompts are then exact in tokens "
                           "and dataset prompts counted in tokens; empty = words.")
    extra_body: str = Field("", max_length=65_536, description="A JSON object whose fields are "
                            "added to every request body (min_tokens, logit_bias, top_k, vendor "
                            "options); it may not set model, messages, prompt or stream.")
    stream: bool = Field(True, description="Stream the reply (needed for TTFT/ITL/TPOT).")
    include_usage: bool = Field(True, description="Ask for the server's token counts "
                                "(stream_options.include_usage).")
    temperature: float = Field(0.0, ge=0, le=2)
    slo_ttft_ms: float = Field(0.0, ge=0, description="TTFT SLO for goodput, ms (0 = none).")
    slo_tpot_ms: float = Field(0.0, ge=0, description="TPOT SLO for goodput, ms (0 = none).")
    connections: int = Field(256, ge=1, le=65_000, description="Most connections (each stream "
                             "holds one for its whole reply).")
    timeout_s: float = Field(600.0, gt=0, le=86_400, description="Per-request timeout, seconds.")
    api_key_env: str = Field("", description="Environment variable holding the API key (sent "
                             "as a bearer token); the key itself never enters a parameter.")
    seed: int = Field(0, ge=0, description="Seed of prompt and length draws.")
    trace: str = Field("", description="Request trace (mooncake JSONL: timestamp, "
                       "input_length, output_length, hash_ids): request n takes entry n's "
                       "prompt length, shared prefix blocks and max_tokens; replaces dataset "
                       "and the length laws. The load mode trace sends entry n at its time.")


class OpenAIWorkload:
    """Implements aifb.client.engine.workload.Workload for both OpenAI endpoints."""

    def __init__(self, base_url: str, params: OpenAIParams, *, chat: bool) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidArgument("target must be http://host[:port][/prefix]",
                                  field="target.base_url")
        path = params.path or ("/v1/chat/completions" if chat else "/v1/completions")
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            raise InvalidArgument("path must start with / and hold no spaces",
                                  field="params.path")
        if params.trace and params.dataset:
            raise InvalidArgument("give a dataset or a trace, not both", field="params.trace")
        if params.api_key_env and not _ENV_NAME.fullmatch(params.api_key_env):
            raise InvalidArgument("api_key_env must be an environment variable name",
                                  field="params.api_key_env")
        check_session_params(params, chat=chat)
        self.name = "openai-chat" if chat else "openai-completions"
        self.params = params
        self.multi_turn = params.multi_turn  # the engine then runs sessions (see session())
        self._conversations: Conversations | None = None
        self._post_headers: dict[str, str] = {}
        self.chat = chat
        self._host, self._port = parts.hostname, parts.port or 80
        self._host_header = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._path = self._prefix + path
        self._pool: HttpPool | None = None
        # (encoded request, input-token estimate); a trace's are encoded when sent
        self._requests: Sequence[tuple[bytes, int]] = []
        self.model = params.model
        self._extra = parse_extra_body(params.extra_body)
        self._tokenizer: Tokenizer | None = None
        self.timeouts = 0
        self.stream_bytes = 0

    # -- setup
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.params.api_key_env:
            key = os.environ.get(self.params.api_key_env, "")
            if not key:
                raise InvalidArgument(f"environment variable {self.params.api_key_env} is empty",
                                      field="params.api_key_env")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _prompts(self) -> Sequence[Prompt]:
        p = self.params
        tok = load_tokenizer(p.tokenizer) if p.tokenizer else None
        self._tokenizer = tok
        if p.trace:
            entries = read_trace(p.trace, field="params.trace")
            if tok is None:
                return TracePrompts(entries, p.seed)
            return TracePrompts(entries, p.seed, lambda rng, n: exact_text(tok, n, rng),
                                count=lambda text: len(tok.encode(text)))
        if p.dataset:
            prompts = load_prompts(p.dataset, p.dataset_format, p.num_prompts)
            if tok is None:
                return prompts
            return [replace(q, input_tokens=len(tok.encode(q.as_text()))) for q in prompts]
        return synthetic_prompts(p.num_prompts, LengthDist(p.input_dist, p.input_tokens,
                                                           p.input_spread, p.input_min,
                                                           p.input_max), p.seed, tokenizer=tok)

    def _body(self, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
        p = self.params
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens,
                                "temperature": p.temperature, "stream": p.stream}
        if self.chat:
            body["messages"] = prompt.as_messages()
        else:
            body["prompt"] = prompt.as_text()
        if p.ignore_eos:
            body["ignore_eos"] = True
        if p.stream and p.include_usage:
            body["stream_options"] = {"include_usage": True}
        if p.exact_output_tokens:
            body["min_tokens"] = max_tokens
            if self._tokenizer is not None and self._tokenizer.end_ids:
                body["logit_bias"] = {str(i): -100 for i in self._tokenizer.end_ids}
        body.update(self._extra)
        return body

    async def prepare(self) -> None:
        try:
            await self._prepare()
        except BaseException:
            await self.close()  # the engine does not call close() after a failed prepare
            raise

    async def _prepare(self) -> None:
        headers = self._headers()
        if self.multi_turn:
            tok = load_tokenizer(self.params.tokenizer) if self.params.tokenizer else None
            self._tokenizer = tok
            self._conversations = Conversations(self.params, tok)
        prompts = [] if self.multi_turn else self._prompts()
        self._pool = HttpPool(self._host, self._port, limit=self.params.connections)
        if not self.model:
            self.model = await self._first_model(headers)
        else:
            conn = await self._pool.acquire()  # fail fast when nothing listens
            self._pool.release(conn)
        p = self.params
        headers["Accept"] = "text/event-stream" if p.stream else "application/json"
        self._post_headers = headers
        if isinstance(prompts, TracePrompts):
            self._requests = BuiltOnAccess(prompts, lambda prompt: self._encode(
                headers, prompt, prompt.output_tokens or p.output_tokens))
            return
        lengths = LengthDist(p.output_dist, p.output_tokens, p.output_spread, p.output_min,
                             p.output_max).sample(len(prompts), p.seed + 1)
        self._post_headers = headers
        built = []
        for prompt, length in zip(prompts, lengths, strict=True):
            wanted = prompt.output_tokens if (p.dataset_output_tokens and prompt.output_tokens) \
                else length
            built.append(self._encode(headers, prompt, wanted))
        self._requests = built

    def _encode(self, headers: dict[str, str], prompt: Prompt, max_tokens: int
                ) -> tuple[bytes, int]:
        body = json.dumps(self._body(prompt, max_tokens), separators=(",", ":")).encode()
        return (build_request("POST", self._path, self._host_header, headers, body),
                prompt.input_tokens)

    async def _first_model(self, headers: dict[str, str]) -> str:
        assert self._pool is not None
        conn = await self._pool.acquire()
        try:
            resp = await conn.send(build_request("GET", self._prefix + "/v1/models",
                                                 self._host_header, headers), keep_body=True)
        finally:
            self._pool.release(conn)
        try:
            models = json.loads(resp.body or b"")["data"]
            name = models[0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InvalidArgument(f"no model given and GET /v1/models answered {resp.status} "
                                  "without one; set the model parameter",
                                  field="params.model") from None
        if resp.status != 200 or not isinstance(name, str):
            raise InvalidArgument(f"GET /v1/models answered {resp.status}; set the model "
                                  "parameter", field="params.model")
        return name

    # -- sessions
    def session(self, number: int) -> ChatSession:
        """Multi-turn session `number` (see aifb.client.engine.sessions)."""
        if self._conversations is None:
            raise RuntimeError("prepare() the workload first, with turns > 1")
        return self._conversations.session(number, self)

    def chat_request(self, messages: list[dict[str, str]], max_tokens: int) -> bytes:
        """One chat request carrying `messages` (a session's turn: the conversation so far)."""
        body = json.dumps(self._body(Prompt(messages=tuple(messages)), max_tokens),
                          separators=(",", ":")).encode()
        return build_request("POST", self._path, self._host_header, self._post_headers, body)

    # -- one request
    async def request(self, seq: int) -> Outcome:
        if not self._requests:
            raise RuntimeError("prepare() the workload first" if not self.multi_turn else
                               "a multi-turn workload sends sessions' turns, not requests")
        raw, input_estimate = self._requests[seq % len(self._requests)]
        return await self.send(raw, input_estimate)

    async def send(self, raw: bytes, input_estimate: int,
                   reply: list[str] | None = None) -> Outcome:
        """Send one encoded request; when it succeeds and `reply` is given, the reply's text is
        appended to it (a session keeps it in its history)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("prepare() the workload first")
        start_ns = perf_counter_ns()
        stream = self.params.stream
        reader = SseReader()
        events: list[tuple[bytes, int]] = []
        problem: list[str] = []

        def on_chunk(data: bytes, now: int) -> None:
            if problem:
                return
            try:
                events.extend(reader.feed(data, now))
            except SseError:
                problem.append("protocol")

        try:
            conn = pool.try_acquire() or await pool.acquire()
        except HttpError as exc:
            return Outcome(ok=False, error=exc.kind)
        timer = asyncio.get_running_loop().call_later(self.params.timeout_s, self._expire, conn)
        try:
            resp = await conn.send(raw, keep_body=not stream, on_chunk=on_chunk if stream
                                   else None)
        except HttpError as exc:
            return Outcome(ok=False, error=exc.kind, sent_ns=conn.sent_ns)
        finally:
            timer.cancel()
            sent_ns = conn.sent_ns
            pool.release(conn)
        self.stream_bytes += resp.body_len
        if resp.status >= 400:
            return Outcome(False, f"status_{resp.status}", resp.status, resp.end_ns, sent_ns)
        if problem:
            return Outcome(False, problem[0], resp.status, resp.end_ns, sent_ns)
        if stream:
            out = self._streamed(events, resp.status, resp.end_ns, sent_ns, start_ns,
                                 input_estimate)
        else:
            out = self._whole(resp.body or b"", resp.status, resp.end_ns, sent_ns,
                              input_estimate)
        if reply is not None and out.ok:
            reply.append(reply_text(events if stream else None, resp.body))
        return out

    def _expire(self, conn: HttpConnection) -> None:
        if not conn.closed:
            self.timeouts += 1
            conn.timeout()

    def _streamed(self, events: list[tuple[bytes, int]], status: int, end_ns: int, sent_ns: int,
                  start_ns: int, input_estimate: int) -> Outcome:
        chunk_ns: list[int] = []
        usage: dict[str, Any] | None = None
        timings: dict[str, Any] | None = None
        done = False
        for data, at in events:
            if data == b"[DONE]":
                done = True
                break
            try:
                obj = json.loads(data)
            except ValueError:
                return Outcome(False, "bad_event", status, end_ns, sent_ns)
            if not isinstance(obj, dict):
                return Outcome(False, "bad_event", status, end_ns, sent_ns)
            if obj.get("error"):
                return Outcome(False, "stream_error", status, end_ns, sent_ns)
            if self._token_text(obj):
                chunk_ns.append(at)
            if isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
            if isinstance(obj.get("timings"), dict):
                timings = obj["timings"]
        if not done:
            return Outcome(False, "incomplete_stream", status, end_ns, sent_ns)
        if not chunk_ns:
            return Outcome(False, "no_tokens", status, end_ns, sent_ns)
        values = self._counts(usage, input_estimate, len(chunk_ns))
        if timings is not None:
            values.update(_server_timings(timings))
        first = chunk_ns[0]
        out_tokens = values["output_tokens"]
        tpot_ms = (end_ns - first) / (out_tokens - 1) / 1e6 if out_tokens > 1 else 0.0
        values["good_requests"] = float(self._meets_slos((first - start_ns) / 1e6, tpot_ms))
        return Outcome(True, "", status, end_ns, sent_ns, first, chunk_ns, values)

    def _token_text(self, obj: dict[str, Any]) -> bool:
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return False
        choice = choices[0]
        if self.chat:
            delta = choice.get("delta")
            return isinstance(delta, dict) and bool(delta.get("content")
                                                    or delta.get("reasoning_content"))
        return bool(choice.get("text"))

    def _whole(self, body: bytes, status: int, end_ns: int, sent_ns: int,
               input_estimate: int) -> Outcome:
        try:
            obj = json.loads(body)
            choice = obj["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Outcome(False, "bad_event", status, end_ns, sent_ns)
        if not text:
            return Outcome(False, "no_tokens", status, end_ns, sent_ns)
        values = self._counts(obj.get("usage"), input_estimate, len(str(text).split()))
        values["good_requests"] = 1.0 if not self.params.slo_ttft_ms and not \
            self.params.slo_tpot_ms else 0.0  # no first-token time without streaming
        return Outcome(True, "", status, end_ns, sent_ns, values=values)

    @staticmethod
    def _counts(usage: Any, input_estimate: int, counted: int) -> dict[str, float]:
        """Token counts: the server's `usage` when it sends it, else the client's. With usage,
        also how the two compare (summed over requests, so workers merge exactly): replies
        whose length differs from the chunks received, and the prompt offset (server - client:
        the BOS and chat-template tokens the client does not count) with its square, whose
        spread says whether the offset was the same on every request."""
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            prompt = usage.get("prompt_tokens")
            server_in = prompt if isinstance(prompt, int) else input_estimate
            offset = float(server_in - input_estimate)
            return {"input_tokens": float(server_in),
                    "output_tokens": float(usage["completion_tokens"]), "usage_reported": 1.0,
                    "client_input_tokens": float(input_estimate),
                    "client_output_tokens": float(counted),
                    "usage_output_mismatches": float(usage["completion_tokens"] != counted),
                    "usage_input_offset": offset, "usage_input_offset_sq": offset * offset}
        return {"input_tokens": float(input_estimate), "output_tokens": float(counted),
                "usage_reported": 0.0}

    def _meets_slos(self, ttft_ms: float, tpot_ms: float) -> bool:
        p = self.params
        return ((not p.slo_ttft_ms or ttft_ms <= p.slo_ttft_ms)
                and (not p.slo_tpot_ms or tpot_ms <= p.slo_tpot_ms))

    def extra_metrics(self) -> dict[str, float]:
        pool = self._pool
        extra = {"connections_opened": float(pool.opened if pool else 0),
                 "response_body_bytes": float(self.stream_bytes), "timeouts": float(self.timeouts),
                 "prompts": float(len(self._requests))}
        if self._conversations is not None:  # sessions cycle through these
            extra["conversations"] = float(self._conversations.count)
        return extra

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await asyncio.sleep(0)  # let the transports run their close callbacks


def _server_timings(t: dict[str, Any]) -> dict[str, float]:
    """The server's own prefill and decode times for this request, when it sends them (the
    `timings` object of llama.cpp's server and of aifb's llamacpp recipe): summed, they give
    the client's overhead beside its TTFT and ITL in the report."""
    try:
        prompt_ms, decode_ms = float(t["prompt_ms"]), float(t["predicted_ms"])
        runs = float(t["predicted_n"])
    except (KeyError, TypeError, ValueError):
        return {}
    if not all(math.isfinite(v) and v >= 0 for v in (prompt_ms, decode_ms, runs)):
        return {}
    return {"server_timed": 1.0, "server_prompt_ms": prompt_ms, "server_decode_ms": decode_ms,
            "server_decode_runs": runs}


# Request fields the workload owns: set them through their own parameters.
_OWN_FIELDS = {"model": "model", "messages": "dataset", "prompt": "dataset", "stream": "stream",
               "stream_options": "include_usage"}


def parse_extra_body(text: str) -> dict[str, Any]:
    """`extra_body`: a JSON object merged into every request body (after the workload's own
    fields, so it may replace max_tokens, temperature, ignore_eos...)."""
    if not text.strip():
        return {}
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"extra_body is not JSON: {exc}", field="params.extra_body"
                              ) from None
    if not isinstance(obj, dict):
        raise InvalidArgument("extra_body must be a JSON object ({\"min_tokens\": 32, ...}), "
                              f"got {type(obj).__name__}", field="params.extra_body")
    for key in obj:
        if key in _OWN_FIELDS:
            raise InvalidArgument(f"extra_body may not set {key!r}: use the "
                                  f"{_OWN_FIELDS[key]} parameter", field="params.extra_body")
    return obj


def _chat(target_url: str, params: OpenAIParams) -> OpenAIWorkload:
    return OpenAIWorkload(target_url.rstrip("/"), params, chat=True)


def _completions(target_url: str, params: OpenAIParams) -> OpenAIWorkload:
    return OpenAIWorkload(target_url.rstrip("/"), params, chat=False)


register(WorkloadKind("openai-chat", "Streaming /v1/chat/completions: TTFT, ITL, TPOT, tokens, "
                      "goodput.", OpenAIParams, _chat))
register(WorkloadKind("openai-completions", "Streaming /v1/completions: TTFT, ITL, TPOT, tokens, "
                      "goodput.", OpenAIParams, _completions))
