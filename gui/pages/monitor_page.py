"""The monitor page: live charts of a run (or a replayed one), progress, ETA and a log.

It only displays: `handle_event` takes core's typed events as they arrive from the worker and
dispatches on their class; `load_history` replays a run folder through the same code path.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import singledispatchmethod

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QSplitter, QVBoxLayout, QWidget

from qlora_studio.core.runs import events as ev
from qlora_studio.core.runs.store import RunHistory
from qlora_studio.gui import fmt
from qlora_studio.gui.panels.run_charts import RunCharts
from qlora_studio.gui.widgets.chart_options import ChartOptions
from qlora_studio.gui.widgets.method_charts import run_method
from qlora_studio.gui.widgets.probe_grid import ProbeGrid
from qlora_studio.gui.widgets.run_log import RunLog
from qlora_studio.gui.widgets.run_header import RunHeader
from qlora_studio.gui.widgets.tensorboard_hint import TensorBoardHint


class MonitorPage(QWidget):
    smoothing_changed = Signal(float)
    log_scale_changed = Signal(bool)
    history_loaded = Signal(str)  # a replayed run's name

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.run_dir: str | None = None
        self.header = RunHeader()
        self.tensorboard = TensorBoardHint()  # shown for runs that report to TensorBoard
        self.options = ChartOptions()  # loss smoothing and log scale, in a row above the splitter
        self.smoothing, self.log_scale = self.options.smoothing, self.options.log_scale
        self.charts = RunCharts()  # created once, fed by setData
        charts = self.charts  # its parts, by the names the window, tests and benches read
        self.board, self.loss_chart, self.smoothed = charts.board, charts.loss_chart, charts.smoothed
        self.nan_marks, self.vram_chart = charts.nan_marks, charts.vram_chart
        self.lr_chart, self.grad_chart, self.tps_chart = charts.lr_chart, charts.grad_chart, charts.tps_chart
        self.log = RunLog()
        self.probes = ProbeGrid()

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.charts)
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
        layout.addWidget(self.options)
        layout.addWidget(self.splitter, 1)

        self.options.smoothing_changed.connect(self.charts.set_smoothing)
        self.options.smoothing_changed.connect(self.smoothing_changed)
        self.log_scale.toggled.connect(self.charts.loss_chart.set_log_scale)
        self.log_scale.toggled.connect(self.log_scale_changed)

    # ---- what the header and tests read ----
    @property
    def status(self) -> str:
        return self.header.status

    @property
    def step(self) -> int:
        return self.header.step

    # ---- options ----
    def set_smoothing(self, weight: float) -> None:
        self.options.set_smoothing(weight)

    def set_gpu_capacity(self, total_gb: float | None) -> None:
        self.vram_chart.capacity_gb = total_gb
        self._show_vram()

    # ---- a run begins ----
    def reset(self, title: str = "", predicted_peak_gb: float | None = None) -> None:
        self.charts.reset(predicted_peak_gb)
        self.log.clear()
        self.probes.clear()
        self.run_dir = None
        self.tensorboard.show_for(None, False)
        self.header.reset(title)
        self._show_vram()

    def begin_live(self, title: str, predicted_peak_gb: float | None = None) -> None:
        self.reset(title, predicted_peak_gb)
        self.header.begin_live()

    def replay_log(self, history: RunHistory) -> None:
        """The run's recorded log lines, with the times they happened (a replay, or before a resume)."""
        for at, event in history.log:
            self.log.add_event(event, at)

    # ---- events ----
    def batch(self) -> AbstractContextManager:
        """Events handled in a row repaint the header once, after them (`RunHeader.held`)."""
        return self.header.held()

    @singledispatchmethod
    def handle_event(self, event: ev.Event) -> None:
        """Events with nothing to show (the runs page and the window react to them)."""

    @handle_event.register
    def _(self, e: ev.RunStarted) -> None:
        self._show_started(e)
        self.log.add_event(e)

    def _show_started(self, e: ev.RunStarted) -> None:
        self.run_dir = e.run_dir
        self.charts.show_device(e.device, e.predicted_peak_gb)
        self.charts.show_method(e.config.get("train", {}).get("method", "sft"))
        self.header.show_started(e)
        self.tensorboard.show_for(e.run_dir, "tensorboard" in e.config.get("train", {}).get("report_to", []))
        if not e.start_step:
            self.probes.clear(e.config.get("probes"))
        self._show_vram()

    @handle_event.register
    def _(self, e: ev.Preparing) -> None:
        self.header.show_preparing(e)
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
        self.header.set_paused(True)
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.Resumed) -> None:
        self.header.set_paused(False)
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.SettingsChanged) -> None:
        if "max_steps" in e.changes:
            self.header.set_plan(self.header.step, int(e.changes["max_steps"][1]))
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.NonFiniteStep) -> None:
        self.charts.mark_nonfinite(e)
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.Warning) -> None:
        self.log.add_event(e)

    @handle_event.register
    def _(self, e: ev.Finished) -> None:
        self.header.stop_live(e.status)
        self.header.stat_elapsed.set(fmt.duration(e.elapsed_s))
        if self.vram_chart.note_peak(e.peak_vram_gb):
            self._show_vram()
        self.log.add_event(e)
        self.board.flush()

    @handle_event.register
    def _(self, e: ev.Failed) -> None:
        self.header.stop_live(e.status)
        self.log.add_event(e)
        self.board.flush()

    def add_step(self, m: ev.StepMetrics) -> None:
        """One metrics.jsonl record onto every chart and the header (live and replay alike)."""
        if self.charts.add_step(m):
            self._show_vram()
        self.header.show_step(m)

    def add_eval(self, step: int, eval_loss: float) -> None:
        self.charts.add_eval(step, eval_loss)
        self.probes.set_eval_loss(step, eval_loss)
        self.header.stat_eval.set(fmt.loss(eval_loss))

    def end_live(self, status: str) -> None:
        """The worker is done (also when it ended without a finished/failed event)."""
        if self.status in ("loading", "running", "paused", "stopping"):
            self.header.stop_live(status)
        self.header.stop_clock()
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
        self.charts.show_method(run_method(history.path))  # the recorded start leaves the config to config.yaml
        self.replay_log(history)
        self.header.set_plan(0, int(status.get("total_steps") or self.header.total_steps or 0))
        with self.batch():
            for m in history.metrics:
                self.add_step(m)
            for e in history.evals:
                self.add_eval(e.step, e.eval_loss)
            for mark in history.marks:  # their log lines came with replay_log
                self.charts.mark_nonfinite(mark)
            for p in history.probes:
                self.probes.add(p)
        self.header.title.setText(name)
        self.tensorboard.show_for(str(history.path), False)  # the folder as it is now (runs can be moved)
        self.header.stop_live(status.get("status", "finished"))
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
