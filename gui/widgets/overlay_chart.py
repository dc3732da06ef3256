"""The runs page's comparison chart: the loss curves of the selected runs on one plot."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QWidget

from qlora_studio.gui.widgets.charts import OVERLAY_COLORS, LiveChart, SmoothedSeries

MAX_OVERLAY = len(OVERLAY_COLORS)


class OverlayChart(LiveChart):
    def __init__(self, parent: QWidget | None = None):
        super().__init__("Loss: selected runs (smoothed)", "loss", parent=parent)
        self.setObjectName("overlayChart")
        self.add_legend()
        self.runs: list[str] = []  # the folders of the runs drawn

    def show_runs(self, runs: list[Any]) -> None:
        """Each run's smoothed training loss, read from its folder; with one run, its eval loss too."""
        from qlora_studio.core.runs.store import RunFolder

        for key in list(self.curves):
            self.remove_curve(key)
        self.runs = []
        for i, run in enumerate(runs):
            color = OVERLAY_COLORS[i % len(OVERLAY_COLORS)]
            history = RunFolder(run.path).history()
            key = str(run.path)
            method = run.method  # a DPO loss is not an SFT loss: the legend says which it is
            label = f"{run.name} · {run.quantization} · {run.lora}" + (f" · {method.upper()}" if method != "sft" else "")
            self.add_curve(key, label, color, 2.0, series=SmoothedSeries(0.6))
            series = self.series[key]
            for m in history.metrics:
                series.push(m.step, m.loss)
            self.runs.append(key)
            if len(runs) == 1:
                self.add_curve(key + "#eval", f"{run.name} · eval", "#ea580c", 1.6, symbol="o")
                self.series[key + "#eval"].extend([e.step for e in history.evals],
                                                  [e.eval_loss for e in history.evals])
        self.redraw()
        self.getPlotItem().enableAutoRange()
        self.set_message("" if runs else "Select one or more runs")
