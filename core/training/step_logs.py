"""A step's numbers read off the GPU a step late, so the host never waits for the GPU mid-run.

transformers' loop reads every step's loss with `.item()` (and its NaN filter and token counter
read more). Each read makes the host wait until the GPU has finished everything queued; the GPU
then idles while the host logs, fetches the next batch and launches the next kernels: about 50 ms
of a 0.9 s step for the 8B shape on an H100. Here a step's loss sum, gradient norm, NaN flag and
token count are copied to pinned host memory without waiting, and logged when the next step has
been queued, by which time the copy has long arrived. A boundary that needs the step's own numbers
reads them at once: a checkpoint, an evaluation, the end of training or of an epoch, and any
request from outside (pause, stop, save, extend). So every checkpoint and every log_history holds
exactly what the synchronous loop would have written; only the plain steps in between are told a
step later. transformers offers no such mode (its loop is written around `.item()`), hence this.

With several processes the logs stay synchronous: whether a boundary is wanted depends on
requests that only rank 0 sees, and every rank must take the same boundaries.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class StepHooks(Protocol):
    """What the run adds at a step boundary (`StudioCallback` implements it)."""

    def wants_boundary(self) -> bool: ...

    def step_read(self, step: int, loss: float, grad_norm: float | None, bad: bool) -> None: ...

    def between_steps(self, control) -> None: ...

    def log_extras(self, state, logs: dict[str, Any]) -> dict[str, float]: ...


@dataclass
class StepLog:
    step: int
    epoch: float | None
    learning_rate: float
    steps: int  # optimizer steps the loss sums over
    host_tokens: int  # tokens counted on the host; those counted on the device are in `values`
    has_grad_norm: bool
    values: torch.Tensor  # on the host: loss sum, gradient norm, NaN flag, tokens counted on the device
    ready: Any  # a CUDA event recorded after the copy, or None when the copy was synchronous

    def read(self) -> tuple[float, float, bool, int]:
        if self.ready is not None:
            self.ready.synchronize()
        loss, norm, bad, tokens = self.values.tolist()
        return loss, norm, bad > 0, int(tokens)


class LaggedStepLogs:
    """Mixed into `StudioTrainer` (before `Trainer`). `step_hooks` is set by `build_trainer`;
    `lag_logs` is False for multi-process runs."""

    step_hooks: StepHooks | None = None
    lag_logs = True
    step_bad: torch.Tensor | None = None  # set by the NaN guard before each update
    _pending: StepLog | None = None
    _host_tokens = 0
    _device_tokens: torch.Tensor | None = None
    _log_start_time: float | None = None
    _steered_step = -1

    def _track_num_input_tokens(self, inputs):
        """The count without a device sync: all tokens from the shape; non-padding ones summed on the device."""
        mode = self.args.include_num_input_tokens_seen
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs and mode != "no":
            # TRL's pair batches (ORPO: chosen_/rejected_attention_mask); GRPO's rows are prompts
            # before generation, its trainer counts what it generates (training/methods.py)
            masks = [v for k, v in inputs.items() if k.endswith("attention_mask")] if hasattr(inputs, "items") else []
            if masks:
                counted = sum(mask.sum() for mask in masks)
                self._device_tokens = counted if self._device_tokens is None else self._device_tokens + counted
            return
        if self.args.world_size > 1 or mode == "no":
            return super()._track_num_input_tokens(inputs)
        if mode == "non_padding" and "attention_mask" in inputs:
            counted = inputs["attention_mask"].sum()
        elif mode == "non_padding" and getattr(self.processing_class, "pad_token_id", None) is not None:
            counted = (inputs[name] != self.processing_class.pad_token_id).sum()
        else:
            self._host_tokens += inputs[name].numel()
            return
        self._device_tokens = counted if self._device_tokens is None else self._device_tokens + counted

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time,
                                 learning_rate=None):
        self._log_start_time = start_time
        control = self.control
        if control.should_log and self.state.global_step > self._globalstep_last_logged:
            previous, self._pending = self._pending, self._take_step_log(tr_loss, grad_norm, learning_rate)
            self._emit(previous)
            control.should_log = False  # taken here; the Trainer's own logging would read it at once
        hooks = self.step_hooks
        if not self.lag_logs or self._boundary_wanted() or (hooks is not None and hooks.wants_boundary()):
            self.flush_step_log()
        if hooks is not None and self._steered_step != self.state.global_step:  # once per step, not at epoch ends too
            self._steered_step = self.state.global_step
            hooks.between_steps(self.control)
            if self._boundary_wanted():  # a request served just now: the checkpoint holds this step's numbers
                self.flush_step_log()
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time,
                                         learning_rate=learning_rate)

    def _finalize_training(self, trial, num_train_samples, start_time):
        self.flush_step_log()
        return super()._finalize_training(trial, num_train_samples, start_time)

    def flush_step_log(self) -> None:
        """Log the step still waiting for its numbers (reads them now, waiting for the GPU if need be)."""
        pending, self._pending = self._pending, None
        self._emit(pending)

    def _boundary_wanted(self) -> bool:
        c = self.control
        return bool(c.should_save or c.should_evaluate or c.should_training_stop or c.should_epoch_stop)

    def _take_step_log(self, tr_loss: torch.Tensor, grad_norm, learning_rate) -> StepLog:
        state = self.state
        as_value = (lambda v: v.detach().float().reshape(()) if torch.is_tensor(v)
                    else tr_loss.new_full((), math.nan if v is None else float(v), dtype=torch.float32))
        values = torch.stack([as_value(tr_loss), as_value(grad_norm), as_value(self.step_bad if self.step_bad is not None else 0.0),
                              as_value(self._device_tokens if self._device_tokens is not None else 0.0)])
        tr_loss.zero_()  # Trainer subtracts it from itself, which keeps a NaN forever
        ready = None
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            values = host
        record = StepLog(state.global_step, state.epoch,
                         learning_rate if learning_rate is not None else self._get_learning_rate(),
                         state.global_step - self._globalstep_last_logged, self._host_tokens, grad_norm is not None,
                         values, ready)
        self._globalstep_last_logged = state.global_step
        self.step_bad, self._device_tokens, self._host_tokens = None, None, 0
        self.store_flos()
        return record

    def _emit(self, record: StepLog | None) -> None:
        if record is None:
            return
        loss_sum, norm, bad, device_tokens = record.read()
        state = self.state
        state.num_input_tokens_seen += record.host_tokens + device_tokens
        if math.isfinite(loss_sum):
            self._total_loss_scalar += loss_sum
        grad_norm = norm if record.has_grad_norm else None
        loss = loss_sum / record.steps
        if self.step_hooks is not None:
            self.step_hooks.step_read(record.step, loss, grad_norm, bad)
        logs = {"loss": loss, "learning_rate": record.learning_rate}
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        with _as_of(state, record):
            self.log(logs, self._log_start_time)


class StepTotals:
    """Mixed into every trainer a run uses (before the library's class): this optimizer step's loss
    (summed over micro-batches) and gradient norm before clipping, as the loop computes them anyway,
    for the NaN guard to flag before the update (training.guard)."""

    step_loss = None
    step_grad_norm = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss
        return loss

    def _get_grad_norm(self, model, grad_norm=None):  # the loop's norm, kept (no second pass over the gradients)
        self.step_grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        return self.step_grad_norm


@contextlib.contextmanager
def _as_of(state, record: StepLog):
    """The Trainer's state as it was at the logged step, for the callbacks that read it (step, epoch)."""
    now = state.global_step, state.epoch
    state.global_step, state.epoch = record.step, record.epoch
    try:
        yield
    finally:
        state.global_step, state.epoch = now


def with_run_hooks(trainer, callback: StepHooks, config, lag_logs: bool):
    """What every trainer of a run gets once made (SFT's and TRL's alike)."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # progress is ours to show
    trainer.log_extras = callback.log_extras  # real tokens/s and VRAM into every report_to stream
    trainer.step_hooks = callback
    trainer.lag_logs = lag_logs
    trainer.lean_walks = not config.train.experimental.stock_loop_walks
    return trainer
