"""Notes on one run, kept in its folder as notes.md: saved a moment after typing stops, and whenever
the page lets go of the run (another selection, a refresh, a rename, closing the window)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget

SAVE_AFTER_MS = 600


class RunNotes(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.editor = QPlainTextEdit()
        self.editor.setObjectName("runNotes")
        self.editor.setPlaceholderText("Notes on the selected run (saved in its folder as notes.md)")
        self.label = QLabel("Notes")
        self.run: str | None = None  # the folder the notes shown belong to
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SAVE_AFTER_MS)
        self._timer.timeout.connect(self.save)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.editor, 1)
        self.editor.textChanged.connect(lambda: self._timer.start() if self.run else None)

    def show_run(self, run: Any | None) -> None:
        """`run`'s notes (a core RunSummary), or none to edit (no run, or several, selected)."""
        from qlora_studio.core.after.runs import read_notes

        self.save()
        self.run = str(run.path) if run is not None else None
        self.editor.blockSignals(True)
        self.editor.setPlainText(read_notes(self.run) if self.run else "")
        self.editor.blockSignals(False)
        self.editor.setEnabled(self.run is not None)
        self.label.setText(f"Notes: {run.name}" if self.run else "Notes (select one run)")

    def save(self) -> None:
        from qlora_studio.core.after.runs import write_notes

        self._timer.stop()
        if self.run and Path(self.run).is_dir():
            write_notes(self.run, self.editor.toPlainText())

    def forget(self) -> None:
        """The run's folder is moving or going: nothing more is written to it."""
        self.run = None
