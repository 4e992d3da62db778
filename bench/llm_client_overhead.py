"""LLM client overhead on a real model: aifb's openai-chat beside GuideLLM, each against the
server's own prefill and decode times for its own requests.

    .venv/bin/python bench/llm_client_overhead.py [--rounds 3] [--requests 20]
        [--input-tokens 64] [--output-tokens 32] [--threads 1] [--guidellm PATH]

The path users run: one `aifb up --scheduler local --no-telemetry` (its own home, a free loopback
port), then `aifb services create llamacpp --param port=0 --param threads=THREADS --wait`:
llama.cpp's server (llama-cpp-python) serving Gemma 3 270M (Q4_K_M) on the CPU. It serves one
request at a time, and its job folder's timings.jsonl gets one line per request with the server's
own times: prefill (`prompt_ms`: evaluating the prompt tokens not already cached) and decode
(`eval_ms` over `eval_runs` one-token steps), measured around llama.cpp's decode calls.

Rounds alternate, aifb then GuideLLM, `--rounds` times (the server's speed drifts by ±20 % over
minutes, so each client is compared with the server's times for its own requests, never with
the other client's raw TTFT). Each round sends `--requests` chat requests one at a time, prompts
exact in tokens (`--input-tokens`, counted with the model's own tokenizer) and replies of exactly
`--output-tokens` tokens (`max_tokens`, `min_tokens` and a `logit_bias` forbidding the end
tokens; the server's own counts are printed to show it):
  - aifb: `aifb bench run --service ID --workload openai-chat --concurrency 1 --max-requests N
    --samples -p tokenizer=gemma3-270m -p input_tokens=64 -p output_tokens=32
    -p exact_output_tokens=true -p num_prompts=N -p seed=ROUND`; per request from samples.parquet,
    `ttft_s` (aifb's TTFT) minus `server_prompt_ms` (the same request's prefill, from the `timings`
    object the server appends to the stream); ITL: the report's mean ITL over the server's decode
    time per token (`server_decode_ms / server_decode_runs`);
  - GuideLLM (0.8, its own venv, `--guidellm`): `guidellm run -c SCENARIO.json` with the
    `openai_http` backend on the chat endpoint, the `synchronous` profile, `max_requests` N,
    `synthetic_text` data of the same lengths (its prompt length counts the BOS: one more),
    `extras.body` = {max_tokens, min_tokens,
    logit_bias, temperature 0} (it sends `max_completion_tokens`, which this server ignores).
    Offline: its tokenizer is converted once from the served GGUF by transformers (`gguf_file=`,
    needs the `gguf` package in that venv) into a local folder. Per request from its JSON output,
    `time_to_first_token_ms` minus the prefill of the timings.jsonl line the server wrote while
    that request was open (request_start <= time <= request_end); ITL: its mean
    `inter_token_latency_ms` over the decode time per token of those lines.
Printed per round and over all rounds: TTFT - server prefill (p50, mean), mean ITL, server decode
per token, ITL / decode; then the ratios aifb / GuideLLM and the verdict on the two figures that
say how much a client adds (p50 TTFT - prefill; ITL / decode). If GuideLLM cannot run here the
reason is printed and aifb's figures still are. It asserts nothing about time; the server, the
service and GuideLLM's processes are stopped by PID at the end.

A side venv for the peer: `python -m venv DIR && DIR/bin/pip install guidellm==0.8.1 gguf`, then
`--guidellm DIR/bin/guidellm` (or AIFB_GUIDELLM=DIR/bin/guidellm, or that bin on the PATH).

Measured here, 2026-12-07 (2 vCPU shared with other work, load average ~1-2.6; llama-cpp-python
0.3.36, one thread; GuideLLM 0.8.1), with
`PYTHONPATH=... .venv/bin/python bench/llm_client_overhead.py` (3 rounds x 20 requests, 3 min 42 s):

    round  client    reqs  TTFT-pre  TTFT-pre  ITL mean    decode     ITL/
                             p50 ms   mean ms        ms  ms/token   decode
        1  aifb        20       5.9       6.2     21.33     19.16    1.114
        1  guidellm    20       8.1       8.2     20.72     18.33    1.130
        2  aifb        20       5.1       5.1     20.61     18.52    1.113
        2  guidellm    20       7.1       7.6     21.17     18.75    1.129
        3  aifb        20       5.4       5.7     21.07     18.94    1.113
        3  guidellm    20       7.6      10.9     21.71     19.17    1.132
      all  aifb        60       5.4       5.7     21.00     18.87    1.113
      all  guidellm    60       7.6       8.9     21.20     18.75    1.131
    aifb / GuideLLM: TTFT - prefill p50 0.71x, mean 0.64x; ITL / decode 0.984x; ITL excess
    over decode (ITL - decode per token) 2.13 vs 2.45 ms
    aifb's client overhead is no larger than the peer's (TTFT - prefill p50 5.4 <= 7.6 ms;
    ITL / decode 1.113 <= 1.131)

Every reply was 32 tokens and every prompt 73 by the server's count, for both clients; the server
found ~4 prompt tokens cached for aifb's prompts and ~6 for GuideLLM's (each client is compared
with the prefill of its own requests). Part of the ITL excess is the server's own (sampling,
detokenising, SSE framing are outside its decode time), the same for both clients. A run of 3
requests is noise: one such run gave ITL / decode 1.141 for aifb beside 1.129.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _up import Up

__all__ = ["main"]

# The peer lives in a venv of its own (its ~100 packages stay out of uv.lock): $AIFB_GUIDELLM,
# else `guidellm` on the PATH.
GUIDELLM = Path(os.environ.get("AIFB_GUIDELLM") or shutil.which("guidellm") or "guidellm")
MODEL = "gemma3-270m"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Run in the peer's own interpreter: the GGUF's vocabulary as a Hugging Face tokenizer folder.
CONVERT = ("import sys\nfrom pathlib import Path\nfrom transformers import AutoTokenizer\n"
           "gguf = Path(sys.argv[1])\n"
           "tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)\n"
           "tok.save_pretrained(sys.argv[2])\n")


@dataclass
class Round:
    """One client's requests in one round, each beside the server's own times."""

    client: str
    overhead_ms: list[float] = field(default_factory=list)  # TTFT - server prefill
    itl_mean_ms: float = 0.0  # the client's own mean ITL
    itl_count: int = 0
    decode_ms: float = 0.0  # the server's decode time and steps over these requests
    decode_runs: float = 0.0
    reply_tokens: list[int] = field(default_factory=list)  # the server's counts
    prompt_tokens: list[int] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)  # prompt tokens not already cached


def timing_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The server's timings.jsonl lines written after byte `offset`, and the new offset."""
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    return [json.loads(x) for x in data[:end].splitlines() if x.strip()], offset + end


