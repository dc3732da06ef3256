"""A causal-LM loss that never holds the full (tokens x vocabulary) logits, for where Liger's fused
loss does not run (no liger-kernel, or a batch so long that its chunks grow larger than ours).

At a 128k vocabulary the logits of an 8k-token micro-batch and their fp32 copies for the loss
take about 12 GiB; transformers has no chunked loss. Two public hooks make one:
  1. `logits_to_keep` takes a boolean (batch, seq) mask (transformers 5 slice_logits_to_keep), so
     the lm_head runs only where a target exists: chat data trains on the replies only, often a
     third of the tokens.
  2. For the duration of the forward the lm_head returns its input, and (lm_head + cross-entropy)
     then runs chunk by chunk under non-reentrant checkpoint: one chunk of logits exists at a time,
     in the forward and in the backward (where it is recomputed).
Equal to the model's own loss to float rounding (tests/core/test_packing.py).

Limits, checked by `lean_loss_supported`: a plain frozen Linear head (no LoRA on it), no logit
post-processing (softcapping, logit scales), and no FSDP (the head's weight is read outside the
model's forward, where FSDP would have it sharded).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from qlora_studio.core.planner.loss_memory import chunked_loss_chunk_tokens

IGNORE_INDEX = -100
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              chunk: int) -> torch.Tensor:
    """Sum over rows of CE(hidden @ weight.T, targets) with one chunk of logits alive at a time."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        total = total + checkpoint(_ce_sum, h, weight, t, use_reentrant=False)
    return total


@contextlib.contextmanager
def head_returns_hidden(head: torch.nn.Module):
    """The lm_head as an identity for one forward, so the model hands back hidden states."""
    head.forward = lambda hidden_states: hidden_states  # an instance attribute shadows the class method
    try:
        yield head
    finally:
        del head.forward


def _inner(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lean_loss_supported(model) -> tuple[bool, str]:
    inner = _inner(model)
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    for name in LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0, 0):
            return False, f"the model post-processes its logits ({name}={value})"
    head = inner.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if type(head) is not torch.nn.Linear or weight is None or weight.requires_grad:
        return False, "the output head is not a plain frozen Linear layer"
    return True, "plain frozen output head"


def lean_causal_lm_loss(model, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
    """The micro-batch's loss, as ForCausalLMLoss gives it: summed over trained tokens and divided by
    num_items_in_batch (the optimizer step's trained tokens) or, without it, by its own count."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = targets != IGNORE_INDEX
    inner = _inner(model)
    head = inner.get_output_embeddings()
    with head_returns_hidden(head):
        hidden = model(**inputs, logits_to_keep=keep).logits  # (trained tokens, hidden)
    # Under mixed precision accelerate wraps the model's forward in autocast and turns its outputs
    # to fp32; the chunks below run outside that autocast, so the hidden states go back to the
    # head's dtype here (what autocast gives the model's own lm_head), which also frees the fp32 copy.
    hidden = hidden.to(head.weight.dtype)
    kept = targets[keep]
    chunk = chunked_loss_chunk_tokens(kept.numel(), head.in_features, head.out_features)
    total = chunked_cross_entropy_sum(hidden.reshape(-1, hidden.shape[-1]), head.weight, kept, chunk)
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count
