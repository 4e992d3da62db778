"""Multi-turn chat sessions for `openai-chat`: the parameters, the conversations, their state.

With `turns` > 1 (or a drawn number of turns) every closed-loop user or open-loop arrival runs a
conversation, driven by the engine (`aifb.client.engine.sessions`). Each turn's request carries
the whole conversation so far, the earlier user turns and the assistant replies actually
received, as a chat client sends it: the prompt grows turn by turn, and a server that caches
prefixes shows it in the per-turn TTFT. Between turns the session waits a think time.

Conversations are synthetic or a dataset's. Synthetic: the number of turns from the `turns*`
law, each user turn's length from the `input_*` law and each reply's `max_tokens` from the
`output_*` law. From a dataset (`load_prompts(..., whole=True)`): a ShareGPT conversation's, or
a JSONL `messages` list's, user turns in order, at most `turns` of them; system messages before
the first user turn are sent first; a reply the dataset gives after a user turn is never sent
(the server's own replies are) but sets that turn's `max_tokens` (`dataset_output_tokens`).

Everything drawn is seeded: conversation i from (`seed`, i), the think times of session n from
(`seed`, n); sessions cycle through the conversations (`num_prompts` synthetic ones, or the
dataset's), so the same seed replays the same run on every machine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, Field

from aifb.client.engine.sessions import MAX_TURNS
from aifb.client.engine.workload import Outcome
from aifb.client.workloads.datasets import (
    Distribution,
    LengthDist,
    Prompt,
    count_words,
    load_prompts,
    synthetic_prompts,
)
from aifb.mesh.errors import InvalidArgument

if TYPE_CHECKING:
    from aifb.client.workloads.openai import OpenAIParams
    from aifb.client.workloads.tokenizer import Tokenizer

__all__ = ["ChatSession", "Conversation", "Conversations", "SessionParams", "TurnSender",
           "check_session_params", "reply_text"]

MAX_THINK_MS = 3_600_000


class SessionParams(BaseModel):
    """The multi-turn parameters (OpenAIParams inherits them; see the module)."""

    turns: int = Field(1, ge=1, le=MAX_TURNS, description="Turns per session (the mean of the "
                       "turns law); 1 with a fixed law = no sessions, each request stands "
                       "alone. With a dataset: the most user turns taken from a conversation.")
    turns_dist: Distribution = Field("fixed", description="Law of the number of turns.")
    turns_spread: float = Field(0.0, ge=0, description="Std dev (normal) or sigma (lognormal).")
    turns_min: int = Field(1, ge=1, le=MAX_TURNS, description="Fewest turns; uniform's low end.")
    turns_max: int = Field(0, ge=0, le=MAX_TURNS, description=f"Most turns (0 = {MAX_TURNS}); "
                           "uniform's high end.")
    think_time_ms: int = Field(0, ge=0, le=MAX_THINK_MS, description="Think time between a "
                               "reply and the next turn (the mean of its law), ms; 0 = none. "
                               "Never counted as latency.")
    think_dist: Distribution = Field("fixed", description="Law of the think time.")
    think_spread: float = Field(0.0, ge=0, description="Std dev (normal, ms) or sigma "
                                "(lognormal).")
    think_min_ms: int = Field(1, ge=1, le=MAX_THINK_MS, description="Shortest think time.")
    think_max_ms: int = Field(0, ge=0, le=MAX_THINK_MS, description="Longest think time (0 = "
                              "none); uniform's high end.")

    @property
    def multi_turn(self) -> bool:
        """Whether requests are sessions' turns rather than single requests."""
        return self.turns > 1 or self.turns_dist != "fixed"

    def single_engine_reason(self) -> str:
        """Sessions are refused on several engines (aifb.client.workloads.registry.SingleEngine):
        every engine would open the same conversations in the same order, so the server would
        get each one several times at once and answer the copies from its prefix cache."""
        if not self.multi_turn:
            return ""
        return ("multi-turn sessions cannot be split over engines (each would replay the same "
                "conversations at the same time, and a prefix cache would flatter the copies)")


