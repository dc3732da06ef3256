"""Padding-free packing: rows laid end to end in token-budget micro-batches, each row attending to itself only.

Unpacked, every micro-batch is padded to its longest row; on chat data with a long tail of
lengths half the tokens a GPU computes are padding. Packed, the rows of a micro-batch form one
(1, T) sequence with no attention mask and no padding; `position_ids` restart at 0 for every row
and each row's first label is -100. transformers turns the restarting positions into per-row
attention (masking_utils.find_packed_sequence_indices for sdpa / eager / flex; the varlen kernel
for flash_attention_2 and our `varlen`, see model.attention), so every row gets exactly the loss
it gets unpacked. Micro-batches are cut by tokens, not rows: every step does about the same work.

  PackedCollator           transformers' DataCollatorWithFlattening does the flattening; ours adds
                           `use_cache=False` to every batch (a KV cache switches the packed-sequence
                           detection off and rows silently attend to each other) and drops empty rows.
  TokenBudgetBatchSampler  nothing upstream cuts batches by tokens. The plan (which rows share a
                           micro-batch) is made once per seed; each epoch yields it in an order drawn
                           from (seed, epoch): the same count every epoch, as Trainer's step
                           arithmetic and resume skipping assume, and every row once per epoch.
  packing_plan / packing_support
                           whether a run packs: from config.json alone (the planner), then on the
                           loaded model with a three-forward probe (the run), so an architecture that
                           ignores packed positions is measured rather than trusted.

Choices a user sees: the budget defaults to micro_batch_size x max_length tokens (today's worst
case), so an epoch has fewer, fuller steps; the loss is a per-token mean over the optimizer step
(Trainer's num_items_in_batch), so how a step is split into micro-batches does not change it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from qlora_studio.core.model.attention import VARLEN, supports_varlen

IGNORE_INDEX = -100
# Attention implementations that keep packed rows apart, and how: a T x T mask (sdpa, eager) or a
# block mask (flex), or boundaries only (the varlen kernels).
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")
VARLEN_ATTENTION = (VARLEN, "flash_attention_2", "flash_attention_3")
# sdpa has no variable-length kernel: packed, it attends densely over all T tokens. `auto` packs
# under sdpa only while that T x T work adds at most this share to a layer's matmul FLOPs.
SDPA_ATTENTION_SHARE = 0.25
# Layers that carry a state along the sequence (Mamba, gated delta nets, short convolutions) leak
# it from one packed row into the next whatever the attention does.
RECURRENT_LAYER_KINDS = ("linear_attention", "mamba", "conv", "recurrent", "deltanet")


# ---- the collator ----------------------------------------------------------------------------

class PackedCollator:
    """Rows -> one (1, sum of lengths) sequence: input_ids, labels, position_ids, use_cache=False.

    `flash_kwargs` adds cu_seq_lens_q/k and max_length_q/k, computed here on the host: the varlen
    kernels would otherwise derive the row boundaries from position_ids in every layer, with a
    device-to-host sync each time. The masked paths ignore them.
    """

    def __init__(self, *, flash_kwargs: bool = False):
        from transformers import DataCollatorWithFlattening

        self.flash_kwargs = flash_kwargs
        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX,
                                                   return_flash_attn_kwargs=flash_kwargs)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        # An empty row would add a separator label but no token, shifting every later label by one.
        rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features if len(f["input_ids"])]
        if not rows:
            raise ValueError("a packed micro-batch has no tokens")
        batch = self._flatten(rows)
        batch["use_cache"] = False  # with a cache object masking_utils builds one causal mask over all rows
        return batch


def packed_row_spans(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of every row of a packed (1, T) batch, read off the restarting positions."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten().tolist()
    return list(zip(starts, starts[1:] + [flat.numel()]))


# ---- the batch sampler -----------------------------------------------------------------------

def tokens_per_batch(train, data) -> int:
    """The token budget of a packed micro-batch: train.tokens_per_batch, or micro-batch x max_length."""
    return train.tokens_per_batch or train.micro_batch_size * data.max_length


def plan_micro_batches(lengths: Sequence[int], order: Sequence[int], budget: int, open_bins: int = 8) -> list[list[int]]:
    """Cut `order` (row indices) into micro-batches of at most `budget` tokens.

    First fit with a few bins open: a row goes into the first open bin it fits, else a new one;
    past `open_bins` open bins the fullest is closed. Fills about as well as sorting by length
    (99% at mean 500 / budget 8192) without putting all long rows together.
    """
    plan: list[list[int]] = []
    bins: list[list[int]] = []
    fill: list[int] = []
    for index in order:
        n = int(lengths[index])
        for b, used in enumerate(fill):
            if used + n <= budget:
                bins[b].append(index)
                fill[b] += n
                break
        else:
            bins.append([index])
            fill.append(n)
        if len(bins) > open_bins:
            fullest = max(range(len(bins)), key=lambda b: (fill[b], -b))
            plan.append(bins.pop(fullest))
            fill.pop(fullest)
    plan.extend(bins)
    return plan


def _split_to_multiple(plan: list[list[int]], lengths: Sequence[int], multiple: int) -> list[list[int]]:
    """Split the largest micro-batches in two until their count divides by `multiple` (the number of
    processes: accelerate deals micro-batches round-robin and repeats the first ones to even out a
    remainder, which would train some rows twice an epoch)."""
    plan = [list(b) for b in plan]
    while len(plan) % multiple:
        candidates = [i for i, b in enumerate(plan) if len(b) > 1]
        if not candidates:
            break
        i = max(candidates, key=lambda j: (sum(lengths[k] for k in plan[j]), -j))
        rows = plan[i]
        half, running, cut = sum(lengths[k] for k in rows) / 2, 0, 1
        for cut in range(1, len(rows)):
            running += lengths[rows[cut - 1]]
            if running >= half:
                break
        plan[i:i + 1] = [rows[:cut], rows[cut:]]
    return plan


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Micro-batches of row indices holding at most `budget` tokens each; see the module docstring.

    Rows that share a micro-batch share it every epoch (as with packing done once in the dataset);
    optimizer steps still mix differently each epoch.
    """

    def __init__(self, lengths: Sequence[int], budget: int, *, seed: int = 0, shuffle: bool = True,
                 open_bins: int = 8, batches_multiple_of: int = 1):
        lengths = [int(n) for n in lengths]
        if not lengths:
            raise ValueError("no rows to batch")
        if min(lengths) < 1:
            raise ValueError("rows must hold at least one token")
        if budget < max(lengths):
            raise ValueError(f"train.tokens_per_batch ({budget}) is less than the longest row ({max(lengths)} tokens)")
        self.lengths = lengths
        self.budget = int(budget)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        order = np.random.default_rng(self.seed).permutation(len(lengths)) if shuffle else np.arange(len(lengths))
        plan = plan_micro_batches(lengths, order.tolist(), self.budget, open_bins)
        self.plan = _split_to_multiple(plan, lengths, batches_multiple_of) if batches_multiple_of > 1 else plan

    def set_epoch(self, epoch: int) -> None:
        # Called by the Trainer each epoch through accelerate's DataLoaderShard, and after a resume's
        # skip_first_batches through Trainer._run_epoch's reach into the wrapped batch sampler.
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[list[int]]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.plan)).tolist()
                 if self.shuffle else range(len(self.plan)))
        for i in order:
            yield list(self.plan[i])

    def fill(self) -> float:
        """Share of the budget the micro-batches use, on average."""
        return sum(self.lengths) / (len(self.plan) * self.budget)


