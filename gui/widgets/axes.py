"""Chart axes that say true things and cost little to draw.

- `IntegerAxis`: ticks only at whole numbers (steps, example counts): never "1.5" steps.
- `ValueAxis`: pyqtgraph's axis, plus readable labels in log mode (0.5, 1, 2, 3 … rather than
  only the powers of ten, which a loss between 1 and 10 never reaches).
- `SteadyViewBox`: auto-range that snaps to "nice" values, so the view grows in jumps instead
  of at every new point. Axes (and their grid lines) are drawn from a cached picture that is only
  re-rendered when the range changes: steady ranges make a live frame redraw the curves alone.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QGraphicsItem

_NICE = (1.0, 2.0, 2.5, 5.0, 10.0)


def nice_unit(span: float, parts: int = 10) -> float:
    """The largest of 1, 2, 2.5, 5 x 10^k that divides `span` into at least `parts` parts."""
    if not math.isfinite(span) or span <= 0:
        return 1.0
    raw = span / parts
    power = 10.0 ** math.floor(math.log10(raw))
    return max(m * power for m in _NICE if m * power <= raw * (1 + 1e-9))


def snap_range(lo: float, hi: float, parts: int = 10) -> tuple[float, float]:
    """[lo, hi] widened to whole multiples of a nice unit (~1/`parts` of the span)."""
    if hi < lo:
        lo, hi = hi, lo
    span = hi - lo
    if span <= 0:
        unit = nice_unit(abs(lo) or 1.0)
        return lo - unit, hi + unit
    unit = nice_unit(span, parts)
    return math.floor(lo / unit + 1e-9) * unit, math.ceil(hi / unit - 1e-9) * unit


def cache_item(item: QGraphicsItem) -> None:
    """Paint `item` from a pixmap until it changes: a repaint of the curves then costs a blit."""
    item.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)


class IntegerAxis(pg.AxisItem):
    """Ticks at whole numbers only; 12,500 reads 12.5k."""

    def __init__(self, orientation: str, **kwargs):
        super().__init__(orientation, **kwargs)
        cache_item(self)
        self.setStyle(maxTickLevel=0)  # major ticks only: 3.5x cheaper to re-render, and calmer

    def tickSpacing(self, minVal, maxVal, size):  # noqa: N802 - pyqtgraph's name
        levels = [(spacing, offset) for spacing, offset in super().tickSpacing(minVal, maxVal, size)
                  if spacing >= 1 and float(spacing).is_integer()]
        return levels or [(1.0, 0.0)]

    def tickStrings(self, values, scale, spacing):  # noqa: N802
        out = []
        for v in values:
            v = round(v * scale)
            out.append(f"{v / 1000:g}k" if abs(v) >= 10_000 else f"{v:d}")
        return out


class ValueAxis(pg.AxisItem):
    """pyqtgraph's axis, with labels in log mode wherever the data are."""

    MIN_LABEL_PX = 28  # vertical room a label needs

    def __init__(self, orientation: str, **kwargs):
        super().__init__(orientation, **kwargs)
        cache_item(self)
        self.setStyle(maxTickLevel=0)
        self.setTickDensity(1.5)  # major ticks only, so a few more of them

    def tickValues(self, minVal, maxVal, size):  # noqa: N802
        if not self.logMode:
            return super().tickValues(minVal, maxVal, size)
        lo, hi = sorted((minVal, maxVal))
        return [(None, [math.log10(v) for v in log_ticks(10.0**lo, 10.0**hi, max(2, int(size // self.MIN_LABEL_PX)))])]

    def tickStrings(self, values, scale, spacing):  # noqa: N802
        if not self.logMode:
            return super().tickStrings(values, scale, spacing)
        return [f"{10.0**v * scale:.3g}" for v in values]


def log_ticks(lo: float, hi: float, most: int) -> list[float]:
    """At most `most` readable values between lo and hi for a log axis: evenly spaced nice values
    over a narrow range, otherwise 1-1.5-2-3-4-5-7 (or sparser) in each decade."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= lo:
        return []
    if hi / lo >= 2:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for mantissas in ((1, 1.5, 2, 3, 4, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
            values = [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]
            if 2 <= len(values) <= most:
                return values
        if len(values) > most:
            step = math.ceil(len(values) / most)
            return values[::step]
    for parts in range(max(1, most - 1), 0, -1):
        unit = nice_unit(hi - lo, parts)
        first, last = math.ceil(lo / unit - 1e-9), math.floor(hi / unit + 1e-9)
        if last - first + 1 <= most:
            return [k * unit for k in range(max(first, 1), last + 1)]
    return [lo, hi]


def grow_range(lo: float, hi: float) -> tuple[float, float]:
    """A step range that grows in jumps: its end is the next of 10, 15, 20, 30, 50, 70, 100, … past
    the newest step, so a live run moves its step axis a few times per decade, not every step."""
    top = max(hi / 1.01, 10.0)  # 1%: the curves' bounds include their pens' width
    power = math.floor(math.log10(top))
    end = min(m * 10.0**e for e in (power, power + 1) for m in (1, 1.5, 2, 3, 5, 7) if m * 10.0**e >= top)
    if -0.01 * end <= lo < end / 2:
        return 0.0, end
    unit = nice_unit(end - lo, 10)
    return math.floor(lo / unit) * unit, end


class SteadyViewBox(pg.ViewBox):
    """A ViewBox whose automatic range moves in nice units: the step axis grows in jumps
    (`grow_range`), values snap to tenths of their span (`snap_range`)."""

    def childrenBounds(self, frac=None, orthoRange=(None, None), items=None):  # noqa: N802
        x, y = super().childrenBounds(frac=frac, orthoRange=orthoRange, items=items)
        return [list(grow_range(*x)) if x is not None else None, list(snap_range(*y)) if y is not None else None]
