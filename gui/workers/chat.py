"""The playground's model, on a thread of its own for as long as the page keeps it: load a run's
adapter (one base in memory; another checkpoint of the same base swaps only the adapter), load a
second run's adapter onto the same base to compare, stream replies token by token (tuned, the
compared run, then base with the adapters switched off), evaluate base vs tuned.

The worker lives in a QThread and takes one request at a time; the GUI only sends requests and
shows what comes back as signals. Stop is a flag the generation polls between tokens (a queued
slot could not run while the worker thread generates).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

from qlora_studio.core.libraries import import_libraries
from qlora_studio.gui.workers.tasks import TaskError


@dataclass
class ChatRequest:
    sides: list[tuple[str, list[dict[str, str]]]]  # ("tuned" | "compared" | "base", messages), in this order
    sampling: Any  # core Sampling


@dataclass
class EvaluateRequest:
    data: str | None  # None: the run's validation split
    limit: int | None
    max_new_tokens: int


class _SessionWorker(QObject):
    loaded = Signal(object, str)  # AdapterRef, where and how fast ("on cpu in 2.1 s")
    compared = Signal(object, str)  # the compared run's AdapterRef (None: none), how fast it loaded
    chunk = Signal(str, str)  # side, text
    replied = Signal(str, object)  # side, core Reply
    progress = Signal(float, str)
    evaluated = Signal(object)  # core Evaluation (already saved in the run folder)
    failed = Signal(str, object)  # what ("load" | "compare" | "chat" | "evaluate"), TaskError
    idle = Signal()

    def __init__(self, stop: threading.Event):
        super().__init__()
        self.stop = stop
        self.session = None

    @Slot(object)
    def load(self, ref) -> None:
        began = time.monotonic()
        try:
            from qlora_studio.core.after.inference import InferenceSession
            from qlora_studio.core.quiet import quiet_libraries

            import_libraries()
            quiet_libraries()
            if self.session is not None and self.session.can_switch_to(ref):
                self.session.switch(ref)
            else:
                self.session = None  # free the old model before loading the next
                self.session = InferenceSession(ref)
            self.loaded.emit(ref, f"on {self.session.chat.device} in {time.monotonic() - began:.1f} s")
        except Exception as exc:  # noqa: BLE001 - travels to the GUI as data
            self.session = None  # a half-switched model is not what the page would show
            self.failed.emit("load", TaskError.of(exc))
        finally:
            self._say_compared()  # a new base drops the comparison; another checkpoint keeps it
            self.idle.emit()

    @Slot(object)
    def compare(self, ref) -> None:
        """Load `ref`'s adapter beside the loaded one on the same base (None: drop the comparison)."""
        began = time.monotonic()
        try:
            if ref is None:
                self.session.drop_comparison()
            else:
                self.session.compare_with(ref)
        except Exception as exc:  # noqa: BLE001 - a run on another base model: a UserError, shown as one line
            self.failed.emit("compare", TaskError.of(exc))
        finally:
            self._say_compared(f"in {time.monotonic() - began:.1f} s")
            self.idle.emit()

    def _say_compared(self, how: str = "") -> None:
        self.compared.emit(self.session.compared if self.session is not None else None, how)

    @Slot(object)
    def chat(self, request: ChatRequest) -> None:
        from qlora_studio.core.model.generation import ReplyStream

        try:
            for side, messages in request.sides:
                if self.stop.is_set():
                    break
                with self.session.answering(side) as chat:  # each run in its own chat template
                    stream = ReplyStream(chat, messages, request.sampling, cancel=self.stop.is_set)
                    for text in stream:
                        self.chunk.emit(side, text)
                self.replied.emit(side, stream.reply)
        except Exception as exc:  # noqa: BLE001
            self.failed.emit("chat", TaskError.of(exc))
        finally:
            self.idle.emit()

    @Slot(object)
    def evaluate(self, request: EvaluateRequest) -> None:
        from qlora_studio.core.after.evaluation import evaluate, save_evaluation

        try:
            result = evaluate(self.session, request.data, request.limit, request.max_new_tokens,
                              progress=self.progress.emit, cancel=self.stop.is_set)
            save_evaluation(result)
            self.evaluated.emit(result)
        except Exception as exc:  # noqa: BLE001
            self.failed.emit("evaluate", TaskError.of(exc))
        finally:
            self.idle.emit()

    @Slot()
    def unload(self) -> None:
        self.session = None
        self.idle.emit()

    @Slot()
    def release(self) -> None:
        """The last request: free the model, go back to the GUI thread (to be deleted there), end the thread."""
        self.session = None
        app = QCoreApplication.instance()
        if app is not None:
            self.moveToThread(app.thread())
        QThread.currentThread().quit()


