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
import traceback
from pathlib import Path

import torch

from qlora_studio.core.config.files import absolute_paths
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import FailureCause, OutOfMemoryStop, UserError, cause_of
from qlora_studio.core.model.devices import cap_gpu_memory, configure_cuda_allocator, torch_memory
from qlora_studio.core.model.lora import adapter_digest
from qlora_studio.core.model.patches import RunPatches
from qlora_studio.core.planner.estimate import CUDA_CONTEXT_BYTES
from qlora_studio.core.redact import redact
from qlora_studio.core.runs import events as ev
from qlora_studio.core.runs.recorder import RunRecorder
from qlora_studio.core.runs.store import RunFolder, checkpoint_name
from qlora_studio.core.training import disk, oom
from qlora_studio.core.training.arguments import is_fsdp
from qlora_studio.core.training.callback import StudioCallback
from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.host_pace import StepPacedCollector, lean_module_walks
from qlora_studio.core.training.loading import load_inputs, prepare_run_data, save_adapter
from qlora_studio.core.training.meter import StepMeter
from qlora_studio.core.training.reporting import Reporting
from qlora_studio.core.training.speed import plan_speed
from qlora_studio.core.training.steps import RunContext, StepReader
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
    """One run in this process: open its folder, load model and data, then train segment after
    segment. Each step is the step reader's (training/steps.py); here is only what happens around
    and between segments."""

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
        self.start_step = 0
        self.run_context: RunContext | None = None
        self.steps: StepReader | None = None
        self.reporting: Reporting | None = None  # rank 0: TensorBoard / W&B beside the run folder
        self.collector: StepPacedCollector | None = None

    def emit(self, event: ev.Event) -> None:
        for sink in self.sinks:
            sink(event)

    def warn(self, message: str) -> None:
        self.emit(ev.Warning(redact(message)))

    def run(self) -> ev.RunResult:
        with RunPatches() as patches:  # every patch this run makes, undone on any exit
            try:
                resume_point, start_step, elapsed = self._open()
                cap_gpu_memory(self.config.train.experimental.card_gb, CUDA_CONTEXT_BYTES)  # before any allocation
                loaded, data = load_inputs(self.config, self.warn, self.world_size, self.emit)
                speed = plan_speed(self.config, loaded, self.warn, patches, fsdp=is_fsdp(self.config))
                levers = self.config.train.experimental
                if self.world_size == 1 and not levers.stock_loop_walks:  # bench/NOTES-speed.md, lever 17
                    lean_module_walks(loaded.model, patches)
                self.collector = None if levers.automatic_gc else StepPacedCollector().install(patches)  # lever 16
                self.run_context = RunContext(self.config, loaded, data, speed, self.folder, self.control, self.emit,
                                              self.warn, self.rank, self.world_size)
                self.steps = StepReader(self.run_context, StepMeter(elapsed), start_step, resume_point)
                self._train_segments()
                return self._finish()
            except Exception as exc:  # noqa: BLE001 - every failure becomes a Failed event, never a dead thread
                return self._fail(self._explain(exc), traceback.format_exc())
            finally:
                self._release()

    def _open(self) -> tuple[Path | None, int, float]:
        """The run folder, new or resumed; returns where the run resumes: (checkpoint, step, elapsed seconds)."""
        rank0, resumed = self.rank == 0, (None, 0, 0.0)
        if self.resume_from is not None:
            self.folder = RunFolder.open(self.resume_from)
            self.config = self.config or self.folder.load_config()
            self.folder.check_resumable(self.config)  # before anything in the folder changes
            if rank0:
                disk.check_writable(self.folder.path)
                self.folder.repair()  # what a killed process left half written
            resumed = self.folder.resume_point()
            self.start_step = resumed[1]
            if rank0:
                self.folder.truncate_records(resumed[1])
                self.config.save(self.folder.config_path)
        else:
            self.config = absolute_paths(self.config)
            self.folder = RunFolder.create(self.config) if rank0 else None
        if rank0:
            self.sinks = [RunRecorder(self.folder)] + ([self._emit] if self._emit else [])
            self.folder.mark_running(resumed[1])
            self.reporting = Reporting(self.config, self.folder.path, self.warn)
        return resumed

    def _train_segments(self) -> None:
        run, steps = self.run_context, self.steps
        while True:
            steps.trainer = build_trainer(run.config, run.loaded, run.data, self.folder, StudioCallback(steps), run.speed)
            if self.collector is not None:
                steps.trainer.add_callback(self.collector)
            if steps.nothing_left_to_train(run.config.train.max_steps):
                return
            ran_out_of_memory = False
            try:
                steps.trainer.train(resume_from_checkpoint=str(steps.resume_point) if steps.resume_point else None)
            except RuntimeError as exc:
                if not oom.is_out_of_memory(exc):
                    raise
                ran_out_of_memory = True  # handled below, outside the except block, so its frames are freed
            if steps.diverged is not None:
                raise steps.diverged
            if ran_out_of_memory:
                self._recover_from_oom()
            elif steps.pending_extension and not self.control.stop_requested:
                self._extend()
            else:
                return

    # ---- settings the run changes itself, between segments ----
    def _recover_from_oom(self) -> None:
        """Out of memory in the step after `global_step`: drop that step, make the next try smaller, go on."""
        run, step = self.run_context, self.steps.trainer.state.global_step
        self.steps.checkpoint_now("out of memory")
        self._drop_trainer()
        now = {"packed": run.speed.packed, "offloaded": run.speed.offloads(self.config)}
        decision = oom.after_out_of_memory(self.config, step + 1, self.world_size, **now)
        if isinstance(decision, oom.Ask):
            answer = self.control.ask(decision.question, list(decision.options), default=oom.STOP)
            decision = oom.after_out_of_memory(self.config, step + 1, self.world_size, answer=answer, **now)
        if not isinstance(decision, oom.Adapt):
            raise OutOfMemoryStop(decision.message)
        self._apply(decision.config)
        if decision.data_changed:
            run.data = prepare_run_data(self.config, run.loaded, self.warn)
        self.emit(ev.SettingsChanged(step, "out_of_memory", decision.changes, decision.message))

    def _extend(self) -> None:
        steps = self.steps
        added, steps.pending_extension = steps.pending_extension, 0
        done, old_total = steps.trainer.state.global_step, steps.trainer.state.max_steps
        self._drop_trainer()
        self._apply(self.config.with_overrides({"train.max_steps": old_total + added}))
        if self.world_size > 1:  # rank 0 renames the checkpoint every rank resumes from
            import torch.distributed as dist

            dist.barrier()
            steps.resume_point = RunFolder(self.folder.path if self.folder else self.resume_from).checkpoints_dir / checkpoint_name(done)
        message = (f"extended from {old_total} to {old_total + added} steps; the learning-rate schedule now spans "
                   f"{old_total + added} steps")
        self.emit(ev.SettingsChanged(done, "extended", {"max_steps": [old_total, old_total + added]}, message))

    def _apply(self, config: RunConfig) -> None:
        self.config = self.run_context.config = config
        if self.folder is not None:
            config.save(self.folder.config_path)

    def _drop_trainer(self) -> None:
        self.steps.trainer = None
        _free_memory()

    # ---- endings ----
    def _finish(self) -> ev.RunResult:
        steps, loaded = self.steps, self.run_context.loaded
        state = steps.trainer.state
        stopped = steps.stopped or (self.control.stop_requested and state.global_step < state.max_steps)
        status, run_dir = "stopped" if stopped else "finished", str(self.folder.path) if self.folder else None
        adapter_dir = save_adapter(loaded, steps.trainer, self.folder, self.config, self.rank)
        self.emit(ev.Finished(status, state.global_step, state.max_steps, steps.last_loss, adapter_dir, run_dir or "",
                              round(steps.meter.elapsed(), 3), torch_memory(loaded.device).get("vram_peak_gb")))
        digest = None if is_fsdp(self.config) else adapter_digest(loaded.model)  # FSDP ranks hold shards
        return ev.RunResult(status, run_dir, state.global_step, steps.last_loss, adapter_dir, adapter_digest=digest)

    def _step(self) -> int:
        trainer = self.steps.trainer if self.steps else None
        return trainer.state.global_step if trainer is not None else self.start_step

    def _explain(self, exc: Exception) -> Exception:
        """The user's error for a failure whose cause is a full disk (torch and safetensors say so untyped)."""
        if isinstance(exc, UserError):
            return exc
        last = self.steps.last_checkpoint_step() if self.steps else None
        full = disk.as_disk_error(exc, self.folder.path if self.folder else None,
                                  self.steps.disk_need if self.steps else None, self._step(), last)
        return full or exc

    def _fail(self, exc: Exception, details: str) -> ev.RunResult:
        cause, steps = cause_of(exc), self.steps
        reason = str(exc).strip() if cause.is_users_to_fix else f"{type(exc).__name__}: {exc}".strip()
        reason, details = redact(reason), redact(details)  # a library's message may quote a Hub token
        if cause is FailureCause.CRASH and steps is not None:
            steps.emergency_checkpoint()
        elif cause is FailureCause.OOM and self.world_size == 1 and self.run_context is not None:
            save_adapter(self.run_context.loaded, None, self.folder, self.config, self.rank)  # what was trained stays usable
        elif cause is FailureCause.DISK and self.folder is not None and self.rank == 0:
            self.folder.repair()  # drop the half-written save: its space is what the status record needs
        if not (steps and steps.started) and self.resume_from is None and self.folder is not None:
            # it never trained (a model or dataset that cannot load): no run folder to leave behind
            shutil.rmtree(self.folder.path, ignore_errors=True)
            self.folder, self.sinks = None, []
        if not self.sinks and self._emit and self.rank == 0:
            self.sinks = [self._emit]  # failed before (or without) a run folder: the caller still hears why
        if self.reporting is not None:
            self.reporting.close(failed=True)
        run_dir = str(self.folder.path) if self.folder else None
        failed = ev.Failed(reason.splitlines()[0] if reason else type(exc).__name__, details, run_dir, self._step(), cause)
        for sink in self.sinks:
            try:
                sink(failed)
            except OSError:  # the run folder's disk may be what failed; the caller still hears of it
                pass
        return ev.RunResult(cause.run_status, run_dir, self._step(), steps.last_loss if steps else None, None,
                            error=reason, cause=cause, details=details)

    def _release(self) -> None:
        """Free the model and the GPU memory, so many runs in one sitting do not leak."""
        if self.reporting is not None:
            self.reporting.close()
        self.run_context = self.steps = None
        _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
