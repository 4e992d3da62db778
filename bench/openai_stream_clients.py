"""Streaming LLM clients compared: the openai-chat workload (fast client) vs aiohttp vs httpx.

All three read the same SSE streams from the fake OpenAI server (`aifb.recipes.fake_llm`, pinned
to CPU 1; the clients run in this process, pinned to CPU 0) with a known schedule: the first
token `--ttft-ms` after the request, then one every `--itl-ms`. Each client runs `--streams`
concurrent streams, `--rounds` requests each, and stamps every token chunk when it sees it
(aiohttp: `async for line in resp.content`; httpx: `aiter_lines()`; aifb: in `data_received`).
The table shows the client CPU per 1000 tokens and how far measured ITL/TTFT lie from the
configured values: the error a client adds to what it reports. Loopback only; stops by itself.

    .venv/bin/python bench/openai_stream_clients.py [--streams 64] [--rounds 2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["main"]


def _body(tokens: int) -> dict[str, Any]:
    return {"model": "fake-llm", "messages": [{"role": "user", "content": "hi there"}],
            "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}


def _has_token(line: bytes) -> bool:
    if not line.startswith(b"data: {"):
        return False
    choices = json.loads(line[6:]).get("choices")
    return bool(choices) and bool(choices[0].get("delta", {}).get("content"))


Figures = dict[str, float]


def _figures(itl: list[int], ttft: list[int], tokens: int, cpu: float, wall: float) -> Figures:
    return {"tokens": tokens, "cpu": cpu, "wall": wall, "itl50": _pct(itl, 50),
            "itl99": _pct(itl, 99), "ttft50": _pct(ttft, 50), "ttft99": _pct(ttft, 99)}


async def _aifb(url: str, a: argparse.Namespace) -> Figures:
    from aifb.client.engine.load import run_load
    from aifb.client.engine.spec import LoadSpec, Mode
    from aifb.client.workloads.openai import OpenAIParams, OpenAIWorkload

    params = OpenAIParams.model_validate({"model": "fake-llm", "output_tokens": a.tokens,
                                          "input_tokens": 2, "num_prompts": 1,
                                          "connections": a.streams})
    wl = OpenAIWorkload(url, params, chat=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = await run_load(LoadSpec(mode=Mode.CLOSED, users=a.streams, duration_s=120,
                                  max_requests=a.streams * a.rounds), wl)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    itl, ttft = res.histograms["itl"], res.histograms["ttft"]
    return {"tokens": res.values.get("output_tokens", 0), "cpu": cpu, "wall": wall,
            "itl50": itl.percentile_us(50) / 1000, "itl99": itl.percentile_us(99) / 1000,
            "ttft50": ttft.percentile_us(50) / 1000, "ttft99": ttft.percentile_us(99) / 1000}


async def _aiohttp(url: str, a: argparse.Namespace) -> Figures:
    import aiohttp

    itl: list[int] = []
    ttft: list[int] = []
    tokens = 0
    conn = aiohttp.TCPConnector(limit=a.streams)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def user() -> None:
            nonlocal tokens
            for _ in range(a.rounds):
                start = time.perf_counter_ns()
                stamps: list[int] = []
                async with session.post(url + "/v1/chat/completions",
                                        json=_body(a.tokens)) as resp:
                    async for line in resp.content:
                        now = time.perf_counter_ns()
                        if _has_token(line):
                            stamps.append(now)
                ttft.append((stamps[0] - start) // 1000)
                itl.extend((y - x) // 1000 for x, y in itertools.pairwise(stamps))
                tokens += len(stamps)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(user() for _ in range(a.streams)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return _figures(itl, ttft, tokens, cpu, wall)


async def _httpx(url: str, a: argparse.Namespace) -> Figures:
    import httpx

    itl: list[int] = []
    ttft: list[int] = []
    tokens = 0
    limits = httpx.Limits(max_connections=a.streams, max_keepalive_connections=a.streams)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def user() -> None:
            nonlocal tokens
            for _ in range(a.rounds):
                start = time.perf_counter_ns()
                stamps: list[int] = []
                async with client.stream("POST", url + "/v1/chat/completions",
                                         json=_body(a.tokens)) as resp:
                    async for line in resp.aiter_lines():
                        now = time.perf_counter_ns()
                        if _has_token(line.encode()):
                            stamps.append(now)
                ttft.append((stamps[0] - start) // 1000)
                itl.extend((y - x) // 1000 for x, y in itertools.pairwise(stamps))
                tokens += len(stamps)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(user() for _ in range(a.streams)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return _figures(itl, ttft, tokens, cpu, wall)


def _pct(xs: list[int], q: float) -> float:
    s = sorted(xs)
    return s[min(int(len(s) * q / 100), len(s) - 1)] / 1000 if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=5.0)
    a = ap.parse_args()
    pin = ["taskset", "-c", "1"] if (os.cpu_count() or 1) > 1 else []
    server = subprocess.Popen([*pin, sys.executable, "-m", "aifb.recipes.fake_llm", "--port", "0",
                               "--ttft-ms", str(a.ttft_ms), "--itl-ms", str(a.itl_ms),
                               "--tokens", str(a.tokens)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" on ", 1)[1].strip()
        if pin:
            os.sched_setaffinity(0, {0})
        import uvloop

        rows = []
        clients = (("aifb (fast client)", _aifb), ("aiohttp", _aiohttp), ("httpx", _httpx))
        uvloop.run(_aiohttp(url, argparse.Namespace(**{**vars(a), "rounds": 1})))  # warm-up
        for name, fn in (*clients, *reversed(clients)):  # each twice, in both orders
            f = uvloop.run(fn(url, a))
            rows.append((name, int(f["tokens"]), f["wall"], 1e6 * f["cpu"] / max(f["tokens"], 1),
                         f["itl50"], f["itl99"], f["ttft50"], f["ttft99"]))
    finally:
        server.terminate()
        server.wait(10)
    print(f"{a.streams} streams x {a.rounds} requests x {a.tokens} tokens; configured TTFT "
          f"{a.ttft_ms} ms, ITL {a.itl_ms} ms")
    print(f"{'client':20} {'tokens':>7} {'wall s':>7} {'CPU µs/token':>14} {'ITL p50':>8} "
          f"{'ITL p99':>8} {'TTFT p50':>9} {'TTFT p99':>9}")
    base = rows[0][3]
    for r in rows:
        print(f"{r[0]:20} {r[1]:7d} {r[2]:7.2f} {r[3]:14.1f} {r[4]:8.2f} {r[5]:8.2f} "
              f"{r[6]:9.2f} {r[7]:9.2f}   CPU x{r[3] / base:.2f}")
    print("ITL p50 should equal the configured ITL; everything above it at p99 is delay the "
          "server or the client added (same server for all three).")


if __name__ == "__main__":
    main()
