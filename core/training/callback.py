"""The bridge between transformers' Trainer and a run: its hooks become our events, our control
requests become its flags, between optimizer steps and on every rank alike.

Requests are served right after a step is logged (before the Trainer evaluates and saves), so the
checkpoint a stop, save or extend asks for holds the step just finished, written by the Trainer's
own save. With several processes rank 0 decides and broadcasts, and keeps the others waiting
with a heartbeat while paused (a silent wait would time out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from transformers import TrainerCallback

from qlora_studio.core.config.schema import TrainSettings
from qlora_studio.core.model.devices import torch_memory
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.control import TrainControl


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
        )
        self.last_tokens = tokens
        self.last = metrics
        return metrics


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


@dataclass
class Requests:
    stop: bool = False
    save: bool = False
    extend: int = 0


class Steering:
    """Pause, stop, save and extend between steps; rank 0 decides, the others follow."""

    def __init__(self, control: TrainControl, rank: int, world_size: int, device, emit: ev.Emit, meter: StepMeter):
        self.control = control
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.emit = emit
        self.meter = meter
        self.holding = False  # paused, and a save request let the Trainer write a checkpoint in between

    def between_steps(self, step: int) -> Requests:
        if self.world_size == 1:
            self._hold(step)
            return self._take()
        if self.rank == 0:
            self._hold(step, on_tick=lambda: self._broadcast([1]))
            self._broadcast([0])
            r = self._take()
            stop, save, extend, holding = self._broadcast([int(r.stop), int(r.save), r.extend, int(self.holding)])
        else:
            while self._broadcast([0])[0]:
                pass
            stop, save, extend, holding = self._broadcast([0, 0, 0, 0])
        self.holding = bool(holding)  # every rank holds again after a save asked for while paused
        return Requests(bool(stop), bool(save), int(extend))

    def _hold(self, step: int, on_tick: Callable[[], None] | None = None) -> None:
        control = self.control
        if not control.paused or control.stop_requested:
            self.holding = False
            return
        if not self.holding:
            self.emit(ev.Paused(step))
        began = time.monotonic()
        control.wait_while_paused(on_tick=on_tick)
        self.meter.paused_for(time.monotonic() - began)
        # Still paused here means a checkpoint was asked for: the Trainer writes it, then we hold again.
        self.holding = control.paused and not control.stop_requested
        if not self.holding:
            self.emit(ev.Resumed(step))

    def _take(self) -> Requests:
        return Requests(self.control.stop_requested, self.control.take_save(), self.control.take_extension())

    def _broadcast(self, values: list[int]) -> list[int]:
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()


class StudioCallback(TrainerCallback):
    """Trainer hooks -> the session's events; steering -> Trainer's control flags."""

    def __init__(self, session, steering: Steering):
        self.session = session
        self.steering = steering

    def on_train_begin(self, args, state, control, **kwargs):
        self.session.segment_began(state)
        return control

    def log_extras(self, state, logs: dict[str, Any]) -> dict[str, float]:
        """Our numbers for a training-step log, added before TensorBoard and W&B see it (`ReportingMixin`)."""
        metrics = self.session.step_metrics(state, logs)
        return {k: v for k, v in vars(metrics).items() if (k == "tokens_per_s" or k.startswith("vram_")) and v is not None}

    def on_step_begin(self, args, state, control, **kwargs):
        self.session.meter.step_began(self.session.loaded.device)
        return control

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.session.before_update(optimizer)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.session.meter.step_ended(state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        s = self.session
        logs = logs or {}
        if "loss" in logs and "train_loss" not in logs:
            s.step_logged(state, logs)
        elif "eval_loss" in logs:
            extra = {k: v for k, v in logs.items() if k not in ("eval_loss", "epoch") and isinstance(v, (int, float))}
            s.emit(ev.EvalLogged(state.global_step, float(logs["eval_loss"]), extra))
        return control

    # ---- the step boundary (`StudioTrainer`, training/step_logs.py) ----
    def wants_boundary(self) -> bool:
        """Something must be served between these steps, so their numbers are read now."""
        return self.session.control.wants_attention or self.session.diverged is not None

    def step_read(self, step: int, loss: float, grad_norm: float | None, bad: bool) -> None:
        self.session.step_read(step, loss, grad_norm, bad)

    def between_steps(self, control) -> None:
        """After the step's log, before the Trainer evaluates and saves: requests, or the end of a diverged run."""
        s = self.session
        if s.diverged is None:
            self._serve(self.steering.between_steps(s.trainer.state.global_step), control)
        if s.diverged is not None:
            _halt(control)

    def on_save(self, args, state, control, **kwargs):
        self.session.checkpoint_written(state.global_step)
        if self.steering.holding:  # a save asked for while paused: hold again, still between the same steps
            self._serve(self.steering.between_steps(state.global_step), control, saved=True)
        return control

    def _serve(self, r: Requests, control, saved: bool = False) -> None:
        """`saved`: the Trainer has just written this step's checkpoint, so a save asks for nothing new."""
        s = self.session
        if r.stop:
            s.stopping("stop")
            control.should_save = True
            control.should_training_stop = True
        if r.save and saved:
            s.checkpoint_written(s.trainer.state.global_step, again=True)
        elif r.save:
            s.save_reason = "requested"
            control.should_save = True
        if r.extend:
            s.pending_extension += r.extend
            s.save_reason = "extend"
            control.should_save = True
            control.should_training_stop = True


def _halt(control) -> None:
    """End training after a NaN/Inf step without evaluating or saving it: the last good checkpoint stays the latest."""
    control.should_save = False
    control.should_evaluate = False
    control.should_training_stop = True
