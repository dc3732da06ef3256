"""The model library dialog: the models in the Hugging Face cache and in the user's GGUF folders, with
size on disk, architecture, parameters and whether the run would fit the chosen card; delete from
the cache, add GGUF folders, and download a Hub model with progress and a cancel.

Everything it shows comes from core (`model.library`, `model.download`, `planner.library`); listing,
deleting and planning run off the GUI thread, a download in its own process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from qlora_studio.gui import fmt
from qlora_studio.gui.widgets.model_download import DownloadPanel
from qlora_studio.gui.workers.tasks import TaskRunner

COLUMNS = ["Model", "Source", "Size", "Architecture", "Parameters", "Fits"]
FIT_COLORS = {"fits": "#15803d", "fits with changes": "#b45309", "too big": "#b91c1c"}


@dataclass
class LibraryContext:
    """What the dialog needs from the page it serves: the run config, the chosen card, the folders."""

    config: Callable[[], Any]  # the current RunConfig
    budget_gb: Callable[[], float | None]
    gguf_folders: Callable[[], list[str]]
    set_gguf_folders: Callable[[list[str]], None]

    @classmethod
    def for_setup_page(cls, page) -> "LibraryContext":
        def folders() -> list[str]:
            return [f for f in page.settings.get("library/gguf_folders").split("\n") if f]

        return cls(lambda: page.config, lambda: page.memory.budget_gb, folders,
                   lambda values: page.settings.set("library/gguf_folders", "\n".join(values)))


def _scan(folders: list[str]):
    from qlora_studio.core.model.library import scan_library

    return scan_library(folders)


def _fit(config, name: str, budget_gb: float | None):
    from qlora_studio.core.planner.library import fit_model

    return fit_model(config, name, budget_gb)


def _delete(repo_id: str, cache_dir: str) -> int:
    from qlora_studio.core.model.library import delete_cached_model

    return delete_cached_model(repo_id, cache_dir)


def describe(model) -> str:
    """One line for a combo box tooltip and the table's tooltips."""
    parts = [fmt.size(model.size_bytes), model.architecture or "architecture unknown",
             f"{fmt.params(model.params)} parameters" if model.params else ""]
    text = " · ".join(p for p in parts if p)
    return f"{text} · {model.problem}" if model.problem else text


