"""Attention for packed batches without a tokens x tokens mask: the `varlen` implementation.

A packed micro-batch is one (1, T) sequence whose rows restart their position ids at 0. For sdpa
and eager, transformers turns the restarting positions into a dense T x T block-diagonal mask
(masking_utils.find_packed_sequence_indices), which rules out SDPA's flash backend: the kernel
then computes all T^2 scores, most of them masked away (on an H100, 22 rows in 16,384 tokens:
masked cuDNN 51 ms, masked memory-efficient 124 ms, per-row flash 16 ms). flash-attn's varlen
kernel has no such waste, but it is an extra package with CUDA builds to match.

`varlen` is registered in transformers' AttentionInterface (its documented extension point) and
needs no mask: a name the mask interface does not know gets `attention_mask=None`. Each call
attends within every row only, with
  - torch's own variable-length flash kernel (`torch.nn.attention.varlen.varlen_attn`, in torch
    >= 2.10) on CUDA in bf16/fp16: one kernel launch for all rows, no mask, no padding;
  - otherwise one causal SDPA call per row (CPU, fp32, older torch): exact, each call free to
    use SDPA's flash backend on a GPU;
  - and where every row of the batch has one length (fixed-length data), one causal SDPA call
    over them as a (rows, heads, L, D) batch: on an H100 SDPA's cuDNN kernel then runs attention
    in about half the varlen kernel's time.
The row boundaries come from the collator's `cu_seq_lens_q` (transformers' flash-attention
kwargs, computed on the host) or, without them, from the restarting position ids.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F

VARLEN = "varlen"
# train.experimental.varlen_rows_only, set on the model config by training.speed: the per-row path
# where the varlen kernel would run (a benchmark's comparison).
ROWS_ONLY = "qlora_studio_varlen_rows_only"


def register() -> None:
    """Make `varlen` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)


@lru_cache(maxsize=1)
def _torch_varlen():
    """torch's varlen_attn and how its signature says "causal" and "grouped-query" (it changed in 2.11)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    return varlen_attn, causal, "enable_gqa" in params, "scale" in params


def varlen_kernel_available(device: torch.device | str = "cuda") -> bool:
    """Whether the one-launch kernel can run (the per-row path always can)."""
    return torch.device(device).type == "cuda" and _torch_varlen() is not None


def row_boundaries(position_ids: torch.Tensor | None, length: int, cu_seq_lens: torch.Tensor | None = None) -> list[int]:
    """Cumulative row starts [0, ..., T] of a packed (1, T) sequence."""
    if cu_seq_lens is not None:
        return [int(x) for x in cu_seq_lens.tolist()]
    if position_ids is None:
        return [0, length]
    flat = position_ids.reshape(-1)[-length:]
    starts = (flat == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return starts + [length]


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, softcap: float | None = None,
                             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (1, Hq, T, D), key/value (1, Hkv, T, D);
    returns (1, T, Hq, D) like the other implementations."""
    if query.shape[0] != 1 or attention_mask is not None or query.shape[2] != key.shape[2]:
        # A padded batch or cached decoding (probes, the playground, a padded evaluation): the model
        # keeps this implementation after training, so these go to SDPA with their mask.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if sliding_window is not None or softcap is not None or kwargs.get("s_aux") is not None:
        raise ValueError("varlen attention supports plain causal attention only (no sliding window or softcap)")
    length = query.shape[2]
    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is not None and longest and (len(cu) - 1) * int(longest) == length:
        # Rows of one length (fixed-length data): they are a plain (rows, heads, L, D) batch, known
        # from the host's shapes alone, and SDPA picks its fastest kernel for that. On an H100
        # cuDNN's attention takes about half the varlen kernel's time there.
        return _equal_rows(module, query, key, value, len(cu) - 1, scaling, dropout, **kwargs), None
    kernel = _torch_varlen()
    default_scale = scaling is None or abs(scaling - query.shape[-1] ** -0.5) < 1e-6
    if (kernel is not None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0
            and query.shape[-1] <= 256 and (kernel[3] or default_scale) and not getattr(getattr(module, "config", None), ROWS_ONLY, False)):
        if cu is None or longest is None:  # no collator kwargs (the probe): read the boundaries once here
            bounds = row_boundaries(kwargs.get("position_ids"), length)
            cu, longest = bounds, max(b - a for a, b in zip(bounds, bounds[1:]))
        return _one_launch(kernel, query, key, value, cu, int(longest), scaling), None
    return _per_row(query, key, value, row_boundaries(kwargs.get("position_ids"), length, cu), scaling, dropout), None


def _equal_rows(module, query, key, value, rows: int, scaling: float | None, dropout: float, **kwargs) -> torch.Tensor:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def batch(t):  # (1, H, rows * L, D) -> (rows, H, L, D): a view, whatever the strides
        return t[0].unflatten(1, (rows, -1)).transpose(0, 1)

    for name in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "position_ids"):
        kwargs.pop(name, None)
    out, _ = sdpa_attention_forward(module, batch(query), batch(key), batch(value), None, dropout=dropout,
                                    scaling=scaling, is_causal=True, **kwargs)
    return out.reshape(1, -1, *out.shape[2:])  # (rows, L, H, D) -> (1, T, H, D)


def _one_launch(kernel, query, key, value, cu, longest: int, scaling: float | None) -> torch.Tensor:
    """cu: cumulative row starts (a tensor from the collator, already on the GPU: no host sync)."""
    varlen_attn, causal, takes_gqa, takes_scale = kernel
    q = query[0].transpose(0, 1).contiguous()  # (T, Hq, D)
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    extra = {}
    if k.shape[1] != q.shape[1]:
        if takes_gqa:
            extra["enable_gqa"] = True
        else:  # torch 2.10's kernel wants as many key/value heads as query heads
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    cu = torch.as_tensor(cu, dtype=torch.int32, device=q.device)
    if takes_scale:
        extra["scale"] = scaling
    out = varlen_attn(q, k.contiguous(), v.contiguous(), cu, cu, longest, longest, **causal, **extra)
    return out.unsqueeze(0)  # (1, T, Hq, D)


def _per_row(query, key, value, bounds: list[int], scaling: float | None, dropout: float) -> torch.Tensor:
    gqa = key.shape[1] != query.shape[1]
    rows = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout,
                                       is_causal=True, scale=scaling, enable_gqa=gqa)
        for a, b in zip(bounds, bounds[1:]) if b > a
    ]
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=2)
    return out.transpose(1, 2).contiguous()


def supports_varlen(text_config) -> tuple[bool, str]:
    """Whether a model's attention is plain causal attention `varlen` can stand in for."""
    window = getattr(text_config, "sliding_window", None)
    if window and getattr(text_config, "use_sliding_window", True):
        return False, f"it uses sliding-window attention ({window} tokens)"
    kinds = {str(k) for k in (getattr(text_config, "layer_types", None) or [])}
    if kinds - {"full_attention"}:
        return False, f"it has layers of kind {', '.join(sorted(kinds - {'full_attention'}))}"
    for name in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(text_config, name, None):
            return False, f"its attention uses {name}"
    if getattr(text_config, "is_encoder_decoder", False):
        return False, "it is an encoder-decoder"
    return True, "plain causal attention"
