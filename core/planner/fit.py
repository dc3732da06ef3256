"""Make it fit: the fastest settings that fit a GPU budget, keeping what an optimizer step trains on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlora_studio.core.config.choices import OPTIMIZERS
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.model.shape import model_shape
from qlora_studio.core.planner.estimate import GIB, Estimate
from qlora_studio.core.planner.host_memory import pinned_fits, planned_ram_bytes
from qlora_studio.core.planner.plan import (MLP_TILE_TOKENS, assume, embedding_quantizable, estimate_for, model_config_of,
                                             with_reasons)


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
# Offloaded checkpoints cross PCIe twice per layer and step (2 x hidden bytes per token, about 25 GB/s)
# while the layer computes about 6 x 12 x hidden^2 FLOPs per token (about 150 TFLOP/s): a slowdown of
# about OFFLOAD_COST_HIDDEN / hidden, 8% at hidden 4096 and 60% at 576 (prediction; see bench/NOTES-speed.md).
OFFLOAD_COST_HIDDEN = 333


# A tiled MLP runs its forward once more (the MLP is about 2/3 of a layer's FLOPs, a forward a quarter of
# forward + recompute + backward): about 15% slower (prediction; see bench/NOTES-speed.md).
TILED_MLP_SPEED = 0.87


def relative_speed(micro_batch: int, seq_len: int, gradient_checkpointing: bool, offload: bool = False,
                   hidden: int = 4096, tiled: bool = False) -> float:
    tokens = micro_batch * seq_len
    speed = tokens / (tokens + SATURATION_TOKENS) * (CHECKPOINTING_SPEED if gradient_checkpointing else 1.0)
    speed *= TILED_MLP_SPEED if tiled else 1.0
    return speed / (1 + OFFLOAD_COST_HIDDEN / hidden) if offload else speed


def _batch_options(config: RunConfig, length: int) -> list[tuple[dict[str, Any], str]]:
    """Ways to split an optimizer step into micro-batches: (overrides, what stays the same)."""
    t = config.train
    if t.tokens_per_batch is None:  # micro-batch rows (packed: micro-batch x max_length tokens)
        effective = t.micro_batch_size * t.grad_accum
        return [({"train.micro_batch_size": m, "train.grad_accum": effective // m}, f"effective batch stays {effective}")
                for m in _divisors(effective)]
    per_step = t.tokens_per_batch * t.grad_accum
    keep = f"each optimizer step still trains on {per_step:,} tokens"
    options = [({"train.tokens_per_batch": per_step // g, "train.grad_accum": g}, keep)
               for g in sorted(_divisors(t.grad_accum)) if per_step // g >= length]
    tokens, accum = t.tokens_per_batch // 2, t.grad_accum * 2
    while tokens >= length:
        options.append(({"train.tokens_per_batch": tokens, "train.grad_accum": accum}, keep))
        tokens, accum = tokens // 2, accum * 2
    return options


def make_it_fit(config: RunConfig, budget_gb: float) -> FitResult:
    """The fastest settings that fit `budget_gb`, keeping what an optimizer step trains on.

    data.max_length is kept whenever anything fits at it (cutting data changes what is learned):
    the input embedding table in NF4, offloading checkpoints, a tiled MLP, smaller micro-batches,
    checkpointing and leaner optimizer states all come first. Among the settings that fit, the one `relative_speed` rates fastest wins (ties:
    the plain fused AdamW before 8-bit states before paged ones).
    """
    model_config = model_config_of(config)
    shape = model_shape(model_config)
    lengths = [config.data.max_length]
    while lengths[-1] // 2 >= 256:
        lengths.append(lengths[-1] // 2)
    choices = {"off": (False,), "on": (True,), "auto": (False, True)}
    levers = [(offload, tiled) for offload in choices[config.train.offload_checkpoints]
              for tiled in choices[config.train.tiled_mlp]]
    ram = planned_ram_bytes(config)
    embeddings = choices[config.quantization.embeddings] if embedding_quantizable(config, shape) else (False,)
    for length in lengths:
        best = None
        for overrides, kept in _batch_options(config, length):
            candidate = config.with_overrides({**overrides, "data.max_length": length})
            a = assume(candidate, model_config, shape)
            for checkpointing in (False, True):
                for offload, tiled in levers if checkpointing else [(False, False)]:
                    tile = MLP_TILE_TOKENS if tiled and a.tokens > MLP_TILE_TOKENS else None
                    if tiled and tile is None:
                        continue
                    for embedding_4bit in embeddings:
                        for rank, optimizer in enumerate(OPTIMIZERS):
                            e = estimate_for(shape, candidate, a, gradient_checkpointing=checkpointing,
                                             optimizer=optimizer, offload=offload, mlp_tile=tile,
                                             embedding_4bit=embedding_4bit)
                            if not e.fits(budget_gb) or not pinned_fits(e.host_bytes, ram):
                                continue
                            speed = relative_speed(a.micro_batch, a.seq_len, checkpointing, offload, shape.hidden, tiled)
                            score = (speed, -embedding_4bit, -rank)  # the NF4 table costs no speed: a tie-breaker
                            if best is None or score > best[0]:
                                best = (score, candidate, checkpointing, optimizer, kept, with_reasons(e, a))
                            break  # a later optimizer only saves memory this one did not need
        if best is not None:
            _, candidate, checkpointing, optimizer, kept, e = best
            fitted = candidate.with_overrides({"train.gradient_checkpointing": checkpointing,
                                               "train.optimizer": optimizer})
            changes = _diff(config, fitted)
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()) or "no change needed"
            if e.embedding_4bit and config.quantization.embeddings == "auto":
                what += "; input embeddings in 4-bit NF4 (quantization.embeddings auto)"
            if e.offload and config.train.offload_checkpoints == "auto":
                what += "; layer checkpoints offloaded to CPU (train.offload_checkpoints auto)"
            if e.mlp_tile and config.train.tiled_mlp == "auto":
                what += f"; MLP in {e.mlp_tile:,}-token tiles (train.tiled_mlp auto)"
            message = f"fits in {budget_gb:g} GiB at {e.total_bytes / GIB:.1f} GiB: {what}; {kept}"
            return FitResult(budget_gb, fitted, e, changes, message)
    message = (f"even micro-batch 1 at {lengths[-1]} tokens with checkpointing does not fit in {budget_gb:g} GiB: "
               "use a smaller model or 4-bit quantization")
    return FitResult(budget_gb, None, None, {}, message)


KEYS = ["train.micro_batch_size", "train.grad_accum", "train.tokens_per_batch", "train.gradient_checkpointing",
        "train.optimizer", "data.max_length"]


def _diff(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    out = {}
    for key in KEYS:
        section, name = key.split(".")
        a, b = getattr(getattr(before, section), name), getattr(getattr(after, section), name)
        if a != b:
            out[key] = (a, b)
    return out


def format_fit(result: FitResult) -> str:
    if result.config is None:
        return result.message
    return "\n".join([result.message, "", result.estimate.breakdown(result.budget_gb)])
