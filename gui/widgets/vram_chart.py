"""The VRAM chart: allocated, reserved and whole-device memory per step, against the card's
capacity, the planner's predicted peak and the measured peak."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt

from qlora_studio.gui.widgets.charts import PALETTE, LiveChart


class VramChart(LiveChart):
    def __init__(self, parent=None):
        super().__init__("VRAM", "GiB", parent=parent)
        self.add_legend()
        self.add_curve("allocated", "allocated", PALETTE["allocated"])
        self.add_curve("reserved", "reserved", PALETTE["reserved"])
        self.add_curve("device", "whole device (NVML)", PALETTE["device"], 1.2, style=Qt.PenStyle.DashLine)
        self.capacity_line = self._hline(PALETTE["capacity"], Qt.PenStyle.SolidLine, 0.02)
        self.predicted_line = self._hline(PALETTE["predicted"], Qt.PenStyle.DashLine, 0.35)
        self.peak_line = self._hline("#0f172a", Qt.PenStyle.DotLine, 0.7)
        self.capacity_gb: float | None = None
        self.predicted_peak_gb: float | None = None
        self.measured_peak_gb: float | None = None
        self.on_cuda = False
        self.set_message("VRAM appears here during a GPU run")

    def _hline(self, color: str, style, position: float) -> pg.InfiniteLine:
        options = {"position": position, "color": color, "anchors": [(0, 1), (0, 1)]}
        line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(color, width=1.4, style=style), label="",
                               labelOpts=options)
        line.hide()
        self.getPlotItem().addItem(line)
        return line

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

    def show_lines(self) -> None:
        def show(line: pg.InfiniteLine, value: float | None, template: str) -> None:
            if value is None:
                line.hide()
                return
            line.setPos(value)
            line.label.setFormat(template.format(value=value))
            line.show()

        show(self.capacity_line, self.capacity_gb if self.on_cuda else None, "card {value:.1f} GiB")
        show(self.predicted_line, self.predicted_peak_gb, "predicted PyTorch peak {value:.2f} GiB")
        show(self.peak_line, self.measured_peak_gb, "measured peak {value:.2f} GiB")

    def peak_text(self) -> str:
        """The header's 'Peak VRAM' number: measured / predicted."""
        if self.measured_peak_gb is not None:
            measured = f"{self.measured_peak_gb:.2f} GiB"
        else:
            measured = "–" if self.on_cuda else "CPU"
        predicted = f"predicted {self.predicted_peak_gb:.2f} GiB" if self.predicted_peak_gb is not None else ""
        return measured + (f" / {predicted}" if predicted else "")
