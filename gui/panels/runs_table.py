"""The runs as a sortable table: one row per run folder (status, steps, final loss, settings, time,
peak VRAM, latest evaluation), newest first, whose selection survives a refresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from qlora_studio.gui import fmt
from qlora_studio.gui.panels.evaluation_panel import evaluation_summary

STATUS_COLORS = {"finished": "#15803d", "running": "#2563eb", "stopped": "#b45309", "interrupted": "#b45309",
                 "failed": "#b91c1c"}


class RunsModel(QAbstractTableModel):
    COLUMNS = ["Run", "Status", "Steps", "Final loss", "Method", "Model", "Quantization", "LoRA", "Started", "Time",
               "Peak VRAM", "Evaluation"]
    NUMBERS = ("Steps", "Final loss", "Time", "Peak VRAM")  # right-aligned

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
        if role == Qt.ItemDataRole.TextAlignmentRole and self.COLUMNS[col] in self.NUMBERS:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _text(self, run, col: int) -> str:
        name = self.COLUMNS[col]
        if name == "Steps":
            return f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step)
        if name == "Final loss":
            return fmt.loss(run.final_loss)
        if name == "Method":
            return run.method.upper()  # core's RunSummary read it from the run's config.yaml
        if name == "Model":
            return run.model.rstrip("/").split("/")[-1]
        if name == "Started":
            return fmt.timestamp(run.started_at)
        if name == "Time":
            return fmt.duration(run.elapsed_s)
        if name == "Evaluation":
            return evaluation_summary(self.evaluations.get(str(run.path)))
        if name == "Peak VRAM":
            return f"{run.peak_vram_gb:.2f} GiB" if run.peak_vram_gb is not None else "–"
        return {"Run": run.name, "Status": run.status, "Quantization": run.quantization, "LoRA": run.lora}[name]

    def _sort_key(self, run, col: int) -> Any:
        keys = {"Steps": run.step, "Final loss": run.final_loss if run.final_loss is not None else float("inf"),
                "Started": run.started_at or 0, "Time": run.elapsed_s or 0, "Peak VRAM": run.peak_vram_gb or 0}
        return keys.get(self.COLUMNS[col], self._text(run, col))


class RunsTable(QTableView):
    """The view over a `RunsModel` (`runs_model`: `model()` is Qt's, the sorting proxy), in run terms:
    the selected runs, select these folders, a run's progress."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("runsTable")
        self.runs_model = RunsModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.runs_model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(RunsModel.COLUMNS.index("Started"), Qt.SortOrder.DescendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        header = self.horizontalHeader()
        # The run's name is what tells runs apart: always whole. The model column (also in the name)
        # takes what is left; on a narrow screen the table scrolls sideways rather than cut names.
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(RunsModel.COLUMNS.index("Model"), QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)

    def set_runs(self, runs: list[Any], evaluations: dict[str, Any]) -> None:
        """New rows; the runs that were selected stay selected."""
        selected = {str(r.path) for r in self.selected_runs()}
        self.runs_model.set_runs(runs, evaluations)
        self._select(selected)

    def selected_runs(self) -> list[Any]:
        rows = sorted({self.proxy.mapToSource(i).row() for i in self.selectionModel().selectedRows()})
        return [self.runs_model.runs[r] for r in rows if r < len(self.runs_model.runs)]

    def select_paths(self, paths: list[str | Path]) -> None:
        self.selectionModel().clearSelection()
        self._select({str(p) for p in paths})

    def _select(self, wanted: set[str]) -> None:
        selection = self.selectionModel()
        for row in range(self.proxy.rowCount()):
            source = self.proxy.mapToSource(self.proxy.index(row, 0))
            if str(self.runs_model.runs[source.row()].path) in wanted:
                selection.select(self.proxy.index(row, 0),
                                 selection.SelectionFlag.Select | selection.SelectionFlag.Rows)

    def show_progress(self, run_dir: str | None, step: int, total_steps: int) -> None:
        """The running run's row follows its steps (a refresh reads the same from status.json)."""
        model = self.runs_model
        for row, run in enumerate(model.runs):
            if run_dir and str(run.path) == str(run_dir):
                run.step, run.total_steps = step, total_steps
                last = model.columnCount() - 1
                model.dataChanged.emit(model.index(row, 0), model.index(row, last))
                return
