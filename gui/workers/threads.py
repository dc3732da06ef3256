"""Long work off the GUI thread: a worker QObject moved to a QThread (superqt's new_worker_qthread).

Signals carry core's own dataclasses (events, results, reports); an exception travels as a
`TaskError`, never as a dead thread. Each thread quits when its worker finishes and is waited for
and dropped on the GUI thread, so nothing is destroyed while it still runs.

- `TaskRunner`: one kind of short task (model info, memory estimate, dataset X-ray), one at a
  time; a request made while one runs replaces any waiting one (typing costs one extra run).
  `DebouncedTask` also waits a moment for the next request, so a burst of edits costs one run.
- `TrainController`: one training run, trained in a child process that core's supervisor starts
  and watches (`run_supervised(config, emit, control)`, the same contract as `run_training`): a
  native crash of the run is a failed run with cause `crash`, never a dead window, and the child's
  exit hands the GPU memory back. The QThread only waits on the child's pipe. Steering goes
  through core's thread-safe `TrainControl` (`controller.control`), which the supervisor forwards
  to the child; questions from the run (`control.asker`) are answered on the GUI thread while the
  supervising thread waits. Events cross in batches: the supervising thread queues them and wakes
  the GUI thread once per batch, at most every `EVENT_BATCH_MS`.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import QCoreApplication, QObject, Qt, QThread, QTimer, Signal, Slot

from qlora_studio.core.errors import FailureCause, cause_of
from qlora_studio.core.libraries import import_libraries
from qlora_studio.core.redact import redact

Answerer = Callable[[str, list[str]], str]
EVENT_BATCH_MS = 200


@dataclass
class TaskError:
    """An exception as data: a one-line reason, the traceback, and its cause."""

    reason: str
    details: str
    cause: FailureCause

    @classmethod
    def of(cls, exc: BaseException) -> "TaskError":
        cause = cause_of(exc)
        reason = str(exc).strip() if cause.is_users_to_fix else f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        details = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        reason = redact(reason)  # a library's message may quote a Hub token; a dialog must not show it
        return cls(reason.splitlines()[0] if reason else type(exc).__name__, details, cause)


class _Worker(QObject):
    finished = Signal()

    def _done(self) -> None:
        # Back to the GUI thread before the thread ends, so Python may delete the worker there.
        app = QCoreApplication.instance()
        if app is not None:
            self.moveToThread(app.thread())
        self.finished.emit()


class FunctionWorker(_Worker):
    returned = Signal(object)
    errored = Signal(object)

    def __init__(self, fn: Callable[..., Any], *args: Any):
        super().__init__()
        self.fn = fn
        self.args = args

    @Slot()
    def run(self) -> None:
        try:
            import_libraries()  # several tasks start at once: one imports transformers, the others wait
            value = self.fn(*self.args)
        except Exception as exc:  # noqa: BLE001 - travels to the GUI as data
            self.errored.emit(TaskError.of(exc))
        else:
            self.returned.emit(value)
        finally:
            self._done()


def _wire(worker: _Worker, thread: QThread) -> None:
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    # Direct: quit from the worker thread itself, so a GUI thread blocked in wait() cannot deadlock.
    worker.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)


class TaskRunner(QObject):
    """Runs `fn(*args)` off the GUI thread, at most one at a time, newest request wins."""

    result = Signal(object, object)  # (tag, value)
    error = Signal(object, object)  # (tag, TaskError)
    busy_changed = Signal(bool)

    def __init__(self, fn: Callable[..., Any], parent: QObject | None = None):
        super().__init__(parent)
        self.fn = fn
        self._thread: QThread | None = None
        self._worker: FunctionWorker | None = None
        self._tag: Any = None
        self._pending: tuple[Any, tuple[Any, ...]] | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._thread is not None or self._pending is not None

    def request(self, *args: Any, tag: Any = None) -> None:
        if self._closed:
            return
        if self._thread is not None:
            self._pending = (tag, args)
            return
        self._start(tag, args)

    def _start(self, tag: Any, args: tuple[Any, ...]) -> None:
        self._tag = tag
        self._worker = FunctionWorker(self.fn, *args)
        self._thread = QThread(self)
        self._thread.setObjectName(f"task-{getattr(self.fn, '__name__', 'fn')}")
        _wire(self._worker, self._thread)
        self._worker.returned.connect(self._on_returned)
        self._worker.errored.connect(self._on_errored)
        self._thread.finished.connect(self._on_thread_finished)
        self._thread.start()
        self.busy_changed.emit(True)

    @Slot(object)
    def _on_returned(self, value: Any) -> None:
        if self._pending is None and not self._closed:  # a newer request makes this result stale
            self.result.emit(self._tag, value)

    @Slot(object)
    def _on_errored(self, error: TaskError) -> None:
        if self._pending is None and not self._closed:
            self.error.emit(self._tag, error)

    @Slot()
    def _on_thread_finished(self) -> None:
        thread = self._thread
        if thread is None:
            return
        thread.wait()
        thread.deleteLater()
        if self._worker is not None:
            self._worker.deleteLater()  # freed here on the GUI thread, never by a collector elsewhere
        self._thread = self._worker = None
        pending, self._pending = self._pending, None
        if pending is not None and not self._closed:
            self._start(*pending)
        else:
            self.busy_changed.emit(False)

    def wait(self, msecs: int = -1) -> bool:
        """Block until the running task ends (for shutdown and tests); True when none is left."""
        thread = self._thread
        if thread is None:
            return True
        return thread.wait(msecs) if msecs >= 0 else thread.wait()

    def shutdown(self) -> None:
        """Drop the waiting request and wait for the running one (the window is closing)."""
        self._closed = True
        self._pending = None
        self.wait()
        if self._thread is not None:
            self._on_thread_finished()


class DebouncedTask(TaskRunner):
    """A TaskRunner whose requests wait `delay_ms` for a newer one: a burst of edits costs one run."""

    def __init__(self, fn: Callable[..., Any], delay_ms: int, parent: QObject | None = None):
        super().__init__(fn, parent)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self._fire)
        self._scheduled: tuple[Any, tuple[Any, ...]] | None = None

    def schedule(self, *args: Any, tag: Any = None) -> None:
        self._scheduled = (tag, args)
        self._timer.start()

    @property
    def scheduled(self) -> bool:
        return self._timer.isActive()

    def _fire(self) -> None:
        if self._scheduled is not None:
            tag, args = self._scheduled
            self._scheduled = None
            self.request(*args, tag=tag)

    def shutdown(self) -> None:
        self._timer.stop()
        self._scheduled = None
        super().shutdown()


# ---- training ---------------------------------------------------------------------------------

class TrainWorker(_Worker):
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
        """run_training's emit, on the training thread: queue the event, wake the GUI once."""
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
    from qlora_studio.core.training.supervisor import run_supervised

    return run_supervised(config, emit, control, resume_from)


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
    _asked = Signal(str, list, object)  # training thread -> GUI thread

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
        _wire(self._worker, self._thread)
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
        """Called by the runner on the training thread: blocks until the GUI answers."""
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

            result = RunResult("failed", None, 0, None, None, error="the training thread ended without a result",
                               cause=FailureCause.CRASH)
        self._result = None
        self.busy_changed.emit(False)
        self.finished.emit(result)


