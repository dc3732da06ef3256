"""The monitor's header: run title, status badge, device line, progress bar and the headline
numbers (elapsed, ETA, loss, eval loss, tokens/s, peak VRAM), and the stage of the run they show
(loading, running, paused, ended) with the clock that counts its time."""

from __future__ import annotations

import time
from contextlib import contextmanager

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from qlora_studio.core.runs import events as ev
from qlora_studio.gui import fmt


class Stat(QFrame):
    """A small labelled number."""

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("stat")
        self.title = QLabel(title)
        self.title.setObjectName("statTitle")
        self.value = QLabel("–")
        self.value.setObjectName("statValue")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 4, 10, 4)
        layout.setSpacing(0)
        layout.addWidget(self.title)
        layout.addWidget(self.value)

    def set(self, text: str, tooltip: str = "") -> None:
        self.value.setText(text)
        if tooltip:
            self.setToolTip(tooltip)


class RunHeader(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.status = "idle"
        self.live = False
        self.paused = False
        self.step = 0
        self.total_steps = 0
        self._elapsed_at_step = 0.0
        self._wall_at_step: float | None = None
        self._rate_origin: tuple[int, float] | None = None  # (step, elapsed) at the first step of this session
        self._holds = 0

        self.title = QLabel("No run yet")
        self.title.setObjectName("runTitle")
        self.badge = QLabel("idle")
        self.badge.setObjectName("statusBadge")
        self.badge.setProperty("status", "idle")
        self.device = QLabel("")
        self.device.setObjectName("deviceLabel")
        self.device.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setObjectName("runProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("no run yet")
        self.progress.setTextVisible(True)
        self.stat_elapsed = Stat("Elapsed")
        self.stat_eta = Stat("ETA")
        self.stat_loss = Stat("Loss")
        self.stat_eval = Stat("Eval loss")
        self.stat_tps = Stat("Tokens/s")
        self.stat_vram = Stat("Peak VRAM")
        self.stats = (self.stat_elapsed, self.stat_eta, self.stat_loss, self.stat_eval, self.stat_tps, self.stat_vram)

        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addWidget(self.badge)
        head.addStretch(1)
        head.addWidget(self.device)
        numbers = QHBoxLayout()
        numbers.setSpacing(6)
        numbers.addWidget(self.progress, 3)
        for stat in self.stats:
            numbers.addWidget(stat)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addLayout(numbers)

        self.clock = QTimer(self)
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self.update_clock)

    def reset(self, title: str) -> None:
        self.step = self.total_steps = 0
        self._rate_origin = None
        self._wall_at_step = None
        self._elapsed_at_step = 0.0
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("loading…")
        for stat in self.stats:
            stat.set("–")
        self.title.setText(title or "Starting…")
        self.device.setText("")

    @contextmanager
    def held(self):
        """No repaint until the outermost `held` ends, then one: a progress bar repaints at once on each
        new value, in Python's time, which the thread that trains shares."""
        self._holds += 1
        self.setUpdatesEnabled(False)
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self.setUpdatesEnabled(True)

    def begin_live(self) -> None:
        """A run is starting: the clock runs; each stage before step 1 arrives as a Preparing event."""
        self.live = True
        self.paused = False
        self.set_status("loading")
        self.clock.start()

    def show_started(self, e: ev.RunStarted) -> None:
        self.title.setText(e.run_dir.rstrip("/").split("/")[-1] or "Run")
        self.device.setText(
            f"{e.device_name} · {e.quantization.label} · {fmt.params(e.total_params)} parameters + "
            f"{fmt.params(e.trainable_params)} trainable · {e.train_rows:,} train / {e.eval_rows:,} eval rows")
        self.set_plan(e.start_step, e.total_steps)
        self.set_status("running")

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused:
            self.resumed()
        self.set_status("paused" if paused else "running")

    def stop_live(self, status: str) -> None:
        """The run ended (`status`): the clock stops, the ETA goes."""
        self.stop_clock()
        self.set_status(status)
        self.stat_eta.set("–")
        if not self.total_steps:  # it ended before a plan was known: not "loading…" any more
            self.show_stage(f"{status} before the first step")

    def stop_clock(self) -> None:
        self.live = False
        self.clock.stop()

    def show_preparing(self, e: ev.Preparing) -> None:
        if e.stage == "first_step":
            self.progress.setFormat(f"step %v / %m · {e.message}…")
        else:
            self.show_stage(f"{e.message}…" if e.total is None else e.message, e.done, e.total)

    def show_stage(self, message: str, done: int | None = None, total: int | None = None) -> None:
        """A stage before the first step, on the progress bar (counted where the stage counts)."""
        self.progress.setRange(0, max(total or 1, 1))
        self.progress.setValue(min(done or 0, self.progress.maximum()))
        self.progress.setFormat(message.replace("%", "%%"))

    def set_status(self, status: str) -> None:
        self.status = status
        self.badge.setText(status)
        self.badge.setProperty("status", status)
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)

    def set_plan(self, step: int, total_steps: int) -> None:
        self.step = step
        self.total_steps = total_steps
        self.progress.setRange(0, max(total_steps, 1))
        self.progress.setValue(min(step, self.progress.maximum()))
        self.progress.setFormat("step %v / %m")

    def show_step(self, m: ev.StepMetrics) -> None:
        self.stat_loss.set(fmt.loss(m.loss))
        self.stat_tps.set(f"{m.tokens_per_s:,.0f}")
        self.step_done(m.step, m.elapsed_s)

    def step_done(self, step: int, elapsed_s: float) -> None:
        self.step = step
        self._elapsed_at_step = elapsed_s
        self._wall_at_step = time.monotonic()
        if self._rate_origin is None:
            self._rate_origin = (step, elapsed_s)
        self.progress.setFormat("step %v / %m")  # no longer "· running the first step"
        self.progress.setValue(min(step, self.progress.maximum()))
        self.update_clock()

    def resumed(self) -> None:
        """Speed and ETA are measured on this session's steps; the clock restarts after a pause."""
        self._wall_at_step = time.monotonic()

    def forget_rate(self) -> None:
        self._rate_origin = None

    def update_clock(self) -> None:
        elapsed = self._elapsed_at_step
        if self.live and not self.paused and self._wall_at_step is not None:
            elapsed += time.monotonic() - self._wall_at_step
        if self.live or self.status in ("running", "paused"):
            self.stat_elapsed.set(fmt.duration(elapsed))
        origin = self._rate_origin
        if origin is not None and self.step > origin[0] and self.total_steps:
            per_step = (self._elapsed_at_step - origin[1]) / (self.step - origin[0])
            remaining = max(self.total_steps - self.step, 0) * per_step
            self.stat_eta.set(fmt.duration(remaining), f"{per_step:.2f} s per step")