def steps_per_epoch(micro_batches: int, grad_accum: int, world_size: int = 1) -> int:
    """Optimizer steps per epoch as Trainer counts them from len(dataloader); the last step of an
    epoch may hold fewer micro-batches (its loss is still a per-token mean)."""
    return max(1, math.ceil(math.ceil(micro_batches / world_size) / grad_accum))


def row_lengths(dataset) -> list[int]:
    """Token count of every row, read from the Arrow column without building Python lists."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()


@dataclass
class BatchingSummary:
    """What batching makes of the data, for the X-ray and the planner: per epoch."""

    packed: bool
    tokens_per_batch: int | None
    micro_batches: int
    steps_per_epoch: int
    fill: float  # real tokens / tokens computed (packed: of the budget; padded: of the padded batches)

    def describe(self) -> str:
        if self.packed:
            return (f"packed: {self.micro_batches} micro-batches of up to {self.tokens_per_batch:,} tokens per epoch, "
                    f"{self.fill:.0%} full; {self.steps_per_epoch} optimizer steps per epoch")
        return (f"padded: {self.micro_batches} micro-batches per epoch, {1 - self.fill:.0%} of the computed tokens "
                f"are padding; {self.steps_per_epoch} optimizer steps per epoch")


def summarize_batching(lengths: Sequence[int], packed: bool, train, data, seed: int = 0,
                       world_size: int = 1) -> BatchingSummary:
    """Micro-batches, steps and fill of one epoch, packed or padded to each micro-batch's longest row."""
    if packed:
        budget = tokens_per_batch(train, data)
        sampler = TokenBudgetBatchSampler(lengths, budget, seed=seed, batches_multiple_of=world_size)
        count, fill = len(sampler), sampler.fill()
    else:
        budget, size = None, train.micro_batch_size
        order = np.random.default_rng(seed).permutation(len(lengths))
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        computed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        count, fill = len(batches), sum(lengths) / max(1, computed)
    return BatchingSummary(packed, budget, count, steps_per_epoch(count, train.grad_accum, world_size), round(fill, 4))


