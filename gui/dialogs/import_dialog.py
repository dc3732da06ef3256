"""Import an axolotl or LLaMA-Factory config from the Setup page: what was carried over, every key that
was not (and why), then open it in the form or save it as a config of ours. The mapping is core's
(`core.config.importers`); this only shows it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from qlora_studio.gui import fmt

IMPORT_FILTER = "axolotl / LLaMA-Factory config (*.yaml *.yml *.json);;All files (*)"


class ImportConfigDialog(QDialog):
    def __init__(self, imported, parent: QWidget | None = None):
        from qlora_studio.core.config.importers import TOOL_NAMES, short

        super().__init__(parent)
        self.setObjectName("importConfigDialog")
        self.setWindowTitle(f"Import {TOOL_NAMES[imported.tool]} config")
        self.resize(900, 560)
        self.imported = imported
        self.saved_to: Path | None = None
        dropped = imported.not_carried
        summary = QLabel(
            f"<b>{fmt.escape(imported.source.name)}</b> is a {TOOL_NAMES[imported.tool]} config: "
            f"<b>{len(imported.carried)}</b> settings carried over, <b>{len(dropped)}</b> not. "
            "The source tool's own defaults are written out where ours differ, so the import trains what it would "
            "have trained. Check the model and the dataset path before you start."
            + "".join(f"<br><b>Replaced to run here:</b> {fmt.escape(line)}" for line in imported.replaced))
        summary.setObjectName("importSummary")
        summary.setWordWrap(True)

        self.dropped_table = QTableWidget(len(dropped), 3)
        self.dropped_table.setObjectName("notCarriedTable")
        self.dropped_table.setHorizontalHeaderLabels(["Key", "Value", "Why it is not carried over"])
        for row, (key, value, why) in enumerate(dropped):
            for col, text in enumerate((key, short(value, 60), why)):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.dropped_table.setItem(row, col, item)
        self.dropped_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.dropped_table.verticalHeader().setVisible(False)
        self.dropped_table.setWordWrap(False)
        header = self.dropped_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(1, 200)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.carried_text = QPlainTextEdit("\n".join(imported.carried))
        self.carried_text.setObjectName("carriedText")
        self.carried_text.setReadOnly(True)
        self.yaml_text = QPlainTextEdit(imported.to_yaml())
        self.yaml_text.setObjectName("importedYaml")
        self.yaml_text.setReadOnly(True)
        tabs = QTabWidget()
        tabs.addTab(self.dropped_table, f"Not carried over ({len(dropped)})")
        tabs.addTab(self.carried_text, f"Carried over ({len(imported.carried)})")
        tabs.addTab(self.yaml_text, "As our config")

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.open_button = buttons.addButton("Open in Setup", QDialogButtonBox.ButtonRole.AcceptRole)
        self.open_button.setObjectName("openImportedButton")
        self.open_button.setDefault(True)
        self.save_button = buttons.addButton("Save as…", QDialogButtonBox.ButtonRole.ActionRole)
        self.save_button.setObjectName("saveImportedButton")
        self.save_button.clicked.connect(lambda: self.save())
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(summary)
        layout.addWidget(tabs, 1)
        layout.addWidget(buttons)

    def save(self, path: str | Path | None = None) -> Path | None:
        """Our YAML, with every key not carried over listed in its header."""
        if path is None:
            start = self.imported.source.with_name(self.imported.source.stem + "-qlora-studio.yaml")
            path, _ = QFileDialog.getSaveFileName(self, "Save imported config", str(start), "Config (*.yaml *.yml)")
            if not path:
                return None
        Path(path).write_text(self.imported.to_yaml(), encoding="utf-8")
        self.saved_to = Path(path)
        self.save_button.setText(f"Saved: {self.saved_to.name}")
        return self.saved_to


def import_config_file(page, path: str | Path | None = None) -> ImportConfigDialog | None:
    """Ask for a file (unless given), import it and show the dialog (non-modal); "Open in Setup" puts it
    into `page` (a SetupPage), keeping the user's runs folder. Errors go to the page's error signal."""
    from qlora_studio.core.config import absolute_paths
    from qlora_studio.core.errors import UserError

    if path is None:
        path, _ = QFileDialog.getOpenFileName(page, "Import an axolotl or LLaMA-Factory config",
                                              page.settings.get("setup/config_folder") or str(Path.home()), IMPORT_FILTER)
        if not path:
            return None
    from qlora_studio.core.config.importers import import_config

    try:
        imported = import_config(path)
    except UserError as exc:
        page.error.emit("Import config", str(exc), "")
        return None
    dialog = ImportConfigDialog(imported, page)

    def open_in_setup() -> None:
        # relative data and model paths are the source file's; runs go to the user's runs folder
        config = absolute_paths(imported.config, imported.source.parent)
        page.set_config(config.with_overrides({"output_dir": page.settings.output_dir()}))

    dialog.accepted.connect(open_in_setup)
    dialog.finished.connect(dialog.deleteLater)
    dialog.open()
    return dialog
