"""The window's message boxes: an error with its details behind a button, and the questions a run
asks the user (load pickled weights? what now, out of memory at micro-batch 1? stop the run to quit?
how many more steps?)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QInputDialog, QMessageBox, QWidget


def show_error(parent: QWidget, title: str, reason: str, details: str = "") -> QMessageBox:
    """A non-blocking error dialog: the one-line reason, the traceback behind "Show Details…"."""
    box = QMessageBox(QMessageBox.Icon.Critical, title, reason, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorDialog")
    if details:
        box.setDetailedText(details)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


def ask_pickle_consent(parent: QWidget, origin: str, pickles: list[str]) -> bool:
    answer = QMessageBox.warning(
        parent, "Load pickled weights?",
        f"{origin} holds its weights only as pickle files ({', '.join(pickles[:3])}).\n\n"
        "Loading a pickle can run any code hidden in it, with your permissions. Load it only if you trust where "
        "this model came from (safetensors weights carry no such risk).",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def ask_decision(parent: QWidget, question: str, options: list[str]) -> str:
    """One of `options` (the last when the box is closed without a choice)."""
    box = QMessageBox(QMessageBox.Icon.Question, "Training needs a decision", question, parent=parent)
    buttons = {box.addButton(option.capitalize(), QMessageBox.ButtonRole.AcceptRole): option for option in options}
    box.exec()
    return buttons.get(box.clickedButton(), options[-1])


def confirm_quit_during_run(parent: QWidget) -> bool:
    answer = QMessageBox.question(
        parent, "Quit QLoRA Studio",
        "A run is training. Stop it (saving a checkpoint you can resume) and quit?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def ask_extra_steps(parent: QWidget, run_name: str, default: int) -> int | None:
    """Steps to add to a finished run's plan ("Train more"); None when cancelled."""
    steps, ok = QInputDialog.getInt(parent, "Train more", f"Steps to add to {run_name}:", default, 1, 1_000_000)
    return steps if ok else None
