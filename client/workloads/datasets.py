"""Prompts for the LLM workloads: JSONL or ShareGPT-style files, or synthetic with length laws.

    prompts = load_prompts("prompts.jsonl")                  # {"prompt": ...} or {"messages": ...}
    prompts = load_prompts("sharegpt.json")                  # [{"conversations": [...]}, ...]
    prompts = synthetic_prompts(200, LengthDist("lognormal", mean=512, spread=0.5), seed=1)
    lengths = LengthDist("uniform", minimum=64, maximum=256).sample(200, seed=2)

Token counts here are estimates: one whitespace-separated word is counted as one token, because a
benchmark client must not depend on the served model's tokenizer. Synthetic prompts are drawn
from short common English words that real tokenizers mostly keep whole, so the estimate is close;
when the server reports `usage`, the workload records the server's exact counts instead.
Every draw is seeded: the same seed gives the same prompts and lengths on every worker.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aifb.client.workloads.tokenizer import Tokenizer, exact_text
from aifb.mesh.errors import InvalidArgument

__all__ = ["DISTRIBUTIONS", "LengthDist", "Prompt", "count_words", "load_prompts",
           "random_text", "synthetic_prompts"]

DISTRIBUTIONS = ("fixed", "uniform", "normal", "lognormal")
Distribution = Literal["fixed", "uniform", "normal", "lognormal"]
_FIELD = "params.dataset"
_MAX_TOKENS = 1_000_000

# Short, frequent words: most tokenizers map each to a single token (with its leading space).
_WORDS = ("the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was",
          "at", "by", "be", "this", "from", "or", "are", "an", "not", "but", "have", "all", "can",
          "had", "one", "there", "were", "we", "they", "you", "his", "her", "more", "some",
          "time", "will", "up", "out", "so", "what", "about", "when", "make", "like", "which",
          "their", "into", "than", "them", "way", "could", "see", "other", "long", "day", "did",
          "get", "come", "made", "may", "part", "over", "new", "after", "first", "also", "back",
          "use", "two", "how", "our", "work", "well", "even", "want", "good", "give", "most",
          "very", "just", "any", "where", "know", "take", "year", "people", "through", "only",
          "little", "place", "right", "too", "old", "same", "tell", "small", "home", "big",
          "high", "great", "hand", "sound", "line")


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request's input: a completions prompt (`text`) or chat `messages`."""

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    input_tokens: int = 0  # estimated (words), see the module docstring
    output_tokens: int | None = None  # the reply length the dataset asks for, when it says

    def as_messages(self) -> list[dict[str, str]]:
        """Chat form: the messages, or the text as one user message."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.text or ""}]

    def as_text(self) -> str:
        """Completions form: the text, or the messages' contents joined by blank lines."""
        if self.text is not None:
            return self.text
        return "\n\n".join(m["content"] for m in self.messages or ())


def count_words(text: str) -> int:
    """The token estimate: whitespace-separated words."""
    return len(text.split())


def random_text(rng: random.Random, length: int) -> str:
    """`length` random common words: every synthetic prompt's text comes from here. For the
    same generator state, a shorter text is a prefix of a longer one."""
    return " ".join(rng.choices(_WORDS, k=length))


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A token-length law. `mean` for fixed/normal/lognormal; `spread` is the standard deviation
    (normal) or sigma of the underlying normal (lognormal); `minimum`/`maximum` bound every draw
    and are the range of `uniform`."""

    kind: Distribution = "fixed"
    mean: float = 128
    spread: float = 0.0
    minimum: int = 1
    maximum: int = 0  # 0 = no upper bound (uniform needs one)

    def __post_init__(self) -> None:
        if self.kind not in DISTRIBUTIONS:
            raise InvalidArgument(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, "
                                  f"got {self.kind!r}", field="params.dist")
        if not (math.isfinite(self.mean) and 1 <= self.mean <= _MAX_TOKENS):
            raise InvalidArgument(f"mean length must be in 1..{_MAX_TOKENS}, got {self.mean}",
                                  field="params.mean")
        if not (math.isfinite(self.spread) and self.spread >= 0):
            raise InvalidArgument(f"spread must be >= 0, got {self.spread}", field="params.spread")
        if self.minimum < 1 or self.maximum < 0 or (self.maximum and self.maximum < self.minimum):
            raise InvalidArgument(f"length bounds must satisfy 1 <= min <= max, got "
                                  f"min={self.minimum} max={self.maximum}", field="params.min")
        if self.kind == "uniform" and not self.maximum:
            raise InvalidArgument("a uniform length needs a maximum", field="params.max")

    def sample(self, n: int, seed: int) -> list[int]:
        """`n` lengths, each within [minimum, maximum], the same for the same seed."""
        rng = random.Random(seed)
        hi = self.maximum or _MAX_TOKENS
        out: list[int] = []
        for _ in range(n):
            if self.kind == "fixed":
                x = self.mean
            elif self.kind == "uniform":
                x = rng.randint(self.minimum, hi)
            elif self.kind == "normal":
                x = rng.gauss(self.mean, self.spread)
            else:  # lognormal with the requested mean: mu = ln(mean) - sigma^2 / 2
                x = rng.lognormvariate(math.log(self.mean) - self.spread ** 2 / 2, self.spread)
            out.append(min(max(round(x), self.minimum), hi))
        return out


def synthetic_prompts(n: int, lengths: LengthDist, seed: int,
                      tokenizer: Tokenizer | None = None) -> list[Prompt]:
    """`n` prompts of random common words, lengths drawn from `lengths` (seeded): in words, or
    with a tokenizer exactly that many tokens (`aifb.client.workloads.tokenizer`)."""
    if n < 1:
        raise InvalidArgument("the number of prompts must be >= 1", field="params.num_prompts")
    rng = random.Random(seed ^ 0x5EED)
    prompts = []
    for size in lengths.sample(n, seed):
        text = (exact_text(tokenizer, size, rng) if tokenizer is not None
                else random_text(rng, size))
        prompts.append(Prompt(text=text, input_tokens=size))
    return prompts


def load_prompts(path: str | Path, fmt: str = "auto", limit: int = 0, *,
                 whole: bool = False) -> list[Prompt]:
    """Prompts from a JSONL file (`prompt` or `messages` per line) or a ShareGPT-style JSON file.

    `fmt` is "jsonl", "sharegpt" or "auto" (by content: a file starting with `[` is ShareGPT).
    `whole` keeps each ShareGPT conversation whole, every turn of it, for multi-turn sessions
    (`aifb.client.workloads.sessions`), instead of cutting it after its first user turn.
    Every problem names the file, the line or entry, and what was expected.
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"dataset {p}: cannot read: {exc}", field=_FIELD) from None
    if fmt == "auto":
        fmt = "sharegpt" if raw.lstrip().startswith("[") else "jsonl"
    if fmt == "jsonl":
        prompts = _jsonl(p, raw, limit)
    elif fmt == "sharegpt":
        prompts = _sharegpt(p, raw, limit, whole)
    else:
        raise InvalidArgument(f"dataset format must be auto, jsonl or sharegpt, got {fmt!r}",
                              field="params.dataset_format")
    if not prompts:
        raise InvalidArgument(f"dataset {p}: no prompts in it", field=_FIELD)
    return prompts


