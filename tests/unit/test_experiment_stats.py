"""Figures over repeats: the t quantile against known values, the 95 % interval of a mean, Welch's
comparison of two configurations, and the CI gate thresholds with their parse errors."""

from __future__ import annotations

import itertools
import math

import pytest

from aifb.experiment.stats import (
    Threshold,
    compare,
    parse_threshold,
    parse_thresholds,
    relative_change,
    summarize,
    t_quantile_975,
)
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("df", "expected"), [
    (1, 12.706), (2, 4.303), (3, 3.182), (9, 2.262), (10, 2.228), (30, 2.042), (40, 2.021),
    (60, 2.000), (120, 1.980), (10**6, 1.960), (math.inf, 1.960),
])
def test_t_quantile_matches_the_published_table_to_3_decimals(df: float, expected: float) -> None:
    assert round(t_quantile_975(df), 3) == expected


@pytest.mark.parametrize(("df", "exact"), [
    # exact t(0.975, df) by numerical integration of the t density
    (1.1, 10.276801), (1.4, 6.657003), (2.2, 3.948721), (3.5, 2.940089), (35, 2.030108),
    (50, 2.008559), (90, 1.986675), (200, 1.971896), (1000, 1.962339),
])
def test_t_quantile_between_table_points_is_never_narrower_and_at_most_half_a_percent_wider(
        df: float, exact: float) -> None:
    t = t_quantile_975(df)
    assert exact - 1e-6 <= t <= exact * 1.005


def test_t_quantile_decreases_with_the_degrees_of_freedom() -> None:
    dfs = [1 + i * 0.05 for i in range(400)] + [25 + i for i in range(300)]
    ts = [t_quantile_975(d) for d in dfs]
    assert all(a > b for a, b in itertools.pairwise(ts))


@pytest.mark.parametrize("df", [0.5, 0, -1, math.nan])
def test_t_quantile_refuses_fewer_than_one_degree_of_freedom(df: float) -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(df)


def test_summary_of_three_repeats_has_the_student_t_interval() -> None:
    s = summarize([812.0, 830.5, 821.7])
    assert s.n == 3 and s.ci_known
    assert s.mean == pytest.approx(821.4)
    assert s.stdev == pytest.approx(9.2536479, rel=1e-6)
    half = 4.302653 * s.stdev / math.sqrt(3)
    assert s.half_width == pytest.approx(half, rel=1e-6)
    assert (s.ci_low, s.ci_high) == pytest.approx((821.4 - half, 821.4 + half), rel=1e-9)
    assert s.values == (812.0, 830.5, 821.7)
    assert s.relative_half_width == pytest.approx(half / 821.4)


def test_one_repeat_has_no_interval() -> None:
    s = summarize([5.0])
    assert (s.n, s.mean, s.stdev, s.ci_low, s.ci_high, s.half_width) == (1, 5.0, 0.0, 5.0, 5.0, 0.0)
    assert not s.ci_known


def test_identical_repeats_have_a_zero_width_interval() -> None:
    s = summarize([2.5, 2.5, 2.5, 2.5])
    assert s.ci_known and s.stdev == 0.0 and s.ci_low == s.ci_high == 2.5


def test_summary_round_trips_to_a_json_ready_dict() -> None:
    d = summarize([1, 2, 3]).to_dict()
    assert d["n"] == 3 and d["values"] == [1.0, 2.0, 3.0] and d["ci_known"] is True


@pytest.mark.parametrize("values", [[], [1.0, math.nan], [math.inf], [1.0, -math.inf]])
def test_summarize_refuses_empty_and_non_finite_input(values: list[float]) -> None:
    with pytest.raises(ValueError, match="cannot summarize"):
        summarize(values)


def test_overlapping_repeats_are_within_the_noise() -> None:
    a, b = summarize([100, 110, 90, 105]), summarize([104, 96, 112, 101])
    c = compare(a, b)
    assert c.within_noise is True
    assert c.diff == pytest.approx(b.mean - a.mean)
    assert c.diff_ci_low is not None and c.diff_ci_high is not None
    assert c.diff_ci_low < 0 < c.diff_ci_high
    assert "within the noise" in c.describe("ms")


def test_separated_repeats_are_beyond_the_noise_with_welch_df() -> None:
    a, b = summarize([10, 11, 12]), summarize([13, 14, 15.5])
    c = compare(a, b)
    assert c.within_noise is False
    va, vb = a.stdev**2 / 3, b.stdev**2 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert c.df == pytest.approx(df)
    half = t_quantile_975(df) * math.sqrt(va + vb)
    assert (c.diff_ci_low, c.diff_ci_high) == pytest.approx((c.diff - half, c.diff + half))
    assert c.ratio == pytest.approx(b.mean / a.mean)
    assert c.relative == pytest.approx(b.mean / a.mean - 1)
    assert "beyond the noise" in c.describe()


