"""The one reader of a run's steps: everything that happens at a step, in one object the training
loop owns.

Per step, in order: the step begins (clock); between backward and the optimizer the NaN guard
flags it on the device (guard.py); its numbers reach the host, a step late (step_logs.py), and the
guard judges them; the step is logged (metrics, tokens/s, VRAM); between steps, pause / stop /
save / extend are served (steering.py) and a diverged run ends; the Trainer's checkpoint is adopted
(or dropped if the weights went NaN) and the probes answered. The Trainer reaches it only through
`StudioCallback`, a thin adapter; it never calls back into the `Session` that owns the loop. What the
loop changes between segments (the config after an out-of-memory cut or an extension) it writes
into the shared `RunContext`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerControl

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import DivergedError
from qlora_studio.core.model.devices import device_name
from qlora_studio.core.model.lora import count_parameters
from qlora_studio.core.runs import events as ev
from qlora_studio.core.runs.checkpoints import CheckpointStore
from qlora_studio.core.runs.store import RunFolder
from qlora_studio.core.training import disk
from qlora_studio.core.training.arguments import is_fsdp
from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.guard import BadStep, NanGuard, diverged_message
from qlora_studio.core.training.loading import run_prediction
from qlora_studio.core.training.meter import StepMeter
from qlora_studio.core.training.probes import Prober
from qlora_studio.core.training.speed import SpeedPlan
from qlora_studio.core.training.steering import Requests, Steering


@dataclass
class RunContext:
    """What a run trains with, shared by the loop and its step reader; the loop replaces `config`
    (and `data`) when the run changes its own settings."""

    config: RunConfig
    loaded: Any  # model.loading.LoadedModel
    data: Any  # data.pipeline.PreparedData
    speed: SpeedPlan
    folder: RunFolder | None  # None on ranks other than 0
    control: TrainControl
    emit: ev.Emit
    warn: Callable[[str], None]
    rank: int = 0
    world_size: int = 1


class StepReader:
    """Reads each step of a run; owned by the loop (`Session`), reached by the Trainer through `StudioCallback`."""

    def __init__(self, run: RunContext, meter: StepMeter, start_step: int, resume_point: Path | None):
        self.run = run
        self.meter = meter
        self.start_step = start_step
        self.resume_point = resume_point  # the checkpoint the next segment starts from
        device = run.loaded.device
        self.guard = NanGuard(run.config.train.on_nan, run.world_size, device)
        self.steering = Steering(run.control, run.rank, run.world_size, device, run.emit, meter)
        self.checkpoints = CheckpointStore(run.folder, writer=run.rank == 0)
        self.prober = _prober(run)
        self.trainer = None  # the segment's
        self.started = False
        self.stopped = False
        self.save_reason = "scheduled"
        self.pending_extension = 0
        self.last_loss: float | None = None
        self.diverged: DivergedError | None = None  # set at a NaN/Inf step that stops the run
        self.disk_need: disk.DiskNeed | None = None

    # ---- the segment ----
    def segment_began(self, state) -> None:
        """Trainer's train begin: the first segment announces the run (RunStarted) and asks the base model the probes."""
        self.meter.segment_began(state.num_input_tokens_seen)
        if self.started:
            return
        self.started = True
        run = self.run
        if run.folder is not None:  # before the first step: room for the checkpoints and the adapter
            self.disk_need = disk.estimate_need(run.loaded.model, run.loaded.tokenizer, run.config, state.max_steps)
            disk.check_space(run.folder.path, self.disk_need, run.config.train.keep_checkpoints)
        run.emit(self._run_started(state.max_steps))
        if run.folder is not None:
            run.folder.save_data_report(run.data.report.to_dict())
        if self.prober is not None and self.start_step == 0:
            self.prober.answer(0, base=True)
        first = f"step {self.start_step + 1}" if self.start_step else "the first step"
        run.emit(ev.Preparing("first_step", f"running {first}"))

    def nothing_left_to_train(self, max_steps: int | None) -> bool:
        """Resumed at the last step (killed while saving the adapter): the Trainer would train one step
        past max_steps when that is not an epoch's end, so the run only takes its state and ends."""
        if self.resume_point is None or max_steps is None or self.start_step < max_steps:
            return False
        from transformers import TrainerState

        self.trainer.state = TrainerState.load_from_json(str(self.resume_point / "trainer_state.json"))
        self.segment_began(self.trainer.state)
        return True

    def _run_started(self, total_steps: int) -> ev.RunStarted:
        run, loaded = self.run, self.run.loaded
        trainable, total = count_parameters(loaded.model)
        predicted = run_prediction(run.config, loaded, run.speed, run.warn)
        return ev.RunStarted(
            run_dir=str(run.folder.path) if run.folder else "", config=run.config.model_dump(mode="json"),
            total_steps=total_steps, start_step=self.start_step, device=str(loaded.device),
            device_name=device_name(loaded.device), train_rows=run.data.report.train_rows,
            eval_rows=run.data.report.eval_rows, trainable_params=trainable, total_params=total,
            quantization=loaded.quantization,
            predicted_peak_gb=round(predicted.peak_allocated_bytes / 2**30, 3) if predicted else None,
            predicted_total_gb=round(predicted.total_bytes / 2**30, 3) if predicted else None,
            prediction=f"{predicted.headline()}; assumes {predicted.assumptions()}" if predicted else "",
            batching=run.speed.summary(),
        )

    # ---- one step ----
    def step_began(self) -> None:
        self.meter.step_began(self.run.loaded.device)

    def before_update(self, optimizer) -> None:
        """Between backward and the optimizer step: a NaN/Inf step's update is kept off the weights."""
        self.guard.before_update(self.trainer, optimizer)

    def step_ended(self, step: int) -> None:
        self.meter.step_ended(step)

    def step_read(self, step: int, loss: float, grad_norm: float | None, bad: bool) -> None:
        """A step's numbers reached the host (before its log): the guard's verdict on it."""
        bad_step = self.guard.judge(step, loss, grad_norm, bad)
        if bad_step is None or self.diverged is not None:  # after a stop, later steps are only logged
            return
        if bad_step.stop:
            message = self.diverged_message(bad_step)
            self.diverged = DivergedError(message)
        else:
            message = f"{bad_step.what()} at step {bad_step.step}: its update was skipped (train.on_nan skip_step)"
        self.run.emit(ev.NonFiniteStep(bad_step.step, bad_step.loss, bad_step.grad_norm, bad_step.action, message))

    def metrics(self, state, logs: dict[str, Any]) -> ev.StepMetrics:
        """This step's metrics (measured once: the reporting streams and the run's record share them)."""
        return self.meter.measure(state, logs, self.run.config.train, self.run.loaded.device)

    def step_logged(self, state, logs: dict[str, Any]) -> None:
        metrics = self.metrics(state, logs)
        metrics.tokens_per_batch = self.run.speed.micro_batch_tokens(self.run.config)
        self.last_loss = metrics.loss
        self.run.emit(ev.StepLogged(metrics, state.max_steps))

    def eval_logged(self, step: int, logs: dict[str, Any]) -> None:
        extra = {k: v for k, v in logs.items() if k not in ("eval_loss", "epoch") and isinstance(v, (int, float))}
        self.run.emit(ev.EvalLogged(step, float(logs["eval_loss"]), extra))

    # ---- between steps ----
    def wants_boundary(self) -> bool:
        """Something must be served between these steps, so their numbers are read now."""
        return self.run.control.wants_attention or self.diverged is not None

    def between_steps(self, flags: TrainerControl) -> None:
        """After the step's log, before the Trainer evaluates and saves: requests, or the end of a diverged run."""
        if self.diverged is None:
            self._serve(self.steering.between_steps(self.trainer.state.global_step), flags)
        if self.diverged is not None:  # end without evaluating or saving: the last good checkpoint stays the latest
            flags.should_save = flags.should_evaluate = False
            flags.should_training_stop = True

    def saved(self, step: int, flags: TrainerControl) -> None:
        """The Trainer wrote this step's checkpoint; a save asked for while paused holds again after it."""
        self.checkpoint_written(step)
        if self.steering.holding:
            self._serve(self.steering.between_steps(step), flags, saved=True)

    def _serve(self, r: Requests, flags: TrainerControl, saved: bool = False) -> None:
        """`saved`: the Trainer has just written this step's checkpoint, so a save asks for nothing new."""
        if r.stop:
            self.stopped, self.save_reason = True, "stop"
            flags.should_save = flags.should_training_stop = True
        if r.save and saved:
            self.checkpoint_written(self.trainer.state.global_step, again=True)
        elif r.save:
            self.save_reason = "requested"
            flags.should_save = True
        if r.extend:
            self.pending_extension += r.extend
            self.save_reason = "extend"
            flags.should_save = flags.should_training_stop = True

    # ---- checkpoints ----
    def checkpoint_written(self, step: int, again: bool = False) -> None:
        """The Trainer wrote `checkpoint-<step>` (or, `again`, a save was asked for a step already saved)."""
        run = self.run
        reason = "requested" if again else self.save_reason
        self.save_reason = "scheduled"
        if not again and not self.guard.weights_finite(run.loaded.model):
            self.checkpoints.discard(step)  # never kept: the last good checkpoint stays the latest
            raise DivergedError(self.diverged_message(BadStep(step, None, None, 1, True), "the weights became NaN/Inf"))
        meta = checkpoint_meta(self.trainer.state, run.config, self.meter, self.last_loss, reason)
        path = self.checkpoints.existing(step) if again else self.checkpoints.adopt(step, run.config, meta)
        if path is None:
            return
        self.resume_point = path
        run.emit(ev.CheckpointSaved(step, str(path), reason))
        if self.prober is not None and not again and reason not in ("out of memory", "error"):
            self.prober.answer(step)

    def checkpoint_now(self, reason: str) -> None:
        """A checkpoint of the last completed step written outside the Trainer's loop (after it
        unwound on an out-of-memory error); the next segment resumes from it."""
        self.trainer.flush_step_log()  # the checkpoint's record holds the step's numbers
        step = self.trainer.state.global_step
        if step == 0:
            self.resume_point = None
        elif self.checkpoints.existing(step):
            self.resume_point = self.checkpoints.existing(step)
        else:
            self.save_reason = reason
            self.checkpoints.save_outside_loop(self.trainer)
            self.checkpoint_written(step)

    def emergency_checkpoint(self) -> None:
        """On an unexpected error, keep what was trained since the last checkpoint, or say why not."""
        if self.trainer is None or self.run.folder is None:
            return
        step, latest = self.trainer.state.global_step, self.last_checkpoint_step() or 0
        if step <= latest:
            return
        try:
            self.checkpoint_now("error")
        except Exception as exc:  # noqa: BLE001 - the original error is reported next; this one is said first
            self.run.warn(f"could not save a checkpoint of step {step} after the error ({type(exc).__name__}: {exc}); "
                          f"the last saved step is {latest}")

    def last_checkpoint_step(self) -> int | None:
        found = self.run.folder.checkpoints() if self.run.folder is not None else []
        return found[-1][0] if found else None

    def diverged_message(self, bad: BadStep, what: str | None = None) -> str:
        loaded = self.run.loaded
        return diverged_message(bad, self.run.config, loaded.compute_dtype, loaded.device.type,
                                self.last_checkpoint_step(), what)


def _prober(run: RunContext) -> Prober | None:
    """Probes are answered on rank 0; FSDP ranks each hold a shard of the model, so none answers there."""
    if not run.config.probes or run.rank != 0:
        return None
    if is_fsdp(run.config):
        run.warn("probes are not answered in FSDP runs (each process holds only a shard of the model)")
        return None
    from qlora_studio.core.model.loading import stop_token_ids

    return Prober(run.config, run.loaded, stop_token_ids(run.loaded.tokenizer, run.loaded.source.path), run.emit)


def checkpoint_meta(state, config: RunConfig, meter: StepMeter, loss: float | None, reason: str) -> dict[str, Any]:
    """The counters a checkpoint carries beside the Trainer's state, for resuming and for people."""
    t = config.train
    return {"total_steps": state.max_steps, "tokens": int(state.num_input_tokens_seen),
            "elapsed_s": round(meter.elapsed(), 3), "loss": loss, "micro_batch_size": t.micro_batch_size,
            "grad_accum": t.grad_accum, "max_steps": t.max_steps, "max_length": config.data.max_length,
            "gradient_checkpointing": t.gradient_checkpointing, "reason": reason, "saved_at": time.time()}
