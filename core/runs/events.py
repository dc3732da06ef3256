"""Typed, JSON-ready events that leave `run_training`, and the result it returns.

Every consumer (CLI progress bar, run folder recorder, Qt bridge, tests) receives the same objects
through a plain `emit(event)` callable and matches on their types. `to_dict()` gives the JSON form
with a `type` field; `event_from_dict` reads it back (events cross process boundaries as JSON lines).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from qlora_studio.core.errors import FailureCause
from qlora_studio.core.model.quantization import QuantizationReport


@dataclass
class StepMetrics:
    """One optimizer step: the line written to metrics.jsonl (VRAM fields only on CUDA)."""

    step: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens: int  # real (non-padding) tokens seen so far, all processes
    tokens_per_s: float
    elapsed_s: float
    micro_batch_size: int
    grad_accum: int
    vram_allocated_gb: float | None = None
    vram_reserved_gb: float | None = None
    vram_peak_gb: float | None = None
    vram_device_used_gb: float | None = None
    tokens_per_batch: int | None = None  # packed runs: the token budget of a micro-batch
    # The method's own curves past SFT, by TRL's names: DPO "rewards/margins", "rewards/accuracies"...;
    # GRPO "reward", "reward/exact_match", "kl"... (training/methods.py: METHOD_CURVES)
    method: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if (v is not None or not k.startswith("vram_")) and not (k == "method" and not v)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepMetrics":
        return _build(cls, data)


@dataclass
class Event:
    type: str = field(init=False, default="event")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, value in vars(self).items():  # nested records keep their own JSON form
            if hasattr(value, "to_dict"):
                data[name] = value.to_dict()
        return data


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
    trainable_params: int  # the adapters'
    total_params: int  # the model's own, as Setup counts them (adapters not included)
    quantization: QuantizationReport
    predicted_peak_gb: float | None = None  # what PyTorch will allocate at the peak (the VRAM chart's peak)
    predicted_total_gb: float | None = None  # ... plus CUDA context and allocator slack: what must fit the card
    prediction: str = ""  # what the prediction assumes and includes (Estimate.headline / assumptions)
    batching: str = ""  # packed or padded micro-batches, attention, loss, offload (SpeedPlan.summary)
    type: str = field(init=False, default="run_started")


@dataclass
class Preparing(Event):
    """A stage before the first step (converting, loading and quantizing the model, adding the
    adapters, reading and tokenizing the data, the first step), with progress where it is counted."""

    stage: str  # convert | model | adapters | data | tokenize | first_step
    message: str
    done: int | None = None
    total: int | None = None
    type: str = field(init=False, default="preparing")

    @property
    def is_tick(self) -> bool:
        """A progress update within a stage already announced (not its start, not its end)."""
        return self.total is not None and 0 < (self.done or 0) < self.total


@dataclass
class StepLogged(Event):
    metrics: StepMetrics
    total_steps: int
    type: str = field(init=False, default="step")


@dataclass
class EvalLogged(Event):
    step: int
    eval_loss: float
    metrics: dict[str, Any] = field(default_factory=dict)  # whatever else the evaluation reported
    type: str = field(init=False, default="eval")


@dataclass
class CheckpointSaved(Event):
    step: int
    path: str
    reason: str  # scheduled | requested | stop | extend | out of memory | error
    type: str = field(init=False, default="checkpoint")


@dataclass
class ProbesAnswered(Event):
    """The probe prompts answered at a checkpoint (`base`: before step 1, the adapter switched off)."""

    step: int
    base: bool
    answers: list[dict[str, Any]]  # prompt, reply, tokens, stopped (ended by itself)
    seconds: float  # spent generating, between steps (not in tokens/s)
    type: str = field(init=False, default="probes")

    @property
    def label(self) -> str:
        return "base" if self.base else f"step {self.step}"


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
    reason: str  # out_of_memory | extended
    changes: dict[str, list[Any]]  # key -> [before, after]
    message: str
    type: str = field(init=False, default="settings_changed")


@dataclass
class NonFiniteStep(Event):
    """The loss or the gradients of a step were NaN/Inf: its update was not applied (see training.guard)."""

    step: int
    loss: float | None
    grad_norm: float | None
    action: str  # skipped (train.on_nan skip_step) | stopped (the run fails with cause nan)
    message: str
    type: str = field(init=False, default="nonfinite")


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
    reason: str  # one line
    details: str  # the traceback, for a crash
    run_dir: str | None
    step: int | None
    cause: FailureCause
    type: str = field(init=False, default="failed")

    @property
    def status(self) -> str:
        return self.cause.run_status


Emit = Callable[[Event], None]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__dataclass_fields__["type"].default: cls
    for cls in (RunStarted, Preparing, StepLogged, EvalLogged, CheckpointSaved, ProbesAnswered, Paused, Resumed,
                SettingsChanged, NonFiniteStep, Warning, Finished, Failed)
}


@dataclass
class RunResult:
    """What `run_training` returns; the same facts as its last event, for callers that wait."""

    status: str  # finished | stopped | failed
    run_dir: str | None
    step: int
    final_loss: float | None
    adapter_dir: str | None
    error: str | None = None
    cause: FailureCause | None = None  # set when the run failed or was stopped by a failure
    details: str = ""  # the traceback of a crash
    adapter_digest: str | None = None  # sha256 of the trained adapter weights (the same on every rank)

    @property
    def exit_code(self) -> int:
        return self.cause.exit_code if self.cause is not None else 0


# ---- JSON codec ----------------------------------------------------------------------------------

def event_from_dict(data: dict[str, Any]) -> Event:
    """The event that `to_dict()` wrote."""
    return _build(EVENT_TYPES[data["type"]], data)


def _build(cls: type, data: dict[str, Any]):
    """A dataclass from its asdict() form, nested records and enums included (unknown keys ignored)."""
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in data:
            continue
        values[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**values)


def _coerce(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate) and isinstance(value, dict):
            return _build(candidate, value)
        if isinstance(candidate, type) and issubclass(candidate, FailureCause):
            return FailureCause(value)
    return value


class JsonLinesSink:
    """An emit target that prints each event as one JSON line (`--json-events`, worker processes)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        print(json.dumps(event.to_dict(), default=str), file=self.stream or sys.stdout, flush=True)
