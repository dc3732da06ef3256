"""The row above the setup form: a bundled preset to start from, and a config file to load, import
(axolotl, LLaMA-Factory) or save. It asks for files and names the preset Setup holds; reading and
writing configs is the setup page's, through core."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from qlora_studio.core.config import RunConfig, load_config
from qlora_studio.core.errors import ConfigError
from qlora_studio.gui.widgets.form import fit_text_width, guard_wheel

CONFIG_FILTER = "Config (*.yaml *.yml)"


class ConfigBar(QWidget):
    preset_chosen = Signal(str)  # a preset's name
    load_requested = Signal(str)  # the config file picked
    import_requested = Signal()
    save_requested = Signal(str)  # where to save

    def __init__(self, start_folder: Callable[[], str], parent: QWidget | None = None):
        """`start_folder`: where the file dialogs open (the last config's folder)."""
        from qlora_studio.resources import preset_paths

        super().__init__(parent)
        self._start_folder = start_folder
        self._presets: dict[str, dict] | None = None  # each preset's config, to name the one Setup holds
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Preset"))
        self.preset_combo = guard_wheel(fit_text_width(QComboBox(), 10))
        self.preset_combo.setObjectName("presetCombo")
        self.preset_combo.addItems(list(preset_paths()))
        self.preset_combo.setPlaceholderText("your own settings")  # shown while no preset is what Setup holds
        self.preset_combo.setCurrentIndex(-1)
        self.preset_combo.setToolTip("Load a bundled starting point (the output folder stays yours)")
        self.preset_combo.activated.connect(lambda _: self.preset_chosen.emit(self.preset_combo.currentText()))
        row.addWidget(self.preset_combo, 1)
        for name, text, slot in (("loadConfigButton", "Load config…", self._browse_load),
                                 ("importConfigButton", "Import…", self.import_requested),
                                 ("saveConfigButton", "Save config…", self._browse_save)):
            button = QPushButton(text)
            button.setObjectName(name)
            button.clicked.connect(slot)
            row.addWidget(button)

    def show_config(self, config: RunConfig) -> None:
        """The preset box names a preset only while Setup holds exactly it (any output folder)."""
        from qlora_studio.resources import preset_paths

        if self._presets is None:
            self._presets = {}
            for name, path in preset_paths().items():
                try:
                    self._presets[name] = load_config(path).model_dump(exclude={"output_dir"})
                except ConfigError:
                    continue
        shown = config.model_dump(exclude={"output_dir"})
        match = next((name for name, preset in self._presets.items() if preset == shown), None)
        self.preset_combo.setCurrentIndex(self.preset_combo.findText(match) if match else -1)

    def _browse_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load config", self._start_folder(), CONFIG_FILTER)
        if path:
            self.load_requested.emit(path)

    def _browse_save(self) -> None:
        start = str(Path(self._start_folder()) / "qlora-studio.yaml")
        path, _ = QFileDialog.getSaveFileName(self, "Save config", start, CONFIG_FILTER)
        if path:
            self.save_requested.emit(path)
