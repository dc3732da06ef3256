"""The main window: Setup, Monitor, Runs and Playground pages around one `TrainController`.

The window builds the pages, the toolbar and the status line, restores its state, finds the GPU,
moves between pages and opens the dialogs; `RunBinder` carries a run from Start to its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent, QIcon
from PySide6.QtWidgets import (
    QLabel,
    QMainWindow,
    QMessageBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.core.runs import events as ev
from qlora_studio.gui.dialogs import prompts
from qlora_studio.gui.pages.monitor_page import MonitorPage
from qlora_studio.gui.pages.playground_page import PlaygroundPage
from qlora_studio.gui.pages.run_binder import RunBinder
from qlora_studio.gui.pages.runs_page import RunsPage
from qlora_studio.gui.settings import Settings
from qlora_studio.gui.pages.setup_page import SetupPage
from qlora_studio.gui.widgets.training_toolbar import TrainingToolbar
from qlora_studio.gui.workers.tasks import TaskRunner
from qlora_studio.gui.workers.training import TrainController

SETUP, MONITOR, RUNS, PLAYGROUND = range(4)


def _probe_gpus():
    from qlora_studio.core.model.devices import list_gpus

    return list_gpus()


def _run_history(run_dir: str):
    from qlora_studio.core.runs.store import RunFolder

    return RunFolder(run_dir).history()


class MainWindow(QMainWindow):
    gpus_detected = Signal(object)  # list of core GpuInfo
    run_ended = Signal(object)  # the RunResult, after the window has handled it

    def __init__(self, settings: Settings | None = None, config_path: str | None = None):
        super().__init__()
        from qlora_studio.resources import ICONS

        self.settings = settings or Settings()
        self.setWindowTitle("QLoRA Studio")
        icon = ICONS / "qlora-studio.svg"
        if icon.is_file():
            self.setWindowIcon(QIcon(str(icon)))
        self.gpus: list[Any] | None = None
        self.last_error_box: QMessageBox | None = None
        self.export_dialog = None

        self.controller = TrainController(self)
        self.controller.answer_question = self.ask_user

        self.setup = SetupPage(self.settings)
        self.monitor = MonitorPage()
        self.runs = RunsPage()
        self.playground = PlaygroundPage()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("pages")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.setup, "Setup")
        self.tabs.addTab(self.monitor, "Monitor")
        self.tabs.addTab(self.runs, "Runs")
        self.tabs.addTab(self.playground, "Playground")

        self.banner = QLabel("")
        self.banner.setObjectName("noGpuBanner")
        self.banner.setWordWrap(True)
        self.banner.hide()
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self.toolbar = TrainingToolbar(self.settings.get("monitor/extend_steps"), self)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)
        bar = self.toolbar  # its controls, by the names the tests read
        self.start_action, self.pause_action = bar.start_action, bar.pause_action
        self.stop_action, self.save_action = bar.stop_action, bar.save_action
        self.extend_spin, self.extend_button = bar.extend_spin, bar.extend_button
        self.state_label = QLabel("Idle")
        self.state_label.setObjectName("stateLabel")
        self.statusBar().addPermanentWidget(self.state_label)
        self.run_binder = RunBinder(self)

        self.setup.error.connect(lambda title, reason, details: self.report_error(title, reason, details))
        self.setup.config_changed.connect(self._on_config_changed)
        self.setup.memory.budget_changed.connect(lambda value: self.settings.set("memory/budget", value))
        self.runs.replay_requested.connect(self.replay_run)
        self.runs.resume_requested.connect(self.resume_run)
        self.runs.extend_requested.connect(self._ask_extend)
        self.runs.playground_requested.connect(self.open_playground)
        self.runs.export_requested.connect(self.open_export)
        self.runs.error.connect(lambda title, reason, details: self.report_error(title, reason, details))
        self.playground.export_requested.connect(self.open_export)
        self.playground.error.connect(lambda title, reason, details: self.report_error(title, reason, details))
        self.monitor.smoothing_changed.connect(lambda w: self.settings.set("monitor/smoothing", w))
        self.monitor.log_scale_changed.connect(lambda on: self.settings.set("monitor/log_scale", on))

        self.gpu_probe = TaskRunner(_probe_gpus, self)
        self.gpu_probe.result.connect(self._on_gpus)
        self.gpu_probe.error.connect(lambda _tag, info: self._on_gpus(None, []))
        self.history_loader = TaskRunner(_run_history, self)
        self.history_loader.result.connect(self._on_history)
        self.history_loader.error.connect(lambda _tag, error: self.report_error("Replay", error.reason, error.details))

        self._restore_state()
        if config_path:
            self.setup.load_config_file(config_path)
        self.runs.set_output_dir(self.setup.config.output_dir)
        self.playground.set_output_dir(self.setup.config.output_dir)
        self.gpu_probe.request()
        self.run_binder.update_actions()

    # ---- state ----
    def _restore_state(self) -> None:
        geometry = self.settings.get("window/geometry")
        screen = self.screen().availableGeometry()
        if not geometry.isEmpty():
            self.restoreGeometry(geometry)
        # never wider or taller than the screen (a first start on a laptop, a state saved on a bigger screen)
        width = min(self.width() if not geometry.isEmpty() else 1400, screen.width())
        self.resize(width, min(self.height() if not geometry.isEmpty() else 900, screen.height()))
        splitter = self.settings.get("window/splitter")
        if not splitter.isEmpty():
            self.setup.splitter.restoreState(splitter)
        self.tabs.setCurrentIndex(min(max(self.settings.get("window/page"), 0), PLAYGROUND))
        self.monitor.set_smoothing(self.settings.get("monitor/smoothing"))
        self.monitor.log_scale.setChecked(self.settings.get("monitor/log_scale"))
        self.setup.memory.select_budget(self.settings.get("memory/budget"))

    def save_state(self) -> None:
        self.settings.set("window/geometry", self.saveGeometry())
        self.settings.set("window/splitter", self.setup.splitter.saveState())
        self.settings.set("window/page", self.tabs.currentIndex())
        self.settings.set("monitor/extend_steps", self.extend_spin.value())
        self.settings.sync()

    # ---- GPU ----
    @Slot(object, object)
    def _on_gpus(self, _tag, gpus: list[Any]) -> None:
        self.gpus = list(gpus or [])
        if self.gpus:
            gpu = self.gpus[0]
            self.banner.hide()
            self.setup.memory.set_detected_gpu(gpu.name, round(gpu.total_gb, 1))
            self.monitor.set_gpu_capacity(gpu.total_gb)
            self.statusBar().showMessage(f"GPU: {gpu.name}, {gpu.total_gb:.1f} GiB", 5000)
        else:
            self.banner.setText(
                "<b>No NVIDIA GPU found.</b> Training runs on the CPU: fine for tiny models, very slow for real "
                "ones. The memory panel plans for the GPU budget you pick.")
            self.banner.show()
            self.setup.memory.set_detected_gpu("", None)
        self.gpus_detected.emit(self.gpus)

    # ---- training (RunBinder's, under the names callers know) ----
    def start_training(self) -> bool:
        return self.run_binder.start()

    def resume_run(self, run_dir: str, extend: int = 0) -> bool:
        """Continue a run from its latest checkpoint; `extend` more steps than it planned."""
        return self.run_binder.resume(run_dir, extend)

    def stop_training(self) -> None:
        self.run_binder.stop()

    def _on_event(self, event: ev.Event) -> None:
        self.run_binder.on_event(event)

    # ---- runs ----
    def _on_config_changed(self, config) -> None:
        self.runs.set_output_dir(config.output_dir)
        self.playground.set_output_dir(config.output_dir)

    def open_playground(self, run_dir: str, adapter: str = "final") -> bool:
        """Show the playground on `run_dir` and load its adapter (a checkpoint when it has no final one)."""
        if self.controller.running or not self.playground.select(run_dir, adapter):
            return False
        self.tabs.setCurrentIndex(PLAYGROUND)
        return self.playground.load_selected()

    def open_export(self, run_dir: str, adapter: str = "final"):
        from qlora_studio.gui.dialogs.export_dialog import ExportDialog

        if self.controller.running:
            return None
        dialog = ExportDialog(run_dir, adapter, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self.export_dialog = dialog
        return dialog

    def replay_run(self, run_dir: str) -> None:
        if self.controller.running:
            return
        self.history_loader.request(run_dir, tag=run_dir)

    @Slot(object, object)
    def _on_history(self, run_dir: str, history) -> None:
        if self.controller.running:
            return
        self.monitor.load_history(history)
        self.tabs.setCurrentIndex(MONITOR)

    # ---- dialogs (methods, so a test can answer in the user's place) ----
    def report_error(self, title: str, reason: str, details: str = "") -> QMessageBox:
        self.last_error_box = prompts.show_error(self, title, reason, details)
        return self.last_error_box

    def ask_pickle_consent(self, origin: str, pickles: list[str]) -> bool:
        return prompts.ask_pickle_consent(self, origin, pickles)

    def ask_user(self, question: str, options: list[str]) -> str:
        """A question from the training thread (e.g. out of memory at micro-batch 1)."""
        return prompts.ask_decision(self, question, options)

    def _ask_extend(self, run_dir: str) -> None:
        steps = prompts.ask_extra_steps(self, Path(run_dir).name, self.extend_spin.value())
        if steps is not None:
            self.resume_run(run_dir, extend=steps)

    def confirm_quit_during_run(self) -> bool:
        return prompts.confirm_quit_during_run(self)

    # ---- closing ----
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        if self.controller.running:
            if not self.run_binder.close_window_after:
                if not self.confirm_quit_during_run():
                    event.ignore()
                    return
                self.run_binder.close_window_after = True
                self.stop_training()
            # the run saves its checkpoint and ends; RunBinder closes the window again
            self.state_label.setText("Stopping: saving a checkpoint, then quitting…")
            event.ignore()
            return
        self.save_state()
        self.runs.save_notes()
        self.playground.shutdown()
        self.setup.shutdown()
        self.monitor.shutdown()
        for runner in (self.gpu_probe, self.history_loader):
            runner.shutdown()
        event.accept()
