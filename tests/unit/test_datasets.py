"""Prompt datasets, length laws, the exact-neighbour ground truth and recall (no servers)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from aifb.client.workloads.datasets import LengthDist, count_words, load_prompts, synthetic_prompts
from aifb.client.workloads.vectordb.vectors import exact_neighbours, load_vectors, recall_hits
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit


def test_fixed_lengths_are_the_mean_and_seeds_repeat() -> None:
    assert LengthDist("fixed", 42).sample(5, seed=1) == [42] * 5
    law = LengthDist("normal", 100, spread=20)
    assert law.sample(50, seed=9) == law.sample(50, seed=9)
    assert law.sample(50, seed=9) != law.sample(50, seed=10)


def test_uniform_lengths_cover_their_bounds_and_stay_inside() -> None:
    draws = LengthDist("uniform", 10, minimum=5, maximum=15).sample(2000, seed=3)
    assert min(draws) == 5 and max(draws) == 15


def test_normal_and_lognormal_lengths_have_the_requested_mean_and_are_clipped() -> None:
    normal = LengthDist("normal", 200, spread=30).sample(4000, seed=1)
    assert statistics.fmean(normal) == pytest.approx(200, rel=0.02)
    assert statistics.pstdev(normal) == pytest.approx(30, rel=0.06)
    lognormal = LengthDist("lognormal", 300, spread=0.5).sample(4000, seed=2)
    assert statistics.fmean(lognormal) == pytest.approx(300, rel=0.04)
    assert statistics.median(lognormal) < 300  # right-skewed
    clipped = LengthDist("normal", 50, spread=100, minimum=10, maximum=60).sample(500, seed=4)
    assert min(clipped) == 10 and max(clipped) == 60


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"kind": "zipf"}, "dist"), ({"mean": 0}, "mean"), ({"spread": -1}, "spread"),
    ({"minimum": 10, "maximum": 5}, "min"), ({"kind": "uniform"}, "max")])
def test_bad_length_laws_name_what_is_wrong(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        LengthDist(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == f"params.{field}"


def test_synthetic_prompts_have_the_drawn_word_counts() -> None:
    law = LengthDist("uniform", 20, minimum=3, maximum=40)
    prompts = synthetic_prompts(30, law, seed=5)
    assert [p.input_tokens for p in prompts] == law.sample(30, seed=5)
    assert all(count_words(p.as_text()) == p.input_tokens for p in prompts)
    assert len({p.text for p in prompts}) == 30  # distinct: no accidental prefix-cache hits
    assert prompts[0].as_messages() == [{"role": "user", "content": prompts[0].text}]


def test_jsonl_prompts_and_messages(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello there world"}\n\n'
                 '{"messages": [{"role": "user", "content": "a b"}], "max_tokens": 9}\n')
    first, second = load_prompts(f)
    assert (first.text, first.input_tokens, first.output_tokens) == ("hello there world", 3, None)
    assert second.as_messages() == [{"role": "user", "content": "a b"}]
    assert (second.input_tokens, second.output_tokens, second.as_text()) == (2, 9, "a b")
    assert len(load_prompts(f, limit=1)) == 1


def test_sharegpt_takes_turns_up_to_the_first_user_turn_and_the_replys_length(
        tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps([
        {"conversations": [{"from": "system", "value": "be nice"},
                           {"from": "human", "value": "what is two"},
                           {"from": "gpt", "value": "it is two"},
                           {"from": "human", "value": "ignored"}]},
        {"conversations": [{"from": "gpt", "value": "no user turn"}]},
        {"conversations": [{"from": "human", "value": "no reply"}]}]))
    a, b = load_prompts(f)
    assert a.as_messages() == [{"role": "system", "content": "be nice"},
                               {"role": "user", "content": "what is two"}]
    assert (a.input_tokens, a.output_tokens) == (5, 3)
    assert (b.input_tokens, b.output_tokens) == (2, None)


@pytest.mark.parametrize(("text", "needle"), [
    ('{"prompt": "x"}\nnot json\n', "line 2: not JSON"),
    ('{"prompt": ""}\n', "line 1: expected a non-empty string 'prompt'"),
    ('{"messages": [{"role": "user"}]}\n', "messages[0] must have string 'role' and 'content'"),
    ('{"prompt": "x", "output_tokens": 0}\n', "output_tokens must be an integer"),
    ('[{"conversations": [{"from": "alien", "value": "x"}]}]', "unknown speaker 'alien'"),
    ('[{"turns": []}]', "entry 0: expected an object with a 'conversations' list"),
    ("", "no prompts in it")])
def test_bad_datasets_name_the_file_line_and_problem(tmp_path: Path, text: str,
                                                     needle: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(text)
    with pytest.raises(InvalidArgument) as err:
        load_prompts(f)
    assert str(f) in str(err.value) and needle in str(err.value)
    assert err.value.field == "params.dataset"


def test_a_missing_dataset_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_prompts(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_exact_neighbours_match_a_plain_python_scan(metric: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 5)).astype(np.float32)
    queries = rng.standard_normal((7, 5)).astype(np.float32)
    got = exact_neighbours(base, queries, 4, metric)  # type: ignore[arg-type]

    def score(q: list[float], x: list[float]) -> float:
        dot = sum(a * b for a, b in zip(q, x, strict=True))
        if metric == "l2":
            return sum((a - b) ** 2 for a, b in zip(q, x, strict=True))
        if metric == "ip":
            return -dot
        return float(-dot / (sum(a * a for a in x) ** 0.5 * sum(a * a for a in q) ** 0.5))

    for qi, q in enumerate(queries.tolist()):
        want = sorted(range(300), key=lambda i: score(q, base[i].tolist()))[:4]
        assert got[qi].tolist() == want


def test_recall_hits_counts_true_neighbours_among_the_first_k() -> None:
    truth = np.array([3, 1, 4, 5], dtype=np.int64)
    assert recall_hits([1, 3, 4, 5], truth, 4) == 4  # order inside the top k does not matter
    assert recall_hits([1, 9, 4, 8, 3], truth, 4) == 2  # the 5th id found is beyond k
    assert recall_hits([], truth, 4) == 0


def test_vector_files_split_queries_off_the_end_and_reject_bad_shapes(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.arange(40, dtype=np.float32).reshape(10, 4))
    data = load_vectors(tmp_path / "v.npy", count=3, queries=2)
    assert data.base.shape == (3, 4) and data.queries[0].tolist() == [32, 33, 34, 35]
    np.save(tmp_path / "flat.npy", np.arange(4, dtype=np.float32))
    with pytest.raises(InvalidArgument, match="2-D array"):
        load_vectors(tmp_path / "flat.npy", 0, 1)
    (tmp_path / "ragged.jsonl").write_text("[1, 2]\n[1, 2, 3]\n")
    with pytest.raises(InvalidArgument, match="line 2: 3 numbers, the first line had 2"):
        load_vectors(tmp_path / "ragged.jsonl", 0, 1)
    with pytest.raises(InvalidArgument, match="10 rows cannot give 10 queries"):
        load_vectors(tmp_path / "v.npy", 0, 10)
