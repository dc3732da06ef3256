"""The runs page: every run in the output folder with its latest evaluation, a loss overlay of the
selected runs, notes, and the ways back into one (replay its charts, resume it, chat with it in the
playground, export it, open its folder), rename and delete (to the system trash where there is one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QFile, QModelIndex, QSortFilterProxyModel, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui import fmt
from qlora_studio.gui.panels.evaluation_panel import evaluation_summary
from qlora_studio.gui.widgets.charts import OVERLAY_COLORS, LiveChart, SmoothedSeries

MAX_OVERLAY = len(OVERLAY_COLORS)
PLAYGROUND_TIP = "Chat with the selected run's adapter beside its base model, and evaluate it"
EXPORT_TIP = "The adapter, a merged model, a GGUF file or an Ollama folder"
STATUS_COLORS = {"finished": "#15803d", "running": "#2563eb", "stopped": "#b45309", "interrupted": "#b45309",
                 "failed": "#b91c1c"}


class RunsModel(QAbstractTableModel):
    COLUMNS = ["Run", "Status", "Steps", "Final loss", "Model", "Quantization", "LoRA", "Started", "Time", "Peak VRAM",
               "Evaluation"]

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.runs: list[Any] = []
        self.evaluations: dict[str, Any] = {}  # run folder -> its latest core Evaluation

    def set_runs(self, runs: list[Any], evaluations: dict[str, Any] | None = None) -> None:
        self.beginResetModel()
        self.runs = list(runs)
        self.evaluations = dict(evaluations or {})
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802,B008 - Qt's signature
        return 0 if parent.isValid() else len(self.runs)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802,B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        run = self.runs[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(run, col)
        if role == Qt.ItemDataRole.UserRole:  # sort key
            return self._sort_key(run, col)
        if role == Qt.ItemDataRole.ForegroundRole and col == 1:
            return QColor(STATUS_COLORS.get(run.status, "#334155"))
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = str(run.path)
            if run.reason:
                tip += f"\n{run.reason}"
            return tip
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (2, 3, 8, 9):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _text(self, run, col: int) -> str:
        if col == 0:
            return run.name
        if col == 1:
            return run.status
        if col == 2:
            return f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step)
        if col == 3:
            return fmt.loss(run.final_loss)
        if col == 4:
            return run.model.rstrip("/").split("/")[-1]
        if col == 5:
            return run.quantization
        if col == 6:
            return run.lora
        if col == 7:
            return fmt.timestamp(run.started_at)
        if col == 8:
            return fmt.duration(run.elapsed_s)
        if col == 10:
            return evaluation_summary(self.evaluations.get(str(run.path)))
        return f"{run.peak_vram_gb:.2f} GiB" if run.peak_vram_gb is not None else "–"

    def _sort_key(self, run, col: int) -> Any:
        keys = {2: run.step, 3: run.final_loss if run.final_loss is not None else float("inf"),
                7: run.started_at or 0, 8: run.elapsed_s or 0, 9: run.peak_vram_gb or 0}
        return keys.get(col, self._text(run, col))


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
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setObjectName("refreshRunsButton")
        self.replay_button = QPushButton("Open in monitor")
        self.replay_button.setObjectName("replayButton")
        self.replay_button.setToolTip("Replay the selected run's charts from its metrics.jsonl")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.setToolTip("Continue the selected run from its latest checkpoint")
        self.folder_button = QPushButton("Show folder")
        self.folder_button.setObjectName("showFolderButton")
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.setObjectName("exportCsvButton")
        self.csv_button.setToolTip("Save the selected run's metrics (one row per step, with its eval loss) as a CSV file")
        self.playground_button = QPushButton("Playground")
        self.playground_button.setObjectName("playgroundButton")
        self.playground_button.setToolTip(PLAYGROUND_TIP)
        self.export_button = QPushButton("Export…")
        self.export_button.setObjectName("exportRunButton")
        self.export_button.setToolTip(EXPORT_TIP)
        self.rename_button = QPushButton("Rename…")
        self.rename_button.setObjectName("renameRunButton")
        self.delete_button = QPushButton("Delete")
        self.delete_button.setObjectName("deleteRunButton")
        self.delete_button.setToolTip("Move the selected run folders to the system trash")
        top = QHBoxLayout()
        top.addWidget(QLabel("Runs in"))
        top.addWidget(self.folder_label, 1)
        top.addWidget(self.folder_button)
        buttons = QHBoxLayout()  # a row of their own: nine buttons beside a long path outgrow a 1024 px screen
        for button in (self.refresh_button, self.replay_button, self.resume_button, self.playground_button,
                       self.export_button, self.csv_button, self.rename_button, self.delete_button):
            buttons.addWidget(button)
        buttons.addStretch(1)

        self.model = RunsModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.table = QTableView()
        self.table.setObjectName("runsTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(7, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        # The run's name is what tells runs apart: always whole. The model column (also in the name)
        # takes what is left; on a narrow screen the table scrolls sideways rather than cut names.
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        self.table.doubleClicked.connect(lambda _: self._replay())

        self.hint = QLabel("Select runs to compare their loss curves; double-click one to replay all its charts.")
        self.hint.setObjectName("hint")
        self.overlay = LiveChart("Loss: selected runs (smoothed)", "loss")
        self.overlay.setObjectName("overlayChart")
        self.overlay.add_legend()
        self.overlay_runs: list[str] = []

        self.notes = QPlainTextEdit()
        self.notes.setObjectName("runNotes")
        self.notes.setPlaceholderText("Notes on the selected run (saved in its folder as notes.md)")
        self.notes_label = QLabel("Notes")
        self._notes_run: str | None = None
        self._notes_timer = QTimer(self)
        self._notes_timer.setSingleShot(True)
        self._notes_timer.setInterval(600)
        self._notes_timer.timeout.connect(self.save_notes)
        notes = QWidget()
        notes_layout = QVBoxLayout(notes)
        notes_layout.setContentsMargins(0, 0, 0, 0)
        notes_layout.addWidget(self.notes_label)
        notes_layout.addWidget(self.notes, 1)

        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.hint)
        lower_layout.addWidget(self.overlay, 1)
        below = QSplitter(Qt.Orientation.Horizontal)
        below.addWidget(lower)
        below.addWidget(notes)
        below.setSizes([900, 300])
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(below)
        splitter.setSizes([240, 500])
        splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addLayout(top)
        layout.addLayout(buttons)
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
        self.notes.textChanged.connect(lambda: self._notes_timer.start() if self._notes_run else None)
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
        selected = {str(r.path) for r in self.selected_runs()}
        self.folder_label.setText(self.output_dir or str(default_runs_dir()))
        runs = list_runs(self.output_dir)
        self.model.set_runs(runs, {str(r.path): latest_evaluation(r.path) for r in runs})
        selection = self.table.selectionModel()
        for row in range(self.proxy.rowCount()):
            source = self.proxy.mapToSource(self.proxy.index(row, 0))
            if str(self.model.runs[source.row()].path) in selected:
                selection.select(self.proxy.index(row, 0),
                                 selection.SelectionFlag.Select | selection.SelectionFlag.Rows)
        self._on_selection()
        self.refreshed.emit()

    def show_progress(self, run_dir: str | None, step: int, total_steps: int) -> None:
        """The running run's row follows its steps (a refresh reads the same from status.json)."""
        for row, run in enumerate(self.model.runs):
            if run_dir and str(run.path) == str(run_dir):
                run.step, run.total_steps = step, total_steps
                last = self.model.columnCount() - 1
                self.model.dataChanged.emit(self.model.index(row, 0), self.model.index(row, last))
                return

    def selected_runs(self) -> list[Any]:
        rows = sorted({self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()})
        return [self.model.runs[r] for r in rows if r < len(self.model.runs)]

    def select_paths(self, paths: list[str | Path]) -> None:
        wanted = {str(p) for p in paths}
        selection = self.table.selectionModel()
        selection.clearSelection()
        for row in range(self.proxy.rowCount()):
            source = self.proxy.mapToSource(self.proxy.index(row, 0))
            if str(self.model.runs[source.row()].path) in wanted:
                selection.select(self.proxy.index(row, 0),
                                 selection.SelectionFlag.Select | selection.SelectionFlag.Rows)

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self._update_buttons()

    # ---- selection: the overlay ----
    def _on_selection(self, *_: Any) -> None:
        self._update_buttons()
        self._show_notes()
        self.show_overlay(self.selected_runs()[:MAX_OVERLAY])

    def show_overlay(self, runs: list[Any]) -> None:
        """Each selected run's smoothed training loss; with one run, its eval loss too."""
        from qlora_studio.core.runs.store import RunFolder

        for key in list(self.overlay.curves):
            self.overlay.remove_curve(key)
        self.overlay_runs = []
        for i, run in enumerate(runs):
            color = OVERLAY_COLORS[i % len(OVERLAY_COLORS)]
            history = RunFolder(run.path).history()
            key = str(run.path)
            label = f"{run.name} · {run.quantization} · {run.lora}"
            self.overlay.add_curve(key, label, color, 2.0, series=SmoothedSeries(0.6))
            series = self.overlay.series[key]
            for m in history.metrics:
                series.push(m.step, m.loss)
            self.overlay_runs.append(key)
            if len(runs) == 1:
                self.overlay.add_curve(key + "#eval", f"{run.name} · eval", "#ea580c", 1.6, symbol="o")
                self.overlay.series[key + "#eval"].extend([e.step for e in history.evals],
                                                           [e.eval_loss for e in history.evals])
        self.overlay.redraw()
        self.overlay.getPlotItem().enableAutoRange()
        self.overlay.set_message("" if runs else "Select one or more runs")
        self.overlay_changed.emit()

    # ---- actions ----
    def _update_buttons(self) -> None:
        runs = self.selected_runs()
        one = runs[0] if len(runs) == 1 else None
        self.replay_button.setEnabled(one is not None and not self.busy)
        self.resume_button.setEnabled(one is not None and one.resumable and one.status != "running" and not self.busy)
        self.folder_button.setEnabled(one is not None)
        self.csv_button.setEnabled(one is not None)
        finished = one is not None and one.status == "finished"
        self.resume_button.setText("Train more…" if finished else "Resume")  # a finished run has nothing to resume
        for button, tip in ((self.playground_button, PLAYGROUND_TIP), (self.export_button, EXPORT_TIP)):
            button.setEnabled(one is not None and not self.busy)
            button.setToolTip("A run is training: the playground and export wait until it ends" if self.busy else tip)
        self.rename_button.setEnabled(one is not None and one.status != "running")
        self.delete_button.setEnabled(bool(runs) and all(r.status != "running" for r in runs))
        if one is not None and not one.resumable:
            self.resume_button.setToolTip("This run has no checkpoint to resume from")
        elif self.busy:
            self.resume_button.setToolTip("A run is training")
        elif finished:
            self.resume_button.setToolTip("Train more steps: continue from the last checkpoint with a longer plan")
        else:
            self.resume_button.setToolTip("Continue the selected run from its latest checkpoint")

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
    def _show_notes(self) -> None:
        from qlora_studio.core.after.runs import read_notes

        self.save_notes()
        runs = self.selected_runs()
        self._notes_run = str(runs[0].path) if len(runs) == 1 else None
        self.notes.blockSignals(True)
        self.notes.setPlainText(read_notes(self._notes_run) if self._notes_run else "")
        self.notes.blockSignals(False)
        self.notes.setEnabled(self._notes_run is not None)
        self.notes_label.setText(f"Notes: {runs[0].name}" if self._notes_run else "Notes (select one run)")

    def save_notes(self) -> None:
        from qlora_studio.core.after.runs import write_notes

        self._notes_timer.stop()
        if self._notes_run and Path(self._notes_run).is_dir():
            write_notes(self._notes_run, self.notes.toPlainText())

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
        self._notes_run = None
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
        self._notes_run = None
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
