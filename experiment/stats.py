"""Figures over repeats: the mean of a figure with its 95 % confidence interval, and whether two
configurations differ by more than the noise between repeats.

    s = summarize([812.0, 830.5, 821.7])          # one figure (say p99 ms) over 3 repeats
    s.mean, s.ci_low, s.ci_high                    # 821.4, 798.4, 844.4
    c = compare(baseline, candidate)               # candidate - baseline
    c.diff, c.ratio, c.within_noise                # within_noise: True, False or None (unknown)
    gates = parse_thresholds("p99>+10%,achieved_rate<-5%")   # a CI job's --fail-on
    [g.figure for g in gates if g.breached(old, new)]

**The interval of one configuration.** A trial is repeated n times; the figure's mean over the
repeats is reported with a 95 % confidence interval from Student's t: mean ± t(0.975, n-1) ·
s / √n, s the sample standard deviation. It says where the mean of many more repeats would
likely fall. With 3 repeats t is 4.30, so the interval is wide; with one repeat there is no
interval at all (`ci_known` is False and both ends are the mean).

**"Within the noise".** `compare` runs Welch's t-test at the 95 % level: it takes the difference
of the two means, its standard error √(s_a²/n_a + s_b²/n_b), and the Welch-Satterthwaite degrees
of freedom (the two sides may have different spreads and repeat counts), and builds the 95 %
confidence interval of the difference. When that interval contains 0, the difference is
*within the noise*: the repeats of each side scatter enough that a difference of this size
could come from chance alone, so the report must not call one configuration better. When the
interval excludes 0, the difference is larger than the noise explains (at the 5 % level: about
one comparison in twenty of identical configurations is flagged by chance). With fewer than two
repeats on either side the spread is unknown, and so is the answer (`None`). Two sides without
any spread (every repeat identical) differ exactly by their means.

**The t quantile** is taken from a table of t(0.975, df) (df 1, 1.25, 1.5, 1.75, 2, 2.5, 3..30,
40, 60, 120; the normal 1.959964 beyond) and interpolated linearly in log t against 1/df between
table points, which Welch's fractional df needs. Checked against the exact quantile (numerical
integration of the t density), it is never narrower and at most 0.4 % wider, so the intervals
err on the safe side.

**Thresholds for CI gates** (`parse_threshold`): ``p99>+10%`` is breached when the new value
rises more than 10 % over the old one, ``achieved_rate<-5%`` when it falls more than 5 % below,
``error_ratio>+0.01`` (no %) when it rises by more than 0.01 absolute.
"""

from __future__ import annotations

import bisect
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aifb.mesh.errors import InvalidArgument

__all__ = [
    "Comparison",
    "Summary",
    "Threshold",
    "compare",
    "parse_threshold",
    "parse_thresholds",
    "relative_change",
    "summarize",
    "t_quantile_975",
]

# t(0.975, df): the two-sided 95 % quantile of Student's t, exact to 6 decimals. The fractional
# df at the small end keep the interpolation close where the quantile bends most.
_T975: tuple[tuple[float, float], ...] = (
    (1, 12.706205), (1.25, 8.027951), (1.5, 6.016663), (1.75, 4.948848), (2, 4.302653),
    (2.5, 3.574655), (3, 3.182446), (4, 2.776445), (5, 2.570582), (6, 2.446912),
    (7, 2.364624), (8, 2.306004), (9, 2.262157), (10, 2.228139), (11, 2.200985),
    (12, 2.178813), (13, 2.160369), (14, 2.144787), (15, 2.131450), (16, 2.119905),
    (17, 2.109816), (18, 2.100922), (19, 2.093024), (20, 2.085963), (21, 2.079614),
    (22, 2.073873), (23, 2.068658), (24, 2.063899), (25, 2.059539), (26, 2.055529),
    (27, 2.051831), (28, 2.048407), (29, 2.045230), (30, 2.042272), (40, 2.021075),
    (60, 2.000298), (120, 1.979930),
)
_Z975 = 1.959964  # the normal quantile: the limit as df grows
# Interpolation nodes as (1/df, log t), ascending in 1/df; 1/df = 0 is the normal limit.
_NODES_X: tuple[float, ...] = (0.0, *(1.0 / df for df, _ in reversed(_T975)))
_NODES_Y: tuple[float, ...] = (math.log(_Z975), *(math.log(t) for _, t in reversed(_T975)))


