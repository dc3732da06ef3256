"""NaN / Inf caught at the step where it happens, before the optimizer applies it.

The Trainer computes each step's loss and its gradient norm anyway (`StudioTrainer` keeps both);
checking them costs one comparison and one device sync per optimizer step. A bad step's gradients
are dropped (set to None: torch's and bitsandbytes' optimizers skip such parameters), so the
weights keep the last good update and no checkpoint can be written from a NaN update.

`train.on_nan: skip_step` drops that batch and goes on (the step still counts and the learning
rate schedule moves one step). It cannot undo what came before: an earlier finite but huge update
(an absurd learning rate) makes every following step bad, so `MAX_SKIPS_IN_A_ROW` bad steps in a
row stop the run like `stop` does. With fp16 mixed precision an overflowing gradient is the loss
scaler's business (it skips the step and lowers the scale), so only a non-finite loss counts there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qlora_studio.core.config.schema import RunConfig

MAX_SKIPS_IN_A_ROW = 3
LORA_LEARNING_RATE_CEILING = 1e-3  # LoRA is trained at 1e-5 .. 5e-4; far above this, divergence is the rate


@dataclass
class BadStep:
    step: int
    loss: float | None
    grad_norm: float | None
    skipped_in_a_row: int
    stop: bool  # the run stops here (policy stop, or too many bad steps in a row)

    @property
    def action(self) -> str:
        return "stopped" if self.stop else "skipped"

    def what(self) -> str:
        """'the loss became NaN' / 'the gradients became Inf'."""
        loss_bad = self.loss is not None and not _finite(self.loss)
        value, name = (self.loss, "loss") if loss_bad else (self.grad_norm, "gradients")
        word = "NaN" if value is None or math.isnan(value) else "Inf"
        return f"the {name} became {word}"


class NanGuard:
    """Judges each optimizer step before the update (every rank reaches the same verdict)."""

    def __init__(self, policy: str, world_size: int = 1, device: torch.device | None = None):
        self.policy = policy
        self.world_size = world_size
        self.device = device
        self.in_a_row = 0
        self.skipped = 0

    def before_update(self, trainer, optimizer, step: int) -> BadStep | None:
        """`step` is the optimizer step about to be applied (global_step + 1)."""
        loss, norm = getattr(trainer, "step_loss", None), getattr(trainer, "step_grad_norm", None)
        trainer.step_loss = trainer.step_grad_norm = None
        checks = [loss] if loss is not None else []
        scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
        if norm is not None and scaler is None:
            checks.append(norm)
        bad = not _all_finite(checks)
        if self.world_size > 1:
            bad = any_rank(bad, self.device)
        if not bad:
            self.in_a_row = 0
            return None
        drop_gradients(optimizer)
        self.in_a_row += 1
        self.skipped += 1
        stop = self.policy != "skip_step" or self.in_a_row >= MAX_SKIPS_IN_A_ROW
        return BadStep(step, _as_float(loss), _as_float(norm), self.in_a_row, stop)

    def weights_finite(self, model) -> bool:
        """The trainable weights hold no NaN/Inf (checked before a checkpoint is kept; adapters are small)."""
        flags = [torch.isfinite(p).all() for p in model.parameters() if p.requires_grad]
        ok = bool(torch.stack(flags).all()) if flags else True
        return not any_rank(not ok, self.device) if self.world_size > 1 else ok


def drop_gradients(optimizer) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


def any_rank(flag: bool, device) -> bool:
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def diverged_message(bad: BadStep, config: RunConfig, compute_dtype, device_type: str, last_good: int | None,
                     what: str | None = None) -> str:
    """One line: what happened where, the likely cause, the fix, and what is kept."""
    t = config.train
    in_a_row = f" ({bad.skipped_in_a_row} steps in a row; train.on_nan skip_step gives up)" if bad.skipped_in_a_row > 1 else ""
    if t.learning_rate > LORA_LEARNING_RATE_CEILING:
        why = (f"train.learning_rate {t.learning_rate:g} is far too high for LoRA: lower it to 1e-4 .. 3e-4 and "
               "train again")
    elif compute_dtype == torch.float16 and device_type == "cuda":
        why = ("float16 overflowed: set quantization.compute_dtype to bfloat16 (or float32 on GPUs without bf16), "
               "or lower train.learning_rate")
    elif t.max_grad_norm == 0:
        why = "gradient clipping is off (train.max_grad_norm 0): set it to 1.0, or lower train.learning_rate"
    else:
        why = (f"train.learning_rate {t.learning_rate:g} may be too high for this model and data: lower it (e.g. "
               f"{t.learning_rate / 10:g}), or look for extreme rows in the data")
    kept = (f"the last good checkpoint (step {last_good}) is kept" if last_good
            else "no checkpoint had been saved yet")
    where = f"by step {bad.step}" if what else f"at step {bad.step}"
    return f"{what or bad.what()} {where}{in_a_row}; {why}. No NaN weights were saved; {kept}"


def _all_finite(values: list) -> bool:
    tensors = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in values]
    if not tensors:
        return True
    device = tensors[0].device
    return bool(torch.isfinite(torch.cat([t.to(device) for t in tensors])).all())


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _as_float(value) -> float | None:
    if value is None:
        return None
    return float(value.detach().float().sum()) if torch.is_tensor(value) else float(value)
