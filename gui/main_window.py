"""The main window: Setup, Monitor, Runs and Playground pages around one `TrainController`."""

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

from qlora_studio.core.errors import FailureCause, UserError
from qlora_studio.core.runs import events as ev
from qlora_studio.gui.pages.monitor_page import MonitorPage
from qlora_studio.gui.pages.playground_page import PlaygroundPage
from qlora_studio.gui.pages.runs_page import RunsPage
from qlora_studio.gui.settings import Settings
from qlora_studio.gui.pages.setup_page import SetupPage
from qlora_studio.gui.widgets.training_toolbar import TrainingToolbar
from qlora_studio.gui.workers.tasks import TaskRunner
from qlora_studio.gui.workers.training import TrainController

SETUP, MONITOR, RUNS, PLAYGROUND = range(4)
FAILURE_TITLES = {FailureCause.OOM: "Out of GPU memory", FailureCause.NAN: "Training diverged (NaN/Inf)",
                  FailureCause.DISK: "Disk full or not writable"}


def _probe_gpus():
    from qlora_studio.core.model.devices import list_gpus

    return list_gpus()


def _run_history(run_dir: str):
    from qlora_studio.core.runs.store import RunFolder

    return RunFolder(run_dir).history()


def _resumable(run_dir: str) -> bool:
    from qlora_studio.core.runs.store import summarize_run

    return summarize_run(Path(run_dir)).resumable


