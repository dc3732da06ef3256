"""NaN / Inf caught at the step where it happens, before the optimizer applies it.

The Trainer computes each step's loss and its gradient norm anyway (`StudioTrainer` keeps both);
`before_update` turns them into a flag on the device and keeps a bad step's update off the
weights without waiting for the GPU: fused AdamW skips its whole update (moments and step count
included) when its `found_inf` is set, the mechanism torch's GradScaler uses. Other optimizers
cannot, so there the flag is read at once and the gradients are dropped (set to None: torch's and
bitsandbytes' optimizers skip such parameters), at the price of one device sync per step.

The host learns the verdict when it reads the step's numbers (`StudioTrainer`'s step logs, at the
latest one step later and always before a checkpoint or an evaluation), and `judge` decides then.
`train.on_nan: skip_step` drops that batch and goes on (the step still counts and the learning
rate schedule moves one step). It cannot undo what came before: an earlier finite but huge update
(an absurd learning rate) makes every following step bad, so `MAX_SKIPS_IN_A_ROW` bad steps in a
row stop the run like `stop` does. No checkpoint is ever written from a NaN update. With fp16
mixed precision an overflowing gradient is the loss scaler's business (it skips the step and
lowers the scale), so only a non-finite loss counts there.
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

    def before_update(self, trainer, optimizer) -> None:
        """Between backward and the optimizer step: flag this step on the device (`trainer.step_bad`,
        1.0 when its loss or gradient norm is NaN/Inf, the same on every rank) and keep its update
        off the weights if it is bad."""
        loss, norm = trainer.step_loss, trainer.step_grad_norm
        trainer.step_loss = trainer.step_grad_norm = None
        scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
        checks = [v for v in (loss, norm if scaler is None else None) if v is not None]
        flag = _non_finite_flag(checks, self.device)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # queued on the device like the rest of the step
        trainer.step_bad = flag
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if scaler is None and _skips_on_found_inf(inner):
            inner.found_inf = flag
        elif bool(flag):
            drop_gradients(optimizer)

    def judge(self, step: int, loss: float | None, grad_norm: float | None, bad: bool) -> BadStep | None:
        """The verdict on optimizer step `step` once its numbers are on the host; None for a good step."""
        if not bad:
            self.in_a_row = 0
            return None
        self.in_a_row += 1
        self.skipped += 1
        stop = self.policy != "skip_step" or self.in_a_row >= MAX_SKIPS_IN_A_ROW
        return BadStep(step, loss, grad_norm, self.in_a_row, stop)

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


def _non_finite_flag(values: list, device) -> torch.Tensor:
    """A 0-d float32 tensor on the values' device: 1.0 when any of them is NaN/Inf. No host sync."""
    tensors = [v.detach().float().reshape(-1) for v in values if torch.is_tensor(v)]
    where = tensors[0].device if tensors else (device or torch.device("cpu"))
    tensors += [torch.full((1,), float(v), device=where) for v in values if not torch.is_tensor(v)]
    if not tensors:
        return torch.zeros((), device=where)
    return (~torch.isfinite(torch.cat([t.to(where) for t in tensors]))).any().float()


def _skips_on_found_inf(optimizer) -> bool:
    """torch's fused Adam/AdamW read `optimizer.found_inf` and skip the whole update when it is set."""
    return isinstance(optimizer, torch.optim.Adam) and bool(optimizer.defaults.get("fused"))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