# ---- jobs with progress (evaluation, export) ---------------------------------------------------

class ProgressTask(QObject):
    """Runs `fn(*args, progress=..., cancel=...)` off the GUI thread, one at a time: core's plain
    progress callback becomes the `progress` signal, `cancel()` sets the flag core polls."""

    progress = Signal(float, str)
    result = Signal(object)
    error = Signal(object)  # TaskError (a cancel arrives as one whose reason says so)
    busy_changed = Signal(bool)

    def __init__(self, fn: Callable[..., Any], parent: QObject | None = None):
        super().__init__(parent)
        self.fn = fn
        self._cancel = threading.Event()
        self._runner = TaskRunner(self._call, self)
        self._runner.result.connect(lambda _tag, value: self.result.emit(value))
        self._runner.error.connect(lambda _tag, error: self.error.emit(error))
        self._runner.busy_changed.connect(self.busy_changed)

    @property
    def running(self) -> bool:
        return self._runner.busy

    def start(self, *args: Any) -> bool:
        if self.running:
            return False
        self._cancel.clear()
        self._runner.request(*args)
        return True

    def cancel(self) -> None:
        self._cancel.set()

    def _call(self, *args: Any) -> Any:  # on the worker thread
        return self.fn(*args, progress=self.progress.emit, cancel=self._cancel.is_set)

    def wait(self, msecs: int = -1) -> bool:
        return self._runner.wait(msecs)

    def shutdown(self) -> None:
        self.cancel()
        self._runner.shutdown()