def show_error(parent: QWidget, title: str, reason: str, details: str = "") -> QMessageBox:
    """A non-blocking error dialog: the one-line reason, the traceback behind "Show Details…"."""
    box = QMessageBox(QMessageBox.Icon.Critical, title, reason, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorDialog")
    if details:
        box.setDetailedText(details)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


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
        self._run_paused = False  # the running run is paused (its checkpoints may be chatted with)
        self.export_dialog = None
        self._close_after_run = False
        self._run_config = None

        self.controller = TrainController(self)
        self.controller.answer_question = self.ask_user
        self.controller.events.connect(self._on_events)
        self.controller.finished.connect(self._on_run_finished)

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
        self._build_toolbar()
        self.state_label = QLabel("Idle")
        self.state_label.setObjectName("stateLabel")
        self.statusBar().addPermanentWidget(self.state_label)

        self.setup.error.connect(lambda title, reason, details: self.report_error(title, reason, details))
        self.setup.config_changed.connect(self._on_config_changed)
        self.setup.start_blocker_changed.connect(lambda _reason: self._update_actions())
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
        self._update_actions()

    # ---- building ----
    def _build_toolbar(self) -> None:
        self.toolbar = TrainingToolbar(self.settings.get("monitor/extend_steps"), self)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)
        bar = self.toolbar
        self.start_action, self.pause_action = bar.start_action, bar.pause_action
        self.stop_action, self.save_action = bar.stop_action, bar.save_action
        self.extend_spin, self.extend_button = bar.extend_spin, bar.extend_button
        self.start_action.triggered.connect(self.start_training)
        self.pause_action.toggled.connect(self._on_pause_toggled)
        self.stop_action.triggered.connect(self.stop_training)
        self.save_action.triggered.connect(self._save_now)
        self.extend_button.clicked.connect(self._extend)

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

    def _update_actions(self) -> None:
        self.toolbar.set_state(self.controller.running, self.controller.stopping, self.setup.start_blocker)
        self.runs.set_busy(self.controller.running)
        # A paused run's child holds still: the playground may load its checkpoints from the run folder meanwhile.
        self.playground.set_training(self.controller.running and not self._run_paused)

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

    # ---- training ----
    def start_training(self) -> bool:
        if self.controller.running:
            return False
        blocker = self.setup.start_blocker
        if blocker:  # Start is disabled then; the shortcut or a caller may still ask
            self.statusBar().showMessage(f"Cannot start: {blocker}", 8000)
            return False
        config = self.setup.config
        if not self._pickle_consent(config.model.name_or_path):
            return False
        self._run_config = config
        predicted = self.setup.memory.predicted_peak_gb(config)
        self.monitor.begin_live(config.run_name or Path(config.model.name_or_path).name, predicted)
        self.controller.start(config)
        self._after_start()
        return True

    def resume_run(self, run_dir: str, extend: int = 0) -> bool:
        """Continue a run from its latest checkpoint; `extend` more steps than it planned (a
        finished run has nothing to resume without them)."""
        if self.controller.running:
            return False
        from qlora_studio.core.runs.store import RunFolder

        folder = RunFolder(run_dir)
        try:
            model = folder.load_config().model.name_or_path
        except UserError:
            model = ""  # the run reports its broken folder itself
        if model and not self._pickle_consent(model):
            return False
        try:
            config = folder.extended_config(extend) if extend else None
        except UserError as exc:
            self.report_error("Train more", str(exc))
            return False
        self._run_config = config
        self.monitor.begin_live(f"{folder.path.name} ({'+' + str(extend) + ' steps' if extend else 'resuming'})")
        self.monitor.replay_log(folder.history())  # the log goes on from where the run left it
        self.controller.start(config, resume_from=run_dir)
        self._after_start()
        return True

    def _ask_extend(self, run_dir: str) -> None:
        from PySide6.QtWidgets import QInputDialog

        steps, ok = QInputDialog.getInt(self, "Train more", f"Steps to add to {Path(run_dir).name}:",
                                        self.extend_spin.value(), 1, 1_000_000)
        if ok:
            self.resume_run(run_dir, extend=steps)

    def _after_start(self) -> None:
        self.tabs.setCurrentIndex(MONITOR)
        self.state_label.setText("Training")
        self._update_actions()

    def _pickle_consent(self, origin: str) -> bool:
        """A model folder with only pickled weights loads after the user's yes (once per model and session)."""
        from qlora_studio.core.model.consent import allow_pickle, pickle_allowed, pickled_only

        pickles = pickled_only(origin)
        if not pickles or pickle_allowed(origin):
            return True
        if not self.ask_pickle_consent(origin, pickles):
            self.statusBar().showMessage("Not started: the model's weights are pickled and loading them was declined", 8000)
            return False
        allow_pickle(origin)
        return True

    def ask_pickle_consent(self, origin: str, pickles: list[str]) -> bool:
        answer = QMessageBox.warning(
            self, "Load pickled weights?",
            f"{origin} holds its weights only as pickle files ({', '.join(pickles[:3])}).\n\n"
            "Loading a pickle can run any code hidden in it, with your permissions. Load it only if you trust where "
            "this model came from (safetensors weights carry no such risk).",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _on_pause_toggled(self, paused: bool) -> None:
        if not self.controller.running:
            return
        if paused:
            self.controller.control.pause()
            self.state_label.setText("Pausing after this step…")
        else:
            self._run_paused = False  # the playground lets go of its model before the run goes on
            self._update_actions()
            self.controller.control.resume()
            self.state_label.setText("Training")

    def stop_training(self) -> None:
        if not self.controller.running:
            return
        self.controller.control.request_stop()
        self.monitor.mark_stopping()
        self.state_label.setText("Stopping: saving a checkpoint…")
        self._update_actions()

    def _save_now(self) -> None:
        self.controller.control.request_save()
        self.statusBar().showMessage("A checkpoint will be saved after the current step", 4000)

    def _extend(self) -> None:
        steps = self.extend_spin.value()
        self.controller.control.extend(steps)
        self.statusBar().showMessage(f"Adding {steps} steps after the current one", 4000)

    @Slot(object)
    def _on_events(self, batch: list[ev.Event]) -> None:
        with self.monitor.batch():
            for event in batch:
                self._on_event(event)

    def _on_event(self, event: ev.Event) -> None:
        self.monitor.handle_event(event)
        match event:
            case ev.RunStarted(start_step=start) if start:
                # a resumed run: its folder already holds the curves up to the checkpoint (a small file,
                # read here so the earlier steps are drawn before the next step event arrives)
                from qlora_studio.core.runs.store import RunFolder

                self.monitor.prefill(RunFolder(event.run_dir).history(), start)
                self.runs.refresh()
            case ev.RunStarted():
                self.runs.refresh()
            case ev.Preparing(message=message):
                self.state_label.setText(f"Preparing: {message}")
            case ev.StepLogged():
                self.state_label.setText(f"Training: step {event.metrics.step} / {event.total_steps}")
                self.runs.show_progress(self.monitor.run_dir, event.metrics.step, event.total_steps)
            case ev.SettingsChanged() if "max_steps" in event.changes:  # "+ steps": the plan grew
                total = event.changes["max_steps"][1]
                self.state_label.setText(f"Training: step {self.monitor.step} / {total}")
                self.runs.show_progress(self.monitor.run_dir, self.monitor.step, total)
            case ev.Paused():
                self.state_label.setText(f"Paused at step {event.step}")
                self._run_paused = True
                self._update_actions()
                self.playground.refresh()
            case ev.Resumed():
                self._run_paused = False
                self._update_actions()

    @Slot(object)
    def _on_run_finished(self, result: ev.RunResult) -> None:
        self._run_paused = False
        self.monitor.end_live(result.status)
        self._update_actions()
        self.runs.refresh()
        self.playground.refresh()
        if result.status == "finished" or result.cause is None:
            self.state_label.setText(f"{result.status.capitalize()} at step {result.step}")
            self.statusBar().showMessage(f"Run {result.status}: {result.run_dir}", 8000)
        else:
            self.state_label.setText("Stopped" if result.status == "stopped" else "Failed")
            where = f"\n\nRun folder: {result.run_dir}" if result.run_dir else ""
            title = FAILURE_TITLES.get(result.cause, "Training failed")
            box = self.report_error(title, result.error or "training failed", (result.details or "") + where)
            if result.cause is FailureCause.CRASH and result.run_dir and _resumable(result.run_dir):
                resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
                resume.setObjectName("resumeCrashedRun")
                resume.clicked.connect(lambda: self.resume_run(result.run_dir))
        self.run_ended.emit(result)
        if self._close_after_run:
            self.close()

    def ask_user(self, question: str, options: list[str]) -> str:
        """A question from the training thread (e.g. out of memory at micro-batch 1)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Training needs a decision", question, parent=self)
        buttons = {box.addButton(option.capitalize(), QMessageBox.ButtonRole.AcceptRole): option for option in options}
        box.exec()
        return buttons.get(box.clickedButton(), options[-1])

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

    # ---- errors ----
    def report_error(self, title: str, reason: str, details: str = "") -> QMessageBox:
        self.last_error_box = show_error(self, title, reason, details)
        return self.last_error_box

    # ---- closing ----
    def confirm_quit_during_run(self) -> bool:
        answer = QMessageBox.question(
            self, "Quit QLoRA Studio",
            "A run is training. Stop it (saving a checkpoint you can resume) and quit?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        if self.controller.running:
            if not self._close_after_run:
                if not self.confirm_quit_during_run():
                    event.ignore()
                    return
                self._close_after_run = True
                self.stop_training()
            # the run saves its checkpoint and ends; _on_run_finished closes the window again
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
