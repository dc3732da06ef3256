"""Pickers for the two things a run starts from: a model (Hub id, folder or .gguf, with what
config.json says about it) and a dataset (file, folder, Hub id or bundled sample)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QCompleter,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui import fmt
from qlora_studio.gui.widgets.form import fit_text_width
from qlora_studio.gui.workers.tasks import DebouncedTask, TaskRunner

MODEL_INFO_DEBOUNCE_MS = 400
DATA_FILTER = "Datasets (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)"


def _model_info(name: str, trust_remote_code: bool):
    from qlora_studio.core.model.info import model_info

    return model_info(name, trust_remote_code)


def _cached_models(gguf_folders: list[str]):
    from qlora_studio.core.model.library import scan_library

    return scan_library(gguf_folders).models


class ModelPicker(QWidget):
    """An editable combo of the models in the Hub cache, folder and GGUF buttons, and a line saying
    what the chosen model is (read from its config.json off the GUI thread)."""

    info_ready = Signal(object)  # core ModelInfo
    info_failed = Signal(str)  # the one-line reason shown in red

    def __init__(self, start_folder, parent: QWidget | None = None):
        super().__init__(parent)
        self.start_folder = start_folder  # () -> str
        self.combo = fit_text_width(QComboBox(), 16)
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.lineEdit().setPlaceholderText("Hub id (org/name), a model folder, or a .gguf file")
        completer = QCompleter(self)  # takes the combo's own item list (the models in the Hub cache)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.combo.setCompleter(completer)
        folder = QPushButton("Folder…")
        folder.setObjectName("modelFolderButton")
        folder.setToolTip("A local model folder (with config.json)")
        folder.clicked.connect(self._browse_folder)
        gguf = QPushButton("GGUF…")
        gguf.setObjectName("modelGgufButton")
        gguf.setToolTip("A .gguf file: converted once to a model folder in the cache")
        gguf.clicked.connect(self._browse_gguf)
        library = QPushButton("Library…")
        library.setObjectName("modelLibraryButton")
        library.setToolTip("Models on this computer (Hugging Face cache, GGUF folders): size, parameters, whether\n"
                           "they fit your card; delete from the cache, or download one from the Hub")
        library.clicked.connect(self.open_library)
        self.library_context = None  # a LibraryContext, set by the page (config, card, GGUF folders)
        self.library_dialog = None
        self.info_label = QLabel("")
        self.info_label.setObjectName("modelInfo")
        self.info_label.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(folder)
        row.addWidget(gguf)
        row.addWidget(library)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.info_label)

        self.info_task = DebouncedTask(_model_info, MODEL_INFO_DEBOUNCE_MS, self)
        self.info_task.result.connect(self._on_info)
        self.info_task.error.connect(self._on_info_error)
        self.cache_task = TaskRunner(_cached_models, self)
        self.cache_task.result.connect(self._on_cached)
        self.cache_task.request([])
        self._asked_for: str | None = None

    def describe(self, name: str, trust_remote_code: bool) -> None:
        """Read what `name` is (debounced); the label says so until the answer comes."""
        name = name.strip()
        self._asked_for = name
        if not name:
            self.info_label.setText("")
            return
        self.info_label.setText("<span style='color:#64748b'>Reading config.json…</span>")
        self.info_task.schedule(name, trust_remote_code, tag=name)

    @Slot(object, object)
    def _on_info(self, name: str, info) -> None:
        if name != self._asked_for:
            return
        ctx = f"{info.context_length:,}" if info.context_length else "?"
        note = f"<br><span style='color:#b45309'>{fmt.escape(info.note)}</span>" if info.note else ""
        self.info_label.setText(f"<b>{fmt.escape(info.architecture)}</b> · {fmt.params(info.params)} parameters · "
                                f"{info.layers} layers · context {ctx} tokens{note}")
        self.info_ready.emit(info)

    @Slot(object, object)
    def _on_info_error(self, name: str, error) -> None:
        if name == self._asked_for:
            self.info_label.setText(f"<span style='color:#b91c1c'>{fmt.escape(error.reason)}</span>")
            self.info_failed.emit(error.reason)

    @Slot(object, object)
    def _on_cached(self, _tag, models) -> None:
        from qlora_studio.core.config import DEMO_MODEL_ID
        from qlora_studio.gui.widgets.model_library import describe

        current = self.combo.currentText()
        self.combo.blockSignals(True)
        self.combo.clear()
        trainable = {m.name: m for m in models if m.trainable}
        for name in sorted(set(trainable) | {DEMO_MODEL_ID}):
            self.combo.addItem(name)
            if name in trainable:  # size, architecture, parameters as the item's tooltip
                self.combo.setItemData(self.combo.count() - 1, describe(trainable[name]), Qt.ItemDataRole.ToolTipRole)
        self.combo.setCurrentText(current)
        self.combo.blockSignals(False)

    def set_library_context(self, context) -> None:
        self.library_context = context
        self.cache_task.request(context.gguf_folders())

    def open_library(self):
        """The model library dialog (made once; closing it hides it, a download goes on)."""
        from qlora_studio.gui.widgets.model_library import ModelLibraryDialog

        if self.library_context is None:
            return None
        if self.library_dialog is None:
            self.library_dialog = ModelLibraryDialog(self.library_context, self)
            self.library_dialog.model_chosen.connect(self.combo.setCurrentText)
            self.library_dialog.scanned.connect(lambda: self._on_cached(None, self.library_dialog.models))
        else:
            self.library_dialog.refresh()
        self.library_dialog.show()
        self.library_dialog.raise_()
        return self.library_dialog

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder", self.start_folder())
        if folder:
            self.combo.setCurrentText(folder)

    def _browse_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF model", self.start_folder(), "GGUF (*.gguf)")
        if path:
            self.combo.setCurrentText(path)

    def shutdown(self) -> None:
        self.info_task.shutdown()
        self.cache_task.shutdown()
        if self.library_dialog is not None:
            self.library_dialog.shutdown()


class DataPicker(QWidget):
    """A path line (with the bundled samples as completions) and file / folder buttons."""

    def __init__(self, start_folder, parent: QWidget | None = None):
        from qlora_studio.resources import sample_names

        super().__init__(parent)
        self.start_folder = start_folder
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("A file, a folder, a Hub dataset id (org/name) or sample:<name>")
        completer = QCompleter([f"sample:{name}" for name in sample_names()], self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.edit.setCompleter(completer)
        file_button = QPushButton("File…")
        file_button.setObjectName("dataFileButton")
        file_button.clicked.connect(self._browse_file)
        folder_button = QPushButton("Folder…")
        folder_button.setObjectName("dataFolderButton")
        folder_button.setToolTip("A folder of data files, or a datasets save_to_disk folder")
        folder_button.clicked.connect(self._browse_folder)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(file_button)
        row.addWidget(folder_button)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset file", self.start_folder(), DATA_FILTER)
        if path:
            self.edit.setText(path)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder", self.start_folder())
        if folder:
            self.edit.setText(folder)