def t_quantile_975(df: float) -> float:
    """t(0.975, df), the multiplier of the standard error in a two-sided 95 % interval.

    `df` may be fractional (Welch) and must be >= 1; `math.inf` gives the normal 1.959964."""
    if math.isnan(df) or df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    x = 0.0 if math.isinf(df) else 1.0 / df
    i = bisect.bisect_left(_NODES_X, x)
    if _NODES_X[i] == x:
        return math.exp(_NODES_Y[i])
    x0, x1, y0, y1 = _NODES_X[i - 1], _NODES_X[i], _NODES_Y[i - 1], _NODES_Y[i]
    return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass(frozen=True, slots=True)
class Summary:
    """One figure over n repeats: mean, sample standard deviation and the 95 % interval of the
    mean. With n = 1 the interval is unknown: `ci_known` is False and both ends are the mean."""

    n: int
    mean: float
    stdev: float  # sample (n - 1); 0.0 for n = 1
    ci_low: float
    ci_high: float
    half_width: float  # ci_high - mean; 0.0 when the interval is unknown
    values: tuple[float, ...]
    ci_known: bool

    @property
    def relative_half_width(self) -> float | None:
        """The half-width as a fraction of the mean (0.05 = ±5 %), or None for a zero mean."""
        return None if self.mean == 0 else self.half_width / abs(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "stdev": self.stdev, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "half_width": self.half_width,
                "ci_known": self.ci_known, "values": list(self.values)}


def summarize(values: Sequence[float]) -> Summary:
    """The mean and 95 % interval of one figure's repeats. Empty input and NaN or infinite
    values are refused (ValueError): a missing figure must be dropped, or reported, by the
    caller, not averaged in."""
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("cannot summarize no values")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"cannot summarize non-finite values: {bad[:3]}")
    n = len(vals)
    mean = statistics.fmean(vals)
    if n == 1:
        return Summary(1, mean, 0.0, mean, mean, 0.0, vals, ci_known=False)
    stdev = statistics.stdev(vals)
    half = t_quantile_975(n - 1) * stdev / math.sqrt(n)
    return Summary(n, mean, stdev, mean - half, mean + half, half, vals, ci_known=True)


def relative_change(a: float, b: float) -> float | None:
    """(b - a) / |a|: +0.10 when b is 10 % above a, whatever a's sign. None when a is 0."""
    return None if a == 0 else (b - a) / abs(a)


@dataclass(frozen=True, slots=True)
class Comparison:
    """b against a (a = baseline): the difference of the means, its 95 % interval by Welch's
    test, and whether that interval contains 0 (`within_noise`; None when a side has n < 2)."""

    diff: float  # b.mean - a.mean
    ratio: float | None  # b.mean / a.mean; None when a.mean == 0
    within_noise: bool | None
    diff_ci_low: float | None  # None when within_noise is None
    diff_ci_high: float | None
    df: float | None  # Welch-Satterthwaite degrees of freedom; inf when neither side varies

    @property
    def relative(self) -> float | None:
        """The change as a fraction of a's mean (+0.10 = 10 % higher), or None."""
        return None if self.ratio is None else self.ratio - 1.0

    def describe(self, unit: str = "") -> str:
        """One sentence for a report, e.g. ``+12.3 ms (+4.1 %; 95 % CI 3.1..21.5), beyond the
        noise``."""
        u = f" {unit}" if unit else ""
        rel = "" if self.relative is None else f" ({self.relative * 100:+.1f} %)"
        if self.within_noise is None:
            return f"{self.diff:+.4g}{u}{rel}, noise unknown (a side has fewer than 2 repeats)"
        verdict = "within the noise" if self.within_noise else "beyond the noise"
        return (f"{self.diff:+.4g}{u}{rel}, 95 % CI {self.diff_ci_low:+.4g}.."
                f"{self.diff_ci_high:+.4g}{u}: {verdict}")


