"""`run_training(config, emit, control)`: the one entry for training, used by the CLI, the window's
worker and the tests.

Built on transformers' Trainer; `callback` turns its hooks into our events and serves the control
object between optimizer steps. A run is trained in one or more *segments*: a segment is one
`Trainer.train()` call, and a new one starts (resuming from a checkpoint of the last completed
step) when the run changes its own settings: after a CUDA out-of-memory error with a smaller
micro-batch, or with more steps after "extend". Resuming a stopped run is the same move.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from qlora_studio.core.config.files import absolute_paths
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import DivergedError, FailureCause, OutOfMemoryStop, UserError, cause_of
from qlora_studio.core.model.devices import cap_gpu_memory, configure_cuda_allocator, device_name, torch_memory
from qlora_studio.core.model.lora import adapter_digest, count_parameters
from qlora_studio.core.planner.estimate import CUDA_CONTEXT_BYTES
from qlora_studio.core.redact import redact
from qlora_studio.core.training import disk
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training import oom
from qlora_studio.core.training.arguments import is_fsdp
from qlora_studio.core.training.callback import StepMeter, Steering, StudioCallback
from qlora_studio.core.runs.checkpoints import CheckpointStore
from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.guard import BadStep, NanGuard, diverged_message
from qlora_studio.core.training.loading import load_inputs, prepare_run_data, run_prediction, save_adapter
from qlora_studio.core.training.probes import Prober
from qlora_studio.core.runs.recorder import RunRecorder
from qlora_studio.core.training.speed import plan_speed
from qlora_studio.core.training.reporting import Reporting
from qlora_studio.core.runs.store import RunFolder, checkpoint_name
from qlora_studio.core.training.trainer import build_trainer


def run_training(config: RunConfig | None = None, emit: ev.Emit | None = None, control: TrainControl | None = None,
                 *, resume_from: str | Path | None = None) -> ev.RunResult:
    """Train a LoRA adapter as `config` says, or continue the run folder `resume_from`.

    Never raises for a failed run: it emits `Failed` and returns a result whose `status` and
    `cause` say what happened. Progress leaves as events through `emit`; `control` steers from
    any thread.
    """
    if config is None and resume_from is None:
        raise ValueError("give a config or a run folder to resume")
    control = control or TrainControl()
    configure_cuda_allocator()  # the entry points did already, unless a script calls in directly
    if _launches_workers(config, resume_from):
        from qlora_studio.core.training.supervisor import run_supervised

        return run_supervised(config, emit, control, resume_from)
    return Session(config, emit, control, resume_from).run()


def _launches_workers(config: RunConfig | None, resume_from: str | Path | None) -> bool:
    """Several processes asked for, and this is not already one of them."""
    if "RANK" in os.environ:
        return False
    if config is None:
        try:
            config = RunFolder.open(resume_from).load_config()
        except Exception:  # noqa: BLE001 - the session reports the bad folder as a failed run
            return False
    return config.distributed.num_processes > 1


class Session:
    """One run in this process: open its folder, load model and data, then train segment after segment."""

    def __init__(self, config: RunConfig | None, emit: ev.Emit | None, control: TrainControl,
                 resume_from: str | Path | None):
        self.config = config
        self.control = control
        self.resume_from = resume_from
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.sinks: list[ev.Emit] = []  # rank 0 only: the run folder's recorder, then the caller's emit
        self._emit = emit
        self.folder: RunFolder | None = None
        self.checkpoints = CheckpointStore(None)
        self.resume_point: Path | None = None  # the checkpoint the next segment starts from
        self.start_step = 0
        self.meter = StepMeter()
        self.loaded = self.data = self.trainer = self.speed = None
        self.prober: Prober | None = None
        self.started = False
        self.stopped = False
        self.save_reason = "scheduled"
        self.pending_extension = 0
        self.last_loss: float | None = None
        self.guard = NanGuard("stop")
        self.diverged: DivergedError | None = None  # set at a NaN/Inf step that stops the run
        self.disk_need: disk.DiskNeed | None = None
        self.reporting: Reporting | None = None  # rank 0: TensorBoard / W&B beside the run folder

    def emit(self, event: ev.Event) -> None:
        for sink in self.sinks:
            sink(event)

    def warn(self, message: str) -> None:
        self.emit(ev.Warning(redact(message)))

    # ---- the run ----
    def run(self) -> ev.RunResult:
        with ExitStack() as undo:  # every patch of a library's modules this run makes, undone on any exit
            try:
                self._open()
                cap_gpu_memory(self.config.train.experimental.card_gb, CUDA_CONTEXT_BYTES)  # before any allocation
                self.loaded, self.data = load_inputs(self.config, self.warn, self.world_size, self.emit)
                self.speed = plan_speed(self.config, self.loaded, self.warn, undo, fsdp=is_fsdp(self.config))
                self.guard = NanGuard(self.config.train.on_nan, self.world_size, self.loaded.device)
                self.prober = self._prober()
                self._train_segments()
                return self._finish()
            except Exception as exc:  # noqa: BLE001 - every failure becomes a Failed event, never a dead thread
                return self._fail(self._explain(exc), traceback.format_exc())
            finally:
                self._release()

    def _open(self) -> None:
        rank0 = self.rank == 0
        if self.resume_from is not None:
            self.folder = RunFolder.open(self.resume_from)
            self.config = self.config or self.folder.load_config()
            self.folder.check_resumable(self.config)  # before anything in the folder changes
            if rank0:
                disk.check_writable(self.folder.path)
                self.folder.repair()  # what a killed process left half written
            self.resume_point, self.start_step, elapsed = self.folder.resume_point()
            self.meter = StepMeter(elapsed)
            if rank0:
                self.folder.truncate_records(self.start_step)
                self.config.save(self.folder.config_path)
        else:
            self.config = absolute_paths(self.config)
            self.folder = RunFolder.create(self.config) if rank0 else None
        if rank0:
            self.sinks = [RunRecorder(self.folder)] + ([self._emit] if self._emit else [])
            self.folder.mark_running(self.start_step)
            self.reporting = Reporting(self.config, self.folder.path, self.warn)
        self.checkpoints = CheckpointStore(self.folder, writer=rank0)

    def _train_segments(self) -> None:
        while True:
            self.trainer = build_trainer(self.config, self.loaded, self.data, self.folder,
                                         StudioCallback(self, Steering(self.control, self.rank, self.world_size,
                                                                       self.loaded.device, self.emit, self.meter)),
                                         self.speed)
            if self._nothing_left_to_train():
                return
            ran_out_of_memory = False
            try:
                self.trainer.train(resume_from_checkpoint=str(self.resume_point) if self.resume_point else None)
            except RuntimeError as exc:
                if not oom.is_out_of_memory(exc):
                    raise
                ran_out_of_memory = True  # handled below, outside the except block, so its frames are freed
            if self.diverged is not None:
                raise self.diverged
            if ran_out_of_memory:
                self._recover_from_oom()
            elif self.pending_extension and not self.control.stop_requested:
                self._extend()
            else:
                return

    def _nothing_left_to_train(self) -> bool:
        """Resumed at the last step (killed while saving the adapter): the Trainer would train one step
        past max_steps when that is not an epoch's end, so the run only takes its state and ends."""
        t = self.config.train
        if self.resume_point is None or t.max_steps is None or self.start_step < t.max_steps:
            return False
        from transformers import TrainerState

        self.trainer.state = TrainerState.load_from_json(str(self.resume_point / "trainer_state.json"))
        self.segment_began(self.trainer.state)
        return True

    # ---- callback services ----
    def segment_began(self, state) -> None:
        self.meter.segment_began(state.num_input_tokens_seen)
        if self.started:
            return
        self.started = True
        loaded = self.loaded
        if self.folder is not None:  # before the first step: room for the checkpoints and the adapter
            self.disk_need = disk.estimate_need(loaded.model, loaded.tokenizer, self.config, state.max_steps)
            disk.check_space(self.folder.path, self.disk_need, self.config.train.keep_checkpoints)
        trainable, total = count_parameters(loaded.model)
        predicted = run_prediction(self.config, loaded, self.speed, self.warn)
        self.emit(ev.RunStarted(
            run_dir=str(self.folder.path) if self.folder else "", config=self.config.model_dump(mode="json"),
            total_steps=state.max_steps, start_step=self.start_step, device=str(loaded.device),
            device_name=device_name(loaded.device), train_rows=self.data.report.train_rows,
            eval_rows=self.data.report.eval_rows, trainable_params=trainable, total_params=total,
            quantization=loaded.quantization,
            predicted_peak_gb=round(predicted.peak_allocated_bytes / 2**30, 3) if predicted else None,
            predicted_total_gb=round(predicted.total_bytes / 2**30, 3) if predicted else None,
            prediction=f"{predicted.headline()}; assumes {predicted.assumptions()}" if predicted else "",
            batching=self.speed.summary(),
        ))
        if self.folder is not None:
            self.folder.save_data_report(self.data.report.to_dict())
        if self.prober is not None and self.start_step == 0:
            self.prober.answer(0, base=True)
        first = f"step {self.start_step + 1}" if self.start_step else "the first step"
        self.emit(ev.Preparing("first_step", f"running {first}"))

    def step_metrics(self, state, logs: dict[str, Any]) -> ev.StepMetrics:
        """This step's metrics (measured once: the reporting streams and the run's record share them)."""
        return self.meter.measure(state, logs, self.config.train, self.loaded.device)

    def step_logged(self, state, logs: dict[str, Any]) -> None:
        metrics = self.step_metrics(state, logs)
        metrics.tokens_per_batch = self.speed.micro_batch_tokens(self.config)
        self.last_loss = metrics.loss
        self.emit(ev.StepLogged(metrics, state.max_steps))

    def before_update(self, optimizer) -> None:
        """Between backward and the optimizer step: a NaN/Inf step's update is kept off the weights (training.guard)."""
        self.guard.before_update(self.trainer, optimizer)

    def step_read(self, step: int, loss: float, grad_norm: float | None, bad: bool) -> None:
        """A step's numbers reached the host (before its log): the guard's verdict on it."""
        bad_step = self.guard.judge(step, loss, grad_norm, bad)
        if bad_step is None or self.diverged is not None:  # after a stop, later steps are only logged
            return
        if bad_step.stop:
            message = self._diverged_message(bad_step)
            self.diverged = DivergedError(message)
        else:
            message = f"{bad_step.what()} at step {bad_step.step}: its update was skipped (train.on_nan skip_step)"
        self.emit(ev.NonFiniteStep(bad_step.step, bad_step.loss, bad_step.grad_norm, bad_step.action, message))

    def _diverged_message(self, bad: BadStep, what: str | None = None) -> str:
        return diverged_message(bad, self.config, self.loaded.compute_dtype, self.loaded.device.type,
                                self._last_checkpoint_step(), what)

    def _last_checkpoint_step(self) -> int | None:
        found = self.folder.checkpoints() if self.folder is not None else []
        return found[-1][0] if found else None

    def stopping(self, reason: str) -> None:
        self.stopped = True
        self.save_reason = reason

    def checkpoint_written(self, step: int, again: bool = False) -> None:
        """The Trainer wrote `checkpoint-<step>` (or, `again`, a save was asked for a step already saved)."""
        reason = "requested" if again else self.save_reason
        self.save_reason = "scheduled"
        if not again and not self.guard.weights_finite(self.loaded.model):
            self.checkpoints.discard(step)  # never kept: the last good checkpoint stays the latest
            raise DivergedError(self._diverged_message(BadStep(step, None, None, 1, True), "the weights became NaN/Inf"))
        path = self.checkpoints.existing(step) if again else self.checkpoints.adopt(step, self.config, checkpoint_meta(self.trainer.state, self.config, self.meter, self.last_loss, reason))
        if path is not None:
            self.resume_point = path
            self.emit(ev.CheckpointSaved(step, str(path), reason))
            if self.prober is not None and not again and reason not in ("out of memory", "error"):
                self.prober.answer(step)

    def _prober(self) -> Prober | None:
        """Probes are answered on rank 0; FSDP ranks each hold a shard of the model, so none answers there."""
        if not self.config.probes or self.rank != 0:
            return None
        if is_fsdp(self.config):
            self.warn("probes are not answered in FSDP runs (each process holds only a shard of the model)")
            return None
        from qlora_studio.core.model.loading import stop_token_ids

        return Prober(self.config, self.loaded, stop_token_ids(self.loaded.tokenizer, self.loaded.source.path), self.emit)

    # ---- settings the run changes itself ----
    def _recover_from_oom(self) -> None:
        """Out of memory in the step after `global_step`: drop that step, make the next try smaller, go on."""
        step = self.trainer.state.global_step
        self._checkpoint_completed_step("out of memory")
        self._drop_trainer()
        now = {"packed": self.speed.packed, "offloaded": self.speed.offloads(self.config)}
        decision = oom.after_out_of_memory(self.config, step + 1, self.world_size, **now)
        if isinstance(decision, oom.Ask):
            answer = self.control.ask(decision.question, list(decision.options), default=oom.STOP)
            decision = oom.after_out_of_memory(self.config, step + 1, self.world_size, answer=answer, **now)
        if not isinstance(decision, oom.Adapt):
            raise OutOfMemoryStop(decision.message)
        self._apply(decision.config)
        if decision.data_changed:
            self.data = prepare_run_data(self.config, self.loaded, self.warn)
        self.emit(ev.SettingsChanged(step, "out_of_memory", decision.changes, decision.message))

    def _checkpoint_completed_step(self, reason: str) -> None:
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

    def _extend(self) -> None:
        steps, self.pending_extension = self.pending_extension, 0
        done, old_total = self.trainer.state.global_step, self.trainer.state.max_steps
        self._drop_trainer()
        self._apply(self.config.with_overrides({"train.max_steps": old_total + steps}))
        if self.world_size > 1:  # rank 0 renames the checkpoint every rank resumes from
            import torch.distributed as dist

            dist.barrier()
            self.resume_point = RunFolder(self.folder.path if self.folder else self.resume_from).checkpoints_dir / checkpoint_name(done)
        message = (f"extended from {old_total} to {old_total + steps} steps; the learning-rate schedule now spans "
                   f"{old_total + steps} steps")
        self.emit(ev.SettingsChanged(done, "extended", {"max_steps": [old_total, old_total + steps]}, message))

    def _apply(self, config: RunConfig) -> None:
        self.config = config
        if self.folder is not None:
            config.save(self.folder.config_path)

    def _drop_trainer(self) -> None:
        self.trainer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- endings ----
    def _finish(self) -> ev.RunResult:
        state = self.trainer.state
        step = state.global_step
        status = "stopped" if self.stopped or (self.control.stop_requested and step < state.max_steps) else "finished"
        adapter_dir = save_adapter(self.loaded, self.trainer, self.folder, self.config, self.rank)
        peak = torch_memory(self.loaded.device).get("vram_peak_gb")
        run_dir = str(self.folder.path) if self.folder else None
        self.emit(ev.Finished(status, step, state.max_steps, self.last_loss, adapter_dir, run_dir or "",
                              round(self.meter.elapsed(), 3), peak))
        digest = None if is_fsdp(self.config) else adapter_digest(self.loaded.model)  # FSDP ranks hold shards
        return ev.RunResult(status, run_dir, step, self.last_loss, adapter_dir, adapter_digest=digest)

    def _explain(self, exc: Exception) -> Exception:
        """The user's error for a failure whose cause is a full disk (torch and safetensors say so untyped)."""
        if isinstance(exc, UserError):
            return exc
        step = self.trainer.state.global_step if self.trainer is not None else self.start_step
        full = disk.as_disk_error(exc, self.folder.path if self.folder else None, self.disk_need, step,
                                  self._last_checkpoint_step())
        return full or exc

    def _fail(self, exc: Exception, details: str) -> ev.RunResult:
        cause = cause_of(exc)
        reason = str(exc).strip() if cause.is_users_to_fix else f"{type(exc).__name__}: {exc}".strip()
        reason, details = redact(reason), redact(details)  # a library's message may quote a Hub token
        if cause is FailureCause.CRASH:
            self._emergency_checkpoint()
        elif cause is FailureCause.OOM and self.world_size == 1 and self.loaded is not None:
            save_adapter(self.loaded, None, self.folder, self.config, self.rank)  # what was trained stays usable
        elif cause is FailureCause.DISK and self.folder is not None and self.rank == 0:
            self.folder.repair()  # drop the half-written save: its space is what the status record needs
        step = self.trainer.state.global_step if self.trainer is not None else self.start_step
        if not self.started and self.resume_from is None and self.folder is not None:
            # it never trained (a model or dataset that cannot load): no run folder to leave behind
            shutil.rmtree(self.folder.path, ignore_errors=True)
            self.folder, self.sinks = None, []
        if not self.sinks and self._emit and self.rank == 0:
            self.sinks = [self._emit]  # failed before (or without) a run folder: the caller still hears why
        run_dir = str(self.folder.path) if self.folder else None
        if self.reporting is not None:
            self.reporting.close(failed=True)
        failed = ev.Failed(reason.splitlines()[0] if reason else type(exc).__name__, details, run_dir, step, cause)
        for sink in self.sinks:
            try:
                sink(failed)
            except OSError:  # the run folder's disk may be what failed; the caller still hears of it
                pass
        return ev.RunResult(cause.run_status, run_dir, step, self.last_loss, None, error=reason, cause=cause,
                            details=details)

    def _emergency_checkpoint(self) -> None:
        """On an unexpected error, keep what was trained since the last checkpoint, or say why not."""
        trainer = self.trainer
        if trainer is None or self.folder is None:
            return
        step = trainer.state.global_step
        latest = self.folder.checkpoints()[-1][0] if self.folder.checkpoints() else 0
        if step <= latest:
            return
        try:
            trainer.flush_step_log()
            self.save_reason = "error"
            self.checkpoints.save_outside_loop(trainer)
            self.checkpoint_written(step)
        except Exception as exc:  # noqa: BLE001 - the original error is reported next; this one is said first
            self.warn(f"could not save a checkpoint of step {step} after the error ({type(exc).__name__}: {exc}); "
                      f"the last saved step is {latest}")

    def _release(self) -> None:
        """Free the model and the GPU memory, so many runs in one sitting do not leak."""
        if self.reporting is not None:
            self.reporting.close()
        self.trainer = self.loaded = self.data = self.prober = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def checkpoint_meta(state, config: RunConfig, meter: StepMeter, loss: float | None, reason: str) -> dict[str, Any]:
    """The counters a checkpoint carries beside the Trainer's state, for resuming and for people."""
    t = config.train
    return {"total_steps": state.max_steps, "tokens": int(state.num_input_tokens_seen),
            "elapsed_s": round(meter.elapsed(), 3), "loss": loss, "micro_batch_size": t.micro_batch_size,
            "grad_accum": t.grad_accum, "max_steps": t.max_steps, "max_length": config.data.max_length,
            "gradient_checkpointing": t.gradient_checkpointing, "reason": reason, "saved_at": time.time()}
