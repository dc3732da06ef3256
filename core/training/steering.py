"""Pause, stop, save and extend, served between optimizer steps on every rank alike.

Requests are served right after a step is logged (before the Trainer evaluates and saves), so the
checkpoint a stop, save or extend asks for holds the step just finished, written by the Trainer's
own save. With several processes rank 0 decides and broadcasts, and keeps the others waiting
with a heartbeat while paused (a silent wait would time out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.meter import StepMeter


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
