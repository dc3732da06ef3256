"""The training toolbar: Start, Pause/Resume, Stop, Save now, and "+ N steps"."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QPushButton, QSpinBox, QStyle, QToolBar, QWidget

from qlora_studio.gui.widgets.form import guard_wheel


START_TIP = "Train with the settings on the Setup page (Ctrl+Enter)"


class TrainingToolbar(QToolBar):
    def __init__(self, extend_steps: int, parent: QWidget | None = None):
        super().__init__("Training", parent)
        self.setObjectName("trainingToolbar")
        self.setMovable(False)
        self.setIconSize(QSize(18, 18))
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        icon = self.style().standardIcon
        P = QStyle.StandardPixmap
        self.start_action = self._action("startAction", icon(P.SP_MediaPlay), "Start", START_TIP)
        self.start_action.setShortcut(QKeySequence("Ctrl+Return"))
        self.pause_action = self._action("pauseAction", icon(P.SP_MediaPause), "Pause",
                                         "Hold training after the current step (the model stays loaded)")
        self.pause_action.setCheckable(True)
        self.pause_action.toggled.connect(self._show_pause_state)
        self.stop_action = self._action("stopAction", icon(P.SP_MediaStop), "Stop",
                                        "Stop after the current step and save a checkpoint (resumable)")
        self.save_action = self._action("saveAction", icon(P.SP_DialogSaveButton), "Save now",
                                        "Write a resumable checkpoint after the current step")
        self.addSeparator()
        self.extend_spin = guard_wheel(QSpinBox())
        self.extend_spin.setObjectName("extendSpin")
        self.extend_spin.setRange(1, 1_000_000)
        self.extend_spin.setValue(extend_steps)
        self.extend_spin.setToolTip("Steps to add to the running plan")
        self.extend_button = QPushButton("+ steps")
        self.extend_button.setObjectName("extendButton")
        self.extend_button.setToolTip("Train this many more steps than planned (the schedule stretches)")
        self.addWidget(self.extend_spin)
        self.addWidget(self.extend_button)

    def _action(self, name: str, icon, text: str, tip: str) -> QAction:
        action = QAction(icon, text, self)
        action.setObjectName(name)
        action.setToolTip(tip)
        self.addAction(action)
        return action

    def _show_pause_state(self, paused: bool) -> None:
        P = QStyle.StandardPixmap
        self.pause_action.setText("Resume" if paused else "Pause")
        self.pause_action.setIcon(self.style().standardIcon(P.SP_MediaPlay if paused else P.SP_MediaPause))

    def set_state(self, running: bool, stopping: bool, blocked: str = "") -> None:
        """`blocked`: why Setup's settings cannot start a run (shown as Start's tooltip)."""
        steerable = running and not stopping
        self.start_action.setEnabled(not running and not blocked)
        self.start_action.setToolTip(f"Cannot start: {blocked}" if blocked and not running else START_TIP)
        for widget in (self.pause_action, self.stop_action, self.save_action, self.extend_button):
            widget.setEnabled(steerable)
        if not running:
            self.pause_action.setChecked(False)  # shows "Pause" again; the run is gone, so nothing to resume
