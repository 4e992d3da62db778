"""Small, dependency-free SVG line charts for reports.

Why hand-written SVG rather than a plotting library: the charts a report needs are a handful of
lines on linear axes; SVG text is deterministic (reports diff cleanly), embeds inline in HTML,
sits beside a Markdown file as an image, and costs no extra dependency on a login node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["Line", "line_chart"]

Line = tuple[str, Sequence[float], Sequence[float]]  # (name, xs, ys)

_W, _H = 640, 300
_L, _R, _T, _B = 64, 16, 28, 44  # margins
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1.0
    mag = float(10 ** math.floor(math.log10(raw)))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def line_chart(title: str, x_label: str, y_label: str, lines: Sequence[Line], *,
               step: bool = False) -> str:
    """An SVG document: one polyline per line, axes with round ticks, a legend."""
    xs = [x for _, lx, _ in lines for x in lx]
    ys = [y for _, _, ly in lines for y in ly]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11">',
             f'<rect width="{_W}" height="{_H}" fill="white"/>',
             f'<text x="{_W / 2}" y="16" text-anchor="middle" font-size="13">'
             f'{escape(title)}</text>']
    if not xs:
        parts.append(f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>')
        return "\n".join([*parts, "</svg>"]) + "\n"
    x0, x1 = min(xs), max(xs)
    y1 = max(ys) if max(ys) > 0 else 1.0
    y1 = math.ceil(y1 / _nice_step(y1)) * _nice_step(y1)
    x1 = x1 if x1 > x0 else x0 + 1
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(x: float) -> float:
        return _L + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _T + ph - (y / y1) * ph

    parts.append(f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" '
                 'stroke="#999"/>')
    ystep = _nice_step(y1)
    v = 0.0
    while v <= y1 + ystep / 1e6:
        parts.append(f'<line x1="{_L}" x2="{_L + pw}" y1="{py(v):.1f}" y2="{py(v):.1f}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{_L - 4}" y="{py(v) + 4:.1f}" text-anchor="end">'
                     f'{_fmt(v)}</text>')
        v += ystep
    xstep = _nice_step(x1 - x0)
    v = math.ceil(x0 / xstep) * xstep
    while v <= x1 + xstep / 1e6:
        parts.append(f'<text x="{px(v):.1f}" y="{_T + ph + 14}" text-anchor="middle">'
                     f'{_fmt(v)}</text>')
        v += xstep
    parts.append(f'<text x="{_L + pw / 2}" y="{_H - 8}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(14,{_T + ph / 2}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text>')
    for i, (name, lx, ly) in enumerate(lines):
        colour = _COLOURS[i % len(_COLOURS)]
        pts: list[str] = []
        prev_y: float | None = None
        for x, y in zip(lx, ly, strict=True):
            if step and prev_y is not None:
                pts.append(f"{px(x):.1f},{py(prev_y):.1f}")
            pts.append(f"{px(x):.1f},{py(y):.1f}")
            prev_y = y
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                     f'points="{" ".join(pts)}"/>')
        parts.append(f'<text x="{_L + 8}" y="{_T + 14 + 14 * i}" fill="{colour}">'
                     f'{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
