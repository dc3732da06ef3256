"""The adapter between transformers' Trainer and a run's step reader (training/steps.py): each hook
passes its typed inputs on, and nothing else happens here."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from qlora_studio.core.training.steps import StepReader


class StudioCallback(TrainerCallback):
    """Trainer hooks -> `StepReader`; it also serves `StudioTrainer`'s step-boundary hooks (step_logs.StepHooks)."""

    def __init__(self, reader: StepReader):
        self.reader = reader

    def on_train_begin(self, args, state, control, **kwargs):
        self.reader.segment_began(state)
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self.reader.step_began()
        return control

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.reader.before_update(optimizer)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.reader.step_ended(state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs and "train_loss" not in logs:
            self.reader.step_logged(state, logs)
        elif "eval_loss" in logs:
            self.reader.eval_logged(state.global_step, logs)
        return control

    def on_save(self, args, state, control, **kwargs):
        self.reader.saved(state.global_step, control)
        return control

    def log_extras(self, state, logs: dict[str, Any]) -> dict[str, float]:
        """Our numbers for a training-step log, added before TensorBoard and W&B see it (`ReportingMixin`)."""
        metrics = self.reader.metrics(state, logs)
        return {k: v for k, v in vars(metrics).items() if (k == "tokens_per_s" or k.startswith("vram_")) and v is not None}

    # ---- the step boundary (`StudioTrainer`, training/step_logs.py) ----
    def wants_boundary(self) -> bool:
        return self.reader.wants_boundary()

    def step_read(self, step: int, loss: float, grad_norm: float | None, bad: bool) -> None:
        self.reader.step_read(step, loss, grad_norm, bad)

    def between_steps(self, control) -> None:
        self.reader.between_steps(control)
