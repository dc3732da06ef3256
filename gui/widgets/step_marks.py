"""Marks on a chart at the steps where the loss or the gradients turned NaN/Inf: a dashed red line
with a label, and a cross on the last finite loss before it (the chart cannot draw NaN itself)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt

COLOR = "#dc2626"


class StepMarks:
    def __init__(self, chart: pg.PlotWidget):
        self.chart = chart
        self.items: list[pg.GraphicsObject] = []
        self.steps: list[int] = []

    def add(self, step: int, label: str, series=None) -> None:
        """`series`: the chart's loss points, to put the cross on the last finite one at or before `step`."""
        plot = self.chart.getPlotItem()
        line = pg.InfiniteLine(pos=step, angle=90, movable=False, pen=pg.mkPen(COLOR, width=1.4, style=Qt.PenStyle.DashLine),
                               label=label, labelOpts={"position": 0.92, "color": COLOR, "anchors": [(0, 1), (0, 1)]})
        plot.addItem(line, ignoreBounds=True)
        self.items.append(line)
        y = _last_finite_before(series, step) if series is not None else None
        if y is not None:
            cross = pg.PlotDataItem([step], [y], pen=None, symbol="x", symbolSize=13, symbolPen=pg.mkPen(COLOR, width=2.5),
                                    symbolBrush=COLOR)
            plot.addItem(cross)
            self.items.append(cross)
        self.steps.append(step)

    def clear(self) -> None:
        plot = self.chart.getPlotItem()
        for item in self.items:
            plot.removeItem(item)
        self.items.clear()
        self.steps.clear()


def _last_finite_before(series, step: int) -> float | None:
    x, y = series.x, series.y
    upto = int(np.searchsorted(x, step, side="right"))
    finite = np.flatnonzero(np.isfinite(y[:upto]))
    return float(y[finite[-1]]) if len(finite) else None
