"""Start the real window the way `qlora-studio` does, in this (fresh) interpreter, wait until the
start-up work has settled (GPU probe, model line, X-ray, memory estimate), then print one JSON
object: every visible label's text, the Start action's state, the window's size and its minimum.

    QLORA_STUDIO_SETTINGS=/tmp/x.ini python tests/gui/startup_probe.py [SHOTS_DIR [WIDTHxHEIGHT]]

With SHOTS_DIR, each page is saved there as <size>-<page>.png (run it under a real X server,
e.g. xvfb-run -s "-screen 0 1024x700x24", to see what a user sees). Used by test_startup.py and
for the issue's screenshots.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SETTLE_S = 1.0  # every task idle this long: the start-up work is done
TIMEOUT_S = 600


def main() -> int:
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QLabel

    from qlora_studio.gui.app import create_app
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.workers.tasks import TaskRunner

    shots = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    size = tuple(int(v) for v in sys.argv[2].split("x")) if len(sys.argv) > 2 else None
    app = create_app()
    window = MainWindow()
    if size:
        window.resize(*size)
    window.show()

    def pause(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    runners = window.findChildren(TaskRunner)
    started, idle_since = time.monotonic(), None
    while time.monotonic() - started < TIMEOUT_S:
        pause(100)
        # the model line and the estimate also count: under load, a debounce can leave a gap with no task busy
        waiting = "Reading" in window.setup.model.info_label.text() or not window.setup.model.info_label.text() \
            or (window.setup.memory.estimate is None and "Estimating" in window.setup.memory.total_label.text())
        busy = window.gpus is None or waiting or any(r.busy or getattr(r, "scheduled", False) for r in runners)
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= SETTLE_S:
            break
    settled_s = round(time.monotonic() - started, 1)

    labels = [label.text() for label in window.findChildren(QLabel) if label.isVisibleTo(window) and label.text()]
    labels.append(window.statusBar().currentMessage())
    labels += [window.setup.xray.tabs.tabText(i) for i in range(window.setup.xray.tabs.count())]
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
        tag = f"{window.width()}x{window.height()}"
        for page in (window.setup, window.monitor, window.runs, window.playground):
            window.tabs.setCurrentWidget(page)
            pause(400)
            window.grab().save(str(shots / f"{tag}-{type(page).__name__.removesuffix('Page').lower()}.png"), "PNG")
    print(json.dumps({
        "settled_s": settled_s,
        "labels": labels,
        "start_enabled": window.start_action.isEnabled(),
        "start_tooltip": window.start_action.toolTip(),
        "size": [window.width(), window.height()],
        "minimum": [window.minimumSizeHint().width(), window.minimumSizeHint().height()],
        "screen": [window.screen().availableGeometry().width(), window.screen().availableGeometry().height()],
    }), flush=True)
    window.close()
    return 0 if app is not None else 1


if __name__ == "__main__":
    sys.exit(main())