def _law(kind: Distribution, mean: float, spread: float, low: int, high: int,
         names: dict[str, str]) -> LengthDist:
    """A LengthDist whose errors name the session parameter (`names`: law part -> key)."""
    try:
        return LengthDist(kind, mean, spread, low, high)
    except InvalidArgument as exc:
        part = exc.field.removeprefix("params.")
        raise InvalidArgument(exc.message, field=f"params.{names.get(part, part)}") from None


def _turns_law(p: SessionParams) -> LengthDist:
    return _law(p.turns_dist, p.turns, p.turns_spread, p.turns_min, p.turns_max or MAX_TURNS,
                {"dist": "turns_dist", "mean": "turns", "spread": "turns_spread",
                 "min": "turns_min", "max": "turns_max"})


def _think_law(p: SessionParams) -> LengthDist | None:
    if not p.think_time_ms:
        return None
    return _law(p.think_dist, p.think_time_ms, p.think_spread, p.think_min_ms, p.think_max_ms,
                {"dist": "think_dist", "mean": "think_time_ms", "spread": "think_spread",
                 "min": "think_min_ms", "max": "think_max_ms"})


def check_session_params(p: SessionParams, *, chat: bool) -> None:
    """InvalidArgument naming the parameter when the session laws are inconsistent, or when
    sessions are asked of a workload that has no conversation (completions)."""
    if not p.multi_turn:
        if p.think_time_ms:
            raise InvalidArgument("a think time needs sessions: set turns > 1 (or a turns law)",
                                  field="params.think_time_ms")
        return
    if not chat:
        raise InvalidArgument("multi-turn sessions need openai-chat: a completion has no "
                              "conversation to carry", field="params.turns")
    _turns_law(p)
    _think_law(p)


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the user says, turn by turn, and how long each reply may be."""

    preamble: tuple[dict[str, str], ...]  # system messages sent before the first turn
    turns: tuple[str, ...]  # the user's messages
    max_tokens: tuple[int, ...]  # per turn


class TurnSender(Protocol):
    """What a session needs of its workload (`OpenAIWorkload` is one)."""

    def chat_request(self, messages: list[dict[str, str]], max_tokens: int) -> bytes:
        """The encoded HTTP request of one chat turn."""

    async def send(self, raw: bytes, input_estimate: int,
                   reply: list[str] | None = None) -> Outcome:
        """Send `raw`; when it succeeds and `reply` is given, append the reply's text."""


class ChatSession:
    """One conversation in flight (an `aifb.client.engine.sessions.Session`)."""

    def __init__(self, sender: TurnSender, plan: Conversation, think_ms: list[int],
                 count: Callable[[str], int] = count_words) -> None:
        self._sender, self._plan, self._think_ms = sender, plan, think_ms
        self._count = count  # words, or the model's tokens with a tokenizer
        self.messages: list[dict[str, str]] = [dict(m) for m in plan.preamble]
        self._words = sum(count(m["content"]) for m in self.messages)
        self._next = 0

    @property
    def turns(self) -> int:
        return len(self._plan.turns)

    def think_ns(self, turn: int) -> int:
        return self._think_ms[turn - 1] * 1_000_000 if 0 < turn <= len(self._think_ms) else 0

    async def request(self, turn: int) -> Outcome:
        if turn != self._next or turn >= self.turns:
            raise ValueError(f"turn {turn} out of order: the next turn is {self._next} of "
                             f"{self.turns}")
        self._next += 1
        text = self._plan.turns[turn]
        self.messages.append({"role": "user", "content": text})
        self._words += self._count(text)
        reply: list[str] = []
        out = await self._sender.send(
            self._sender.chat_request(self.messages, self._plan.max_tokens[turn]),
            self._words, reply)
        if out.ok:  # the history holds what the server answered, as a chat client keeps it
            answer = "".join(reply)
            self.messages.append({"role": "assistant", "content": answer})
            self._words += self._count(answer)
        return out


