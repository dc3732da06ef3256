"""Typed, JSON-ready events that leave `run_training`.

Every consumer (CLI progress bar, metrics file, Qt bridge, tests) receives the same objects
through a plain `emit(event)` callable; `to_dict()` gives the JSON form with a `type` field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable


@dataclass
class Event:
    type: str = field(init=False, default="event")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunStarted(Event):
    run_dir: str
    config: dict[str, Any]
    total_steps: int
    start_step: int
    device: str
    device_name: str
    train_rows: int
    eval_rows: int
    trainable_params: int
    total_params: int
    quantization: dict[str, Any]
    predicted_peak_gb: float | None = None
    type: str = field(init=False, default="run_started")


@dataclass
class StepLogged(Event):
    """One optimizer step; `metrics` is the line written to metrics.jsonl."""

    metrics: dict[str, Any]
    total_steps: int
    type: str = field(init=False, default="step")


@dataclass
class EvalLogged(Event):
    step: int
    eval_loss: float
    metrics: dict[str, Any]
    type: str = field(init=False, default="eval")


@dataclass
class CheckpointSaved(Event):
    step: int
    path: str
    reason: str
    type: str = field(init=False, default="checkpoint")


@dataclass
class Paused(Event):
    step: int
    type: str = field(init=False, default="paused")


@dataclass
class Resumed(Event):
    step: int
    type: str = field(init=False, default="resumed")


@dataclass
class SettingsChanged(Event):
    """Training changed its own settings (out-of-memory recovery, extension)."""

    step: int
    reason: str
    changes: dict[str, Any]
    message: str
    type: str = field(init=False, default="settings_changed")


@dataclass
class Warning(Event):  # noqa: A001 - the event's name in the stream
    message: str
    type: str = field(init=False, default="warning")


@dataclass
class Finished(Event):
    status: str  # finished | stopped
    step: int
    total_steps: int
    final_loss: float | None
    adapter_dir: str | None
    run_dir: str
    elapsed_s: float
    peak_vram_gb: float | None = None
    type: str = field(init=False, default="finished")


@dataclass
class Failed(Event):
    reason: str
    details: str
    run_dir: str | None
    step: int | None
    user_error: bool
    type: str = field(init=False, default="failed")


Emit = Callable[[Event], None]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__dataclass_fields__["type"].default: cls
    for cls in (RunStarted, StepLogged, EvalLogged, CheckpointSaved, Paused, Resumed, SettingsChanged, Warning,
                Finished, Failed)
}


def event_from_dict(data: dict) -> Event:
    """The event that `to_dict()` wrote (events cross process boundaries as JSON lines)."""
    cls = EVENT_TYPES[data["type"]]
    fields = {k: v for k, v in data.items() if k != "type" and k in cls.__dataclass_fields__}
    return cls(**fields)
