"""The rate search against simulated targets: it finds a known knee within tolerance, stops at
its bounds and its trial budget, survives noisy answers, and resumes after a crash exactly where
it stopped."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import pytest

from aifb.experiment.search import RateSearch, SearchResult, round_rate
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit


def run(search: RateSearch, meets: Callable[[float], bool]) -> SearchResult:
    while (rate := search.next_rate()) is not None:
        search.record(rate, meets(rate))
    return search.result()


def knee(at: float) -> Callable[[float], bool]:
    return lambda rate: rate <= at


def default_search(**kw: float) -> RateSearch:
    args: dict[str, float] = {"start": 100.0, "low": 1.0, "high": 100000.0, "tolerance": 0.05}
    args.update(kw)
    return RateSearch(args["start"], args["low"], args["high"], args["tolerance"],
                      int(kw.get("max_trials", 12)))


def test_finds_a_knee_at_837_within_tolerance_and_brackets_it() -> None:
    result = run(default_search(), knee(837.0))
    assert result.converged
    assert result.best_rate is not None and result.failed_rate is not None
    assert result.best_rate <= 837.0 < result.failed_rate
    assert (result.failed_rate - result.best_rate) / result.best_rate <= 0.05
    assert result.trials[:5] == [(100.0, True), (200.0, True), (400.0, True), (800.0, True),
                                 (1600.0, False)]
    assert (result.best_rate, result.failed_rate) == (825.0, 850.0)
    assert result.reason == "bracket 825-850 req/s is within 5 % (10 trials)"


@pytest.mark.parametrize("at", [1.3, 3.7, 42.0, 99.0, 100.0, 101.0, 837.0, 5000.0, 77777.0])
@pytest.mark.parametrize("tolerance", [0.01, 0.05, 0.2])
def test_tolerance_is_respected_wherever_the_knee_lies(at: float, tolerance: float) -> None:
    result = run(default_search(tolerance=tolerance, max_trials=100), knee(at))
    assert result.converged
    assert result.best_rate is not None and result.failed_rate is not None
    assert result.best_rate <= at < result.failed_rate
    width = (result.failed_rate - result.best_rate) / result.best_rate
    assert width <= tolerance or "cannot be split" in result.reason


def test_halves_from_start_when_the_first_trial_fails() -> None:
    result = run(default_search(), knee(30.0))
    assert [rate for rate, _ in result.trials[:3]] == [100.0, 50.0, 25.0]
    assert result.best_rate is not None and result.best_rate <= 30.0


def test_met_everywhere_ends_at_the_upper_bound() -> None:
    result = run(default_search(high=5000.0), lambda rate: True)
    assert result.best_rate == 5000.0 and result.failed_rate is None and result.converged
    assert result.trials[-1] == (5000.0, True)  # 3200 doubled is capped at high
    assert result.reason.startswith("met at the highest rate tried")


def test_never_met_gives_no_best_rate() -> None:
    result = run(default_search(low=2.0), lambda rate: False)
    assert result.best_rate is None and result.failed_rate == 2.0 and result.converged
    assert result.trials[-1] == (2.0, False)  # 3.125 halved is floored at low
    assert result.reason.startswith("not met even at the lowest rate")


def test_start_at_a_bound_ends_after_one_trial() -> None:
    assert len(run(RateSearch(10.0, 1.0, 10.0), lambda rate: True).trials) == 1
    assert len(run(RateSearch(1.0, 1.0, 10.0), lambda rate: False).trials) == 1
    assert run(RateSearch(5.0, 5.0, 5.0), lambda rate: True).best_rate == 5.0


def test_max_trials_stops_the_search_unconverged_with_its_bracket() -> None:
    result = run(default_search(max_trials=7), knee(837.0))
    assert len(result.trials) == 7 and not result.converged
    assert (result.best_rate, result.failed_rate) == (800.0, 1000.0)
    assert result.reason == "stopped after max_trials=7 with bracket 800-1000 req/s (25.0 % wide)"


def test_max_trials_during_bracketing_says_no_failure_yet() -> None:
    result = run(default_search(max_trials=3), knee(837.0))
    assert not result.converged and result.best_rate == 400.0 and result.failed_rate is None
    assert "no failure yet" in result.reason


def test_a_search_ending_on_its_last_allowed_trial_has_converged() -> None:
    result = run(default_search(max_trials=10), knee(837.0))
    assert len(result.trials) == 10 and result.converged


def test_rates_have_four_significant_digits_and_never_repeat() -> None:
    result = run(RateSearch(start=123.456, low=1.0, high=1e5, tolerance=0.001, max_trials=100),
                 knee(1234.5678))
    rates = [rate for rate, _ in result.trials]
    assert rates[0] == 123.5
    assert all(rate == round_rate(rate) for rate in rates)
    assert len(set(rates)) == len(rates)
    assert round_rate(1234.567) == 1235.0 and round_rate(0.0123449) == 0.01234


def test_a_bracket_too_narrow_to_split_at_four_digits_has_converged() -> None:
    result = run(RateSearch(start=1000.0, low=1.0, high=1e5, tolerance=1e-6, max_trials=100),
                 knee(1500.25))
    assert result.converged and "cannot be split" in result.reason
    assert (result.best_rate, result.failed_rate) == (1500.0, 1501.0)


def test_a_bound_off_the_four_digit_grid_is_used_as_given() -> None:
    result = run(RateSearch(start=12345.67, low=1.0, high=12345.67), lambda rate: True)
    assert result.trials == [(12345.67, True)]


def test_a_spurious_failure_caps_the_result_but_the_search_still_converges() -> None:
    # the true knee is at 837, but the trial at 400 fails once (noise)
    result = run(default_search(), lambda rate: rate <= 837.0 and rate != 400.0)
    assert result.converged
    assert result.failed_rate == 400.0  # the result is capped below the spurious failure
    assert result.best_rate is not None and 400.0 / 1.05 <= result.best_rate < 400.0


def test_a_lucky_pass_above_the_knee_never_exceeds_a_lower_failure() -> None:
    # not monotone: fails at 1000 and 1200, yet passes at 1100 (a lucky trial)
    def noisy(rate: float) -> bool:
        return rate <= 837.0 or 1050.0 <= rate <= 1150.0
    search = default_search(max_trials=100)
    result = run(search, noisy)
    assert result.converged
    assert result.best_rate is not None and result.failed_rate is not None
    assert result.best_rate < result.failed_rate
    met_rates = [rate for rate, met in result.trials if met]
    failed_rates = [rate for rate, met in result.trials if not met]
    assert result.failed_rate == min(failed_rates)
    assert result.best_rate == max(r for r in met_rates if r < result.failed_rate)


def test_record_refuses_a_rate_it_did_not_ask_for() -> None:
    search = default_search()
    assert search.next_rate() == search.next_rate() == 100.0
    with pytest.raises(ValueError, match="asked for 100"):
        search.record(200.0, True)
    search.record(100.0, True)
    assert search.next_rate() == 200.0


def test_record_takes_the_asked_rate_back_through_a_float32_field() -> None:
    search = RateSearch(start=1.562, low=1.0, high=10.0)
    as_float32 = struct.unpack("f", struct.pack("f", 1.562))[0]
    assert as_float32 != 1.562
    search.record(as_float32, True)
    assert search.trials == ((1.562, True),) and search.next_rate() == 3.124


def test_record_refuses_a_trial_after_the_search_is_over() -> None:
    search = RateSearch(10.0, 1.0, 10.0)
    search.record(10.0, True)
    assert search.done and search.next_rate() is None
    with pytest.raises(ValueError, match="search is over"):
        search.record(10.0, True)


def test_result_while_running_says_it_is_in_progress() -> None:
    search = default_search()
    search.record(100.0, True)
    result = search.result()
    assert not result.converged and result.best_rate == 100.0
    assert result.reason.startswith("in progress after 1 trials")


@pytest.mark.parametrize("crash_after", range(11))
def test_a_resumed_search_continues_exactly_as_an_uninterrupted_one(crash_after: int) -> None:
    meets = knee(837.0)
    whole = run(default_search(), meets)
    first = default_search()
    for _ in range(crash_after):
        rate = first.next_rate()
        assert rate is not None
        first.record(rate, meets(rate))
    saved = json.loads(json.dumps(first.to_dict()))  # what the orchestrator persisted
    resumed = RateSearch.from_dict(saved)
    assert resumed.trials == first.trials and resumed.next_rate() == first.next_rate()
    assert run(resumed, meets) == whole
    assert resumed.to_dict() == {**saved, "trials": [[r, m] for r, m in whole.trials]}


def test_result_serializes_for_a_report() -> None:
    d = run(default_search(), knee(837.0)).to_dict()
    assert d["best_rate"] == 825.0 and d["converged"] is True and d["trials"][0] == [100.0, True]


@pytest.mark.parametrize(("state", "field"), [
    ({"low": 1.0, "high": 10.0, "tolerance": 0.05, "max_trials": 5}, "search.start"),
    ({"start": 5.0, "low": 1.0, "high": 10.0, "tolerance": 0.05, "max_trials": 5,
      "trials": [[7.0, True]]}, "search.trials"),
    ({"start": 5.0, "low": 1.0, "high": 10.0, "tolerance": 0.05, "max_trials": 5,
      "trials": [[5.0, "yes"]]}, "search.trials"),
    ({"start": 5.0, "low": 1.0, "high": 10.0, "tolerance": 0.05, "max_trials": 5,
      "trials": "5.0"}, "search.trials"),
])
def test_from_dict_refuses_state_that_does_not_replay(state: dict[str, object],
                                                      field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        RateSearch.from_dict(state)
    assert err.value.field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"start": 0.0}, "search.start"),
    ({"start": -5.0}, "search.start"),
    ({"start": float("nan")}, "search.start"),
    ({"low": float("inf")}, "search.low"),
    ({"high": 0.0}, "search.high"),
    ({"low": 200.0, "high": 100.0}, "search.low"),
    ({"start": 0.5}, "search.start"),
    ({"start": 200000.0}, "search.start"),
    ({"tolerance": 0.0}, "search.tolerance"),
    ({"tolerance": 1.0}, "search.tolerance"),
    ({"max_trials": 0}, "search.max_trials"),
    ({"max_trials": 101}, "search.max_trials"),
    ({"max_trials": 2.5}, "search.max_trials"),
])
def test_bad_parameters_are_refused_naming_the_field(kwargs: dict[str, float],
                                                     field: str) -> None:
    args: dict[str, float] = {"start": 100.0, "low": 1.0, "high": 1e5, "tolerance": 0.05,
                              "max_trials": 12}
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as err:
        RateSearch(args["start"], args["low"], args["high"], args["tolerance"],
                   args["max_trials"])  # type: ignore[arg-type]
    assert err.value.field == field
