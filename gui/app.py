"""The desktop app's entry point."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication.instance() or QApplication(sys.argv[:1] + list(argv or []))
    label = QLabel("QLoRA Studio")
    label.resize(480, 200)
    label.show()
    return app.exec()