def describe_batching(config, lengths: Sequence[int]) -> str:
    """The X-ray's line about batching: what `packing_plan` expects from config.json, applied to the
    training rows (the run confirms packing on the loaded model)."""
    from qlora_studio.core.errors import UserError
    from qlora_studio.core.model.shape import load_model_config

    if not lengths:
        return ""
    t, d = config.train, config.data
    try:
        model_config = load_model_config(config.model.name_or_path, config.model.trust_remote_code, config.model.revision)
        packed = packing_plan(d.packing, config.model.attn_implementation, model_config, tokens_per_batch(t, d)).packed
    except UserError:
        packed = d.packing == "on"
    summary = summarize_batching(lengths, packed, t, d, seed=t.seed, world_size=config.distributed.num_processes)
    return summary.describe()


# ---- which runs pack --------------------------------------------------------------------------

@dataclass
class PackingPlan:
    packed: bool
    attention: str  # the attention implementation packed (or padded) batches run with
    reason: str

    @property
    def flash_kwargs(self) -> bool:
        return self.packed and self.attention in VARLEN_ATTENTION


def packing_plan(setting: str, attn_setting: str, model_config, budget: int) -> PackingPlan:
    """`data.packing` and `model.attn_implementation` resolved from config.json alone.

    auto packs wherever rows can be kept apart at no great cost: plain causal attention runs our
    `varlen` path (no mask); other attention (sliding windows, softcaps) packs under sdpa's dense
    mask while T x T stays cheap; eager never (it would hold heads x T x T weights). `on` packs
    whatever the cost, `off` never; the attention the user names is kept.
    """
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    padded_attn = "sdpa" if attn_setting == "auto" else attn_setting
    if setting == "off":
        return PackingPlan(False, padded_attn if padded_attn != VARLEN else "sdpa", "data.packing is off")
    blocked = _structural_block(model_config, text)
    if blocked:
        return PackingPlan(False, padded_attn if padded_attn != VARLEN else "sdpa", blocked)
    if attn_setting == "auto":
        plain, why = supports_varlen(text)
        attention = VARLEN if plain else "sdpa"
    else:
        attention = attn_setting
    if setting == "auto" and attention == "eager":
        return PackingPlan(False, "eager", "eager attention would hold heads x T x T weights for a packed batch")
    if setting == "auto" and attention == "sdpa":
        limit = sdpa_token_limit(text)
        if budget > limit:
            return PackingPlan(False, "sdpa", f"sdpa attends densely over packed tokens and {budget:,} is more than "
                                              f"{limit:,} for this model ({why if attn_setting == 'auto' else 'sdpa chosen'})")
    how = {VARLEN: "no mask (varlen kernel)", "sdpa": "a dense per-row mask", "eager": "a dense per-row mask",
           "flex_attention": "a block mask", "flash_attention_2": "flash-attn's varlen kernel"}.get(attention, attention)
    return PackingPlan(True, attention, f"rows packed into {budget:,}-token micro-batches, kept apart by {how}")


