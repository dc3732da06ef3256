"""The VRAM chart: allocated, reserved and whole-device memory per step, the planner's predicted
peak, the measured peak, and the wall: the card's capacity.

The y-axis follows the run (its highest line, the prediction included, plus headroom), so a
10 GiB run fills the plot on an 80 GB card as on a 12 GB one. The card's capacity is drawn where
it is: a red line with a shaded band above it ("over the wall") once the run comes within reach
of it, otherwise a red marker at the top edge saying how far above it is. "Whole card" shows the
card from 0 to its capacity. Labels sit at the right edge and are stacked so that none covers
another; the legend lies below the plot, where it covers nothing.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QToolButton

from qlora_studio.gui.widgets.axes import snap_range
from qlora_studio.gui.widgets.charts import PALETTE, LiveChart

HEADROOM = 1.15  # the y-axis reaches this far above the run's highest line
NEAR_WALL = 0.6  # from this share of the card on, the capacity is drawn in the plot, not as a marker
LABEL_GAP_PX = 2


class VramChart(LiveChart):
    def __init__(self, parent=None):
        super().__init__("VRAM", "GiB", parent=parent)
        item = self.getPlotItem()
        self.add_curve("allocated", "allocated", PALETTE["allocated"], 1.6)
        self.add_curve("reserved", "reserved", PALETTE["reserved"], 1.6)
        self.add_curve("device", "whole device (NVML)", PALETTE["device"], 1.0, style=Qt.PenStyle.DashLine)
        self._legend_below(item)
        item.enableAutoRange(y=False)  # the run decides the y-range (fit_y), never the capacity line
        item.setMouseEnabled(x=True, y=False)

        self.wall = pg.LinearRegionItem((0, 1), orientation="horizontal", movable=False,
                                        brush=pg.mkBrush(220, 38, 38, 26), pen=pg.mkPen(None))
        self.wall.setZValue(-5)
        item.addItem(self.wall, ignoreBounds=True)
        self.capacity_line = self._hline(PALETTE["capacity"], Qt.PenStyle.SolidLine, 1.6)
        self.predicted_line = self._hline(PALETTE["predicted"], Qt.PenStyle.DashLine, 1.4)
        self.peak_line = self._hline("#0f172a", Qt.PenStyle.DotLine, 1.4)
        self.labels = {name: self._label(color) for name, color in
                       (("capacity", PALETTE["capacity"]), ("predicted", PALETTE["predicted"]), ("peak", "#0f172a"))}
        self.whole_card = QToolButton(self)
        self.whole_card.setObjectName("vramWholeCard")
        self.whole_card.setText("Whole card")
        self.whole_card.setCheckable(True)
        self.whole_card.setAutoRaise(True)
        self.whole_card.setToolTip("Show the card from 0 to its capacity, instead of the range this run uses")
        self.whole_card.toggled.connect(lambda _: self.show_lines())
        self.whole_card.move(6, 4)  # the title row's left end: outside the plot
        self.whole_card.hide()

        self.capacity_gb: float | None = None
        self.predicted_peak_gb: float | None = None
        self.measured_peak_gb: float | None = None
        self.on_cuda = False
        item.getViewBox().sigResized.connect(self._place_labels)
        item.getViewBox().sigRangeChanged.connect(self._place_labels)
        self.set_message("VRAM appears here during a GPU run")
        self.show_lines()

    # ---- parts ----
    def _legend_below(self, item) -> None:
        """The legend in a row under the step axis: inside the plot it covered the lines' labels."""
        self.legend = pg.LegendItem(colCount=3, labelTextSize="8pt", verSpacing=-8, horSpacing=10)
        item.layout.addItem(self.legend, 4, 1)
        for key in ("allocated", "reserved", "device"):
            self.legend.addItem(self.curves[key], self.curves[key].name())

    def _hline(self, color: str, style, width: float) -> pg.InfiniteLine:
        line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(color, width=width, style=style))
        line.hide()
        self.getPlotItem().addItem(line, ignoreBounds=True)
        return line

    def _label(self, color: str) -> pg.TextItem:
        label = pg.TextItem("", color=color, anchor=(1, 1), fill=pg.mkBrush(255, 255, 255, 215))
        label.setZValue(20)
        label.hide()
        self.getPlotItem().addItem(label, ignoreBounds=True)
        return label

    # ---- state ----
    def reset(self, predicted_peak_gb: float | None) -> None:
        self.clear_data()
        self.measured_peak_gb = None
        self.predicted_peak_gb = predicted_peak_gb
        self.on_cuda = False
        self.show_lines()

    def note_peak(self, peak_gb: float | None) -> bool:
        """A measured peak; True when it raised the line."""
        if peak_gb is None or (self.measured_peak_gb is not None and peak_gb <= self.measured_peak_gb):
            return False
        self.measured_peak_gb = peak_gb
        self.show_lines()
        return True

    @property
    def capacity(self) -> float | None:
        """The card's capacity in GiB, while it means something (a CUDA run on a known card)."""
        return self.capacity_gb if self.on_cuda and self.capacity_gb else None

    def run_top(self) -> float:
        """The highest of the run's lines: measured memory, the measured and the predicted peak."""
        tops = [s.y.max() for key, s in self.series.items() if len(s)]
        tops += [v for v in (self.predicted_peak_gb, self.measured_peak_gb) if v is not None]
        return float(max(tops)) if tops else 0.0

    def y_top(self) -> float:
        cap = self.capacity
        if cap is not None and (self.whole_card.isChecked() or self.run_top() <= 0):
            return snap_range(0.0, cap * 1.04)[1]
        top = self.run_top() * HEADROOM or 1.0
        if cap is not None and self.run_top() >= NEAR_WALL * cap:
            top = max(top, cap * 1.06)
        return snap_range(0.0, top)[1]

    def wall_in_view(self) -> bool:
        return self.capacity is not None and self.capacity <= self.y_top()

    # ---- drawing ----
    def redraw(self, keys=None) -> None:
        super().redraw(keys)
        self.fit_y()

    def fit_y(self) -> None:
        top = self.y_top()
        (_, _), (y0, y1) = self.getPlotItem().getViewBox().viewRange()
        if abs(y0) > 1e-9 or abs(y1 - top) > 1e-9:
            self.getPlotItem().setYRange(0.0, top, padding=0)

    def show_lines(self) -> None:
        cap = self.capacity
        self.whole_card.setVisible(cap is not None)
        self.fit_y()
        inside = self.wall_in_view()
        for line, value in ((self.capacity_line, cap if inside else None), (self.predicted_line, self.predicted_peak_gb),
                            (self.peak_line, self.measured_peak_gb)):
            line.setVisible(value is not None)
            if value is not None:
                line.setPos(value)
        self.wall.setVisible(inside)
        if inside:
            self.wall.setRegion((cap, cap * 10))
        texts = {
            "capacity": (f"card {cap:.1f} GiB" if inside else f"▲ card {cap:.1f} GiB, {cap - self.run_top():.0f} GiB above")
            if cap is not None else "",
            "predicted": f"predicted {self.predicted_peak_gb:.2f} GiB" if self.predicted_peak_gb is not None else "",
            "peak": f"peak {self.measured_peak_gb:.2f} GiB" if self.measured_peak_gb is not None else "",
        }
        for name, text in texts.items():
            self.labels[name].setText(text)
            self.labels[name].setVisible(bool(text))
        self._place_labels()

    def _place_labels(self, *_) -> None:
        """Each label at the right edge, just above its line; stacked downwards where they would overlap."""
        vb = self.getPlotItem().getViewBox()
        (x0, x1), (y0, y1) = vb.viewRange()
        px_w, px_h = vb.viewPixelSize()
        if not np.isfinite(px_h) or px_h <= 0:
            return
        wanted = []
        cap = self.capacity
        values = {"capacity": (cap if self.wall_in_view() else y1) if cap is not None else None,
                  "predicted": self.predicted_peak_gb, "peak": self.measured_peak_gb}
        for name, label in self.labels.items():
            if label.isVisible() and values[name] is not None:
                height = label.boundingRect().height() * px_h
                wanted.append((values[name], height, name))
        floor = y1  # the lowest y the next label's top may reach
        for value, height, name in sorted(wanted, key=lambda w: -w[0]):
            bottom = min(value, floor - height)  # above its line, below the label before it
            self.labels[name].setPos(x1 - 4 * px_w, max(bottom, y0))
            floor = bottom - LABEL_GAP_PX * px_h

    def peak_text(self) -> str:
        """The header's 'Peak VRAM' number: measured / predicted."""
        if self.measured_peak_gb is not None:
            measured = f"{self.measured_peak_gb:.2f} GiB"
        else:
            measured = "–" if self.on_cuda else "CPU"
        predicted = f"predicted {self.predicted_peak_gb:.2f} GiB" if self.predicted_peak_gb is not None else ""
        return measured + (f" / {predicted}" if predicted else "")
