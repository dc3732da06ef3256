"""Python garbage collection that never frees Qt objects on a worker thread."""

from __future__ import annotations


class GuiThreadGarbageCollector:
    """Runs Python's cyclic garbage collector on the GUI thread only.

    Automatic collection runs in whichever thread happens to allocate: on the training or a
    task thread it may free a Qt object that lives on the GUI thread, which Qt answers with
    "Timers cannot be stopped from another thread" or a crash. Automatic collection is turned
    off and a GUI timer collects whenever the allocation counts pass Python's own thresholds.

    A full collection walks every object (with torch and transformers loaded, ~600k of them:
    about a second on a slow core, holding the GIL that training needs), so like CPython itself
    it runs only when the objects promoted to the oldest generation since the last full
    collection exceed a quarter of those that survived it (CPython's long_lived_pending rule,
    which `gc.collect(2)` from a timer would otherwise bypass every ~100 young collections).
    """

    def __init__(self, interval_ms: int = 500):
        import gc

        from PySide6.QtCore import QTimer

        self._gc = gc
        self._was_enabled = gc.isenabled()
        self.threshold = gc.get_threshold()
        self.full_collections = 0
        self._long_lived: int | None = None  # objects that survived the last full collection
        self._pending = 0  # objects promoted to the oldest generation since then
        self._seen_full = self._full_count()
        gc.disable()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)
        self.timer.start()

    def _full_count(self) -> int:
        return self._gc.get_stats()[2]["collections"]

    def check(self) -> None:
        gc = self._gc
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self.threshold
        if c0 <= t0:
            return
        if self._full_count() != self._seen_full:  # someone ran gc.collect() (the runner does, between runs)
            self._long_lived, self._pending = None, 0
        if c1 > t1 and c2 > t2 and self._worth_a_full_collection():
            gc.collect(2)
            self.full_collections += 1
            self._long_lived, self._pending = len(gc.get_objects(2)), 0
        elif c1 > t1:
            young = len(gc.get_objects(0)) + len(gc.get_objects(1))
            self._pending += max(young - gc.collect(1), 0)  # the survivors move to the oldest generation
        else:
            gc.collect(0)
        self._seen_full = self._full_count()

    def _worth_a_full_collection(self) -> bool:
        if self._long_lived is None:
            self._long_lived = len(self._gc.get_objects(2))
        return self._pending > self._long_lived // 4

    def stop(self) -> None:
        self.timer.stop()
        if self._was_enabled:
            self._gc.enable()