def _jsonl(path: Path, raw: str, limit: int) -> list[Prompt]:
    prompts: list[Prompt] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"dataset {path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{where}: not JSON ({exc.msg})", field=_FIELD) from None
        prompts.append(_entry(obj, where))
        if limit and len(prompts) >= limit:
            break
    return prompts


def _entry(obj: Any, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: expected an object with 'prompt' or 'messages'",
                              field=_FIELD)
    out = _output_tokens(obj, where)
    if "messages" in obj:
        messages = _messages(obj["messages"], where)
        words = sum(count_words(m["content"]) for m in messages)
        return Prompt(messages=messages, input_tokens=words, output_tokens=out)
    text = obj.get("prompt")
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"{where}: expected a non-empty string 'prompt' or a 'messages' "
                              "list", field=_FIELD)
    return Prompt(text=text, input_tokens=count_words(text), output_tokens=out)


def _output_tokens(obj: dict[str, Any], where: str) -> int | None:
    value = obj.get("output_tokens", obj.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_TOKENS:
        raise InvalidArgument(f"{where}: output_tokens must be an integer in 1..{_MAX_TOKENS}",
                              field=_FIELD)
    return value


def _messages(value: Any, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise InvalidArgument(f"{where}: 'messages' must be a non-empty list", field=_FIELD)
    out = []
    for i, m in enumerate(value):
        if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)):
            raise InvalidArgument(f"{where}: messages[{i}] must have string 'role' and "
                                  "'content'", field=_FIELD)
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
                   "bard": "assistant"}


def _sharegpt(path: Path, raw: str, limit: int, whole: bool = False) -> list[Prompt]:
    """Each conversation gives one prompt: its turns up to the first user turn; the reply after
    it, when present, sets the wanted output length (as benchmark tools usually do). `whole`:
    every turn, the replies included (a session turns them into its requests)."""
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"dataset {path}: not JSON ({exc.msg} at line {exc.lineno})",
                              field=_FIELD) from None
    if not isinstance(doc, list):
        raise InvalidArgument(f"dataset {path}: a ShareGPT file is a JSON list of conversations",
                              field=_FIELD)
    prompts: list[Prompt] = []
    for i, conv in enumerate(doc):
        where = f"dataset {path} entry {i}"
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise InvalidArgument(f"{where}: expected an object with a 'conversations' list",
                                  field=_FIELD)
        messages: list[dict[str, str]] = []
        reply: str | None = None
        for j, turn in enumerate(turns):
            if (not isinstance(turn, dict) or not isinstance(turn.get("from"), str)
                    or not isinstance(turn.get("value"), str)):
                raise InvalidArgument(f"{where}: conversations[{j}] must have string 'from' and "
                                      "'value'", field=_FIELD)
            role = _SHAREGPT_ROLES.get(turn["from"].lower())
            if role is None:
                raise InvalidArgument(f"{where}: conversations[{j}]: unknown speaker "
                                      f"{turn['from']!r}", field=_FIELD)
            if not whole and messages and messages[-1]["role"] == "user":
                reply = turn["value"] if role == "assistant" else None
                break
            messages.append({"role": role, "content": turn["value"]})
        if not any(m["role"] == "user" for m in messages):
            continue  # no user turn to send: skipped, as other tools do
        words = sum(count_words(m["content"]) for m in messages)
        out = max(count_words(reply), 1) if reply else None
        prompts.append(Prompt(messages=tuple(messages), input_tokens=words, output_tokens=out))
        if limit and len(prompts) >= limit:
            break
    return prompts
