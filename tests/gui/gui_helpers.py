"""Helpers shared by the GUI tests."""

from __future__ import annotations

import gc
import json
from pathlib import Path


def close_window(qtbot, window) -> None:
    """Stop a run still going (teardown after a failed assertion), then close for real."""
    if window.controller.running:
        with qtbot.waitSignal(window.controller.finished, timeout=120_000):
            window.controller.control.request_stop()
    window.close()
    window.deleteLater()
    # delete it now, on this thread: not later from whichever thread the collector runs on
    from PySide6.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


def run_to_end(qtbot, window, start, timeout: int = 120_000):
    """Call `start()` (which starts a run) and return the window's RunResult when it ends."""
    with qtbot.waitSignal(window.run_ended, timeout=timeout) as blocker:
        assert start() is not False
    return blocker.args[0]


def collect_events(window) -> list:
    events: list = []
    window.controller.event.connect(events.append)
    return events


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
