"""Prompts exact in tokens: the served model's tokenizer, loaded from a tokenizer.json or a GGUF.

    tok = load_tokenizer("tokenizer.json")     # a Hugging Face tokenizer file (tokenizers library)
    tok = load_tokenizer("model.gguf")         # the vocabulary inside a GGUF model
    tok = load_tokenizer("gemma3-270m")        # a packaged model (aifb.recipes.llm_models)
    text = exact_text(tok, 64, random.Random(1))   # tok.count(text) == 64

Without a tokenizer aifb counts words (see `aifb.client.workloads.datasets`); with one, synthetic
prompts have exactly the asked number of tokens and dataset prompts are counted in tokens. Counts
are of the content only: the special tokens a server adds (BOS, a chat template's turn markers)
are not the client's to count, and show in the report as a constant offset between the server's
`usage.prompt_tokens` and the client's count (`aifb.client.report.pages.usage_rows`).

A GGUF's vocabulary is read with llama.cpp's own tokenizer (`llama_cpp.Llama(vocab_only=True)`,
from the `llm` extra), the very code llama.cpp's server tokenizes with: converting the GGUF's
vocabulary to the tokenizers library's format would be a second implementation that can drift
(byte fallback, merges from scores). A tokenizer.json goes through the tokenizers library.
`end_ids` are the tokens that end a reply (EOS, end of turn): `exact_output_tokens` forbids them
with a logit bias so a server that honours it writes exactly max_tokens tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from aifb.mesh.errors import InvalidArgument

__all__ = ["Tokenizer", "exact_text", "load_tokenizer"]

_FIELD = "params.tokenizer"
# Names of reply-ending tokens across common vocabularies (looked up in a tokenizer.json).
_END_TOKENS = ("</s>", "<eos>", "<|endoftext|>", "<|im_end|>", "<end_of_turn>", "<|eot_id|>",
               "<|end_of_text|>", "<|end|>")
# Filler words for synthetic prompts; each is one token in the vocabularies tried (checked
# when used: a word that is not is skipped when the last tokens are filled in).
_FILL = ("the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was",
         "at", "by", "be", "this", "from", "or", "are", "an", "not", "but", "have", "all", "can",
         "had", "one", "there", "were", "we", "they", "you", "his", "her", "more", "some",
         "time", "will", "up", "out", "so", "what", "about", "when", "make", "like", "which",
         "their", "into", "than", "them", "way", "could", "see", "other", "long", "day")


class Tokenizer(Protocol):
    name: str
    end_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]:
        """The content's token ids, no special tokens added."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""


class HfTokenizer:
    """A tokenizer.json through the tokenizers library."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as Hf
        except ImportError:
            raise InvalidArgument("a tokenizer.json needs the tokenizers package: install "
                                  "aifb's llm extra", field=_FIELD) from None
        try:
            self._tok = Hf.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception for a bad file
            raise InvalidArgument(f"tokenizer {path}: not a tokenizer.json: {exc}",
                                  field=_FIELD) from None
        self.name = str(path)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.end_ids = tuple(sorted({vocab[t] for t in _END_TOKENS if t in vocab}))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))


class GgufTokenizer:
    """The vocabulary of a GGUF model, tokenized by llama.cpp itself (vocabulary only: no weights
    are loaded, a 250 MB model opens in well under a second)."""

    def __init__(self, path: Path) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise InvalidArgument("a GGUF tokenizer needs llama-cpp-python: install aifb's llm "
                                  "extra", field=_FIELD) from None
        from llama_cpp._utils import suppress_stdout_stderr

        try:
            # llama.cpp writes context warnings to fd 2 even when not verbose: not ours to show
            with suppress_stdout_stderr(disable=False):
                self._llama: Any = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise InvalidArgument(f"tokenizer {path}: cannot read its GGUF vocabulary: {exc}",
                                  field=_FIELD) from None
        self.name = str(path)
        ends = {self._llama.token_eos()}
        vocab = self._llama._model.vocab
        eot = llama_cpp.llama_vocab_eot(vocab)
        if eot >= 0:
            ends.add(eot)
        self.end_ids = tuple(sorted(i for i in ends if i >= 0))

    def encode(self, text: str) -> list[int]:
        return list(self._llama.tokenize(text.encode(), add_bos=False, special=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._llama.detokenize(list(ids)).decode("utf-8", errors="replace"))


def load_tokenizer(spec: str) -> Tokenizer:
    """A tokenizer from a tokenizer.json (or a folder holding one), a .gguf file, or a packaged
    model's name. Every failure is an InvalidArgument naming `params.tokenizer`."""
    from aifb.recipes.llm_models import PACKAGED, resolve_model

    if spec in PACKAGED:
        try:
            return GgufTokenizer(resolve_model(spec))
        except ValueError as exc:
            raise InvalidArgument(str(exc), field=_FIELD) from None
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise InvalidArgument(f"tokenizer {spec!r}: no such file (a tokenizer.json, a folder "
                              f"holding one, a .gguf model, or one of: {', '.join(PACKAGED)})",
                              field=_FIELD)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return GgufTokenizer(path) if magic == b"GGUF" else HfTokenizer(path)


def exact_text(tok: Tokenizer, tokens: int, rng: random.Random) -> str:
    """Text of random filler words that `tok` encodes to exactly `tokens` tokens."""
    words = rng.choices(_FILL, k=tokens)

    def count(k: int) -> int:
        return len(tok.encode(" ".join(words[:k])))

    # The longest prefix of words within the count (counts grow with the prefix).
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    have = len(tok.encode(text))
    fillers = list(_FILL)
    rng.shuffle(fillers)
    guard = 0
    while have < tokens:  # a boundary word took two tokens: fill in one-token words
        for word in fillers:
            candidate = f"{text} {word}" if text else word
            n = len(tok.encode(candidate))
            if n == have + 1:
                text, have = candidate, n
                break
        else:
            break
        guard += 1
        if guard > tokens:
            break
    if have != tokens:
        raise InvalidArgument(f"cannot make a prompt of exactly {tokens} tokens with "
                              f"{tok.name} (got {have})", field=_FIELD)
    return text
