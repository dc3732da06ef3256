"""A line under the monitor's header for runs that report to TensorBoard: the command that opens the
run in TensorBoard, a button to copy it, and one that starts TensorBoard and opens it in the browser."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QProcess, Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget
from qlora_studio.gui import fmt

URL_RE = re.compile(r"(https?://[^\s]+:\d+/?)")


class TensorBoardHint(QFrame):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("tensorboardHint")
        self.logdir: Path | None = None
        self.url: str | None = None
        self.server: QProcess | None = None
        self._output = ""
        self.label = QLabel("")
        self.label.setObjectName("tensorboardCommand")
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.copy_button = QPushButton("Copy command")
        self.copy_button.setObjectName("copyTensorboardButton")
        self.copy_button.clicked.connect(self.copy_command)
        self.open_button = QPushButton("Open in TensorBoard")
        self.open_button.setObjectName("openTensorboardButton")
        self.open_button.setToolTip("Start TensorBoard on this run's event files and open it in the browser")
        self.open_button.clicked.connect(self.open_tensorboard)
        # A frozen app has no Python to run `tensorboard` with: copying the command is what is left.
        self.open_button.setVisible(importlib.util.find_spec("tensorboard") is not None and not getattr(sys, "frozen", False))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 3, 8, 3)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.copy_button)
        layout.addWidget(self.open_button)
        QCoreApplication.instance().aboutToQuit.connect(self.stop_server)
        self.hide()

    @property
    def command(self) -> str:
        from qlora_studio.core.training.reporting import tensorboard_command

        return tensorboard_command(self.logdir.parent) if self.logdir else ""

    def show_for(self, run_dir: str | None, reports_to_tensorboard: bool) -> None:
        """Shown for a run that writes TensorBoard events (or has some from an earlier session)."""
        from qlora_studio.core.training.reporting import tensorboard_dir

        logdir = tensorboard_dir(run_dir) if run_dir else None
        if logdir is None or not (reports_to_tensorboard or logdir.is_dir()):
            self.logdir = None
            self.hide()
            return
        if logdir != self.logdir:
            self.stop_server()
        self.logdir = logdir
        self.label.setText(f"<b>TensorBoard</b> · <code>{fmt.escape(self.command)}</code>")
        self.show()

    def copy_command(self) -> None:
        QGuiApplication.clipboard().setText(self.command)

    def open_tensorboard(self) -> None:
        if self.url and self.server is not None and self.server.state() != QProcess.ProcessState.NotRunning:
            QDesktopServices.openUrl(QUrl(self.url))
            return
        self.stop_server()
        self._output = ""
        self.server = QProcess(self)
        self.server.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.server.readyReadStandardOutput.connect(self._on_output)
        self.server.finished.connect(self._on_finished)
        self.open_button.setEnabled(False)
        self.open_button.setText("Starting TensorBoard…")
        # --port 0: any free port; TensorBoard prints the address it serves on.
        self.server.start(sys.executable, ["-m", "tensorboard.main", "--logdir", str(self.logdir), "--port", "0"])

    def _on_output(self) -> None:
        self._output += bytes(self.server.readAllStandardOutput()).decode(errors="replace")
        match = URL_RE.search(self._output)
        if match and self.url is None:
            self.url = match.group(1).replace("0.0.0.0", "localhost")
            self.open_button.setEnabled(True)
            self.open_button.setText("Open in TensorBoard")
            self.open_button.setToolTip(f"TensorBoard serves this run at {self.url}")
            QDesktopServices.openUrl(QUrl(self.url))

    def _on_finished(self, *_args) -> None:
        if self.url is None:  # it ended before serving: say why
            last = self._output.strip().splitlines()[-1:] or ["TensorBoard ended"]
            self.open_button.setToolTip(f"TensorBoard did not start: {last[0]}")
        self.url = None
        self.open_button.setEnabled(True)
        self.open_button.setText("Open in TensorBoard")

    def stop_server(self) -> None:
        server, self.server = self.server, None
        self.url = None
        if server is not None and server.state() != QProcess.ProcessState.NotRunning:
            server.finished.disconnect()
            server.kill()
            server.waitForFinished(3000)