def _structural_block(model_config, text) -> str | None:
    if getattr(model_config, "is_encoder_decoder", False):
        return "encoder-decoder models are not packed"
    kinds = {str(k).lower() for k in (getattr(text, "layer_types", None) or [])}
    recurrent = sorted(k for k in kinds if any(r in k for r in RECURRENT_LAYER_KINDS))
    if recurrent:
        return f"layers of kind {', '.join(recurrent)} carry state from one packed row into the next"
    return None


def sdpa_token_limit(text_config) -> int:
    """Largest packed T whose dense T x T attention adds <= SDPA_ATTENTION_SHARE to a layer's matmuls
    (6 x layer params FLOPs per token, forward and backward, against 12 x T x heads x head_dim).
    Llama-3-8B: about 6.6k tokens; Qwen2.5-0.5B: 2.1k; SmolLM2-135M: 770."""
    d = text_config.hidden_size
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    inter = getattr(text_config, "intermediate_size", None) or 4 * d
    per_layer = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim + 3 * d * inter
    return int(SDPA_ATTENTION_SHARE * 6 * per_layer / (12 * heads * head_dim))


def accepts_loss_kwargs(model) -> bool:
    """What Trainer checks before passing num_items_in_batch: without it, micro-batches of different
    token counts would be averaged with equal weights."""
    import inspect

    inner = _inner_model(model)
    if hasattr(inner, "accepts_loss_kwargs"):
        return bool(inner.accepts_loss_kwargs)
    params = inspect.signature(inner.forward).parameters.values()
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def _inner_model(model):
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def probe_packed_attention(model, lengths: tuple[int, int] = (5, 7), **forward_kwargs) -> tuple[bool, str]:
    """Whether the second of two packed rows gets the logits it gets alone.

    Three tiny forwards: row B alone (the truth), A+B packed, A+B as one sequence (what a model that
    ignores packing computes). The packed error must be far below the cross-row one, which scales
    the tolerance to the model's dtype and quantization. `forward_kwargs` reach the packed forward
    only (tests break packing on purpose with them).
    """
    inner = _inner_model(model)
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    device = next(p.device for p in model.parameters())
    generator = torch.Generator().manual_seed(1234)
    a_len, b_len = lengths
    ids = torch.randint(min(10, config.vocab_size - 1), config.vocab_size, (a_len + b_len,), generator=generator).to(device)
    positions = torch.cat([torch.arange(a_len), torch.arange(b_len)]).to(device)
    was_training = model.training
    model.eval()
    try:
        alone = model(input_ids=ids[a_len:][None], use_cache=False).logits[0].float()
        packed = model(input_ids=ids[None], position_ids=positions[None],
                       **{"use_cache": False, **forward_kwargs}).logits[0, a_len:].float()
        joined = model(input_ids=ids[None], use_cache=False).logits[0, a_len:].float()
    finally:
        model.train(was_training)
    error = (packed - alone).abs().max().item()
    contaminated = (joined - alone).abs().max().item()
    if not math.isfinite(error):
        return False, "non-finite logits"
    if contaminated == 0:
        return False, "rows do not interact even unpacked: the probe cannot tell"
    # A model that lets rows see each other errs about as much as the joined forward (ratio ~1);
    # bf16 rounding through a deep model errs up to ~7% of it (random-weight Qwen2.5-0.5B shape,
    # 24 layers, H100), which a tighter bound mistook for leaking rows.
    return error / contaminated < 0.25, f"error {error:.1e} against {contaminated:.1e} across rows"