def compare(a: Summary, b: Summary) -> Comparison:
    """b against the baseline a: difference, ratio and Welch's 95 % interval of the difference
    (see the module docstring for what "within the noise" means)."""
    diff = b.mean - a.mean
    ratio = None if a.mean == 0 else b.mean / a.mean
    if a.n < 2 or b.n < 2:
        return Comparison(diff, ratio, None, None, None, None)
    va, vb = a.stdev**2 / a.n, b.stdev**2 / b.n
    se2 = va + vb
    if se2 == 0:  # neither side varies: the difference is exact
        return Comparison(diff, ratio, diff == 0, diff, diff, math.inf)
    df = se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = t_quantile_975(max(df, 1.0)) * math.sqrt(se2)  # max: guards rounding below 1
    low, high = diff - half, diff + half
    return Comparison(diff, ratio, low <= 0.0 <= high, low, high, df)


_FORM = "<figure>(>|<)(+|-)<number>[%], e.g. p99>+10% or achieved_rate<-5% or error_ratio>+0.01"
_THRESHOLD = re.compile(
    r"^\s*(?P<figure>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op>[<>])\s*(?P<sign>[+-])?\s*"
    r"(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<pct>%)?\s*$")


@dataclass(frozen=True, slots=True)
class Threshold:
    """A CI gate on one figure: how far it may move from the old value a to the new value b.

    `direction` "+" means a rise is worse (latencies, errors), "-" a fall (throughput);
    `limit` is a fraction of a when `relative` (0.10 for 10 %), else an absolute amount."""

    figure: str
    direction: Literal["+", "-"]
    limit: float
    relative: bool

    def change(self, a: float, b: float) -> float:
        """How far b moved from a in the threshold's terms, signed: a fraction of |a| when
        relative (±inf when a is 0 and b is not), else b - a."""
        if not self.relative:
            return b - a
        if a == 0:
            return 0.0 if b == 0 else math.copysign(math.inf, b)
        return (b - a) / abs(a)

    def breached(self, a: float, b: float) -> bool:
        """Whether b moved from a further than allowed in the bad direction. Non-finite values
        are refused (ValueError): a missing figure is the caller's to report, not a pass."""
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"{self.figure}: cannot judge non-finite values {a} -> {b}")
        moved = self.change(a, b)
        return moved > self.limit if self.direction == "+" else -moved > self.limit

    def describe(self, a: float, b: float) -> str:
        """One line for a CI log, e.g. ``p99: 120 -> 140 (+16.7 %), limit +10 %: breached``."""
        if self.relative:
            moved = self.change(a, b)
            change = f"{moved * 100:+.1f} %" if math.isfinite(moved) else "from 0"
        else:
            change = f"{b - a:+.4g}"
        verdict = "breached" if self.breached(a, b) else "ok"
        return f"{self.figure}: {a:.4g} -> {b:.4g} ({change}), limit {self}: {verdict}"

    def __str__(self) -> str:
        op = ">" if self.direction == "+" else "<"
        amount = f"{self.limit * 100:g}%" if self.relative else f"{self.limit:g}"
        return f"{self.figure}{op}{self.direction}{amount}"


def parse_threshold(text: str) -> Threshold:
    """``p99>+10%`` -> Threshold("p99", "+", 0.10, relative=True). The sign may be left out
    (it follows the comparison); a sign against the comparison (``p99<+10%``) is refused, as is
    anything else off the form (InvalidArgument, field "fail_on")."""
    m = _THRESHOLD.match(text)
    if m is None:
        raise InvalidArgument(f"bad threshold {text.strip()!r}: expected {_FORM}", field="fail_on")
    direction: Literal["+", "-"] = "+" if m["op"] == ">" else "-"
    if m["sign"] is not None and m["sign"] != direction:
        raise InvalidArgument(
            f"bad threshold {text.strip()!r}: '>' goes with '+' (worse when it rises) and '<' with "
            f"'-' (worse when it falls); expected {_FORM}", field="fail_on")
    limit = float(m["number"])
    if not math.isfinite(limit):
        raise InvalidArgument(f"bad threshold {text.strip()!r}: the limit must be finite",
                              field="fail_on")
    relative = m["pct"] is not None
    return Threshold(m["figure"], direction, limit / 100 if relative else limit, relative)


def parse_thresholds(text: str) -> list[Threshold]:
    """Comma-separated thresholds (``p99>+10%,achieved_rate<-5%``); blank text gives none."""
    if not text.strip():
        return []
    return [parse_threshold(part) for part in text.split(",")]
