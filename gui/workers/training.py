"""The training run, off the GUI thread: `TrainController` starts, steers and ends one run at a time.

The run trains in a child process that core's supervisor starts and watches
(`run_supervised(config, emit, control)`, the same contract as `run_training`): a native crash of
the run is a failed run with cause `crash`, never a dead window, and the child's exit hands the
GPU memory back. The QThread only waits on the child's pipe. Steering goes through core's
thread-safe `TrainControl` (`controller.control`), which the supervisor forwards to the child;
questions from the run (`control.asker`) are answered on the GUI thread while the supervising
thread waits. Events cross in batches: the supervising thread queues them and wakes the GUI thread
once per batch, at most every `EVENT_BATCH_MS`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from qlora_studio.core.errors import FailureCause
from qlora_studio.gui.workers.tasks import TaskError, QtWorker, wire_worker

Answerer = Callable[[str, list[str]], str]
EVENT_BATCH_MS = 200
SPARE_AFTER_MS = 3000  # the first run's worker starts this long after the window (core: supervisor.Spare)


class TrainWorker(QtWorker):
    ready = Signal()  # events are waiting in the queue (once per batch)
    returned = Signal(object)  # the RunResult

    def __init__(self, train: Callable[..., Any], config: Any, control: Any, resume_from: str | None):
        super().__init__()
        self.train = train
        self.config = config
        self.control = control
        self.resume_from = resume_from
        self._lock = threading.Lock()
        self._queue: list[Any] = []

    def post(self, event: Any) -> None:
        """the supervisor's emit, on the QThread that follows the child: queue the event, wake the GUI once."""
        with self._lock:
            first = not self._queue
            self._queue.append(event)
        if first:
            self.ready.emit()

    def take(self) -> list[Any]:
        """The events queued so far, oldest first (GUI thread)."""
        with self._lock:
            batch, self._queue = self._queue, []
        return batch

    @Slot()
    def run(self) -> None:
        from qlora_studio.core.runs import events as ev

        try:
            result = self.train(self.config, self.post, self.control, resume_from=self.resume_from)
        except Exception as exc:  # noqa: BLE001 - the supervisor never raises by contract; a bug still reaches the user
            error = TaskError.of(exc)
            result = ev.RunResult("failed", None, 0, None, None, error=error.reason, cause=error.cause,
                                  details=error.details)
        finally:
            self.config = None  # hold nothing of the run after it ends
        self.returned.emit(result)
        self._done()


def train_in_child(config: Any, emit: Callable[[Any], None], control: Any, resume_from: str | None = None) -> Any:
    from qlora_studio.core.training.supervisor import Spare, run_supervised

    try:
        return run_supervised(config, emit, control, resume_from)
    finally:
        Spare.prepare()  # the next run's worker imports its libraries while the user reads this run's results


def prepare_spare_worker() -> None:
    from qlora_studio.core.training.supervisor import Spare

    Spare.prepare()


class _Reply:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: str | None = None


class TrainController(QObject):
    """Starts, steers and ends one run at a time; every core event is re-emitted as `event`."""

    started = Signal()
    events = Signal(object)  # a batch of core events (a list), oldest first
    event = Signal(object)  # each core event, after the batch it came in
    finished = Signal(object)  # the RunResult
    busy_changed = Signal(bool)
    _asked = Signal(str, list, object)  # supervising thread -> GUI thread

    def __init__(self, parent: QObject | None = None, train: Callable[..., Any] | None = None):
        super().__init__(parent)
        from qlora_studio.core.training.control import TrainControl

        self.train = train or train_in_child
        """`run_training`'s contract: (config, emit, control, resume_from=...) -> RunResult."""
        self.control = TrainControl()  # the running run's (steer it directly: pause, stop, save, extend)
        self.answer_question: Answerer | None = None
        """Shows a question to the user and returns the chosen option (set by the window)."""
        self._thread: QThread | None = None
        self._worker: TrainWorker | None = None
        self._result: Any = None
        self._asked.connect(self._on_asked)
        self._batch_timer = QTimer(self)
        self._batch_timer.setSingleShot(True)
        self._batch_timer.timeout.connect(self.deliver)
        self._delivered_at = float("-inf")
        if self.train is train_in_child:  # after the window's own start-up, so the two do not compete
            QTimer.singleShot(SPARE_AFTER_MS, self, prepare_spare_worker)

    # ---- state ----
    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def paused(self) -> bool:
        return self.control.paused

    @property
    def stopping(self) -> bool:
        return self.running and self.control.stop_requested

    # ---- start ----
    def start(self, config: Any = None, resume_from: str | None = None) -> None:
        if self.running:
            raise RuntimeError("a run is already in progress")
        from qlora_studio.core.training.control import TrainControl

        self.control = TrainControl()
        self.control.asker = self._ask
        self._result = None
        self._worker = TrainWorker(self.train, config, self.control, resume_from)
        self._thread = QThread(self)
        self._thread.setObjectName("training")
        wire_worker(self._worker, self._thread)
        self._worker.ready.connect(self._on_ready)
        self._worker.returned.connect(self._on_returned)
        self._thread.finished.connect(self._on_thread_finished)
        self._thread.start()
        self.busy_changed.emit(True)
        self.started.emit()

    def wait(self, msecs: int = -1) -> bool:
        thread = self._thread
        if thread is None:
            return True
        return thread.wait(msecs) if msecs >= 0 else thread.wait()

    # ---- questions from the run ----
    def _ask(self, question: str, options: list[str]) -> str:
        """Called by the supervisor on its QThread (the child waits for the answer): blocks until the GUI answers."""
        reply = _Reply()
        self._asked.emit(question, list(options), reply)
        control = self.control
        while not reply.done.wait(0.2):
            if control.stop_requested:  # closing or Stop: never hang on an open question
                return "stop" if "stop" in options else options[-1]
        return reply.answer if reply.answer in options else options[-1]

    @Slot(str, list, object)
    def _on_asked(self, question: str, options: list[str], reply: _Reply) -> None:
        self.deliver()  # what happened before the question is shown before it
        try:
            if self.control.stop_requested:
                reply.answer = "stop" if "stop" in options else options[-1]
            elif self.answer_question is not None:
                reply.answer = self.answer_question(question, options)
        finally:
            reply.done.set()

    # ---- from the worker ----
    @Slot()
    def _on_ready(self) -> None:
        wait_ms = EVENT_BATCH_MS - (time.monotonic() - self._delivered_at) * 1000
        if wait_ms <= 0:
            self.deliver()
        elif not self._batch_timer.isActive():
            self._batch_timer.start(int(wait_ms) + 1)

    def deliver(self) -> None:
        """Hand the queued events to the window now (also before a question and at the end)."""
        self._batch_timer.stop()
        worker = self._worker
        batch = worker.take() if worker is not None else []
        if not batch:
            return
        self._delivered_at = time.monotonic()
        self.events.emit(batch)
        for event in batch:
            self.event.emit(event)

    @Slot(object)
    def _on_returned(self, result: Any) -> None:
        self._result = result

    @Slot()
    def _on_thread_finished(self) -> None:
        thread = self._thread
        if thread is None:
            return
        thread.wait()
        self.deliver()  # the last events before the result
        thread.deleteLater()
        if self._worker is not None:
            self._worker.deleteLater()
        self._thread = self._worker = None
        self.control.asker = None
        result = self._result
        if result is None:
            from qlora_studio.core.runs.events import RunResult

            result = RunResult("failed", None, 0, None, None, error="the supervising thread ended without a result",
                               cause=FailureCause.CRASH)
        self._result = None
        self.busy_changed.emit(False)
        self.finished.emit(result)
