"""What a run does after CUDA runs out of memory: a pure decision from the config and the failure.

Halve the micro-batch and double gradient accumulation (the effective batch and the schedule stay
the same); packed, halve the token budget of a micro-batch and double gradient accumulation (each
optimizer step trains on about as many tokens). At the smallest micro-batch ask, then turn on
gradient checkpointing, offload its checkpoints to CPU memory, and only then halve `max_length`;
or stop. The session applies the decision; nothing here touches a model or a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.data.packing import tokens_per_batch

MIN_MAX_LENGTH = 64
SHRINK, STOP = "shrink", "stop"


@dataclass
class Adapt:
    config: RunConfig
    changes: dict[str, list[Any]]  # key -> [before, after]
    message: str
    data_changed: bool  # max_length changed: the data must be tokenized again


@dataclass
class Ask:
    question: str
    options: tuple[str, ...] = (SHRINK, STOP)


@dataclass
class Stop:
    message: str


def after_out_of_memory(config: RunConfig, failed_step: int, world_size: int = 1, answer: str | None = None, *,
                        packed: bool = False, offloaded: bool = False) -> Adapt | Ask | Stop:
    """The decision after CUDA ran out of memory in optimizer step `failed_step`.

    `answer` is the user's reply to an `Ask` (shrink or stop), given on the second call; `packed`
    and `offloaded` say what the run does now (train.data.packing and offload_checkpoints may
    say auto).
    """
    t = config.train
    if t.on_oom == "stop" or world_size > 1:
        why = "train.on_oom is stop" if world_size == 1 else "several processes cannot change their batch size together"
        return Stop(_stop_message(config, failed_step, why, packed))
    budget = tokens_per_batch(t, config.data)
    if packed and budget // 2 >= config.data.max_length:
        new = _changed(config, train={"tokens_per_batch": budget // 2, "grad_accum": t.grad_accum * 2})
        why = (f"halved train.tokens_per_batch to {budget // 2:,} and doubled grad_accum to {t.grad_accum * 2}: each "
               f"optimizer step still trains on about {budget * t.grad_accum:,} tokens (the packed micro-batches are "
               "planned again, so the rest of this epoch may repeat or skip a few rows)")
        return _adapt(config, new, failed_step, why)
    if not packed and t.micro_batch_size > 1:
        factor = _smallest_factor(t.micro_batch_size)
        new = _changed(config, train={"micro_batch_size": t.micro_batch_size // factor,
                                      "grad_accum": t.grad_accum * factor})
        verb = "halved" if factor == 2 else f"divided by {factor}"
        why = (f"{verb} micro_batch_size to {new.train.micro_batch_size} and raised grad_accum to "
               f"{new.train.grad_accum}: the effective batch ({config.effective_batch_size}) and the schedule stay the same")
        return _adapt(config, new, failed_step, why)
    choice = answer or t.oom_last_resort
    if choice == "ask":
        return Ask(_question(config, failed_step, packed, offloaded))
    if choice != SHRINK:
        return Stop(_stop_message(config, failed_step, None, packed))
    if not t.gradient_checkpointing:
        new = _changed(config, train={"gradient_checkpointing": True})
        why = "turned on train.gradient_checkpointing (activations are recomputed in the backward pass)"
        return _adapt(config, new, failed_step, why)
    if not offloaded and t.offload_checkpoints != "off":
        new = _changed(config, train={"offload_checkpoints": "on"})
        why = "moved the layer checkpoints to pinned CPU memory (train.offload_checkpoints on)"
        return _adapt(config, new, failed_step, why)
    new_length = config.data.max_length // 2
    if new_length < MIN_MAX_LENGTH:
        return Stop(_stop_message(config, failed_step, None, packed))
    train = {"tokens_per_batch": t.tokens_per_batch // 2} if t.tokens_per_batch else None
    new = _changed(config, train=train, data={"max_length": new_length})
    return _adapt(config, new, failed_step, f"cut data.max_length to {new_length} tokens (longer examples are cut)")


WATCHED = {"micro_batch_size": "train", "grad_accum": "train", "tokens_per_batch": "train",
           "gradient_checkpointing": "train", "offload_checkpoints": "train", "max_length": "data"}


def _adapt(old: RunConfig, new: RunConfig, failed: int, why: str) -> Adapt:
    changes = {}
    for key, section in WATCHED.items():
        before, after = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
        if before != after:
            changes[key] = [before, after]
    message = f"CUDA ran out of memory in step {failed}; {why}. Step {failed} is done again from the last saved state."
    return Adapt(new, changes, message, data_changed="max_length" in changes)


def _changed(config: RunConfig, train: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> RunConfig:
    update: dict[str, Any] = {}
    if train:
        update["train"] = config.train.model_copy(update=train)
    if data:
        update["data"] = config.data.model_copy(update=data)
    return config.model_copy(update=update)


def _question(config: RunConfig, failed: int, packed: bool, offloaded: bool) -> str:
    t = config.train
    if not t.gradient_checkpointing:
        fix = "turn on gradient checkpointing"
    elif not offloaded and t.offload_checkpoints != "off":
        fix = "move the layer checkpoints to CPU memory (a little slower)"
    else:
        fix = f"cut data.max_length from {config.data.max_length} to {config.data.max_length // 2} tokens"
    return (f"CUDA ran out of memory in step {failed}, already at {_smallest(config, packed)}. "
            f"Shall training {fix} and go on? Otherwise it stops here, with a checkpoint.")


def _smallest(config: RunConfig, packed: bool) -> str:
    return f"{tokens_per_batch(config.train, config.data):,} tokens per micro-batch" if packed else "micro-batch 1"


def _stop_message(config: RunConfig, failed: int, why: str | None, packed: bool = False) -> str:
    t = config.train
    if why is None:
        culprit = ("train.gradient_checkpointing is off" if not t.gradient_checkpointing
                   else f"data.max_length {config.data.max_length} is too long for this GPU at {_smallest(config, packed)}")
        hint = "turn it on" if not t.gradient_checkpointing else "shorten it"
        why = f"{culprit}: {hint}, or resume with --oom-shrink to let training do it"
    saved = f"; the last state (step {failed - 1}) is saved" if failed > 1 else ""
    return f"CUDA out of memory in step {failed}: {why}{saved}"


def _smallest_factor(n: int) -> int:
    for p in range(2, math.isqrt(n) + 1):
        if n % p == 0:
            return p
    return n


def is_out_of_memory(exc: BaseException) -> bool:
    """PyTorch raises OutOfMemoryError; some extension kernels raise a plain RuntimeError."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "CUDA" in str(exc)
    )