class ChatController(QObject):
    """The GUI side: one request at a time (`busy`), `stop()` from any moment, `shutdown()` on close."""

    loaded = Signal(object, str)
    compared = Signal(object, str)
    chunk = Signal(str, str)
    replied = Signal(str, object)
    progress = Signal(float, str)
    evaluated = Signal(object)
    failed = Signal(str, object)
    busy_changed = Signal(bool)
    _load = Signal(object)
    _compare = Signal(object)
    _chat = Signal(object)
    _evaluate = Signal(object)
    _unload = Signal()
    _release = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._stop = threading.Event()
        self._thread = QThread(self)
        self._thread.setObjectName("playground")
        self._worker = _SessionWorker(self._stop)
        self._worker.moveToThread(self._thread)
        for name in ("chunk", "replied", "progress", "evaluated"):
            getattr(self._worker, name).connect(getattr(self, name))
        self._worker.loaded.connect(self._on_loaded)
        self._worker.compared.connect(self._on_compared)
        self._worker.failed.connect(self._on_failed)
        self._worker.idle.connect(self._on_idle)
        self._load.connect(self._worker.load)
        self._compare.connect(self._worker.compare)
        self._chat.connect(self._worker.chat)
        self._evaluate.connect(self._worker.evaluate)
        self._unload.connect(self._worker.unload)
        self._release.connect(self._worker.release)
        self._thread.start()
        self.busy = False
        self.ref = None  # the loaded adapter
        self.compared_ref = None  # the adapter loaded beside it to compare, if any

    def _send(self, signal, *args: Any) -> bool:
        if self.busy or not self._thread.isRunning():
            return False
        self._stop.clear()
        self.busy = True
        self.busy_changed.emit(True)
        signal.emit(*args)
        return True

    def load(self, ref) -> bool:
        return self._send(self._load, ref)

    def compare(self, ref) -> bool:
        """Load `ref` (an AdapterRef of a run on the same base) beside the loaded adapter; None drops it."""
        return self.ref is not None and self._send(self._compare, ref)

    def chat(self, request: ChatRequest) -> bool:
        return self.ref is not None and self._send(self._chat, request)

    def evaluate(self, request: EvaluateRequest) -> bool:
        return self.ref is not None and self._send(self._evaluate, request)

    def unload(self) -> bool:
        """Free the model (a run is about to train on the same device)."""
        if self.ref is None:
            return True
        if not self._send(self._unload):
            return False  # busy: the caller stops it and asks again
        self.ref = None
        self._on_compared(None, "")
        return True

    def stop(self) -> None:
        self._stop.set()

    @Slot(object, str)
    def _on_loaded(self, ref, where: str) -> None:
        self.ref = ref
        self.loaded.emit(ref, where)

    @Slot(object, str)
    def _on_compared(self, ref, how: str) -> None:
        changed = ref is not self.compared_ref
        self.compared_ref = ref
        if changed:
            self.compared.emit(ref, how)
    @Slot(str, object)
    def _on_failed(self, what: str, error: TaskError) -> None:
        if what == "load":
            self.ref = None
        self.failed.emit(what, error)

    @Slot()
    def _on_idle(self) -> None:
        self.busy = False
        self.busy_changed.emit(False)

    def shutdown(self) -> None:
        """Stop what runs, free the model, end the thread (the window is closing)."""
        if not self._thread.isRunning():
            return
        self._stop.set()
        self._release.emit()
        self._thread.wait()
        self._worker.deleteLater()
        self.ref = self.compared_ref = None
