"""Download a Hub model into the Hugging Face cache: a repo id, a progress bar with bytes and files,
and a Cancel that always works (core's `DownloadProcess` runs the download in its own process)."""

from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from qlora_studio.gui import fmt

POLL_MS = 150


class DownloadPanel(QWidget):
    started = Signal(str)  # the repo id
    finished = Signal(object)  # the repo id when it is in the cache, None when it failed or was cancelled

    def __init__(self, cache_dir: Callable[[], Any], parent: QWidget | None = None):
        super().__init__(parent)
        self.cache_dir = cache_dir  # () -> the cache folder the library shows (None: huggingface_hub's default)
        self.job = None  # the running DownloadProcess
        self.repo_id = ""
        self.repo_edit = QLineEdit()
        self.repo_edit.setObjectName("downloadRepo")
        self.repo_edit.setPlaceholderText("Hub model id, e.g. Qwen/Qwen2.5-1.5B-Instruct")
        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("downloadButton")
        self.download_button.setToolTip("Config, tokenizer and safetensors weights into the Hugging Face cache.\n"
                                        "Gated models (Llama, Gemma, ...) need their terms accepted on the Hub and "
                                        "`hf auth login` in a terminal first.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelDownloadButton")
        self.cancel_button.hide()
        self.progress = QProgressBar()
        self.progress.setObjectName("downloadProgress")
        self.progress.hide()
        self.status = QLabel("")
        self.status.setObjectName("downloadStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(QLabel("Download"))
        row.addWidget(self.repo_edit, 1)
        row.addWidget(self.download_button)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.download_button.clicked.connect(lambda: self.start())
        self.repo_edit.returnPressed.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.poller = QTimer(self)
        self.poller.setInterval(POLL_MS)
        self.poller.timeout.connect(self._poll)

    def say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color:#b91c1c" if error else "")

    def start(self, repo_id: str | None = None, **download_args: Any) -> bool:
        """Download `repo_id` (default: the line edit); `download_args` go to `download_model` (tests
        point `endpoint` at a local server)."""
        from qlora_studio.core.model.download import (
            RECOMMENDED_PATTERNS,
            DownloadProcess,
        )

        if self.job is not None:
            return False
        repo_id = (repo_id or self.repo_edit.text()).strip()
        if repo_id.count("/") != 1 or " " in repo_id:
            self.say("Give a Hub model id as org/name, e.g. Qwen/Qwen2.5-0.5B-Instruct", error=True)
            return False
        self.repo_edit.setText(repo_id)
        self.repo_id = repo_id
        cache_dir = self.cache_dir()
        args = {"allow_patterns": RECOMMENDED_PATTERNS, **({"cache_dir": str(cache_dir)} if cache_dir else {}),
                **download_args}
        self.job = DownloadProcess(repo_id, **args).start()
        self.progress.setRange(0, 0)  # busy until the first sizes arrive
        self.progress.show()
        self.cancel_button.show()
        self.download_button.setEnabled(False)
        self.say(f"Downloading {repo_id}…")
        self.poller.start()
        self.started.emit(repo_id)
        return True

    def _poll(self) -> None:
        job = self.job
        if job is None:
            return
        running = job.poll()
        p = job.progress
        if p.bytes_total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(p.fraction * 1000))
            self.progress.setFormat(f"{fmt.size(p.bytes_done)} of {fmt.size(p.bytes_total)} · "
                                    f"{p.files_done} of {p.files_total} files")
        if not running:
            self._end()

    def cancel(self) -> None:
        from qlora_studio.core.model.library import delete_incomplete

        if self.job is None:
            return
        self.job.cancel()
        delete_incomplete(self.cache_dir())  # a killed process cannot clean up after itself
        self._end()

    def _end(self) -> None:
        job, self.job = self.job, None
        self.poller.stop()
        self.progress.hide()
        self.cancel_button.hide()
        self.download_button.setEnabled(True)
        if job.cancelled:
            self.say(f"Download of {self.repo_id} cancelled; its partial files were removed")
        elif job.error:
            self.say(job.error, error=True)
        else:
            self.say(f"Downloaded {self.repo_id}")
        self.finished.emit(self.repo_id if not job.cancelled and not job.error else None)
