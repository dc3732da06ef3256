"""The run log: warnings, checkpoints and settings changes, time-stamped and coloured by kind."""

from __future__ import annotations

import time

from PySide6.QtGui import QFont, QTextCursor
from PySide6.QtWidgets import QPlainTextEdit, QWidget

from qlora_studio.gui import fmt

LOG_LINES = 5000
COLORS = {"warning": "#b45309", "error": "#b91c1c", "checkpoint": "#15803d", "change": "#7c3aed"}
TAGS = {"warning": "warning", "error": "error", "checkpoint": "saved", "change": "changed"}


class RunLog(QPlainTextEdit):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("runLog")
        self.setReadOnly(True)
        self.setMaximumBlockCount(LOG_LINES)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        mono.setPointSize(9)
        self.setFont(mono)
        self.setPlaceholderText("Warnings, checkpoints and settings changes appear here.")

    def append(self, kind: str, text: str) -> None:
        prefix = f"<b>{TAGS[kind]}</b> " if kind in TAGS else ""
        self.appendHtml(f"<span style='color:#94a3b8'>{time.strftime('%H:%M:%S')}</span> "
                        f"<span style='color:{COLORS.get(kind, '#334155')}'>{prefix}{fmt.escape(text)}</span>")
        self.moveCursor(QTextCursor.MoveOperation.End)
