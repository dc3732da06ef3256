"""A run's way through the window, from Start to its end: the toolbar steers the `TrainController`
(start, resume, pause, stop, save now, + steps) and the controller's events reach the pages and the
status line. The window builds the pages and opens the dialogs; this binds them to the run."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Slot
from PySide6.QtWidgets import QMessageBox

from qlora_studio.core.errors import FailureCause, UserError
from qlora_studio.core.runs import events as ev

FAILURE_TITLES = {FailureCause.OOM: "Out of GPU memory", FailureCause.NAN: "Training diverged (NaN/Inf)",
                  FailureCause.DISK: "Disk full or not writable"}


def _resumable(run_dir: str) -> bool:
    from qlora_studio.core.runs.store import summarize_run

    return summarize_run(Path(run_dir)).resumable


class RunBinder(QObject):
    def __init__(self, window):
        """`window`: the main window, whose toolbar, pages, status line and dialogs a run uses."""
        super().__init__(window)
        self.window = window
        self.controller = window.controller
        self.toolbar = window.toolbar
        self.paused = False  # the running run is paused (its checkpoints may be chatted with)
        self.close_window_after = False  # the user quit during the run: close once it has saved and ended
        self._config = None

        self.controller.events.connect(self._on_events)
        self.controller.finished.connect(self._on_finished)
        bar = self.toolbar
        bar.start_action.triggered.connect(self.start)
        bar.pause_action.toggled.connect(self._on_pause_toggled)
        bar.stop_action.triggered.connect(self.stop)
        bar.save_action.triggered.connect(self._save_now)
        bar.extend_button.clicked.connect(self._extend)
        window.setup.start_blocker_changed.connect(lambda _reason: self.update_actions())

    def update_actions(self) -> None:
        w = self.window
        self.toolbar.set_state(self.controller.running, self.controller.stopping, w.setup.start_blocker)
        w.runs.set_busy(self.controller.running)
        # A paused run's child holds still: the playground may load its checkpoints from the run folder meanwhile.
        w.playground.set_training(self.controller.running and not self.paused)

    def _show_state(self, text: str) -> None:
        self.window.state_label.setText(text)

    def _tell(self, message: str, ms: int) -> None:
        self.window.statusBar().showMessage(message, ms)

    # ---- starting ----
    def start(self) -> bool:
        w = self.window
        if self.controller.running:
            return False
        blocker = w.setup.start_blocker
        if blocker:  # Start is disabled then; the shortcut or a caller may still ask
            self._tell(f"Cannot start: {blocker}", 8000)
            return False
        config = w.setup.config
        if not self._pickle_consent(config.model.name_or_path):
            return False
        self._config = config
        predicted = w.setup.memory.predicted_peak_gb(config)
        w.monitor.begin_live(config.run_name or Path(config.model.name_or_path).name, predicted)
        self.controller.start(config)
        self._after_start()
        return True

    def resume(self, run_dir: str, extend: int = 0) -> bool:
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
            self.window.report_error("Train more", str(exc))
            return False
        self._config = config
        monitor = self.window.monitor
        monitor.begin_live(f"{folder.path.name} ({'+' + str(extend) + ' steps' if extend else 'resuming'})")
        monitor.replay_log(folder.history())  # the log goes on from where the run left it
        self.controller.start(config, resume_from=run_dir)
        self._after_start()
        return True

    def _after_start(self) -> None:
        self.window.tabs.setCurrentWidget(self.window.monitor)
        self._show_state("Training")
        self.update_actions()

    def _pickle_consent(self, origin: str) -> bool:
        """A model folder with only pickled weights loads after the user's yes (once per model and session)."""
        from qlora_studio.core.model.consent import allow_pickle, pickle_allowed, pickled_only

        pickles = pickled_only(origin)
        if not pickles or pickle_allowed(origin):
            return True
        if not self.window.ask_pickle_consent(origin, pickles):
            self._tell("Not started: the model's weights are pickled and loading them was declined", 8000)
            return False
        allow_pickle(origin)
        return True

    # ---- steering ----
    def _on_pause_toggled(self, paused: bool) -> None:
        if not self.controller.running:
            return
        if paused:
            self.controller.control.pause()
            self._show_state("Pausing after this step…")
        else:
            self.paused = False  # the playground lets go of its model before the run goes on
            self.update_actions()
            self.controller.control.resume()
            self._show_state("Training")

    def stop(self) -> None:
        if not self.controller.running:
            return
        self.controller.control.request_stop()
        self.window.monitor.mark_stopping()
        self._show_state("Stopping: saving a checkpoint…")
        self.update_actions()

    def _save_now(self) -> None:
        self.controller.control.request_save()
        self._tell("A checkpoint will be saved after the current step", 4000)

    def _extend(self) -> None:
        steps = self.toolbar.extend_spin.value()
        self.controller.control.extend(steps)
        self._tell(f"Adding {steps} steps after the current one", 4000)

    # ---- what the run reports ----
    @Slot(object)
    def _on_events(self, batch: list[ev.Event]) -> None:
        with self.window.monitor.batch():
            for event in batch:
                self.on_event(event)

    def on_event(self, event: ev.Event) -> None:
        monitor, runs = self.window.monitor, self.window.runs
        monitor.handle_event(event)
        match event:
            case ev.RunStarted(start_step=start) if start:
                # a resumed run: its folder already holds the curves up to the checkpoint (a small file,
                # read here so the earlier steps are drawn before the next step event arrives)
                from qlora_studio.core.runs.store import RunFolder

                monitor.prefill(RunFolder(event.run_dir).history(), start)
                runs.refresh()
            case ev.RunStarted():
                runs.refresh()
            case ev.Preparing(message=message):
                self._show_state(f"Preparing: {message}")
            case ev.StepLogged():
                self._show_state(f"Training: step {event.metrics.step} / {event.total_steps}")
                runs.show_progress(monitor.run_dir, event.metrics.step, event.total_steps)
            case ev.SettingsChanged() if "max_steps" in event.changes:  # "+ steps": the plan grew
                total = event.changes["max_steps"][1]
                self._show_state(f"Training: step {monitor.step} / {total}")
                runs.show_progress(monitor.run_dir, monitor.step, total)
            case ev.Paused():
                self._show_state(f"Paused at step {event.step}")
                self.paused = True
                self.update_actions()
                self.window.playground.refresh()
            case ev.Resumed():
                self.paused = False
                self.update_actions()

    @Slot(object)
    def _on_finished(self, result: ev.RunResult) -> None:
        w = self.window
        self.paused = False
        w.monitor.end_live(result.status)
        self.update_actions()
        w.runs.refresh()
        w.playground.refresh()
        if result.status == "finished" or result.cause is None:
            self._show_state(f"{result.status.capitalize()} at step {result.step}")
            self._tell(f"Run {result.status}: {result.run_dir}", 8000)
        else:
            self._show_state("Stopped" if result.status == "stopped" else "Failed")
            where = f"\n\nRun folder: {result.run_dir}" if result.run_dir else ""
            title = FAILURE_TITLES.get(result.cause, "Training failed")
            box = w.report_error(title, result.error or "training failed", (result.details or "") + where)
            if result.cause is FailureCause.CRASH and result.run_dir and _resumable(result.run_dir):
                resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
                resume.setObjectName("resumeCrashedRun")
                resume.clicked.connect(lambda: w.resume_run(result.run_dir))
        w.run_ended.emit(result)
        if self.close_window_after:
            w.close()
