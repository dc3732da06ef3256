"""The run log: warnings, checkpoints and settings changes, time-stamped and coloured by kind."""

from __future__ import annotations

import time

from PySide6.QtGui import QFont, QTextCursor
from PySide6.QtWidgets import QPlainTextEdit, QWidget

from qlora_studio.core.runs import events as ev
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

    def append(self, kind: str, text: str, at: float | None = None) -> None:
        """One line, stamped with the time it happened (`at`, seconds since the epoch; default now)."""
        prefix = f"<b>{TAGS[kind]}</b> " if kind in TAGS else ""
        stamp = time.strftime("%H:%M:%S" if at is None or time.time() - at < 20 * 3600 else "%Y-%m-%d %H:%M:%S",
                              time.localtime(at))
        self.appendHtml(f"<span style='color:#94a3b8'>{stamp}</span> "
                        f"<span style='color:{COLORS.get(kind, '#334155')}'>{prefix}{fmt.escape(text)}</span>")
        self.moveCursor(QTextCursor.MoveOperation.End)

    def add_event(self, event: ev.Event, at: float | None = None) -> None:
        """The event's line, if it has one: live as it arrives, or replayed from events.jsonl with
        the time it was recorded."""
        entry = log_entry(event)
        if entry is not None:
            self.append(*entry, at=at)
        if isinstance(event, ev.RunStarted):  # the run's plan, a line each
            if event.batching:
                self.append("info", f"Batches: {event.batching}", at=at)
            if event.prediction and event.device.startswith("cuda"):
                self.append("info", f"Memory: {event.prediction}", at=at)


def log_entry(e: ev.Event) -> tuple[str, str] | None:
    """(kind, text) of an event in the run log; None for events the charts and header show."""
    match e:
        case ev.Preparing() if not e.is_tick and not (e.total and e.done == e.total):
            return "info", e.message[:1].upper() + e.message[1:]
        case ev.RunStarted():
            resumed = f" from step {e.start_step}" if e.start_step else ""
            return "info", f"Training{resumed} on {e.device_name}: {e.total_steps} steps, run folder {e.run_dir}"
        case ev.CheckpointSaved():
            return "checkpoint", f"step {e.step}: checkpoint saved ({e.reason}) → {e.path}"
        case ev.Paused():
            return "info", f"Paused after step {e.step}"
        case ev.Resumed():
            return "info", f"Resumed at step {e.step}"
        case ev.SettingsChanged():
            return "change", e.message
        case ev.Warning():
            return "warning", e.message
        case ev.NonFiniteStep() if e.action == "skipped":  # a stopping one is said by Failed
            return "warning", e.message
        case ev.Finished():
            word = "Finished" if e.status == "finished" else "Stopped"
            adapter = f"; adapter in {e.adapter_dir}" if e.adapter_dir else ""
            return "info", f"{word} at step {e.step} of {e.total_steps}, final loss {fmt.loss(e.final_loss)}{adapter}"
        case ev.Failed():
            return "error", f"{'Stopped' if e.status == 'stopped' else 'Failed'}: {e.reason}"
    return None
