"""A run's clock: training time without pauses (carried over a resume) and each step's real tokens/s."""

from __future__ import annotations

import math
import time
from typing import Any

from qlora_studio.core.config.schema import TrainSettings
from qlora_studio.core.model.devices import torch_memory
from qlora_studio.core.runs import events as ev


class StepMeter:
    """Training time (pauses excluded, carried over a resume) and real tokens/s of each step.

    A step's time runs from its start to its end as the device saw them: on a GPU, between two
    events queued with its work, since the host runs ahead of the GPU and learns a step's numbers
    later (training/step_logs.py); evaluation and checkpoint writing between steps do not count."""

    def __init__(self, elapsed_offset: float = 0.0):
        self.offset = elapsed_offset
        self.active_since = time.monotonic()
        self.paused_total = 0.0
        self.last_tokens = 0
        self.last: ev.StepMetrics | None = None  # measured once per step: Trainer.log and on_log both ask
        self._began: Any = None
        self._ended: dict[int, tuple[Any, Any, float]] = {}  # step -> (start mark, end mark, elapsed then)

    def elapsed(self) -> float:
        return self.offset + (time.monotonic() - self.active_since) - self.paused_total

    def segment_began(self, tokens_seen: int) -> None:
        self.last_tokens = tokens_seen
        self.last = None
        self._ended.clear()

    def step_began(self, device=None) -> None:
        self._began = _mark(device)

    def step_ended(self, step: int) -> None:
        self._ended[step] = (self._began, _mark(self._began), self.elapsed())

    def paused_for(self, seconds: float) -> None:
        self.paused_total += seconds

    def measure(self, state, logs: dict[str, Any], train: TrainSettings, device) -> ev.StepMetrics:
        if self.last is not None and self.last.step == state.global_step:
            return self.last
        tokens = int(state.num_input_tokens_seen)
        began, ended, elapsed = self._ended.pop(state.global_step, (None, None, self.elapsed()))
        window = max(_seconds_between(began, ended), 1e-9)
        metrics = ev.StepMetrics(
            step=state.global_step,
            epoch=round(float(state.epoch or 0.0), 4),
            loss=float(logs["loss"]),
            learning_rate=float(logs.get("learning_rate", 0.0)),
            grad_norm=float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
            tokens=tokens,
            tokens_per_s=round((tokens - self.last_tokens) / window, 1),
            elapsed_s=round(elapsed, 3),
            micro_batch_size=train.micro_batch_size,
            grad_accum=train.grad_accum,
            **torch_memory(device),
            method=method_curves(train.method, logs),
        )
        self.last_tokens = tokens
        self.last = metrics
        return metrics


def method_curves(method: str, logs: dict[str, Any]) -> dict[str, float]:
    """The numbers a preference or RL trainer logs beside the loss, for the method's charts."""
    if method == "sft":
        return {}
    from qlora_studio.core.training.methods import is_method_curve

    return {k: round(float(v), 6) for k, v in logs.items()
            if is_method_curve(method, k) and isinstance(v, (int, float)) and math.isfinite(v)}


def _mark(like) -> Any:
    """A point in time: a timing event queued on the current CUDA stream (when `like` is a CUDA
    device or event), else the host's clock (on the CPU the host waits for every op anyway)."""
    import torch

    cuda = getattr(like, "type", None) == "cuda" or isinstance(like, torch.cuda.Event)
    if not cuda:
        return time.monotonic()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _seconds_between(began, ended) -> float:
    if began is None or ended is None:
        return 0.0
    if isinstance(began, float):
        return ended - began
    ended.synchronize()  # already passed when the step's numbers have been read
    return began.elapsed_time(ended) / 1000
