"""`run_training(config, emit, control)`: the one entry for training, used by the CLI, the window's
worker and the tests.

Built on transformers' Trainer. A callback turns its hooks into our events and serves the
control object between optimizer steps. A run is trained in one or more *segments*: a segment is
one `Trainer.train()` call, and a new one starts (resuming from a checkpoint of the last
completed step) when the run changes its own settings: after a CUDA out-of-memory error with a
smaller micro-batch, or with more steps after "extend". Resuming a stopped run is the same move.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from qlora_studio.core import events as ev
from qlora_studio.core.config import RunConfig, absolute_paths
from qlora_studio.core.control import TrainControl
from qlora_studio.core.errors import OutOfMemoryStop, UserError
from qlora_studio.core.gpu import torch_memory
from qlora_studio.core.runs import META_NAME, RunFolder, checkpoint_name, read_checkpoint_meta

MIN_MAX_LENGTH = 64


@dataclass
class RunResult:
    status: str  # finished | stopped | failed
    run_dir: str | None
    step: int
    final_loss: float | None
    adapter_dir: str | None
    error: str | None = None
    user_error: bool = False
    adapter_digest: str | None = None  # sha256 of the trained adapter weights (the same on every rank)


def training_arguments(config: RunConfig, device: torch.device, compute_dtype: torch.dtype, output_dir: str,
                       has_eval: bool):
    """The one place a `TrainingArguments` is made from a run config."""
    from transformers import TrainingArguments

    t = config.train
    cuda = device.type == "cuda"
    optim = {"adamw": "adamw_torch_fused" if cuda else "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
             "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit"}[t.optimizer]
    eval_steps = t.eval_every_steps or t.save_every_steps
    sharded = is_fsdp(config)
    extra: dict[str, Any] = {}
    if sharded:
        # FSDP-QLoRA: FSDP shards the 4-bit weights (stored in the compute dtype, see modeling) and
        # checkpoints activations itself; the Trainer-level flag would all-gather again in backward.
        # FSDP1 with flat parameters: FSDP2's DTensors reach bitsandbytes' 4-bit matmul, which
        # cannot mix them with plain tensors (seen on 2 x H200).
        extra = {"fsdp": True, "fsdp_config": {
            "version": 1, "use_orig_params": False, "cpu_ram_efficient_loading": True,
            "activation_checkpointing": t.gradient_checkpointing, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
        }}
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optim,
        bf16=cuda and compute_dtype == torch.bfloat16,
        fp16=cuda and compute_dtype == torch.float16,
        use_cpu=not cuda,
        activation_checkpointing=t.gradient_checkpointing and not sharded,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing and not sharded else None,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=t.save_every_steps,
        save_total_limit=None,  # pruning is ours: Trainer's rotation only knows its own folder names
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,
        use_liger_kernel=use_liger(config, device),
        **extra,
    )


def use_liger(config: RunConfig, device: torch.device) -> bool:
    """Whether Liger kernels apply: they are Triton (CUDA) kernels from the optional liger-kernel package."""
    setting = config.train.liger_kernels
    if setting == "off" or device.type != "cuda":
        return False
    import importlib.util

    available = importlib.util.find_spec("liger_kernel") is not None
    if setting == "on" and not available:
        raise UserError("train.liger_kernels is on, but liger-kernel is not installed: pip install liger-kernel")
    return available


def is_fsdp(config: RunConfig) -> bool:
    return config.distributed.strategy == "fsdp" and config.distributed.num_processes > 1


def run_training(config: RunConfig | None = None, emit: ev.Emit | None = None, control: TrainControl | None = None,
                 *, resume_from: str | Path | None = None) -> RunResult:
    """Train a LoRA adapter as `config` says, or continue the run folder `resume_from`.

    Never raises for a failed run: it emits `Failed` and returns a result whose `status` says
    what happened. Progress leaves as events through `emit`; `control` steers from any thread.
    """
    if config is None and resume_from is None:
        raise ValueError("give a config or a run folder to resume")
    control = control or TrainControl()
    if _launches_workers(config, resume_from):
        from qlora_studio.core.distributed import run_distributed

        return run_distributed(config, emit, control, resume_from)
    return _Session(config, emit, control, resume_from).run()


def _launches_workers(config: RunConfig | None, resume_from: str | Path | None) -> bool:
    """Several processes asked for, and this is not already one of them."""
    if "RANK" in os.environ:
        return False
    if config is None:
        try:
            config = RunFolder.open(resume_from).load_config()
        except UserError:
            return False  # the session reports the bad folder
    return config.distributed.num_processes > 1


class _Session:
    def __init__(self, config: RunConfig | None, emit: ev.Emit | None, control: TrainControl,
                 resume_from: str | Path | None):
        self.config = config
        self.user_emit = emit
        self.control = control
        self.resume_from = resume_from
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.folder: RunFolder | None = None
        self.loaded = None
        self.data = None
        self.trainer = None
        self.checkpoint: Path | None = None
        self.start_step = 0
        self.total_steps = 0
        self.last_loss: float | None = None
        self.pending_extension = 0
        self.stop_reason: str | None = None
        self.save_reason = "scheduled"
        self.started_event_sent = False
        self.elapsed_offset = 0.0
        self.active_since = time.monotonic()
        self.paused_total = 0.0
        self.step_started_at: float | None = None
        self.last_log_tokens = 0
        self.peak_vram_gb: float | None = None
        self.predicted_peak_gb: float | None = None

    # ---- events ----
    def emit(self, event: ev.Event) -> None:
        if self.is_main and self.folder is not None:
            self._record(event)
        if self.user_emit is not None and self.is_main:
            self.user_emit(event)

    def _record(self, event: ev.Event) -> None:
        run = self.folder
        if isinstance(event, ev.StepLogged):
            run.append_jsonl(run.metrics_path, event.metrics)
            run.write_status("running", step=event.metrics["step"], total_steps=event.total_steps,
                             last_loss=event.metrics.get("loss"), elapsed_s=event.metrics.get("elapsed_s"),
                             peak_vram_gb=self.peak_vram_gb)
        elif isinstance(event, ev.EvalLogged):
            run.append_jsonl(run.evals_path, {"step": event.step, "eval_loss": event.eval_loss, **event.metrics})
        else:
            record = event.to_dict()
            if isinstance(event, ev.RunStarted):
                record.pop("config", None)
            record["time"] = time.time()
            run.append_jsonl(run.events_path, record)

    def warn(self, message: str) -> None:
        self.emit(ev.Warning(message))

    # ---- the run ----
    def run(self) -> RunResult:
        try:
            self._open_run()
            self._load()
            self._train_segments()
            return self._finish()
        except OutOfMemoryStop as exc:
            if self.world_size == 1:
                self._save_adapter()  # what was trained so far stays usable
            return self._fail(str(exc), traceback.format_exc(), user_error=True, status="stopped")
        except UserError as exc:
            return self._fail(str(exc), traceback.format_exc(), user_error=True)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a Failed event, never a dead thread
            self._emergency_checkpoint()
            return self._fail(f"{type(exc).__name__}: {exc}".strip(), traceback.format_exc(), user_error=False)
        finally:
            self._release()

    def _open_run(self) -> None:
        if self.resume_from is not None:
            self.folder = RunFolder.open(self.resume_from)
            if self.config is None:
                self.config = self.folder.load_config()
            self.checkpoint = self.folder.latest_checkpoint()
            if self.checkpoint is not None:
                meta = read_checkpoint_meta(self.checkpoint)
                self.start_step = int(meta.get("step", 0)) or int(self.checkpoint.name.split("-")[-1])
                self.elapsed_offset = float(meta.get("elapsed_s", 0.0))
            if self.is_main:
                self.folder.truncate_records(self.start_step)
                self.config.save(self.folder.config_path)
        else:
            self.config = absolute_paths(self.config)
            self.folder = RunFolder.create(self.config) if self.is_main else None
        if self.is_main:
            self.folder.write_status("running", started_at=self.folder.read_status().get("started_at", time.time()),
                                  step=self.start_step, reason=None)

    def _load(self) -> None:
        from transformers import set_seed

        from qlora_studio.core.modeling import load_for_training

        set_seed(self.config.train.seed)
        with self._main_process_first():
            load_kwargs: dict[str, Any] = {}
            if is_fsdp(self.config):
                # Rank 0 reads the weights, the others start empty and receive them; 4-bit data is
                # stored in the compute dtype so FSDP can shard it with everything else.
                os.environ["ACCELERATE_USE_FSDP"] = "true"
                os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
                from qlora_studio.core.modeling import resolve_compute_dtype, resolve_device

                load_kwargs = {"device_map": None, "quant_storage": resolve_compute_dtype(
                    self.config.quantization.compute_dtype, resolve_device(self.config.train.device))}
            try:
                self.loaded = load_for_training(self.config, note=self.warn, **load_kwargs)
            except torch.OutOfMemoryError:
                raise OutOfMemoryStop(
                    "the model does not fit in GPU memory: use quantization.mode 4bit, a smaller model, or free the GPU"
                ) from None
            self._prepare_data()
        self.loaded.tokenizer.chat_template = self.data.template
        if self.loaded.device.type == "cuda":
            self.predicted_peak_gb = self._predict_peak_gb()
            torch.cuda.reset_peak_memory_stats(self.loaded.device)

    def _main_process_first(self):
        """Several processes: rank 0 converts, downloads and tokenizes first; the rest read its caches."""
        import contextlib

        if self.world_size == 1:
            return contextlib.nullcontext()
        from accelerate import PartialState

        return PartialState(cpu=not torch.cuda.is_available()).main_process_first()

    def _predict_peak_gb(self) -> float | None:
        """The planner's prediction for this run's longest batch, shown beside the measured peak."""
        from qlora_studio.core.memory import GIB, estimate_config

        longest = int(self.data.report.token_lengths.get("max") or self.config.data.max_length)
        local = self.config.with_overrides({"model.name_or_path": self.loaded.source.path})
        try:
            estimate = estimate_config(local, seq_len=min(longest, self.config.data.max_length))
        except UserError as exc:
            self.warn(f"no memory prediction: {exc}")
            return None
        return round(estimate.peak_allocated_bytes / GIB, 3)

    def _train_segments(self) -> None:
        while True:
            self.trainer = self._build_trainer()
            ran_out_of_memory = False
            try:
                self.trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                ran_out_of_memory = True  # handled below, outside the except block, so its frames are freed
            self.last_loss = self._last_logged_loss()
            if ran_out_of_memory:
                self._recover_from_oom()
                continue
            if self.pending_extension and not self.control.stop_requested:
                self._extend()
                continue
            return

    # ---- trainer ----
    def _build_trainer(self):
        from transformers import PrinterCallback, Trainer

        from qlora_studio.core.data import make_collator

        cuda = self.loaded.device.type == "cuda"
        trainer = Trainer(
            model=self.loaded.model,
            args=training_arguments(self.config, self.loaded.device, self.loaded.compute_dtype,
                                    str(self.folder.checkpoints_dir) if self.folder else os.devnull,
                                    has_eval=self.data.eval is not None),
            train_dataset=self.data.train,
            eval_dataset=self.data.eval,
            data_collator=make_collator(self.loaded.tokenizer, 8 if cuda else None),
            processing_class=self.loaded.tokenizer,
            callbacks=[_StudioCallback(self)],
        )
        trainer.remove_callback(PrinterCallback)  # progress is ours to show
        return trainer

    def _last_logged_loss(self) -> float | None:
        for record in reversed(self.trainer.state.log_history if self.trainer else []):
            if "loss" in record:
                return float(record["loss"])
        return self.last_loss

    # ---- callback services ----
    def elapsed(self) -> float:
        return self.elapsed_offset + (time.monotonic() - self.active_since) - self.paused_total

    def segment_began(self, state) -> None:
        self.total_steps = state.max_steps
        self.last_log_tokens = state.num_input_tokens_seen
        if self.started_event_sent:
            return
        self.started_event_sent = True
        from qlora_studio.core.modeling import count_parameters, device_name

        trainable, total = count_parameters(self.loaded.model)
        self.emit(ev.RunStarted(
            run_dir=str(self.folder.path) if self.folder else "",
            config=self.config.model_dump(mode="json"),
            total_steps=state.max_steps,
            start_step=self.start_step,
            device=str(self.loaded.device),
            device_name=device_name(self.loaded.device),
            train_rows=self.data.report.train_rows,
            eval_rows=self.data.report.eval_rows,
            trainable_params=trainable,
            total_params=total,
            quantization=self.loaded.quantization,
            predicted_peak_gb=self.predicted_peak_gb,
        ))
        if self.is_main:
            self.folder.write_status("running", total_steps=state.max_steps, model=self.config.model.name_or_path,
                                     device=device_name(self.loaded.device), quantization=self.loaded.quantization,
                                     predicted_peak_gb=self.predicted_peak_gb)
            (self.folder.path / "data_report.json").write_text(
                _json(self.data.report.to_dict(), drop=("examples", "preview_rows")), encoding="utf-8")

    def step_began(self) -> None:
        # Throughput is measured from here, so evaluation and checkpoint writing between steps do not count.
        self.step_started_at = time.monotonic()

    def step_metrics(self, state, logs: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        tokens = int(state.num_input_tokens_seen)
        window = max(now - (self.step_started_at or now), 1e-9)
        record = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0.0), 4),
            "loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
            "tokens": tokens,
            "tokens_per_s": round((tokens - self.last_log_tokens) / window, 1),
            "elapsed_s": round(self.elapsed(), 3),
            "micro_batch_size": self.config.train.micro_batch_size,
            "grad_accum": self.config.train.grad_accum,
        }
        memory = torch_memory(self.loaded.device)
        if memory:
            record.update(memory)
            self.peak_vram_gb = memory["vram_peak_gb"]
        self.last_log_tokens = tokens
        self.last_loss = record["loss"]
        return record

    def after_step_logged(self, state, control) -> None:
        """Between steps: hold while paused, then turn requests into Trainer flags, on every rank alike.

        Served right after a step is logged, so the checkpoint a stop, save or extend asks for
        holds the step just finished. With several processes rank 0 decides and broadcasts, and
        keeps the others waiting with a heartbeat while paused (a silent wait would time out).
        """
        if self.world_size == 1:
            self.wait_if_paused(state, on_save=lambda: self.save_now(state.global_step))
            requests = (self.control.stop_requested, self.control.take_save(), self.control.take_extension())
        elif self.is_main:
            self.wait_if_paused(state, on_tick=lambda: self._broadcast([1]))
            self._broadcast([0])
            requests = self._broadcast([int(self.control.stop_requested), int(self.control.take_save()),
                                        self.control.take_extension()])
        else:
            while self._broadcast([0])[0]:
                pass
            requests = self._broadcast([0, 0, 0])
        stop, save, extra = requests
        if stop:
            self.stop_reason = "stop"
            self.save_reason = "stop"
            control.should_save = True
            control.should_training_stop = True
        if save:
            self.save_reason = "requested"
            control.should_save = True
        if extra:
            self.pending_extension += int(extra)
            self.save_reason = "extend"
            control.should_save = True
            control.should_training_stop = True

    def _broadcast(self, values: list[int]) -> list[int]:
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.int64, device=self.loaded.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def wait_if_paused(self, state, on_save=None, on_tick=None) -> None:
        if not self.control.paused or self.control.stop_requested:
            return
        self.emit(ev.Paused(state.global_step))
        if self.is_main:
            self.folder.write_status("running", paused=True)
        began = time.monotonic()
        self.control.wait_while_paused(on_save=on_save, on_tick=on_tick)
        self.paused_total += time.monotonic() - began
        if self.is_main:
            self.folder.write_status("running", paused=False)
        self.emit(ev.Resumed(state.global_step))

    def save_now(self, step: int) -> None:
        """Write a checkpoint while the loop is held between steps (pause + save)."""
        trainer = self.trainer
        trainer._save_checkpoint(trainer.model_wrapped, trial=None)
        self.finish_checkpoint(step, "requested")

    def finish_checkpoint(self, step: int, reason: str) -> None:
        """Give the Trainer's `checkpoint-N` our name, add the counters, prune old ones."""
        if not self.is_main:
            return
        trainer_dir = self.folder.checkpoints_dir / f"checkpoint-{step}"
        target = self.folder.checkpoints_dir / checkpoint_name(step)
        if trainer_dir.is_dir():
            if target.exists():
                shutil.rmtree(target)
            os.replace(trainer_dir, target)
        if not target.is_dir():
            return
        t = self.config.train
        meta = {
            "step": step,
            "total_steps": self.total_steps,
            "tokens": int(self.trainer.state.num_input_tokens_seen) if self.trainer else None,
            "elapsed_s": round(self.elapsed(), 3),
            "loss": self.last_loss,
            "micro_batch_size": t.micro_batch_size,
            "grad_accum": t.grad_accum,
            "max_steps": t.max_steps,
            "max_length": self.config.data.max_length,
            "gradient_checkpointing": t.gradient_checkpointing,
            "reason": reason,
            "saved_at": time.time(),
        }
        (target / META_NAME).write_text(_json(meta), encoding="utf-8")
        self.config.save(target / "config.yaml")
        self.folder.prune_checkpoints(self.config.train.keep_checkpoints)
        self.checkpoint = target
        self.emit(ev.CheckpointSaved(step, str(target), reason))

    # ---- settings the run changes itself ----
    def _recover_from_oom(self) -> None:
        """Out of memory in the step after `global_step`: drop that step, make the next try smaller, go on."""
        trainer = self.trainer
        step = trainer.state.global_step
        failed = step + 1
        self._checkpoint_completed_step(trainer, "out of memory")
        self._drop_trainer()
        if self.config.train.on_oom == "stop" or self.world_size > 1:
            why = ("train.on_oom is stop" if self.world_size == 1
                   else "several processes cannot change their batch size together")
            raise OutOfMemoryStop(self._oom_stop_message(failed, why))
        old_train, old_length = self.config.train, self.config.data.max_length
        if old_train.micro_batch_size > 1:
            factor = _smallest_factor(old_train.micro_batch_size)
            self._change(train={"micro_batch_size": old_train.micro_batch_size // factor,
                                "grad_accum": old_train.grad_accum * factor})
            new = self.config.train
            verb = "halved" if factor == 2 else f"divided by {factor}"
            why = (f"{verb} micro_batch_size to {new.micro_batch_size} and raised grad_accum to {new.grad_accum}: "
                   f"the effective batch ({self.config.effective_batch_size}) and the schedule stay the same")
        else:
            choice = old_train.oom_last_resort
            if choice == "ask":
                choice = self.control.ask(self._oom_question(failed), ["shrink", "stop"], default="stop")
            if choice != "shrink":
                raise OutOfMemoryStop(self._oom_stop_message(failed, None))
            if not old_train.gradient_checkpointing:
                self._change(train={"gradient_checkpointing": True})
                why = "turned on train.gradient_checkpointing (activations are recomputed in the backward pass)"
            else:
                new_length = old_length // 2
                if new_length < MIN_MAX_LENGTH:
                    raise OutOfMemoryStop(self._oom_stop_message(failed, None))
                self._change(data={"max_length": new_length})
                self._prepare_data()
                why = f"cut data.max_length to {new_length} tokens (longer examples are cut)"
        new_train = self.config.train
        before = {"micro_batch_size": old_train.micro_batch_size, "grad_accum": old_train.grad_accum,
                  "gradient_checkpointing": old_train.gradient_checkpointing, "max_length": old_length}
        after = {"micro_batch_size": new_train.micro_batch_size, "grad_accum": new_train.grad_accum,
                 "gradient_checkpointing": new_train.gradient_checkpointing, "max_length": self.config.data.max_length}
        changes = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
        message = f"CUDA ran out of memory in step {failed}; {why}. Step {failed} is done again from the last saved state."
        self.emit(ev.SettingsChanged(step, "out_of_memory", changes, message))

    def _oom_question(self, failed: int) -> str:
        t = self.config.train
        fix = ("turn on gradient checkpointing" if not t.gradient_checkpointing
               else f"cut data.max_length from {self.config.data.max_length} to {self.config.data.max_length // 2} tokens")
        return (f"CUDA ran out of memory in step {failed}, already at micro-batch 1. "
                f"Shall training {fix} and go on? Otherwise it stops here, with a checkpoint.")

    def _oom_stop_message(self, failed: int, why: str | None) -> str:
        t = self.config.train
        if why is None:
            culprit = ("train.gradient_checkpointing is off" if not t.gradient_checkpointing
                       else f"data.max_length {self.config.data.max_length} is too long for this GPU at micro-batch 1")
            hint = ("turn it on" if not t.gradient_checkpointing else "shorten it")
            why = f"{culprit}: {hint}, or resume with --oom-shrink to let training do it"
        saved = f"; the last state (step {failed - 1}) is saved" if failed > 1 else ""
        return f"CUDA out of memory in step {failed}: {why}{saved}"

    def _checkpoint_completed_step(self, trainer, reason: str) -> None:
        step = trainer.state.global_step
        trainer.model.zero_grad(set_to_none=True)
        if step == 0:
            self.checkpoint = None
            return
        existing = self.folder.checkpoints_dir / checkpoint_name(step) if self.folder else None
        if existing is not None and existing.is_dir():
            self.checkpoint = existing
            return
        self.save_reason = reason
        trainer._save_checkpoint(trainer.model_wrapped, trial=None)
        self.finish_checkpoint(step, reason)

    def _drop_trainer(self) -> None:
        self.trainer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _extend(self) -> None:
        steps, self.pending_extension = self.pending_extension, 0
        done = self.trainer.state.global_step
        old_total = self.total_steps
        new_total = old_total + steps
        self._drop_trainer()
        self._change(train={"max_steps": new_total})
        message = (f"extended from {old_total} to {new_total} steps; the learning-rate schedule now spans "
                   f"{new_total} steps")
        self.emit(ev.SettingsChanged(done, "extended", {"max_steps": [old_total, new_total]}, message))

    def _change(self, train: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> None:
        update: dict[str, Any] = {}
        if train:
            update["train"] = self.config.train.model_copy(update=train)
        if data:
            update["data"] = self.config.data.model_copy(update=data)
        self.config = self.config.model_copy(update=update)
        if self.is_main:
            self.config.save(self.folder.config_path)

    def _prepare_data(self) -> None:
        """Tokenize for the current config (again after an out-of-memory cut of max_length)."""
        from qlora_studio.core.data import prepare_data, stop_token_ids

        stops = stop_token_ids(self.loaded.tokenizer, self.loaded.source.path)
        self.data = prepare_data(self.config.data, self.loaded.tokenizer, stops, self.config.train.seed, warn=self.warn)

    # ---- endings ----
    def _finish(self) -> RunResult:
        state = self.trainer.state
        step = state.global_step
        stopped = self.stop_reason is not None or (self.control.stop_requested and step < state.max_steps)
        status = "stopped" if stopped else "finished"
        adapter_dir = self._save_adapter()
        peak = torch_memory(self.loaded.device).get("vram_peak_gb")
        if self.is_main:
            self.folder.write_status(status, step=step, total_steps=state.max_steps, final_loss=self.last_loss,
                                  elapsed_s=round(self.elapsed(), 3), peak_vram_gb=peak, paused=False)
        self.emit(ev.Finished(status, step, state.max_steps, self.last_loss, adapter_dir,
                              str(self.folder.path) if self.folder else "", round(self.elapsed(), 3), peak))
        digest = None if is_fsdp(self.config) else adapter_digest(self.loaded.model)  # FSDP ranks hold shards
        return RunResult(status, str(self.folder.path) if self.folder else None, step, self.last_loss, adapter_dir,
                         adapter_digest=digest)

    def _save_adapter(self) -> str | None:
        if is_fsdp(self.config) and self.trainer is not None:
            # Sharded weights are gathered by a collective: every rank saves through the Trainer.
            staging = Path(self.trainer.args.output_dir).parent / "adapter.tmp"
            self.trainer.save_model(str(staging))
            if not self.is_main:
                return None
        if not self.is_main or self.loaded is None or self.folder is None:
            return None
        target = self.folder.adapter_dir
        staging = target.with_name("adapter.tmp")
        if not is_fsdp(self.config) or self.trainer is None:
            shutil.rmtree(staging, ignore_errors=True)
            self.loaded.model.save_pretrained(staging)
        self.loaded.tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        return str(target)

    def _fail(self, reason: str, details: str, user_error: bool, status: str = "failed") -> RunResult:
        step = self.trainer.state.global_step if self.trainer is not None else None
        if self.is_main and self.folder is not None:
            self.folder.write_status(status, reason=reason, step=step if step is not None else self.start_step, paused=False)
        self.emit(ev.Failed(reason, details, str(self.folder.path) if self.folder else None, step, user_error))
        return RunResult(status, str(self.folder.path) if self.folder else None, step or self.start_step, self.last_loss,
                         None, error=reason, user_error=user_error)

    def _emergency_checkpoint(self) -> None:
        """On an unexpected error, keep what was trained since the last checkpoint."""
        trainer = self.trainer
        if trainer is None or not self.is_main:
            return
        step = trainer.state.global_step
        latest = self.folder.checkpoints()[-1][0] if self.folder and self.folder.checkpoints() else 0
        if step <= latest:
            return
        try:
            trainer.model.zero_grad(set_to_none=True)
            trainer._save_checkpoint(trainer.model_wrapped, trial=None)
            self.finish_checkpoint(step, "error")
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass

    def _release(self) -> None:
        """Free the model and the GPU memory, so many runs in one sitting do not leak."""
        self.trainer = None
        self.loaded = None
        self.data = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def adapter_digest(model: torch.nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def is_out_of_memory(exc: BaseException) -> bool:
    """PyTorch raises OutOfMemoryError; some extension kernels raise a plain RuntimeError."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "CUDA" in str(exc)
    )


def _smallest_factor(n: int) -> int:
    for p in range(2, int(math.isqrt(n)) + 1):
        if n % p == 0:
            return p
    return n


def _json(data: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    import json

    return json.dumps({k: v for k, v in data.items() if k not in drop}, ensure_ascii=False, default=str)


# ---- the Trainer callback ---------------------------------------------------------------------

class _StudioCallback(TrainerCallback):
    """Trainer hooks -> our events; our control -> Trainer's control flags."""

    def __init__(self, session: _Session):
        self.session = session

    def on_train_begin(self, args, state, control, **kwargs):
        self.session.segment_began(state)
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self.session.step_began()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        s = self.session
        logs = logs or {}
        if "loss" in logs and "train_loss" not in logs:
            s.emit(ev.StepLogged(s.step_metrics(state, logs), state.max_steps))
            s.after_step_logged(state, control)
        elif "eval_loss" in logs:
            extra = {k: v for k, v in logs.items() if k not in ("eval_loss", "epoch") and isinstance(v, (int, float))}
            s.emit(ev.EvalLogged(state.global_step, float(logs["eval_loss"]), extra))
        return control

    def on_save(self, args, state, control, **kwargs):
        s = self.session
        s.finish_checkpoint(state.global_step, s.save_reason)
        s.save_reason = "scheduled"
        return control