class ModelLibraryDialog(QDialog):
    model_chosen = Signal(str)  # a model.name_or_path
    scanned = Signal()  # the table shows a fresh listing
    fitted = Signal()  # every row has the planner's verdict
    download_finished = Signal(object)  # (the repo id, or None when it failed or was cancelled)

    def __init__(self, context: LibraryContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("modelLibrary")
        self.setWindowTitle("Model library")
        self.resize(980, 560)
        self.context = context
        self.library = None
        self.models: list[Any] = []
        self.fits: dict[str, Any] = {}
        self._fit_queue: list[str] = []

        self.where = QLabel("")
        self.where.setObjectName("libraryWhere")
        self.where.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("libraryTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(lambda _: self.use_selected())

        self.use_button = QPushButton("Use this model")
        self.use_button.setObjectName("useModelButton")
        self.use_button.setDefault(True)
        self.delete_button = QPushButton("Delete from cache…")
        self.delete_button.setObjectName("deleteModelButton")
        self.add_folder_button = QPushButton("Add GGUF folder…")
        self.add_folder_button.setObjectName("addGgufFolderButton")
        self.remove_folder_button = QPushButton("Forget GGUF folders")
        self.remove_folder_button.setObjectName("forgetGgufFoldersButton")
        self.remove_folder_button.setToolTip("Stop listing .gguf files from the folders you added (the files stay)")
        self.refresh_button = QPushButton("Refresh")
        self.cleanup_button = QPushButton("")
        self.cleanup_button.setObjectName("cleanupButton")
        self.cleanup_button.setToolTip("Delete the partial files that interrupted downloads left in the cache")
        self.cleanup_button.hide()
        actions = QHBoxLayout()
        for button in (self.use_button, self.delete_button, self.add_folder_button, self.remove_folder_button,
                       self.cleanup_button):
            actions.addWidget(button)
        actions.addStretch(1)
        actions.addWidget(self.refresh_button)

        self.downloads = DownloadPanel(lambda: self.library.cache_dir if self.library else None)
        self.downloads.finished.connect(self._on_downloaded)
        self.downloads.started.connect(lambda _repo: self._update_buttons())

        layout = QVBoxLayout(self)
        layout.addWidget(self.where)
        layout.addWidget(self.table, 1)
        layout.addLayout(actions)
        layout.addWidget(self.downloads)

        self.use_button.clicked.connect(self.use_selected)
        self.delete_button.clicked.connect(lambda: self.delete_selected())
        self.add_folder_button.clicked.connect(lambda: self.add_gguf_folder())
        self.remove_folder_button.clicked.connect(self._forget_folders)
        self.refresh_button.clicked.connect(self.refresh)
        self.cleanup_button.clicked.connect(self._clean_up)

        self.scanner = TaskRunner(_scan, self)
        self.scanner.result.connect(self._on_scanned)
        self.scanner.error.connect(lambda _tag, error: self.where.setText(f"Cannot read the cache: {error.reason}"))
        self.fitter = TaskRunner(_fit, self)
        self.fitter.result.connect(self._on_fit)
        self.fitter.error.connect(self._on_fit_error)
        self.deleter = TaskRunner(_delete, self)
        self.deleter.result.connect(self._on_deleted)
        self.deleter.error.connect(lambda _tag, error: self._say(f"Not deleted: {error.reason}", error=True))
        self._update_buttons()
        self.refresh()

    # ---- listing ----
    def refresh(self) -> None:
        self.where.setText("Reading the Hugging Face cache…")
        self.scanner.request(self.context.gguf_folders())

    @Slot(object, object)
    def _on_scanned(self, _tag, library) -> None:
        self.library = library
        self.models = list(library.models)
        budget = self.context.budget_gb()
        card = f"a {budget:g} GB card" if budget else "no card chosen"
        folders = self.context.gguf_folders()
        self.where.setText(
            f"<b>{len(self.models)}</b> models · Hugging Face cache <code>{fmt.escape(str(library.cache_dir))}</code>"
            + (f" · GGUF folders: {fmt.escape(', '.join(folders))}" if folders else "")
            + f"<br>Fits: the planner's estimate of this run's settings with each model, on {card}.")
        self.table.setHorizontalHeaderItem(5, QTableWidgetItem(f"Fits {budget:g} GB" if budget else "Fits"))
        self.table.setRowCount(len(self.models))
        for row, model in enumerate(self.models):
            source = "HF cache" if model.kind == "hub" else "GGUF"
            cells = [model.name if model.kind == "hub" else Path(model.name).name, source, fmt.size(model.size_bytes),
                     model.architecture or "–", fmt.params(model.params), "…" if model.trainable else "–"]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{model.name}\n{describe(model)}" + "".join(f"\n{n}" for n in model.notes))
                if col in (2, 4):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if not model.trainable:
                    item.setForeground(Qt.GlobalColor.gray)
                self.table.setItem(row, col, item)
            if not model.trainable:
                self.table.item(row, 5).setText(model.problem)
        if library.incomplete_bytes:
            self.cleanup_button.setText(f"Remove partial downloads ({fmt.size(library.incomplete_bytes)})")
        self.cleanup_button.setVisible(bool(library.incomplete_bytes))
        self._update_buttons()
        self.scanned.emit()
        self._fit_queue = [m.name for m in self.models if m.trainable]
        self.fits = {}
        self._next_fit()

    def _next_fit(self) -> None:
        if not self._fit_queue:
            self.fitted.emit()
            return
        name = self._fit_queue.pop(0)
        self.fitter.request(self.context.config(), name, self.context.budget_gb(), tag=name)

    @Slot(object, object)
    def _on_fit(self, name: str, fit) -> None:
        self.fits[name] = fit
        row = self._row_of(name)
        if row is not None:
            item = self.table.item(row, 5)
            item.setText(fit.verdict if fit.verdict != "no budget" else f"{fit.peak_gb:.1f} GiB")
            item.setToolTip(f"{name}\n{fit.detail}")
            if fit.verdict in FIT_COLORS:
                item.setForeground(QColor(FIT_COLORS[fit.verdict]))
        self._next_fit()

    @Slot(object, object)
    def _on_fit_error(self, name: str, error) -> None:
        row = self._row_of(name)
        if row is not None:
            self.table.item(row, 5).setText("no estimate")
            self.table.item(row, 5).setToolTip(error.reason)
        self._next_fit()

    def _row_of(self, name: str) -> int | None:
        return next((i for i, m in enumerate(self.models) if m.name == name), None)

    # ---- actions ----
    def selected(self):
        rows = self.table.selectionModel().selectedRows()
        return self.models[rows[0].row()] if rows and rows[0].row() < len(self.models) else None

    def select(self, name: str) -> None:
        row = self._row_of(name)
        if row is not None:
            self.table.selectRow(row)

    def _update_buttons(self) -> None:
        model = self.selected()
        self.use_button.setEnabled(model is not None and model.trainable)
        self.delete_button.setEnabled(model is not None and model.kind == "hub" and self.downloads.job is None)
        self.remove_folder_button.setEnabled(bool(self.context.gguf_folders()))

    def use_selected(self) -> None:
        model = self.selected()
        if model is not None and model.trainable:
            self.model_chosen.emit(model.name)
            self.accept()

    def delete_selected(self, confirm: bool = True) -> None:
        model = self.selected()
        if model is None or model.kind != "hub":
            return
        if confirm:
            answer = QMessageBox.question(
                self, "Delete from the cache",
                f"Delete {model.name} ({fmt.size(model.size_bytes)}) from the Hugging Face cache?\n\n"
                "Other programs that use the cache lose it too; it can be downloaded again.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return
        self._say(f"Deleting {model.name}…")
        self.deleter.request(model.name, str(self.library.cache_dir), tag=model.name)

    @Slot(object, object)
    def _on_deleted(self, name: str, freed: int) -> None:
        self._say(f"Deleted {name}: {fmt.size(freed)} freed")
        self.refresh()

    def add_gguf_folder(self, folder: str | None = None) -> None:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "A folder with .gguf files", str(Path.home()))
        if folder:
            folders = self.context.gguf_folders()
            if folder not in folders:
                self.context.set_gguf_folders([*folders, folder])
            self.refresh()

    def _forget_folders(self) -> None:
        self.context.set_gguf_folders([])
        self.refresh()

    def _clean_up(self) -> None:
        from qlora_studio.core.model.library import delete_incomplete

        freed = delete_incomplete(self.library.cache_dir if self.library else None)
        self._say(f"Removed {fmt.size(freed)} of partial downloads")
        self.refresh()

    def _say(self, text: str, error: bool = False) -> None:
        self.downloads.say(text, error)

    def _on_downloaded(self, repo_id: str | None) -> None:
        self._update_buttons()
        if repo_id is not None:  # list it, and select it once listed
            self.scanned.connect(self._select_downloaded)
            self.refresh()
        self.download_finished.emit(repo_id)

    def _select_downloaded(self) -> None:
        self.scanned.disconnect(self._select_downloaded)
        self.select(self.downloads.repo_id)

    def shutdown(self) -> None:
        """The window is closing: cancel a download, wait for the running task. (Closing the dialog
        only hides it: a download goes on, and the picker shows the dialog again.)"""
        self.downloads.cancel()
        for runner in (self.scanner, self.fitter, self.deleter):
            runner.shutdown()
