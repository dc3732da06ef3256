"""The runs page's row of buttons: what can be done with the selected runs, each enabled only when the
selection allows it (one run to replay, resume or export; none running to rename or delete) and, while
a run trains, nothing that would load a model beside it or take over the monitor."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QPushButton, QWidget

PLAYGROUND_TIP = "Chat with the selected run's adapter beside its base model, and evaluate it"
EXPORT_TIP = "The adapter, a merged model, a GGUF file or an Ollama folder"


class RunActions(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setObjectName("refreshRunsButton")
        self.replay_button = QPushButton("Open in monitor")
        self.replay_button.setObjectName("replayButton")
        self.replay_button.setToolTip("Replay the selected run's charts from its metrics.jsonl")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.setToolTip("Continue the selected run from its latest checkpoint")
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.setObjectName("exportCsvButton")
        self.csv_button.setToolTip("Save the selected run's metrics (one row per step, with its eval loss) as a CSV file")
        self.playground_button = QPushButton("Playground")
        self.playground_button.setObjectName("playgroundButton")
        self.playground_button.setToolTip(PLAYGROUND_TIP)
        self.export_button = QPushButton("Export…")
        self.export_button.setObjectName("exportRunButton")
        self.export_button.setToolTip(EXPORT_TIP)
        self.rename_button = QPushButton("Rename…")
        self.rename_button.setObjectName("renameRunButton")
        self.delete_button = QPushButton("Delete")
        self.delete_button.setObjectName("deleteRunButton")
        self.delete_button.setToolTip("Move the selected run folders to the system trash")
        row = QHBoxLayout(self)  # a row of their own: beside a long path they outgrow a 1024 px screen
        row.setContentsMargins(0, 0, 0, 0)
        for button in (self.refresh_button, self.replay_button, self.resume_button, self.playground_button,
                       self.export_button, self.csv_button, self.rename_button, self.delete_button):
            row.addWidget(button)
        row.addStretch(1)

    def update_for(self, runs: list[Any], busy: bool) -> None:
        """`runs`: the selected core RunSummary rows; `busy`: a run is training."""
        one = runs[0] if len(runs) == 1 else None
        self.replay_button.setEnabled(one is not None and not busy)
        self.resume_button.setEnabled(one is not None and one.resumable and one.status != "running" and not busy)
        self.csv_button.setEnabled(one is not None)
        finished = one is not None and one.status == "finished"
        self.resume_button.setText("Train more…" if finished else "Resume")  # a finished run has nothing to resume
        for button, tip in ((self.playground_button, PLAYGROUND_TIP), (self.export_button, EXPORT_TIP)):
            button.setEnabled(one is not None and not busy)
            button.setToolTip("A run is training: the playground and export wait until it ends" if busy else tip)
        self.rename_button.setEnabled(one is not None and one.status != "running")
        self.delete_button.setEnabled(bool(runs) and all(r.status != "running" for r in runs))
        if one is not None and not one.resumable:
            self.resume_button.setToolTip("This run has no checkpoint to resume from")
        elif busy:
            self.resume_button.setToolTip("A run is training")
        elif finished:
            self.resume_button.setToolTip("Train more steps: continue from the last checkpoint with a longer plan")
        else:
            self.resume_button.setToolTip("Continue the selected run from its latest checkpoint")
