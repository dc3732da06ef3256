"""The runs page: every run in the output folder with its latest evaluation, a loss overlay of the
selected runs, notes, and the ways back into one (replay its charts, resume it, chat with it in the
playground, export it, open its folder), rename and delete (to the system trash where there is one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QFile, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui.panels.run_notes import RunNotes
from qlora_studio.gui.panels.runs_table import RunsTable
from qlora_studio.gui.widgets.overlay_chart import MAX_OVERLAY, OverlayChart
from qlora_studio.gui.widgets.run_actions import RunActions


class RunsPage(QWidget):
    replay_requested = Signal(str)  # run folder
    resume_requested = Signal(str)
    extend_requested = Signal(str)  # a finished run: train more steps
    playground_requested = Signal(str)
    export_requested = Signal(str)
    error = Signal(str, str, str)  # (title, reason, details)
    refreshed = Signal()
    overlay_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.output_dir: str | None = None
        self.busy = False  # a run is training: no resume, no replay into the monitor

        self.folder_label = QLabel("")
        self.folder_label.setObjectName("runsFolder")
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.folder_label.setWordWrap(True)  # a long path wraps at its slashes instead of widening the window
        self.folder_button = QPushButton("Show folder")
        self.folder_button.setObjectName("showFolderButton")
        top = QHBoxLayout()
        top.addWidget(QLabel("Runs in"))
        top.addWidget(self.folder_label, 1)
        top.addWidget(self.folder_button)
        self.action_bar = bar = RunActions()
        # its buttons, by the names the window and tests read
        self.refresh_button, self.replay_button = bar.refresh_button, bar.replay_button
        self.resume_button, self.csv_button = bar.resume_button, bar.csv_button
        self.playground_button, self.export_button = bar.playground_button, bar.export_button
        self.rename_button, self.delete_button = bar.rename_button, bar.delete_button

        self.table = RunsTable()
        self.model, self.proxy = self.table.runs_model, self.table.proxy
        self.table.doubleClicked.connect(lambda _: self._replay())

        self.hint = QLabel("Select runs to compare their loss curves; double-click one to replay all its charts.")
        self.hint.setObjectName("hint")
        self.overlay = OverlayChart()
        self.notes_pane = RunNotes()
        self.notes = self.notes_pane.editor
        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.hint)
        lower_layout.addWidget(self.overlay, 1)
        below = QSplitter(Qt.Orientation.Horizontal)
        below.addWidget(lower)
        below.addWidget(self.notes_pane)
        below.setSizes([900, 300])
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(below)
        splitter.setSizes([240, 500])
        splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addLayout(top)
        layout.addWidget(self.action_bar)
        layout.addWidget(splitter, 1)

        self.refresh_button.clicked.connect(self.refresh)
        self.replay_button.clicked.connect(self._replay)
        self.resume_button.clicked.connect(self._resume)
        self.folder_button.clicked.connect(self._show_folder)
        self.csv_button.clicked.connect(lambda: self.export_csv())
        self.playground_button.clicked.connect(lambda: self._emit_one(self.playground_requested))
        self.export_button.clicked.connect(lambda: self._emit_one(self.export_requested))
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self._update_buttons()

    # ---- data ----
    def set_output_dir(self, output_dir: str | None) -> None:
        if output_dir != self.output_dir:
            self.output_dir = output_dir
            self.refresh()

    def refresh(self) -> None:
        from qlora_studio.core.after.evaluation import latest_evaluation
        from qlora_studio.core.runs.store import list_runs

        from qlora_studio.core.config.files import default_runs_dir

        self.save_notes()
        self.folder_label.setText(self.output_dir or str(default_runs_dir()))
        runs = list_runs(self.output_dir)
        self.table.set_runs(runs, {str(r.path): latest_evaluation(r.path) for r in runs})
        self._on_selection()
        self.refreshed.emit()

    def show_progress(self, run_dir: str | None, step: int, total_steps: int) -> None:
        self.table.show_progress(run_dir, step, total_steps)

    def selected_runs(self) -> list[Any]:
        return self.table.selected_runs()

    def select_paths(self, paths: list[str | Path]) -> None:
        self.table.select_paths(paths)

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self._update_buttons()

    # ---- selection: notes and the overlay ----
    def _on_selection(self, *_: Any) -> None:
        self._update_buttons()
        runs = self.selected_runs()
        self.notes_pane.show_run(runs[0] if len(runs) == 1 else None)
        self.show_overlay(runs[:MAX_OVERLAY])

    def show_overlay(self, runs: list[Any]) -> None:
        self.overlay.show_runs(runs)
        self.overlay_changed.emit()

    # ---- actions ----
    def _update_buttons(self) -> None:
        runs = self.selected_runs()
        self.action_bar.update_for(runs, self.busy)
        self.folder_button.setEnabled(len(runs) == 1)

    def _replay(self) -> None:
        runs = self.selected_runs()
        if len(runs) == 1 and not self.busy:
            self.replay_requested.emit(str(runs[0].path))

    def _resume(self) -> None:
        runs = self.selected_runs()
        if len(runs) == 1 and runs[0].resumable and not self.busy:
            signal = self.extend_requested if runs[0].status == "finished" else self.resume_requested
            signal.emit(str(runs[0].path))

    def export_csv(self, path: str | None = None) -> str | None:
        """The selected run's metrics as CSV at `path` (asked for when not given); returns where it went."""
        from PySide6.QtWidgets import QFileDialog, QMessageBox

        from qlora_studio.core.training.reporting import export_metrics_csv

        runs = self.selected_runs()
        if len(runs) != 1:
            return None
        run = runs[0]
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export metrics", str(run.path / f"{run.name}-metrics.csv"),
                                                  "CSV (*.csv)")
            if not path:
                return None
        try:
            rows = export_metrics_csv(run.path, path)
        except OSError as exc:
            QMessageBox.warning(self, "Export metrics", f"{path}: {exc.strerror or exc}")
            return None
        self.hint.setText(f"Saved {rows} steps of {run.name} to {path}")
        return path

    def _show_folder(self) -> None:
        runs = self.selected_runs()
        if runs:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(runs[0].path)))

    # ---- notes, rename, delete ----
    def save_notes(self) -> None:
        self.notes_pane.save()

    def _emit_one(self, signal) -> None:
        runs = self.selected_runs()
        if len(runs) == 1 and not self.busy:
            signal.emit(str(runs[0].path))

    def rename_selected(self, new_name: str | None = None) -> Path | None:
        from qlora_studio.core.after.runs import rename_run
        from qlora_studio.core.errors import UserError

        runs = self.selected_runs()
        if len(runs) != 1:
            return None
        if not isinstance(new_name, str):
            new_name, ok = QInputDialog.getText(self, "Rename run", "New name of the run folder:", text=runs[0].name)
            if not ok:
                return None
        self.save_notes()
        try:
            path = rename_run(runs[0].path, new_name)
        except (UserError, OSError) as exc:
            self.error.emit("Rename run", str(exc), "")
            return None
        self.notes_pane.forget()
        self.refresh()
        self.select_paths([path])
        return path

    def delete_selected(self, confirm: bool = True) -> int:
        """Move the selected runs to the trash (or, where there is none, delete them after asking); how many went."""
        from qlora_studio.core.after.runs import check_deletable, delete_run
        from qlora_studio.core.errors import UserError

        runs = self.selected_runs()
        if not runs:
            return 0
        names = ", ".join(r.name for r in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        if confirm and QMessageBox.question(self, "Delete runs", f"Move {names} to the trash?") != QMessageBox.StandardButton.Yes:
            return 0
        self.save_notes()
        self.notes_pane.forget()
        gone = 0
        for run in runs:
            try:
                check_deletable(run.path)
                moved = QFile.moveToTrash(str(run.path))  # bool, or (bool, path in the trash) in some PySide6 versions
                if not (moved[0] if isinstance(moved, tuple) else moved):
                    if not confirm:  # never delete for good without asking
                        raise UserError(f"there is no trash for {run.path} on this system; it was kept")
                    answer = QMessageBox.question(
                        self, "No trash", f"There is no trash for {run.path} on this system. Delete it for good?")
                    if answer != QMessageBox.StandardButton.Yes:
                        continue
                    delete_run(run.path)
                gone += 1
            except (UserError, OSError) as exc:
                self.error.emit("Delete run", str(exc), "")
        self.refresh()
        return gone
