"""The monitor's charts of a method past SFT (core's METHOD_CHARTS): DPO's rewards and preference
accuracy, KTO's KL, GRPO's reward, reward by preset and answer length..., each with what going the
right way looks like written under it. The charts of a run are made when its method is known, their
curves once (GRPO's per-reward curves when a reward first reports), and they are fed through the
monitor's `ChartBoard` like every other chart: setData, paced redraws.

They are not x-linked to the loss chart: pyqtgraph lines up linked plots that share screen columns
pixel by pixel, so a narrower chart under the loss chart would show only part of the steps."""

from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from qlora_studio.core.training.methods import METHOD_CHARTS, Chart, preset_curves
from qlora_studio.gui.widgets.charts import OVERLAY_COLORS, ChartBoard, LiveChart

# chosen green, rejected red, their margin blue; other curves take the overlay colors in order
COLORS = {"rewards/chosen": "#16a34a", "rewards/rejected": "#dc2626", "rewards/margins": "#2563eb"}
HINT_HEIGHT = 190  # what the row asks for: about the height of a chart above it on a 1000-pixel screen
LEGEND_MARGIN = 6  # pixels from the plot's top left
LEGEND_SPACING = 8
MIN_HEIGHT = 80  # a third row of charts: lower than the others' (a 700-pixel screen holds all three rows)


def curve_name(key: str) -> str:
    """A logged key as its legend says it: TRL's name without its group (rewards/margins: margins)."""
    return key.rsplit("/", 1)[-1]


class SteadyChart(LiveChart):
    """A chart that asks its layout for a fixed height: a QGraphicsView's own hint is its current
    size, so a row of them kept all it ever got, and the rows above shrank to their least height."""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(320, HINT_HEIGHT)


class MethodChart(QWidget):
    """One of a method's charts with its caption. A per-reward chart (GRPO's "Reward by preset")
    draws one curve per reward, named as the run names them."""

    def __init__(self, spec: Chart, parent: QWidget | None = None):
        super().__init__(parent)
        self.spec = spec
        self.chart = SteadyChart(spec.title)
        self.chart.setMinimumHeight(MIN_HEIGHT)
        self.chart.getPlotItem().getAxis("bottom").showLabel(False)  # steps, as on the charts above: room for the curves
        if spec.per_reward or len(spec.keys) > 1:  # one row at the top left, where rising curves start low (a low plot has no room below)
            self.chart.legend = self.chart.getPlotItem().addLegend(offset=(LEGEND_MARGIN, 2), labelTextSize="8pt",
                                                                   colCount=len(spec.keys) or 1, verSpacing=-6,
                                                                   horSpacing=LEGEND_SPACING)
            self.chart.legend.setBrush(pg.mkBrush(255, 255, 255, 210))
        for i, key in enumerate(spec.keys):
            self._add_curve(key, curve_name(key), COLORS.get(key, OVERLAY_COLORS[i % len(OVERLAY_COLORS)]))
        self.caption = QLabel(spec.better)
        self.caption.setObjectName("hint")
        self.caption.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.chart, 1)
        layout.addWidget(self.caption)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        # a caption wrapped onto two lines keeps them: the chart gives way, not the caption's text
        lines = self.caption.heightForWidth(self.width())
        if lines > 0 and lines != self.caption.minimumHeight():
            self.caption.setMinimumHeight(lines)
        self._fit_legend()

    def _fit_legend(self) -> None:
        """As many legend entries side by side as the plot's width holds (a narrow chart stacks them)."""
        legend = self.chart.legend
        if legend is None or not legend.items:
            return
        widest = max(sample.boundingRect().width() + label.boundingRect().width() for sample, label in legend.items)
        room = self.width() - self.chart.getPlotItem().getAxis("left").width() - 2 * LEGEND_MARGIN
        legend.setColumnCount(max(1, min(len(legend.items), int(room // (widest + LEGEND_SPACING)))))

    def _add_curve(self, key: str, name: str, color: str) -> None:
        self.chart.add_curve(key, name, color, 1.6)  # the plot's legend lists it by name
        self._fit_legend()

    def add(self, board: ChartBoard, step: int, values: dict[str, float]) -> None:
        if not self.spec.per_reward:
            for key in self.spec.keys:
                board.add(self.chart, key, step, values.get(key))
            return
        for name, value in preset_curves(values).items():
            if name not in self.chart.curves:
                self._add_curve(name, name, OVERLAY_COLORS[len(self.chart.curves) % len(OVERLAY_COLORS)])
            board.add(self.chart, name, step, value)


class MethodCharts(QWidget):
    """The row of a run's method charts; hidden for SFT (its loss says it all)."""

    def __init__(self, board: ChartBoard, parent: QWidget | None = None):
        super().__init__(parent)
        self.board = board
        self.method = "sft"
        self.panels: list[MethodChart] = []
        self.row = QHBoxLayout(self)
        self.row.setContentsMargins(0, 0, 0, 0)
        self.row.setSpacing(6)
        self.hide()

    @property
    def charts(self) -> dict[str, LiveChart]:
        """The charts shown, by title."""
        return {panel.spec.title: panel.chart for panel in self.panels}

    def show_method(self, method: str) -> None:
        """Empty charts for `method` (none for SFT, or a method without charts)."""
        for panel in self.panels:
            self.board.forget(panel.chart)
            self.row.removeWidget(panel)
            panel.hide()
            panel.deleteLater()
        self.method = method
        self.panels = [MethodChart(spec) for spec in METHOD_CHARTS.get(method, ())]
        for panel in self.panels:
            self.row.addWidget(panel, 1)
            panel.show()  # now: a widget added to a shown one would show only once the event loop runs
        self.setVisible(bool(self.panels))

    def add_step(self, step: int, values: dict[str, float]) -> None:
        for panel in self.panels:
            panel.add(self.board, step, values)


def run_method(folder) -> str:
    """The training method of a run folder, from its config.yaml, where no core RunSummary (whose
    `method` says it) is at hand, as when a run is replayed; "sft" where that cannot be read."""
    from qlora_studio.core.errors import UserError
    from qlora_studio.core.runs.store import RunFolder

    try:
        return RunFolder(Path(folder)).load_config().train.method
    except (UserError, OSError):
        return "sft"
