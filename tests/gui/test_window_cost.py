"""What the window takes from the thread that trains: events cross in batches, garbage collection
on the GUI thread is no more eager than CPython's own."""

from __future__ import annotations

import time

from qlora_studio.core.runs import events as ev
from qlora_studio.gui.gc_guard import GuiThreadGarbageCollector
from qlora_studio.gui.workers.training import EVENT_BATCH_MS, TrainController


def test_events_cross_in_batches_in_order_and_before_the_result(qtbot):
    def fake_run_training(config, emit, control, resume_from=None):
        for i in range(60):
            emit(ev.Warning(f"w{i}"))
            time.sleep(0.004 if i % 10 else 0.02)
        return ev.RunResult("finished", None, 60, None, None)

    controller = TrainController(train=fake_run_training)
    batches, seen, order = [], [], []
    controller.events.connect(lambda batch: (batches.append(len(batch)), order.append("batch")))
    controller.event.connect(lambda e: seen.append(e.message))
    controller.finished.connect(lambda result: order.append("finished"))
    began = time.monotonic()
    with qtbot.waitSignal(controller.finished, timeout=30_000):
        controller.start(None)
    elapsed = time.monotonic() - began
    assert seen == [f"w{i}" for i in range(60)] and sum(batches) == 60
    # the GUI thread woke at most once per EVENT_BATCH_MS, not once per event
    assert len(batches) <= 2 + elapsed / (EVENT_BATCH_MS / 1000) and len(batches) < 30
    assert order[-1] == "finished" and order.count("finished") == 1


class FakeGC:
    """gc's counters as the guard reads them, for a heap of `objects` long-lived objects."""

    def __init__(self, objects: int):
        self.long_lived = objects
        self.young = 0
        self.count = (0, 0, 0)
        self.collected: list[int] = []

    def get_count(self):
        return self.count

    def get_threshold(self):
        return (700, 10, 10)

    def get_stats(self):
        return [{}, {}, {"collections": self.collected.count(2)}]

    def get_objects(self, generation=None):
        return [None] * {0: self.young, 1: 0}.get(generation, self.long_lived)

    def collect(self, generation=2):
        self.collected.append(generation)
        if generation == 2:
            self.young = 0
        return 0

    def disable(self):
        pass

    def isenabled(self):
        return False


def test_the_gc_guard_runs_a_full_collection_only_when_python_would(qapp):
    guard = GuiThreadGarbageCollector()
    guard.timer.stop()
    fake = FakeGC(objects=100_000)
    guard._gc = fake
    guard._seen_full = 0
    fake.count = (701, 11, 11)  # the counts that made the old guard collect everything
    fake.young = 1_000
    guard.check()
    assert fake.collected == [1]  # 1,000 promoted objects are not a quarter of 100,000: young ones only
    fake.young = 30_000
    guard.check()
    assert fake.collected == [1, 1]
    guard.check()  # 31,000 promoted since the last full collection > 25,000: now a full one
    assert fake.collected == [1, 1, 2] and guard.full_collections == 1
    fake.count = (701, 3, 0)
    guard.check()
    assert fake.collected == [1, 1, 2, 0]
    fake.count = (100, 0, 0)
    guard.check()
    assert fake.collected == [1, 1, 2, 0]  # under the threshold: nothing