def test_welch_df_follows_the_noisier_side() -> None:
    quiet = summarize([50.0, 50.0, 50.0, 50.0, 50.0])
    noisy = summarize([40.0, 60.0, 45.0])
    assert compare(quiet, noisy).df == pytest.approx(2.0)  # all variance from n=3


def test_a_side_with_one_repeat_leaves_the_noise_unknown() -> None:
    c = compare(summarize([1.0]), summarize([2.0, 2.1]))
    assert c.within_noise is None and c.diff_ci_low is None and c.diff_ci_high is None
    assert c.diff == pytest.approx(1.05)
    assert "unknown" in c.describe()


def test_exact_repeats_differ_exactly() -> None:
    same = compare(summarize([3.0, 3.0]), summarize([3.0, 3.0, 3.0]))
    assert same.within_noise is True and same.df == math.inf
    apart = compare(summarize([3.0, 3.0]), summarize([4.0, 4.0]))
    assert apart.within_noise is False and apart.diff_ci_low == apart.diff_ci_high == 1.0


def test_ratio_is_unknown_against_a_zero_baseline() -> None:
    c = compare(summarize([0.0, 0.0]), summarize([1.0, 1.0]))
    assert c.ratio is None and c.relative is None


def test_relative_change() -> None:
    assert relative_change(100.0, 110.0) == pytest.approx(0.10)
    assert relative_change(-10.0, -5.0) == pytest.approx(0.5)
    assert relative_change(0.0, 1.0) is None


def test_a_rise_threshold_is_breached_only_above_its_limit() -> None:
    t = parse_threshold("p99>+10%")
    assert t == Threshold("p99", "+", 0.10, relative=True)
    assert not t.breached(100.0, 110.0)
    assert t.breached(100.0, 110.5)
    assert not t.breached(100.0, 50.0)  # an improvement
    assert str(t) == "p99>+10%"
    assert "breached" in t.describe(100.0, 120.0) and "+20.0 %" in t.describe(100.0, 120.0)


def test_a_fall_threshold_is_breached_only_below_its_limit() -> None:
    t = parse_threshold("achieved_rate<-5%")
    assert (t.figure, t.direction, t.limit, t.relative) == ("achieved_rate", "-", 0.05, True)
    assert not t.breached(1000.0, 951.0)
    assert t.breached(1000.0, 949.0)
    assert not t.breached(1000.0, 2000.0)


def test_an_absolute_threshold_compares_differences() -> None:
    t = parse_threshold("error_ratio>+0.01")
    assert (t.direction, t.limit, t.relative) == ("+", 0.01, False)
    assert not t.breached(0.0, 0.01)
    assert t.breached(0.0, 0.0101)
    assert str(t) == "error_ratio>+0.01"


def test_a_relative_threshold_against_zero_breaches_on_any_move_the_wrong_way() -> None:
    t = parse_threshold("errors>+10%")
    assert t.breached(0.0, 1.0) and not t.breached(0.0, 0.0) and not t.breached(0.0, -1.0)


def test_the_sign_may_be_left_out_and_follows_the_comparison() -> None:
    assert parse_threshold(" ttft_p50 > 20 % ") == Threshold("ttft_p50", "+", 0.20, True)
    assert parse_threshold("tokens.per_s<3%").direction == "-"


def test_breached_refuses_a_missing_figure() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        parse_threshold("p99>+10%").breached(1.0, math.nan)


def test_several_thresholds_are_comma_separated() -> None:
    gates = parse_thresholds("p99>+10%, achieved_rate<-5%,error_ratio>+0.01")
    assert [str(g) for g in gates] == ["p99>+10%", "achieved_rate<-5%", "error_ratio>+0.01"]
    assert parse_thresholds("  ") == []


@pytest.mark.parametrize("text", [
    "p99", "p99>", "p99>+ten%", "p99=+10%", ">+10%", "p99>+10%%", "p99<+10%", "rate>-5%",
    "9p>1%", "p99>+1e999", "p99>+10%,", "p99>+10%,,rate<-5%",
])
def test_bad_thresholds_are_refused_naming_the_expected_form(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_thresholds(text)
    assert err.value.field == "fail_on"
    assert "p99>+10%" in str(err.value) or "finite" in str(err.value)
