"""The editor of the `probes` list: prompts the model answers before training and at every
checkpoint. Prompts may span lines, so each is edited in a multi-line dialog; "From validation
data" fills the list with prompts the dataset X-ray found in the held-out rows."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QInputDialog,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

SUGGESTED = 3


class ProbesEditor(QWidget):
    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.suggestions: list[str] = []
        self.list = QListWidget()
        self.list.setObjectName("probeList")
        self.list.setMaximumHeight(96)
        self.list.setAlternatingRowColors(True)
        self.add_button = QPushButton("Add…")
        self.add_button.setObjectName("addProbeButton")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setObjectName("removeProbeButton")
        self.suggest_button = QPushButton("From validation data")
        self.suggest_button.setObjectName("suggestProbesButton")
        self.suggest_button.setToolTip("Use the first prompts of the held-out rows (found by the dataset X-ray)")
        buttons = QVBoxLayout()
        for button in (self.add_button, self.remove_button, self.suggest_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self.add_button.clicked.connect(lambda: self.edit_prompt(None))
        self.remove_button.clicked.connect(self.remove_selected)
        self.suggest_button.clicked.connect(self.use_suggestions)
        self.list.itemDoubleClicked.connect(self.edit_prompt)
        self.list.currentRowChanged.connect(lambda _: self._update())
        self._update()

    # ---- the Binding protocol (widgets.form) ----
    def value(self) -> list[str]:
        return [self.list.item(i).data(256) for i in range(self.list.count())]

    def setValue(self, prompts: list[str] | None) -> None:  # noqa: N802 - Qt naming, like its neighbours
        self.list.clear()
        for prompt in prompts or []:
            self._add_item(prompt)
        self._update()

    # ---- editing ----
    def _add_item(self, prompt: str) -> None:
        item = QListWidgetItem(" ⏎ ".join(prompt.splitlines()))
        item.setData(256, prompt)  # Qt.UserRole: the prompt as written
        item.setToolTip(prompt)
        self.list.addItem(item)

    def edit_prompt(self, item: QListWidgetItem | None = None) -> None:
        text, ok = QInputDialog.getMultiLineText(self, "Probe prompt", "The message the model answers at each checkpoint:",
                                                 item.data(256) if item else "")
        if not ok or not text.strip():
            return
        if item is None:
            self._add_item(text.strip())
        else:
            item.setData(256, text.strip())
            item.setText(" ⏎ ".join(text.strip().splitlines()))
            item.setToolTip(text.strip())
        self._edited()

    def remove_selected(self) -> None:
        row = self.list.currentRow()
        if row >= 0:
            self.list.takeItem(row)
            self._edited()

    def set_suggestions(self, prompts: list[str]) -> None:
        self.suggestions = list(prompts or [])
        self._update()

    def use_suggestions(self) -> None:
        if self.suggestions:
            self.setValue(self.suggestions[:SUGGESTED])
            self._edited()

    def _edited(self) -> None:
        self._update()
        self.changed.emit()

    def _update(self) -> None:
        self.remove_button.setEnabled(self.list.currentRow() >= 0)
        self.suggest_button.setEnabled(bool(self.suggestions))
        self.list.setToolTip("" if self.list.count() else "No probes: the taste test is off")
