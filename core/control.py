"""Thread-safe requests from the outside (window, signal handler, tests) to a running training.

The runner polls this object between optimizer steps: a queued Qt slot could not run while the
worker thread is busy training, and a flag needs no event loop.
"""

from __future__ import annotations

import threading
from typing import Callable

Asker = Callable[[str, list[str]], str]


class TrainControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._paused = False
        self._save = False
        self._extend = 0
        self.asker: Asker | None = None
        """Answers a question the run cannot settle alone (e.g. at micro-batch 1 after an OOM).
        Called on the training thread; may block until the user answers."""

    # ---- requests (any thread) ----
    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint first."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()

    def pause(self) -> None:
        with self._wake:
            self._paused = True

    def resume(self) -> None:
        with self._wake:
            self._paused = False
            self._wake.notify_all()

    def request_save(self) -> None:
        """Write a checkpoint after the current step."""
        with self._wake:
            self._save = True
            self._wake.notify_all()

    def extend(self, steps: int) -> None:
        """Train `steps` more optimizer steps than planned."""
        if steps < 1:
            raise ValueError("extend by at least one step")
        with self._wake:
            self._extend += steps
            self._wake.notify_all()

    # ---- state (any thread) ----
    @property
    def stop_requested(self) -> bool:
        with self._lock:
            return self._stop

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    # ---- polling (training thread) ----
    def take_save(self) -> bool:
        with self._lock:
            wanted, self._save = self._save, False
            return wanted

    def take_extension(self) -> int:
        with self._lock:
            steps, self._extend = self._extend, 0
            return steps

    def wait_while_paused(self, on_save: Callable[[], None] | None = None) -> None:
        """Block while paused; a stop ends the wait, a save request is served while waiting."""
        with self._wake:
            while self._paused and not self._stop:
                if self._save and on_save is not None:
                    self._save = False
                    self._wake.release()
                    try:
                        on_save()
                    finally:
                        self._wake.acquire()
                    continue
                self._wake.wait(timeout=0.5)

    def ask(self, question: str, options: list[str], default: str) -> str:
        if self.asker is None:
            return default
        answer = self.asker(question, options)
        return answer if answer in options else default
