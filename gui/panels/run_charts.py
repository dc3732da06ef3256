"""The monitor's charts: loss (raw, smoothed and eval, with NaN/Inf marks), VRAM, learning rate, grad
norm and tokens/s, and below them the charts of a method past SFT (DPO's rewards, GRPO's reward...),
x-linked to the loss chart. They are created once and fed through one `ChartBoard`, which paces
their redraws; the page decides what reaches them and when."""

from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QWidget

from qlora_studio.core.runs import events as ev
from qlora_studio.gui.widgets.charts import PALETTE, ChartBoard, LiveChart, LossChart
from qlora_studio.gui.widgets.method_charts import MethodCharts
from qlora_studio.gui.widgets.step_marks import StepMarks
from qlora_studio.gui.widgets.vram_chart import VramChart


FULL_HEIGHT = 150  # LiveChart's least height
COMPACT_HEIGHT = 90  # ... with a row of method charts below: all three rows fit a 700-pixel screen


class RunCharts(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.board = ChartBoard(self)
        self.loss_chart = LossChart()
        self.smoothed = self.loss_chart.smoothed
        self.nan_marks = StepMarks(self.loss_chart)
        self.lr_chart = LiveChart("Learning rate")
        self.lr_chart.add_curve("lr", "learning rate", PALETTE["lr"])
        self.grad_chart = LiveChart("Grad norm")
        self.grad_chart.add_curve("grad", "grad norm", PALETTE["grad"])
        self.tps_chart = LiveChart("Tokens / s")
        self.tps_chart.add_curve("tps", "tokens/s", PALETTE["tps"])
        self.vram_chart = VramChart()
        self.charts = [self.loss_chart, self.vram_chart, self.lr_chart, self.grad_chart, self.tps_chart]
        for chart in self.charts[1:]:
            chart.setXLink(self.loss_chart)
        self.method_charts = MethodCharts(self.board)  # a row of its own; none for SFT

        self.grid = grid = QGridLayout(self)
        grid.setSpacing(6)
        grid.addWidget(self.loss_chart, 0, 0, 2, 1)
        grid.addWidget(self.vram_chart, 0, 1)
        grid.addWidget(self.tps_chart, 0, 2)
        grid.addWidget(self.lr_chart, 1, 1)
        grid.addWidget(self.grad_chart, 1, 2)
        grid.addWidget(self.method_charts, 2, 0, 1, 3)
        grid.setColumnStretch(0, 4)
        grid.setColumnStretch(1, 3)
        grid.setColumnStretch(2, 3)
        grid.setRowStretch(0, 1)
        grid.setRowStretch(1, 1)
        self.margins = grid.contentsMargins()  # the third row takes the top and bottom ones

    def reset(self, predicted_peak_gb: float | None = None) -> None:
        for chart in self.charts:
            chart.clear_data()
        self.smoothed.rebuild(self.loss_chart.series["raw"])
        self.nan_marks.clear()
        self.vram_chart.reset(predicted_peak_gb)
        self.show_method("sft")  # until the run says its method

    def show_method(self, method: str) -> None:
        """The charts of the run's `train.method` (RunStarted's config, or a replayed run's)."""
        self.method_charts.show_method(method)
        shown = self.method_charts.isVisibleTo(self)
        self.grid.setRowStretch(2, 1 if shown else 0)  # three rows share the height, or two as before
        margins = self.margins
        self.grid.setContentsMargins(margins.left(), 0 if shown else margins.top(), margins.right(),
                                     0 if shown else margins.bottom())
        for chart in self.charts:
            chart.setMinimumHeight(COMPACT_HEIGHT if shown else FULL_HEIGHT)

    def set_smoothing(self, weight: float) -> None:
        self.loss_chart.set_smoothing(weight)
        self.board.touch(self.loss_chart, "train")

    def show_device(self, device: str, predicted_peak_gb: float | None) -> None:
        """The run's device (from RunStarted): VRAM is measured on CUDA only."""
        vram = self.vram_chart
        vram.on_cuda = device.startswith("cuda")
        if predicted_peak_gb is not None:
            vram.predicted_peak_gb = predicted_peak_gb
        vram.set_message("" if vram.on_cuda else "CPU run:\nno VRAM to measure")

    def add_step(self, m: ev.StepMetrics) -> bool:
        """One metrics.jsonl record onto every chart; True when it raised the measured VRAM peak."""
        step, board = m.step, self.board
        board.add(self.loss_chart, "raw", step, m.loss)
        self.smoothed.push(step, m.loss)
        board.touch(self.loss_chart, "train")
        board.add(self.lr_chart, "lr", step, m.learning_rate)
        board.add(self.grad_chart, "grad", step, m.grad_norm)
        board.add(self.tps_chart, "tps", step, m.tokens_per_s)
        if m.method:
            self.method_charts.add_step(step, m.method)
        if m.vram_allocated_gb is None:
            return False
        self.vram_chart.on_cuda = True
        board.add(self.vram_chart, "allocated", step, m.vram_allocated_gb)
        board.add(self.vram_chart, "reserved", step, m.vram_reserved_gb)
        board.add(self.vram_chart, "device", step, m.vram_device_used_gb)
        return self.vram_chart.note_peak(m.vram_peak_gb)

    def add_eval(self, step: int, eval_loss: float) -> None:
        self.board.add(self.loss_chart, "eval", step, eval_loss)

    def mark_nonfinite(self, e: ev.NonFiniteStep) -> None:
        self.board.flush()  # the raw loss up to here, for the cross
        self.nan_marks.add(e.step, "NaN" if e.loss is None or e.loss != e.loss else "Inf", self.loss_chart.series["raw"])
