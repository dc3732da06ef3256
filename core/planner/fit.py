"""Make it fit: the fastest settings that fit a GPU budget, keeping the effective batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlora_studio.core.config.choices import OPTIMIZERS
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.planner.estimate import GIB, Estimate, config_shape, estimate_run, format_estimate


@dataclass
class FitResult:
    budget_gb: float
    config: RunConfig | None
    estimate: Estimate | None
    changes: dict[str, tuple[Any, Any]]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_gb": self.budget_gb,
            "fits": self.config is not None,
            "changes": {k: list(v) for k, v in self.changes.items()},
            "message": self.message,
            "estimate": self.estimate.to_dict(self.budget_gb) if self.estimate else None,
            "config": self.config.model_dump(mode="json") if self.config else None,
        }


def _divisors(n: int) -> list[int]:
    return sorted({d for d in range(1, n + 1) if n % d == 0}, reverse=True)


# Throughput model for choosing among settings that fit: a GPU runs near full speed once a micro-batch
# holds a few thousand tokens, and recomputing activations costs about one extra forward pass.
SATURATION_TOKENS = 4096
CHECKPOINTING_SPEED = 0.75


def relative_speed(micro_batch: int, seq_len: int, gradient_checkpointing: bool) -> float:
    tokens = micro_batch * seq_len
    return tokens / (tokens + SATURATION_TOKENS) * (CHECKPOINTING_SPEED if gradient_checkpointing else 1.0)


def make_it_fit(config: RunConfig, budget_gb: float, seq_len: int | None = None) -> FitResult:
    """The fastest settings that fit `budget_gb`, keeping the effective batch.

    data.max_length is kept whenever anything fits at it (cutting data changes what is learned);
    among the settings that fit, the one `relative_speed` rates fastest wins (ties: the plain
    fused AdamW before 8-bit states before paged ones).
    """
    effective = config.train.micro_batch_size * config.train.grad_accum
    lengths = [config.data.max_length]
    while lengths[-1] // 2 >= 256:
        lengths.append(lengths[-1] // 2)
    shape = config_shape(config)
    for length in lengths:
        tokens = min(length, seq_len or length)
        best = None
        for checkpointing in (False, True):
            for micro in _divisors(effective):
                for rank, optimizer in enumerate(OPTIMIZERS):
                    e = estimate_run(shape, config, tokens, micro_batch=micro, gradient_checkpointing=checkpointing,
                                      optimizer=optimizer)
                    if not e.fits(budget_gb):
                        continue
                    score = (relative_speed(micro, tokens, checkpointing), -rank)
                    if best is None or score > best[0]:
                        best = (score, micro, checkpointing, optimizer, e)
                    break  # a later optimizer only saves memory this one did not need
        if best is not None:
            _, micro, checkpointing, optimizer, e = best
            fitted = config.with_overrides({
                "train.micro_batch_size": micro, "train.grad_accum": effective // micro,
                "train.gradient_checkpointing": checkpointing, "train.optimizer": optimizer,
                "data.max_length": length,
            })
            changes = _diff(config, fitted)
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()) or "no change needed"
            message = (f"fits in {budget_gb:g} GiB at {e.total_bytes / GIB:.1f} GiB: {what}; "
                       f"effective batch stays {effective}")
            return FitResult(budget_gb, fitted, e, changes, message)
    message = (f"even micro-batch 1 at {lengths[-1]} tokens with checkpointing does not fit in {budget_gb:g} GiB: "
               "use a smaller model or 4-bit quantization")
    return FitResult(budget_gb, None, None, {}, message)


def _diff(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    keys = ["train.micro_batch_size", "train.grad_accum", "train.gradient_checkpointing", "train.optimizer", "data.max_length"]
    out = {}
    for key in keys:
        section, name = key.split(".")
        a, b = getattr(getattr(before, section), name), getattr(getattr(after, section), name)
        if a != b:
            out[key] = (a, b)
    return out


def format_fit(result: FitResult) -> str:
    if result.config is None:
        return result.message
    lines = [result.message, ""]
    lines.append(format_estimate(result.estimate, result.budget_gb))
    return "\n".join(lines)
