"""Live charts that stay smooth at 100k points and cost the training thread (almost) nothing.

Curves are created once and fed with `setData` from growable numpy buffers; pyqtgraph draws
them with peak downsampling and clip-to-view. The GUI thread shares the interpreter (the GIL)
with the thread that trains, so drawing is paced: `ChartBoard` redraws only the curves whose
data changed, only on charts that are visible, and no more often than its frame budget allows
(the GUI thread time of the last frames, setData and painting, measured; at most 10 frames a
second). Axes snap to nice ranges and are painted from a cache (`axes.py`), so a frame that does
not move the axes repaints only the curves.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QTextOption

from qlora_studio.gui.widgets.axes import IntegerAxis, SteadyViewBox, ValueAxis

REDRAW_MS = 100  # the fastest frame rate: 10 a second
# Live frames may take this share of the GUI thread's time: the frame interval stretches to the
# measured cost of a frame divided by it (a 5 ms frame: 2 a second), up to MAX_FRAME_MS.
FRAME_BUDGET = 0.01
MAX_FRAME_MS = 2000
# Antialiased paths cost ~3x to rasterize; past this many points a curve is drawn without it,
# so a 100k-step run repaints all charts in well under one 100 ms frame. Pens are 1 px unless a
# curve is smooth (smoothed loss, VRAM): see add_curve.
ANTIALIAS_MAX_POINTS = 5000

PALETTE = {
    "loss": "#2563eb",
    "loss_raw": "#93c5fd",
    "eval": "#ea580c",
    "lr": "#7c3aed",
    "grad": "#0d9488",
    "tps": "#16a34a",
    "allocated": "#2563eb",
    "reserved": "#7c3aed",
    "device": "#64748b",
    "capacity": "#dc2626",
    "predicted": "#ea580c",
}
OVERLAY_COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#475569"]


def configure_pyqtgraph() -> None:
    pg.setConfigOptions(antialias=True, background="w", foreground="#334155")


class Series:
    """x/y points in buffers that double when full: appends are O(1) amortized and `setData`
    gets views, never a list converted point by point."""

    def __init__(self, capacity: int = 1024):
        self._x = np.empty(capacity)
        self._y = np.empty(capacity)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self._x):
            self._grow(self.n * 2)
        self._x[self.n] = x
        self._y[self.n] = y
        self.n += 1

    def extend(self, xs: Iterable[float], ys: Iterable[float]) -> None:
        xs = np.asarray(list(xs) if not isinstance(xs, np.ndarray) else xs, dtype=float)
        ys = np.asarray(list(ys) if not isinstance(ys, np.ndarray) else ys, dtype=float)
        need = self.n + len(xs)
        if need > len(self._x):
            self._grow(max(need, len(self._x) * 2))
        self._x[self.n:need] = xs
        self._y[self.n:need] = ys
        self.n = need

    def _grow(self, capacity: int) -> None:
        for name in ("_x", "_y"):
            old = getattr(self, name)
            new = np.empty(capacity)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def clear(self) -> None:
        self.n = 0

    @property
    def x(self) -> np.ndarray:
        return self._x[: self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self.n]

    def __len__(self) -> int:
        return self.n


class SmoothedSeries(Series):
    """A debiased exponential moving average of another series (TensorBoard's smoothing):
    updated point by point while training, recomputed in one vectorized pass when the weight
    changes."""

    def __init__(self, weight: float = 0.6):
        super().__init__()
        self.weight = weight
        self._acc = 0.0
        self._count = 0

    def push(self, x: float, y: float) -> None:
        w = self.weight
        self._acc = self._acc * w + (1 - w) * y
        self._count += 1
        self.append(x, self._acc / (1 - w**self._count) if w > 0 else y)

    def rebuild(self, source: Series, weight: float | None = None) -> None:
        import pandas as pd  # installed with datasets; its ewm(adjust=True) is exactly the debiased EMA

        if weight is not None:
            self.weight = weight
        w = self.weight
        self.clear()
        self._acc, self._count = 0.0, 0
        if not len(source):
            return
        y = source.y
        if w <= 0:
            smoothed, self._acc = y.copy(), float(y[-1])
        else:
            smoothed = pd.Series(y).ewm(alpha=1 - w, adjust=True).mean().to_numpy()
            self._acc = float(smoothed[-1] * (1 - w ** len(y)))
        self._count = len(y)
        self.extend(source.x, smoothed)


class LiveChart(pg.PlotWidget):
    """One plot whose curves are made once (`add_curve`) and updated through `Series`."""

    def __init__(self, title: str, y_label: str = "", parent=None):
        super().__init__(parent=parent, viewBox=SteadyViewBox(),
                         axisItems={"bottom": IntegerAxis("bottom"), "left": ValueAxis("left")})
        self.setObjectName(f"chart-{title.lower().replace(' ', '-')}")
        item = self.getPlotItem()
        item.setTitle(f"<span style='font-size:10pt;font-weight:600'>{title}</span>")
        item.showGrid(x=True, y=True, alpha=0.15)
        item.setLabel("bottom", "step")
        if y_label:
            item.setLabel("left", y_label)
        item.getAxis("left").setWidth(52)
        item.setDownsampling(auto=True, mode="peak")
        item.setClipToView(True)
        item.setMenuEnabled(True)
        self.setMinimumHeight(150)
        self.legend: pg.LegendItem | None = None
        self.series: dict[str, Series] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._dotted: set[str] = set()  # curves of one point, drawn as a dot: a line needs two
        self._plain: dict[str, str] = {}  # curves without symbols of their own: key -> color
        self.board: ChartBoard | None = None  # the board that paces this chart's frames (set by it)
        self._message = pg.TextItem("", color="#64748b", anchor=(0.5, 0.5))
        self._message.setZValue(10)
        # a message of several lines stays centred (a narrow chart at 1024 px cut one long line)
        self._message.textItem.document().setDefaultTextOption(QTextOption(Qt.AlignmentFlag.AlignHCenter))
        item.addItem(self._message, ignoreBounds=True)
        item.getViewBox().sigResized.connect(self._place_message)
        item.getViewBox().sigRangeChanged.connect(self._place_message)

    def add_legend(self) -> None:
        self.legend = self.getPlotItem().addLegend(offset=(-8, 8), labelTextSize="8pt")
        self.legend.setBrush(pg.mkBrush(255, 255, 255, 210))

    def add_curve(self, key: str, name: str, color: str, width: float = 1.0, *, symbol: str | None = None,
                  series: Series | None = None, style=None) -> pg.PlotDataItem:
        pen = pg.mkPen(color, width=width) if style is None else pg.mkPen(color, width=width, style=style)
        kwargs: dict[str, Any] = {"pen": pen, "name": name}
        if symbol:
            kwargs.update(symbol=symbol, symbolSize=6, symbolBrush=color, symbolPen=None)
        else:
            self._plain[key] = color
        curve = self.getPlotItem().plot([], [], **kwargs)
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
        curve.setSkipFiniteCheck(True)
        if width > 1:
            # Qt strokes a wide polyline through a path stroker that is 20x slower than thin lines
            # on noisy data (16 ms for 300 points); as separate segments it costs a few ms at most.
            curve.curve.setSegmentedLineMode("on")
        self.series[key] = series if series is not None else Series()
        self.curves[key] = curve
        return curve

    def remove_curve(self, key: str) -> None:
        curve = self.curves.pop(key, None)
        self.series.pop(key, None)
        self._plain.pop(key, None)
        self._dotted.discard(key)
        if curve is not None:
            if self.legend is not None:
                self.legend.removeItem(curve)
            self.getPlotItem().removeItem(curve)
            # freed now on the GUI thread, not by a gc.collect() some library runs on another one
            curve.deleteLater()

    def redraw(self, keys: Iterable[str] | None = None) -> None:
        for key in (self.curves if keys is None else keys):
            s, curve = self.series[key], self.curves[key]
            curve.setData(s.x, s.y, antialias=len(s) <= ANTIALIAS_MAX_POINTS)
            dot = len(s) == 1 and key in self._plain
            if dot != (key in self._dotted):  # a 1-step run shows its point, not nothing
                if dot:
                    curve.setSymbolSize(7)
                    curve.setSymbolBrush(self._plain[key])
                    curve.setSymbolPen(None)
                    self._dotted.add(key)
                else:
                    self._dotted.discard(key)
                curve.setSymbol("o" if dot else None)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        began = time.thread_time()
        super().paintEvent(event)
        if self.board is not None:
            self.board.spent += time.thread_time() - began

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        if self.board is not None:
            self.board.shown(self)

    def clear_data(self) -> None:
        for s in self.series.values():
            s.clear()
        self.redraw()

    def set_message(self, text: str) -> None:
        """A centered note instead of data (e.g. no GPU to measure VRAM on); the legend steps
        aside, since it has nothing to explain then."""
        self._message.setText(text)
        self._message.setTextWidth(self._message.textItem.document().idealWidth())  # so its lines centre
        if self.legend is not None:
            self.legend.setVisible(not text)
        self._place_message()

    def _place_message(self, *_: Any) -> None:
        if not self._message.toPlainText():
            return
        (x0, x1), (y0, y1) = self.getPlotItem().getViewBox().viewRange()
        self._message.setPos((x0 + x1) / 2, (y0 + y1) / 2)


class ChartBoard(QObject):
    """Buffers points for many charts and redraws the changed curves of the visible ones, paced
    so that drawing takes at most `budget` of the GUI thread's time.

    `flush()` draws now (a run ended, a replay loaded); otherwise a change schedules one frame (a
    single-shot timer: no wake-ups while nothing changes), no sooner than the time the last frames
    cost divided by the budget after the last one (at least `interval_ms`, at most
    `max_interval_ms`). A chart that is hidden (another page) keeps its changes until it is shown.
    """

    redrawn = Signal()

    def __init__(self, parent: QObject | None = None, interval_ms: int = REDRAW_MS, budget: float = FRAME_BUDGET,
                 max_interval_ms: int = MAX_FRAME_MS):
        super().__init__(parent)
        self._dirty: dict[LiveChart, set[str]] = {}
        self.budget = budget
        self.min_interval = interval_ms / 1000
        self.max_interval = max(max_interval_ms, interval_ms) / 1000
        self.spent = 0.0  # GUI-thread seconds spent on charts (setData and painting) since the last frame
        self.frame_cost = 0.0  # of the last frames, smoothed
        self._last_frame = -1e9  # long ago
        self.auto = True  # frames follow changes by themselves (tests drive them by hand: stop())
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.flush)
        self.frames = 0

    def touch(self, chart: LiveChart, key: str) -> None:
        chart.board = self
        self._dirty.setdefault(chart, set()).add(key)
        if self.auto and not self.timer.isActive() and chart.isVisible():
            wait = self._last_frame + self.interval - time.monotonic()
            self.timer.start(max(int(wait * 1000), 0))

    def forget(self, chart: LiveChart) -> None:
        """A chart about to be deleted: nothing of it is drawn any more."""
        self._dirty.pop(chart, None)

    def stop(self) -> None:
        """No more frames by timer: only `flush()` draws."""
        self.auto = False
        self.timer.stop()

    def add(self, chart: LiveChart, key: str, x: float, y: float | None) -> None:
        if y is None or not np.isfinite(y):
            return
        chart.series[key].append(x, y)
        self.touch(chart, key)

    @property
    def pending(self) -> bool:
        return bool(self._dirty)

    @property
    def interval(self) -> float:
        """Seconds between live frames now: the last frames' cost over the budget, clamped."""
        return min(max(self.frame_cost / self.budget, self.min_interval), self.max_interval)

    def flush(self) -> None:
        """Redraw the changed curves of the visible charts now."""
        visible = {chart: keys for chart, keys in self._dirty.items() if chart.isVisible()}
        if not visible:
            return
        began = time.thread_time()
        for chart, keys in visible.items():
            del self._dirty[chart]
            chart.redraw(keys)
        # this frame's setData, plus the painting of the frame before (painting follows a frame)
        cost = self.spent + time.thread_time() - began
        self.spent = 0.0
        self.frame_cost = cost if self.frames == 0 else 0.7 * self.frame_cost + 0.3 * cost
        self._last_frame = time.monotonic()
        self.frames += 1
        self.redrawn.emit()

    def shown(self, chart: LiveChart) -> None:
        """A chart came into view: draw what it missed while hidden."""
        keys = self._dirty.pop(chart, None)
        if keys:
            chart.redraw(keys)


class LossChart(LiveChart):
    """Training loss (raw and smoothed) and eval loss, on a linear or log axis."""

    def __init__(self, parent=None):
        super().__init__("Loss", "loss", parent=parent)
        self.add_legend()
        self.add_curve("raw", "train (raw)", PALETTE["loss_raw"], 1.0)
        self.smoothed = SmoothedSeries(0.6)
        self.add_curve("train", "train (smoothed)", PALETTE["loss"], 2.0, series=self.smoothed)
        self.add_curve("eval", "eval", PALETTE["eval"], 1.8, symbol="o")

    def set_smoothing(self, weight: float) -> None:
        self.smoothed.rebuild(self.series["raw"], weight)

    def set_log_scale(self, on: bool) -> None:
        self.getPlotItem().setLogMode(False, on)
