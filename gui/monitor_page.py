"""The monitor page: live charts of a run (or a replayed one), progress, ETA and a log.

It only displays: `handle_event(dict)` takes core's events as they arrive from the worker,
`load_history` replays a run folder through the same code path.
"""

from __future__ import annotations

import time
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont, QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui import fmt
from qlora_studio.gui.charts import PALETTE, ChartBoard, LiveChart, SmoothedSeries

LOG_LINES = 5000


class Stat(QFrame):
    """A small labelled number in the header."""

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("stat")
        self.title = QLabel(title)
        self.title.setObjectName("statTitle")
        self.value = QLabel("–")
        self.value.setObjectName("statValue")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 4, 10, 4)
        layout.setSpacing(0)
        layout.addWidget(self.title)
        layout.addWidget(self.value)

    def set(self, text: str, tooltip: str = "") -> None:
        self.value.setText(text)
        if tooltip:
            self.setToolTip(tooltip)


class MonitorPage(QWidget):
    smoothing_changed = Signal(float)
    log_scale_changed = Signal(bool)
    history_loaded = Signal(str)  # a replayed run's name

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.board = ChartBoard(self)
        self.run_dir: str | None = None
        self.status = "idle"
        self.total_steps = 0
        self.step = 0
        self.live = False
        self.paused = False
        self.capacity_gb: float | None = None
        self.predicted_peak_gb: float | None = None
        self.measured_peak_gb: float | None = None
        self.on_cuda = False
        self._elapsed_at_step = 0.0
        self._wall_at_step: float | None = None
        self._rate_origin: tuple[int, float] | None = None  # (step, elapsed) at the first step of this session

        # ---- header ----
        self.title = QLabel("No run yet")
        self.title.setObjectName("runTitle")
        self.badge = QLabel("idle")
        self.badge.setObjectName("statusBadge")
        self.badge.setProperty("status", "idle")
        self.device = QLabel("")
        self.device.setObjectName("deviceLabel")
        self.progress = QProgressBar()
        self.progress.setObjectName("runProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("no run yet")
        self.progress.setTextVisible(True)
        self.stat_elapsed = Stat("Elapsed")
        self.stat_eta = Stat("ETA")
        self.stat_loss = Stat("Loss")
        self.stat_eval = Stat("Eval loss")
        self.stat_tps = Stat("Tokens/s")
        self.stat_vram = Stat("Peak VRAM")

        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addWidget(self.badge)
        head.addStretch(1)
        head.addWidget(self.device)
        stats = QHBoxLayout()
        stats.setSpacing(6)
        stats.addWidget(self.progress, 3)
        for stat in (self.stat_elapsed, self.stat_eta, self.stat_loss, self.stat_eval, self.stat_tps, self.stat_vram):
            stats.addWidget(stat)

        # ---- chart options ----
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setObjectName("smoothingSlider")
        self.smoothing.setRange(0, 99)
        self.smoothing.setValue(60)
        self.smoothing.setFixedWidth(160)
        self.smoothing.setToolTip("Exponential moving average of the training loss (0 = raw)")
        self.smoothing_value = QLabel("0.60")
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setObjectName("logScaleCheck")
        self.log_scale.setToolTip("Show the loss on a logarithmic axis")
        options = QHBoxLayout()
        options.addWidget(QLabel("Loss smoothing"))
        options.addWidget(self.smoothing)
        options.addWidget(self.smoothing_value)
        options.addSpacing(16)
        options.addWidget(self.log_scale)
        options.addStretch(1)

        # ---- charts: created once, fed by setData ----
        self.loss_chart = LiveChart("Loss", "loss")
        self.loss_chart.add_legend()
        self.loss_chart.add_curve("raw", "train (raw)", PALETTE["loss_raw"], 1.0)
        self.smoothed = SmoothedSeries(0.6)
        self.loss_chart.add_curve("train", "train (smoothed)", PALETTE["loss"], 2.0, series=self.smoothed)
        self.loss_chart.add_curve("eval", "eval", PALETTE["eval"], 1.8, symbol="o")
        self.lr_chart = LiveChart("Learning rate")
        self.lr_chart.add_curve("lr", "learning rate", PALETTE["lr"])
        self.grad_chart = LiveChart("Grad norm")
        self.grad_chart.add_curve("grad", "grad norm", PALETTE["grad"])
        self.tps_chart = LiveChart("Tokens / s")
        self.tps_chart.add_curve("tps", "tokens/s", PALETTE["tps"])
        self.vram_chart = LiveChart("VRAM", "GiB")
        self.vram_chart.add_legend()
        self.vram_chart.add_curve("allocated", "allocated", PALETTE["allocated"])
        self.vram_chart.add_curve("reserved", "reserved", PALETTE["reserved"])
        self.vram_chart.add_curve("device", "whole device (NVML)", PALETTE["device"], 1.2, style=Qt.PenStyle.DashLine)
        self.capacity_line = self._hline(PALETTE["capacity"], Qt.PenStyle.SolidLine, "card {value:.1f} GiB", 0.02)
        self.predicted_line = self._hline(PALETTE["predicted"], Qt.PenStyle.DashLine, "predicted peak {value:.2f} GiB",
                                          0.35)
        self.peak_line = self._hline("#0f172a", Qt.PenStyle.DotLine, "measured peak {value:.2f} GiB", 0.7)
        self.charts = [self.loss_chart, self.vram_chart, self.lr_chart, self.grad_chart, self.tps_chart]
        for chart in self.charts[1:]:
            chart.setXLink(self.loss_chart)

        grid = QGridLayout()
        grid.setSpacing(6)
        grid.addWidget(self.loss_chart, 0, 0, 2, 1)
        grid.addWidget(self.vram_chart, 0, 1)
        grid.addWidget(self.tps_chart, 0, 2)
        grid.addWidget(self.lr_chart, 1, 1)
        grid.addWidget(self.grad_chart, 1, 2)
        grid.setColumnStretch(0, 4)
        grid.setColumnStretch(1, 3)
        grid.setColumnStretch(2, 3)
        charts = QWidget()
        charts.setLayout(grid)

        self.log = QPlainTextEdit()
        self.log.setObjectName("runLog")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        mono.setPointSize(9)
        self.log.setFont(mono)
        self.log.setPlaceholderText("Warnings, checkpoints and settings changes appear here.")

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(charts)
        self.splitter.addWidget(self.log)
        self.splitter.setStretchFactor(0, 5)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([600, 150])
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addLayout(head)
        layout.addLayout(stats)
        layout.addLayout(options)
        layout.addWidget(self.splitter, 1)

        self.smoothing.valueChanged.connect(self._on_smoothing)
        self.log_scale.toggled.connect(self._on_log_scale)
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)
        self.vram_chart.set_message("VRAM appears here during a GPU run")

    def _hline(self, color: str, style, label: str, position: float) -> pg.InfiniteLine:
        options = {"position": position, "color": color, "anchors": [(0, 1), (0, 1)]}
        line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(color, width=1.4, style=style), label=label,
                               labelOpts=options)
        line.hide()
        self.vram_chart.getPlotItem().addItem(line)
        return line

    # ---- options ----
    def set_smoothing(self, weight: float) -> None:
        self.smoothing.setValue(int(round(weight * 100)))

    def _on_smoothing(self, value: int) -> None:
        weight = value / 100
        self.smoothing_value.setText(f"{weight:.2f}")
        self.smoothed.rebuild(self.loss_chart.series["raw"], weight)
        self.board.touch(self.loss_chart, "train")
        self.smoothing_changed.emit(weight)

    def _on_log_scale(self, on: bool) -> None:
        self.loss_chart.getPlotItem().setLogMode(False, on)
        self.log_scale_changed.emit(on)

    def set_gpu_capacity(self, total_gb: float | None) -> None:
        self.capacity_gb = total_gb
        self._show_lines()

    # ---- a run begins ----
    def reset(self, title: str = "", predicted_peak_gb: float | None = None) -> None:
        for chart in self.charts:
            chart.clear_data()
        self.smoothed.rebuild(self.loss_chart.series["raw"])
        self.log.clear()
        self.run_dir = None
        self.total_steps = self.step = 0
        self.measured_peak_gb = None
        self.predicted_peak_gb = predicted_peak_gb
        self.on_cuda = False
        self._rate_origin = None
        self._wall_at_step = None
        self._elapsed_at_step = 0.0
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("loading…")
        for stat in (self.stat_elapsed, self.stat_eta, self.stat_loss, self.stat_eval, self.stat_tps, self.stat_vram):
            stat.set("–")
        self.title.setText(title or "Starting…")
        self.device.setText("")
        self._show_lines()

    def begin_live(self, title: str, predicted_peak_gb: float | None = None) -> None:
        self.reset(title, predicted_peak_gb)
        self.live = True
        self.paused = False
        self._set_status("loading")
        self.append_log("info", "Loading the model and the data…")
        self._clock.start()

    # ---- events ----
    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_run_started(self, e: dict[str, Any]) -> None:
        self.run_dir = e.get("run_dir")
        self.total_steps = int(e.get("total_steps") or 0)
        self.step = int(e.get("start_step") or 0)
        self.on_cuda = str(e.get("device", "")).startswith("cuda")
        if e.get("predicted_peak_gb") is not None:
            self.predicted_peak_gb = e["predicted_peak_gb"]
        name = (self.run_dir or "").rstrip("/").split("/")[-1]
        self.title.setText(name or "Run")
        q = e.get("quantization") or {}
        quant = q.get("mode", "")
        if quant == "4bit":
            quant = f"4-bit {q.get('quant_type', '')}{' + double quant' if q.get('double_quant') else ''}"
        self.device.setText(
            f"{e.get('device_name', '')} · {quant} · {fmt.params(e.get('trainable_params'))} trainable of "
            f"{fmt.params(e.get('total_params'))} · {e.get('train_rows', 0):,} train / "
            f"{e.get('eval_rows', 0):,} eval rows")
        self.progress.setRange(0, max(self.total_steps, 1))
        self.progress.setValue(self.step)
        self.progress.setFormat("step %v / %m")
        self._set_status("running")
        resumed = f" from step {self.step}" if self.step else ""
        self.append_log("info", f"Training{resumed} on {e.get('device_name', e.get('device', ''))}: "
                                f"{self.total_steps} steps, run folder {self.run_dir}")
        self.vram_chart.set_message("" if self.on_cuda else "CPU run: no VRAM to measure")
        self._show_lines()

    def _on_step(self, e: dict[str, Any]) -> None:
        self.add_step(e["metrics"])
        total = int(e.get("total_steps") or self.total_steps)
        if total != self.total_steps:
            self.total_steps = total
            self.progress.setRange(0, max(total, 1))

    def add_step(self, m: dict[str, Any]) -> None:
        """One metrics.jsonl record onto every chart (live and replay alike)."""
        step = int(m["step"])
        self.step = step
        board = self.board
        loss = m.get("loss")
        if loss is not None:
            board.add(self.loss_chart, "raw", step, loss)
            self.smoothed.push(step, loss)
            board.touch(self.loss_chart, "train")
            self.stat_loss.set(fmt.loss(loss))
        board.add(self.lr_chart, "lr", step, m.get("learning_rate"))
        board.add(self.grad_chart, "grad", step, m.get("grad_norm"))
        board.add(self.tps_chart, "tps", step, m.get("tokens_per_s"))
        if m.get("vram_allocated_gb") is not None:
            self.on_cuda = True
            board.add(self.vram_chart, "allocated", step, m.get("vram_allocated_gb"))
            board.add(self.vram_chart, "reserved", step, m.get("vram_reserved_gb"))
            board.add(self.vram_chart, "device", step, m.get("vram_device_used_gb"))
            peak = m.get("vram_peak_gb")
            if peak is not None and (self.measured_peak_gb is None or peak > self.measured_peak_gb):
                self.measured_peak_gb = peak
                self._show_lines()
        if m.get("tokens_per_s") is not None:
            self.stat_tps.set(f"{m['tokens_per_s']:,.0f}")
        elapsed = m.get("elapsed_s")
        if elapsed is not None:
            self._elapsed_at_step = float(elapsed)
            self._wall_at_step = time.monotonic()
            if self._rate_origin is None:
                self._rate_origin = (step, float(elapsed))
        self.progress.setValue(min(step, self.progress.maximum()))
        self._update_clock()

    def _on_eval(self, e: dict[str, Any]) -> None:
        self.add_eval(e["step"], e["eval_loss"])

    def add_eval(self, step: int, eval_loss: float) -> None:
        self.board.add(self.loss_chart, "eval", step, eval_loss)
        self.stat_eval.set(fmt.loss(eval_loss))

    def _on_checkpoint(self, e: dict[str, Any]) -> None:
        self.append_log("checkpoint", f"step {e['step']}: checkpoint saved ({e.get('reason', '')}) → {e['path']}")

    def _on_paused(self, e: dict[str, Any]) -> None:
        self.paused = True
        self._set_status("paused")
        self.append_log("info", f"Paused after step {e['step']}")

    def _on_resumed(self, e: dict[str, Any]) -> None:
        self.paused = False
        self._wall_at_step = time.monotonic()
        self._set_status("running")
        self.append_log("info", f"Resumed at step {e['step']}")

    def _on_settings_changed(self, e: dict[str, Any]) -> None:
        self.append_log("change", e.get("message") or f"settings changed: {e.get('changes')}")
        if e.get("reason") == "extended" and "max_steps" in (e.get("changes") or {}):
            self.total_steps = int(e["changes"]["max_steps"][1])
            self.progress.setRange(0, max(self.total_steps, 1))
        self._rate_origin = None  # a new segment: measure speed afresh

    def _on_warning(self, e: dict[str, Any]) -> None:
        self.append_log("warning", e["message"])

    def _on_finished(self, e: dict[str, Any]) -> None:
        self.live = False
        self._clock.stop()
        self._set_status(e.get("status", "finished"))
        if e.get("elapsed_s") is not None:
            self.stat_elapsed.set(fmt.duration(e["elapsed_s"]))
        self.stat_eta.set("–")
        peak = e.get("peak_vram_gb")
        if peak is not None:
            self.measured_peak_gb = peak
            self._show_lines()
        word = "Finished" if e.get("status") == "finished" else "Stopped"
        adapter = f"; adapter in {e['adapter_dir']}" if e.get("adapter_dir") else ""
        self.append_log("info", f"{word} at step {e['step']} of {e['total_steps']}, "
                                f"final loss {fmt.loss(e.get('final_loss'))}{adapter}")
        self.board.flush()

    def _on_failed(self, e: dict[str, Any]) -> None:
        self.live = False
        self._clock.stop()
        self._set_status("failed")
        self.stat_eta.set("–")
        self.append_log("error", f"Failed: {e['reason']}")
        self.board.flush()

    def end_live(self, status: str) -> None:
        """The worker is done (also when it ended without a finished/failed event)."""
        self.live = False
        self._clock.stop()
        if self.status in ("loading", "running", "paused", "stopping"):
            self._set_status(status)
        self.board.flush()

    def mark_stopping(self) -> None:
        self._set_status("stopping")
        self.append_log("info", "Stopping after this step; saving a checkpoint…")

    # ---- replay ----
    def prefill(self, history: dict[str, Any], upto_step: int) -> None:
        """A resumed run: draw the steps before its checkpoint, so its curves continue."""
        for record in history.get("metrics", []):
            if "loss" in record and int(record["step"]) <= upto_step:
                self.add_step(record)
        for record in history.get("evals", []):
            if int(record["step"]) <= upto_step:
                self.add_eval(int(record["step"]), float(record["eval_loss"]))
        self._rate_origin = None  # speed and ETA are measured on this session's steps

    def load_history(self, name: str, history: dict[str, Any]) -> None:
        """Show a finished (or interrupted) run's charts from its folder."""
        status = history.get("status") or {}
        self.reset(name)
        self.live = False
        started = history.get("run_started") or {}
        if started:
            self._on_run_started({**started, "start_step": 0})
        self.total_steps = int(status.get("total_steps") or self.total_steps or 0)
        self.progress.setRange(0, max(self.total_steps, 1))
        self.progress.setFormat("step %v / %m")
        for record in history.get("metrics", []):
            if "loss" in record:
                self.add_step(record)
        for record in history.get("evals", []):
            self.add_eval(int(record["step"]), float(record["eval_loss"]))
        self.title.setText(name)
        self._set_status(status.get("status", "finished"))
        self.stat_elapsed.set(fmt.duration(status.get("elapsed_s")))
        self.stat_eta.set("–")
        if status.get("peak_vram_gb") is not None:
            self.measured_peak_gb = status["peak_vram_gb"]
        self._show_lines()
        self.append_log("info", f"Replaying {history.get('path', name)}: {len(history.get('metrics', []))} steps")
        self.board.flush()
        self.history_loaded.emit(name)

    # ---- display helpers ----
    def _set_status(self, status: str) -> None:
        self.status = status
        self.badge.setText(status)
        self.badge.setProperty("status", status)
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)

    def _tick(self) -> None:
        self._update_clock()

    def _update_clock(self) -> None:
        elapsed = self._elapsed_at_step
        if self.live and not self.paused and self._wall_at_step is not None:
            elapsed += time.monotonic() - self._wall_at_step
        if self.live or self.status in ("running", "paused"):
            self.stat_elapsed.set(fmt.duration(elapsed))
        origin = self._rate_origin
        if origin is not None and self.step > origin[0] and self.total_steps:
            per_step = (self._elapsed_at_step - origin[1]) / (self.step - origin[0])
            remaining = max(self.total_steps - self.step, 0) * per_step
            self.stat_eta.set(fmt.duration(remaining), f"{per_step:.2f} s per step")

    def _show_lines(self) -> None:
        def show(line: pg.InfiniteLine, value: float | None, template: str) -> None:
            if value is None:
                line.hide()
                return
            line.setPos(value)
            line.label.setFormat(template.format(value=value))
            line.show()

        show(self.capacity_line, self.capacity_gb if self.on_cuda else None, "card {value:.1f} GiB")
        show(self.predicted_line, self.predicted_peak_gb, "predicted peak {value:.2f} GiB")
        show(self.peak_line, self.measured_peak_gb, "measured peak {value:.2f} GiB")
        if self.measured_peak_gb is not None:
            measured = f"{self.measured_peak_gb:.2f} GiB"
        else:
            measured = "–" if self.on_cuda else "CPU"
        predicted = f"predicted {self.predicted_peak_gb:.2f} GiB" if self.predicted_peak_gb is not None else ""
        self.stat_vram.set(measured + (f" / {predicted}" if predicted else ""),
                           "Measured peak allocated VRAM / the memory panel's prediction for this config")

    def append_log(self, kind: str, text: str) -> None:
        colors = {"warning": "#b45309", "error": "#b91c1c", "checkpoint": "#15803d", "change": "#7c3aed"}
        stamp = time.strftime("%H:%M:%S")
        color = colors.get(kind, "#334155")
        tag = {"warning": "warning", "error": "error", "checkpoint": "saved", "change": "changed"}.get(kind, "")
        prefix = f"<b>{tag}</b> " if tag else ""
        self.log.appendHtml(f"<span style='color:#94a3b8'>{stamp}</span> "
                            f"<span style='color:{color}'>{prefix}{fmt.escape(text)}</span>")
        self.log.moveCursor(QTextCursor.MoveOperation.End)

    def log_text(self) -> str:
        return self.log.toPlainText()