def wait_idle(url: str, timeout: float = 180) -> None:
    """Until the server has no completion in flight or queued (a client's last request may
    outlive it: GuideLLM cancels a request it will not count, the server finishes it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
        busy = sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(("llamacpp:requests_processing",
                                       "llamacpp:requests_deferred")))
        if busy == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the server stayed busy for {timeout:g}s")


def aifb_round(up: Up, sid: str, a: argparse.Namespace, seed: int, timings: Path) -> Round:
    import pyarrow.parquet as pq

    _, offset = timing_lines(timings, 0)
    out = up.json("bench", "run", "--service", sid, "--workload", "openai-chat",
                  "--concurrency", "1", "--max-requests", str(a.requests),
                  "--duration", f"{a.requests * 60}s", "--samples",
                  "-p", f"tokenizer={MODEL}", "-p", f"input_tokens={a.input_tokens}",
                  "-p", f"output_tokens={a.output_tokens}", "-p", "exact_output_tokens=true",
                  "-p", f"num_prompts={a.requests}", "-p", f"seed={seed}",
                  timeout=a.requests * 60 + 300)
    figures = out["report"]["figures"]
    rows = pq.read_table(Path(out["directory"]) / "samples.parquet").to_pylist()
    rows = [r for r in rows if r["ok"] and r["phase"] == "measure"]
    lines, _ = timing_lines(timings, offset)
    values, itl = figures["values"], figures["histograms"]["itl"]
    return Round("aifb", overhead_ms=[r["ttft_s"] * 1000 - r["server_prompt_ms"] for r in rows],
                 itl_mean_ms=itl["mean"] * 1000, itl_count=itl["count"],
                 decode_ms=values["server_decode_ms"], decode_runs=values["server_decode_runs"],
                 reply_tokens=[int(r["output_tokens"]) for r in rows],
                 prompt_tokens=[int(r["input_tokens"]) for r in rows],
                 evaluated=[x["prompt_evaluated"] for x in lines])


class Peer:
    """GuideLLM in its own venv, made to run offline (see the module docstring)."""

    def __init__(self, exe: Path, work: Path) -> None:
        self.exe, self.work = exe, work
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | OFFLINE
        self.version = ""
        self.tokenizer = work / "peer-tokenizer"

    def prepare(self) -> None:
        """Raises RuntimeError saying precisely why the peer cannot run."""
        from aifb.recipes.llm_models import resolve_model

        if not os.access(self.exe, os.X_OK):
            raise RuntimeError(f"no guidellm executable at {self.exe} (--guidellm PATH)")
        self.version = self._run([str(self.exe), "--version"], 60).strip()
        python = self.exe.with_name("python")
        self._run([str(python), "-c", CONVERT, str(resolve_model(MODEL)), str(self.tokenizer)],
                  600, what="converting the GGUF's tokenizer for it (transformers, gguf)")

    def _run(self, cmd: list[str], timeout: float, what: str = "") -> str:
        proc = subprocess.Popen(cmd, env=self.env, cwd=self.work, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process started here
            proc.communicate()
            raise RuntimeError(f"{what or cmd[0]}: no result after {timeout:g}s") from None
        if proc.returncode != 0:
            tail = "\n    ".join(out.strip().splitlines()[-6:])
            raise RuntimeError(f"{what or ' '.join(cmd[:2])} failed ({proc.returncode}):\n"
                               f"    {tail}")
        return out

    def round(self, url: str, a: argparse.Namespace, seed: int, timings: Path) -> Round:
        result = self.work / f"guidellm-{seed}.json"
        scenario = self.work / f"scenario-{seed}.json"
        body = {"max_tokens": a.output_tokens, "min_tokens": a.output_tokens,
                "logit_bias": {str(t): -100 for t in end_tokens()}, "temperature": 0.0}
        scenario.write_text(json.dumps({"spec": {
            "backend": {"kind": "openai_http", "target": url.rstrip("/"), "model": MODEL,
                        "request_format": "/v1/chat/completions", "extras": {"body": body}},
            "profile": {"kind": "synchronous"},
            "constraints": [{"kind": "max_requests", "count": a.requests}],
            "tokenizer": {"kind": "hf_auto", "model": str(self.tokenizer)},
            # Its prompt length counts the BOS its tokenizer adds, aifb's only the text: +1
            # makes the server's prompts the same length for both (printed: server tokens).
            "data": [{"kind": "synthetic_text", "prompt_tokens": a.input_tokens + 1,
                      "output_tokens": a.output_tokens}],
            "seed": {"kind": "static", "value": seed},
            "outputs": [{"kind": "json", "path": str(result)}]}}))
        _, offset = timing_lines(timings, 0)
        self._run([str(self.exe), "run", "-c", str(scenario), "--disable-console"],
                  a.requests * 60 + 300, what="guidellm run")
        wait_idle(url)  # a request it cancelled has its line written too
        lines, _ = timing_lines(timings, offset)
        doc = json.loads(result.read_text())["benchmarks"][0]
        done = doc["requests"]["successful"]
        out = Round("guidellm")
        for req in sorted(done, key=lambda r: r["request_start_time"]):
            start, end = req["request_start_time"], req["request_end_time"]
            mine = [x for x in lines if start <= x["time"] <= end + 0.05]
            if len(mine) != 1:
                raise RuntimeError(f"guidellm request at {start:.3f}: {len(mine)} server lines "
                                   "in its time span, expected 1")
            line = mine[0]
            out.overhead_ms.append(req["time_to_first_token_ms"] - line["prompt_ms"])
            out.decode_ms += line["eval_ms"]
            out.decode_runs += line["eval_runs"]
            out.reply_tokens.append(line["completion_tokens"])
            out.prompt_tokens.append(line["prompt_tokens"])
            out.evaluated.append(line["prompt_evaluated"])
        itl = doc["metrics"]["inter_token_latency_ms"]["successful"]
        out.itl_mean_ms, out.itl_count = itl["mean"], itl["count"]
        return out


def end_tokens() -> tuple[int, ...]:
    from aifb.client.workloads.tokenizer import load_tokenizer

    return load_tokenizer(MODEL).end_ids


def merged(rounds: list[Round]) -> Round:
    out = Round(rounds[0].client)
    for r in rounds:
        out.overhead_ms += r.overhead_ms
        out.reply_tokens += r.reply_tokens
        out.prompt_tokens += r.prompt_tokens
        out.evaluated += r.evaluated
        out.decode_ms += r.decode_ms
        out.decode_runs += r.decode_runs
        out.itl_count += r.itl_count
        out.itl_mean_ms += r.itl_mean_ms * r.itl_count
    out.itl_mean_ms /= max(out.itl_count, 1)
    return out


def figures(r: Round) -> tuple[float, float, float, float, float]:
    """(TTFT - prefill p50, its mean, mean ITL, decode per token, ITL / decode), ms."""
    per_token = r.decode_ms / r.decode_runs
    return (statistics.median(r.overhead_ms), statistics.fmean(r.overhead_ms), r.itl_mean_ms,
            per_token, r.itl_mean_ms / per_token)


def row(label: str, r: Round) -> str:
    p50, mean, itl, per_token, ratio = figures(r)
    return (f"{label:>5}  {r.client:9} {len(r.overhead_ms):4d}  {p50:8.1f}  {mean:8.1f}  "
            f"{itl:8.2f}  {per_token:8.2f}  {ratio:7.3f}   {min(r.reply_tokens)}-"
            f"{max(r.reply_tokens)}  {min(r.prompt_tokens)}-{max(r.prompt_tokens)}  "
            f"{statistics.fmean(r.evaluated) if r.evaluated else float('nan'):5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="aifb-then-GuideLLM rounds")
    ap.add_argument("--requests", type=int, default=20, help="requests per client per round")
    ap.add_argument("--input-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="the server's threads")
    ap.add_argument("--guidellm", type=Path, default=GUIDELLM, help="a guidellm executable")
    a = ap.parse_args()
    for name in ("rounds", "requests", "input_tokens", "output_tokens", "threads"):
        if not 1 <= getattr(a, name) <= 1000:
            ap.error(f"--{name.replace('_', '-')} must be in 1..1000")
    from aifb.recipes.llm_models import model_cache

    os.environ.setdefault("AIFB_MODEL_CACHE", str(model_cache()))  # not re-assembled per run
    up = Up("local", "llm-overhead")
    results: dict[str, list[Round]] = {"aifb": [], "guidellm": []}
    why_not = ""
    try:
        svc = up.json("services", "create", "llamacpp", "--param", "port=0",
                      "--param", f"threads={a.threads}", "--wait", timeout=900)
        sid = svc["name"].removeprefix("services/")
        ep = svc["endpoint"]
        url = ep.get("url") or f"http://{ep['host']}:{ep['port']}/"
        timings = Path(svc["job"]["stdout_path"]).parent / "timings.jsonl"
        peer = Peer(a.guidellm.expanduser(), up.tmp)
        try:
            peer.prepare()
        except RuntimeError as exc:
            why_not = str(exc)
        for seed in range(1, a.rounds + 1):
            wait_idle(url)
            results["aifb"].append(aifb_round(up, sid, a, seed, timings))
            if not why_not:
                try:
                    results["guidellm"].append(peer.round(url, a, seed, timings))
                except RuntimeError as exc:
                    why_not = str(exc)
    finally:
        up.stop()
    print(f"llama.cpp server (aifb's llamacpp recipe, {MODEL} Q4_K_M, {a.threads} thread(s)) "
          f"deployed by aifb up --scheduler local; {a.rounds} rounds x {a.requests} requests "
          f"per client, interleaved; prompts {a.input_tokens} tokens, replies "
          f"{a.output_tokens} tokens; one request at a time")
    print(f"{'round':>5}  {'client':9} {'reqs':>4}  {'TTFT-pre':>8}  {'TTFT-pre':>8}  "
          f"{'ITL mean':>8}  {'decode':>8}  {'ITL/':>7}   server tokens: reply, prompt, "
          "evaluated")
    print(f"{'':5}  {'':9} {'':4}  {'p50 ms':>8}  {'mean ms':>8}  {'ms':>8}  {'ms/token':>8}  "
          f"{'decode':>7}")
    for i in range(a.rounds):
        for name in results:
            if i < len(results[name]):
                print(row(str(i + 1), results[name][i]))
    total = {name: merged(rs) for name, rs in results.items() if rs}
    for r in total.values():
        print(row("all", r))
    if "guidellm" not in total or why_not:
        print(f"GuideLLM ({peer.version or a.guidellm}) not measured"
              f"{' in every round' if 'guidellm' in total else ''}: {why_not}")
        return
    ours, theirs = figures(total["aifb"]), figures(total["guidellm"])
    print(f"peer: {peer.version}")
    print(f"aifb / GuideLLM: TTFT - prefill p50 {ours[0] / theirs[0]:.2f}x, mean "
          f"{ours[1] / theirs[1]:.2f}x; ITL / decode {ours[4] / theirs[4]:.3f}x; ITL excess "
          f"over decode (ITL - decode per token) {ours[2] - ours[3]:.2f} vs "
          f"{theirs[2] - theirs[3]:.2f} ms")
    if ours[0] <= theirs[0] and ours[4] <= theirs[4]:
        print(f"aifb's client overhead is no larger than the peer's (TTFT - prefill p50 "
              f"{ours[0]:.1f} <= {theirs[0]:.1f} ms; ITL / decode {ours[4]:.3f} <= "
              f"{theirs[4]:.3f})")
    else:
        print("aifb's client overhead is LARGER than the peer's on: " + "; ".join(
            s for s, bad in ((f"TTFT - prefill p50 {ours[0]:.1f} > {theirs[0]:.1f} ms",
                              ours[0] > theirs[0]),
                             (f"ITL / decode {ours[4]:.3f} > {theirs[4]:.3f}",
                              ours[4] > theirs[4])) if bad))


if __name__ == "__main__":
    main()
