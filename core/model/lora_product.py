"""The adapter's product for the lean 4-bit LoRA forward (model/lora.py `lean_4bit_lora`)."""

from __future__ import annotations

import torch


def _row_chunks(x2d, chunk_bytes: int):
    """Row slices of x2d of at most chunk_bytes each."""
    step = max(1, chunk_bytes // max(1, x2d.shape[1] * x2d.element_size()))
    return [slice(start, start + step) for start in range(0, x2d.shape[0], step)]


class LoraProduct(torch.autograd.Function):
    """result += scaling * B(dropout_p(x) A^T), into the base layer's output, saving x, 1-byte
    dropout masks and the rank-r product for backward, not the dropped-out input: that copy costs as
    much as x in the compute dtype for every adapted linear, although x itself is alive or saved anyway.

    Written by hand because neither torch nor peft has the op: autograd saves what each op needs,
    and dropout's output is what the adapter's first matmul needs. The dropped-out input is made
    again in backward, a chunk of rows (`chunk_bytes`) at a time, by torch's own fused dropout kernels."""

    @staticmethod
    def forward(ctx, x, result, a, b, scaling, p, chunk_bytes):
        # The adapters are cast to the compute dtype here rather than by autograd: two fewer graph
        # nodes per linear, and the host's share of a step is what limits an 8B step on an H100.
        a, b = a.to(x.dtype), b.to(x.dtype)
        x2d = x.reshape(-1, x.shape[-1])
        chunks = _row_chunks(x2d, chunk_bytes)
        masks, hiddens = [], []
        for rows in chunks:
            dropped = x2d[rows] if len(chunks) > 1 else x2d
            if p > 0:
                dropped, mask = torch.native_dropout(dropped, p, True)
                masks.append(mask)
            hiddens.append(torch.mm(dropped, a.t()))
            del dropped
        hidden = hiddens[0] if len(hiddens) == 1 else torch.cat(hiddens)
        ctx.save_for_backward(x, a, b, hidden, *masks)
        ctx.scaling, ctx.keep_scale, ctx.chunks = scaling, 1.0 / (1.0 - p), chunks
        if result._is_view():  # e.g. a 4-bit layer with a bias: autograd forbids changing its output in place
            return torch.addmm(result.reshape(-1, result.shape[-1]), hidden, b.t(), alpha=scaling).view(result.shape)
        # Into the base output itself: out-of-place addmm first copies it whole (a device-to-device
        # copy of tokens x out_features per linear, 3% of an 8B step). Nothing else holds it: the
        # 4-bit matmul saves no output, and the caller passes a contiguous tensor of its own.
        result.view(-1, result.shape[-1]).addmm_(hidden, b.t(), alpha=scaling)
        ctx.mark_dirty(result)
        return result

    @staticmethod
    def backward(ctx, grad_out):
        x, a, b, hidden, *masks = ctx.saved_tensors
        need_x, need_result, need_a, need_b = ctx.needs_input_grad[:4]
        # made contiguous once (the q, k and v gradients come back transposed) and shared with the base layer
        g2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_b = torch.mm(g2d.t(), hidden).mul_(ctx.scaling) if need_b else None
        # dropout's 1 / (1 - p) goes into the rank-r gradient, so the masks below only zero
        grad_hidden = torch.mm(g2d, b).mul_(ctx.scaling * ctx.keep_scale)
        x2d = x.reshape(-1, x.shape[-1])
        grad_a = None
        if need_a and len(masks) > 1:
            grad_a = torch.zeros(a.shape, dtype=torch.float32, device=a.device)
            for rows, mask in zip(ctx.chunks, masks):
                kept = torch.ops.aten.native_dropout_backward(x2d[rows], mask, 1.0)
                grad_a += torch.mm(grad_hidden[rows].t(), kept)
                del kept
        elif need_a:
            kept = torch.ops.aten.native_dropout_backward(x2d, masks[0], 1.0) if masks else x2d
            grad_a = torch.mm(grad_hidden.t(), kept)
            del kept
        grad_x = None
        if need_x:
            grad_x = torch.mm(grad_hidden, a)
            if len(masks) == 1:  # one fused kernel, as dropout's own backward
                grad_x = torch.ops.aten.native_dropout_backward(grad_x, masks[0], 1.0)
            else:
                for rows, mask in zip(ctx.chunks, masks):
                    grad_x[rows].mul_(mask)
            grad_x = grad_x.view(x.shape)
        grad_result = g2d.view(grad_out.shape) if need_result else None
        return grad_x, grad_result, grad_a, grad_b, None, None, None
