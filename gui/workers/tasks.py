"""Short work off the GUI thread: a worker QObject moved to a QThread (superqt's new_worker_qthread).

Signals carry core's own dataclasses (results, reports); an exception travels as a `TaskError`,
never as a dead thread. Each thread quits when its worker finishes and is waited for and dropped on
the GUI thread, so nothing is destroyed while it still runs.

- `TaskRunner`: one kind of short task (model info, memory estimate, dataset X-ray), one at a
  time; a request made while one runs replaces any waiting one (typing costs one extra run).
  `DebouncedTask` also waits a moment for the next request, so a burst of edits costs one run.
- `ProgressTask`: a job with progress and a cancel flag (evaluation, export).

The training run has its own controller: `workers/training.py`.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import QCoreApplication, QObject, Qt, QThread, QTimer, Signal, Slot

from qlora_studio.core.errors import FailureCause, cause_of
from qlora_studio.core.libraries import import_libraries
from qlora_studio.core.redact import redact

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


class QtWorker(QObject):
    finished = Signal()

    def _done(self) -> None:
        # Back to the GUI thread before the thread ends, so Python may delete the worker there.
        app = QCoreApplication.instance()
        if app is not None:
            self.moveToThread(app.thread())
        self.finished.emit()


class FunctionWorker(QtWorker):
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


def wire_worker(worker: QtWorker, thread: QThread) -> None:
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
        wire_worker(self._worker, self._thread)
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
