"""The monitor page: live charts of a run (or a replayed one), progress, ETA and a log.

It only displays: `handle_event` takes core's typed events as they arrive from the worker and
dispatches on their class; `load_history` replays a run folder through the same code path.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import singledispatchmethod

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.core.runs import events as ev
from qlora_studio.core.runs.store import RunHistory
from qlora_studio.gui import fmt
from qlora_studio.gui.widgets.charts import PALETTE, ChartBoard, LiveChart, LossChart
from qlora_studio.gui.widgets.probe_grid import ProbeGrid
from qlora_studio.gui.widgets.run_log import RunLog
from qlora_studio.gui.widgets.run_header import RunHeader
from qlora_studio.gui.widgets.step_marks import StepMarks
from qlora_studio.gui.widgets.tensorboard_hint import TensorBoardHint
from qlora_studio.gui.widgets.vram_chart import VramChart


class MonitorPage(QWidget):
    smoothing_changed = Signal(float)
    log_scale_changed = Signal(bool)
    history_loaded = Signal(str)  # a replayed run's name

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.board = ChartBoard(self)
        self._batching = 0
        self.run_dir: str | None = None
        self.header = RunHeader()
        self.tensorboard = TensorBoardHint()  # shown for runs that report to TensorBoard

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

        self.log = RunLog()
        self.probes = ProbeGrid()

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(charts)
        self.splitter.addWidget(self.probes)
        self.splitter.addWidget(self.log)
        self.splitter.setStretchFactor(0, 5)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setStretchFactor(2, 1)
        self.splitter.setSizes([520, 190, 110])
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(self.header)
        layout.addWidget(self.tensorboard)
        layout.addLayout(options)
        layout.addWidget(self.splitter, 1)

        self.smoothing.valueChanged.connect(self._on_smoothing)
        self.log_scale.toggled.connect(self._on_log_scale)

    # ---- what the header and tests read ----
    @property
    def status(self) -> str:
        return self.header.status

    @property
    def step(self) -> int:
        return self.header.step

    # ---- options ----
    def set_smoothing(self, weight: float) -> None:
        self.smoothing.setValue(int(round(weight * 100)))

    def _on_smoothing(self, value: int) -> None:
        weight = value / 100
        self.smoothing_value.setText(f"{weight:.2f}")
        self.loss_chart.set_smoothing(weight)
        self.board.touch(self.loss_chart, "train")
        self.smoothing_changed.emit(weight)

    def _on_log_scale(self, on: bool) -> None:
        self.loss_chart.set_log_scale(on)
        self.log_scale_changed.emit(on)

    def set_gpu_capacity(self, total_gb: float | None) -> None:
        self.vram_chart.capacity_gb = total_gb
        self._show_vram()

    # ---- a run begins ----
    def reset(self, title: str = "", predicted_peak_gb: float | None = None) -> None:
        for chart in self.charts:
            chart.clear_data()
        self.smoothed.rebuild(self.loss_chart.series["raw"])
        self.nan_marks.clear()
        self.log.clear()
        self.probes.clear()
        self.run_dir = None
        self.tensorboard.show_for(None, False)
        self.header.reset(title)
        self.vram_chart.reset(predicted_peak_gb)
        self._show_vram()

    def begin_live(self, title: str, predicted_peak_gb: float | None = None) -> None:
        self.reset(title, predicted_peak_gb)
        self.header.live = True
        self.header.paused = False
        self.header.set_status("loading")  # each stage before step 1 arrives as a Preparing event
        self.header.clock.start()

    def _stop_live(self, status: str) -> None:
        self.header.live = False
        self.header.clock.stop()
        self.header.set_status(status)
        self.header.stat_eta.set("–")
        if not self.header.total_steps:  # it ended before a plan was known: not "loading…" any more
            self.header.show_stage(f"{status} before the first step")

    def replay_log(self, history: RunHistory) -> None:
        """The run's recorded log lines, with the times they happened (a replay, or before a resume)."""
        for at, event in history.log:
            self.log.add_event(event, at)

    # ---- events ----
    @contextmanager
    def batch(self):
        """Events handled in a row repaint the header once, after them: a progress bar repaints
        at once on each new value, in Python's time, which the thread that trains shares."""
        self._batching += 1
        self.header.setUpdatesEnabled(False)
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching:
                self.header.setUpdatesEnabled(True)

    @singledispatchmethod
    def handle_event(self, event: ev.Event) -> None:
        """Events with nothing to show (the runs page and the window react to them)."""

    @handle_event.register
    def _(self, e: ev.RunStarted) -> None:
        self._show_started(e)
        self.log.add_event(e)

    def _show_started(self, e: ev.RunStarted) -> None:
        self.run_dir = e.run_dir
        vram = self.vram_chart
        vram.on_cuda = e.device.startswith("cuda")
        if e.predicted_peak_gb is not None:
            vram.predicted_peak_gb = e.predicted_peak_gb
        header = self.header
        header.title.setText(e.run_dir.rstrip("/").split("/")[-1] or "Run")
        header.device.setText(
            f"{e.device_name} · {e.quantization.label} · {fmt.params(e.total_params)} parameters + "
            f"{fmt.params(e.trainable_params)} trainable · {e.train_rows:,} train / {e.eval_rows:,} eval rows")
        header.set_plan(e.start_step, e.total_steps)
        header.set_status("running")
        self.tensorboard.show_for(e.run_dir, "tensorboard" in e.config.get("train", {}).get("report_to", []))
        if not e.start_step:
            self.probes.clear(e.config.get("probes"))
        vram.set_message("" if vram.on_cuda else "CPU run:\nno VRAM to measure")
        self._show_vram()

    @handle_event.register
    def _(self, e: ev.Preparing) -> None:
        if e.stage == "first_step":
            self.header.progress.setFormat(f"step %v / %m · {e.message}…")
        else:
            self.header.show_stage(f"{e.message}…" if e.total is None else e.message, e.done, e.total)
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.StepLogged) -> None:
        if e.total_steps != self.header.total_steps:
            self.header.set_plan(self.header.step, e.total_steps)
        self.add_step(e.metrics)

    @handle_event.register
    def _(self, e: ev.EvalLogged) -> None:
        self.add_eval(e.step, e.eval_loss)

    @handle_event.register
    def _(self, e: ev.ProbesAnswered) -> None:
        self.probes.add(e)
        self.append_log("checkpoint", f"{e.label}: {len(e.answers)} probes answered in {e.seconds:.1f} s (not in tokens/s)")

    @handle_event.register
    def _(self, e: ev.CheckpointSaved) -> None:
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.Paused) -> None:
        self.header.paused = True
        self.header.set_status("paused")
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.Resumed) -> None:
        self.header.paused = False
        self.header.resumed()
        self.header.set_status("running")
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.SettingsChanged) -> None:
        if "max_steps" in e.changes:
            self.header.set_plan(self.header.step, int(e.changes["max_steps"][1]))
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.NonFiniteStep) -> None:
        self._mark_nonfinite(e)
        self.log.add_event(e)

    def _mark_nonfinite(self, e: ev.NonFiniteStep) -> None:
        self.board.flush()  # the raw loss up to here, for the cross
        self.nan_marks.add(e.step, "NaN" if e.loss is None or e.loss != e.loss else "Inf", self.loss_chart.series["raw"])

    @handle_event.register
    def _(self, e: ev.Warning) -> None:
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.Finished) -> None:
        self._stop_live(e.status)
        self.header.stat_elapsed.set(fmt.duration(e.elapsed_s))
        if self.vram_chart.note_peak(e.peak_vram_gb):
            self._show_vram()
        self.log.add_event(e)
        self.board.flush()

    @handle_event.register
    def _(self, e: ev.Failed) -> None:
        self._stop_live(e.status)
        self.log.add_event(e)
        self.board.flush()

    def add_step(self, m: ev.StepMetrics) -> None:
        """One metrics.jsonl record onto every chart (live and replay alike)."""
        step, board, header = m.step, self.board, self.header
        board.add(self.loss_chart, "raw", step, m.loss)
        self.smoothed.push(step, m.loss)
        board.touch(self.loss_chart, "train")
        header.stat_loss.set(fmt.loss(m.loss))
        board.add(self.lr_chart, "lr", step, m.learning_rate)
        board.add(self.grad_chart, "grad", step, m.grad_norm)
        board.add(self.tps_chart, "tps", step, m.tokens_per_s)
        if m.vram_allocated_gb is not None:
            self.vram_chart.on_cuda = True
            board.add(self.vram_chart, "allocated", step, m.vram_allocated_gb)
            board.add(self.vram_chart, "reserved", step, m.vram_reserved_gb)
            board.add(self.vram_chart, "device", step, m.vram_device_used_gb)
            if self.vram_chart.note_peak(m.vram_peak_gb):
                self._show_vram()
        header.stat_tps.set(f"{m.tokens_per_s:,.0f}")
        header.step_done(step, m.elapsed_s)

    def add_eval(self, step: int, eval_loss: float) -> None:
        self.board.add(self.loss_chart, "eval", step, eval_loss)
        self.probes.set_eval_loss(step, eval_loss)
        self.header.stat_eval.set(fmt.loss(eval_loss))

    def end_live(self, status: str) -> None:
        """The worker is done (also when it ended without a finished/failed event)."""
        if self.status in ("loading", "running", "paused", "stopping"):
            self._stop_live(status)
        self.header.live = False
        self.header.clock.stop()
        self.board.flush()

    def mark_stopping(self) -> None:
        self.header.set_status("stopping")
        self.append_log("info", "Stopping after this step; saving a checkpoint…")

    # ---- replay ----
    def prefill(self, history: RunHistory, upto_step: int) -> None:
        """A resumed run: draw the steps before its checkpoint, so its curves continue."""
        with self.batch():
            for m in history.metrics:
                if m.step <= upto_step:
                    self.add_step(m)
            for e in history.evals:
                if e.step <= upto_step:
                    self.add_eval(e.step, e.eval_loss)
            for p in history.probes:
                if p.step <= upto_step:
                    self.probes.add(p)
        self.header.forget_rate()  # speed and ETA are measured on this session's steps

    def load_history(self, history: RunHistory) -> None:
        """Show a finished (or interrupted) run's charts from its folder."""
        name = history.path.name
        status = history.status
        self.reset(name)
        if history.started is not None:
            self._show_started(history.started)  # the header; its log line comes from the record below
        self.replay_log(history)
        self.header.set_plan(0, int(status.get("total_steps") or self.header.total_steps or 0))
        with self.batch():
            for m in history.metrics:
                self.add_step(m)
            for e in history.evals:
                self.add_eval(e.step, e.eval_loss)
            for mark in history.marks:  # their log lines came with replay_log
                self._mark_nonfinite(mark)
            for p in history.probes:
                self.probes.add(p)
        self.header.title.setText(name)
        self.tensorboard.show_for(str(history.path), False)  # the folder as it is now (runs can be moved)
        self._stop_live(status.get("status", "finished"))
        self.header.stat_elapsed.set(fmt.duration(status.get("elapsed_s")))
        self.vram_chart.note_peak(status.get("peak_vram_gb"))
        self._show_vram()
        self.append_log("info", f"Replaying {history.path}: {len(history.metrics)} steps")
        self.board.flush()
        self.history_loaded.emit(name)

    # ---- display helpers ----
    def _show_vram(self) -> None:
        self.vram_chart.show_lines()
        self.header.stat_vram.set(self.vram_chart.peak_text(),
                                  "Measured peak allocated VRAM / the planner's prediction for this run")

    def append_log(self, kind: str, text: str) -> None:
        self.log.append(kind, text)

    def log_text(self) -> str:
        return self.log.toPlainText()

    def shutdown(self) -> None:
        self.tensorboard.stop_server()