def _seed(seed: int, index: int, stream: str) -> int:
    """A seed for draw `stream` of item `index`, independent of every other (index, stream)."""
    digest = hashlib.blake2b(f"{seed}:{index}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Conversations:
    """Where sessions come from: the conversations and each session's think times."""

    def __init__(self, p: OpenAIParams, tokenizer: Tokenizer | None = None) -> None:
        self._seed = p.seed
        self._tokenizer = tokenizer
        self._count: Callable[[str], int] = (
            count_words if tokenizer is None else lambda text: len(tokenizer.encode(text)))
        self._turns = _turns_law(p)
        self._think = _think_law(p)
        self._user = LengthDist(p.input_dist, p.input_tokens, p.input_spread, p.input_min,
                                p.input_max)
        self._reply = LengthDist(p.output_dist, p.output_tokens, p.output_spread, p.output_min,
                                 p.output_max)
        self._dataset: list[Conversation] = []
        if p.dataset:
            prompts = load_prompts(p.dataset, p.dataset_format, p.num_prompts, whole=True)
            for i, prompt in enumerate(prompts):
                conv = self._from_dataset(prompt, i, p.turns, p.dataset_output_tokens)
                if conv is not None:
                    self._dataset.append(conv)
            if not self._dataset:
                raise InvalidArgument(f"dataset {p.dataset}: no conversation with a user turn",
                                      field="params.dataset")
        self.count = len(self._dataset) or p.num_prompts

    def _from_dataset(self, prompt: Prompt, index: int, most: int,
                      dataset_lengths: bool) -> Conversation | None:
        preamble: list[dict[str, str]] = []
        users: list[str] = []
        wanted: list[int | None] = []
        for m in prompt.as_messages():
            if m["role"] == "user":
                if len(users) == most:
                    break
                users.append(m["content"])
                wanted.append(None)
            elif m["role"] == "assistant":
                if wanted and wanted[-1] is None:
                    wanted[-1] = max(count_words(m["content"]), 1)
            elif not users:
                preamble.append(m)
        if not users:
            return None
        if prompt.output_tokens and wanted[-1] is None:  # a JSONL line's own reply length
            wanted[-1] = prompt.output_tokens
        drawn = self._reply.sample(len(users), _seed(self._seed, index, "reply"))
        lengths = [w if dataset_lengths and w else d for w, d in zip(wanted, drawn, strict=True)]
        return Conversation(tuple(preamble), tuple(users), tuple(lengths))

    def conversation(self, index: int) -> Conversation:
        """Conversation `index` (modulo how many there are)."""
        i = index % self.count
        if self._dataset:
            return self._dataset[i]
        n = self._turns.sample(1, _seed(self._seed, i, "turns"))[0]
        users = synthetic_prompts(n, self._user, _seed(self._seed, i, "user"),
                                  tokenizer=self._tokenizer)
        return Conversation((), tuple(u.as_text() for u in users),
                            tuple(self._reply.sample(n, _seed(self._seed, i, "reply"))))

    def think_ms(self, number: int, pauses: int) -> list[int]:
        """Session `number`'s `pauses` think times, ms."""
        if self._think is None or pauses <= 0:
            return [0] * max(pauses, 0)
        return self._think.sample(pauses, _seed(self._seed, number, "think"))

    def session(self, number: int, sender: TurnSender) -> ChatSession:
        """Session `number`: conversation `number` (cycling) with its own think times."""
        plan = self.conversation(number)
        return ChatSession(sender, plan, self.think_ms(number, len(plan.turns) - 1),
                           self._count)


def reply_text(events: list[tuple[bytes, int]] | None, body: bytes | None) -> str:
    """The assistant's text: every streamed delta's content in order, or a whole reply's
    message content (a reply already checked to be well formed)."""
    if events is None:
        try:
            content = json.loads(body or b"")["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return ""
        return content if isinstance(content, str) else ""
    parts: list[str] = []
    for data, _ in events:
        if data == b"[DONE]":
            break
        try:
            obj = json.loads(data)
            delta = obj["choices"][0]["delta"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # a usage-only or role-only event
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)
