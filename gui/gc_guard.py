"""Python garbage collection that never frees Qt objects on a worker thread."""

from __future__ import annotations


class GuiThreadGarbageCollector:
    """Runs Python's cyclic garbage collector on the GUI thread only.

    Automatic collection runs in whichever thread happens to allocate: on the training or a
    task thread it may free a Qt object that lives on the GUI thread, which Qt answers with
    "Timers cannot be stopped from another thread" or a crash. Automatic collection is turned
    off and a GUI timer collects whenever the allocation counts pass Python's own thresholds.
    """

    def __init__(self, interval_ms: int = 500):
        import gc

        from PySide6.QtCore import QTimer

        self._gc = gc
        self._was_enabled = gc.isenabled()
        self.threshold = gc.get_threshold()
        gc.disable()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)
        self.timer.start()

    def check(self) -> None:
        gc = self._gc
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self.threshold
        if c0 > t0:
            generation = 2 if (c1 > t1 and c2 > t2) else 1 if c1 > t1 else 0
            gc.collect(generation)

    def stop(self) -> None:
        self.timer.stop()
        if self._was_enabled:
            self._gc.enable()
