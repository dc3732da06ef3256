"""Long after-training jobs (evaluation, export) report progress and can be cancelled: core takes two
plain callables, `progress(fraction, message)` and `cancel() -> bool`; the window adapts them to a
worker thread in one place (gui/workers/tasks.py: ProgressTask), the CLI passes a printer."""

from __future__ import annotations

from typing import Callable

from qlora_studio.core.errors import UserError

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class Cancelled(UserError):
    """The user cancelled a job; whatever it had half written was removed."""

    def __init__(self, message: str = "cancelled; partial files were removed"):
        super().__init__(message)


class Job:
    """Progress and cancel checks for one step of a job. `span` maps the step's 0..1 onto a slice of
    the caller's bar, so a step can run inside a larger one (a GGUF write as the second half of an
    Ollama export)."""

    def __init__(self, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                 span: tuple[float, float] = (0.0, 1.0), cancelled: type[Cancelled] = Cancelled):
        self._progress, self._cancel, self._span, self._cancelled = progress, cancel, span, cancelled

    def report(self, fraction: float, message: str) -> None:
        if self._progress is not None:
            lo, hi = self._span
            self._progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and bool(self._cancel())

    def check(self) -> None:
        if self.cancelled:
            raise self._cancelled()

    def sub(self, lo: float, hi: float) -> "Job":
        a, b = self._span
        return Job(self._progress, self._cancel, (a + (b - a) * lo, a + (b - a) * hi), self._cancelled)
