"""The planner's term for the output head and the loss: full logits, Liger's fused chunks, or our
chunked loss (training/lean_loss.py), each at its peak; and the chunk lengths both kernels use."""

from __future__ import annotations

import math

from qlora_studio.core.model.shape import ModelShape

LOGITS_BYTES_PER_ELEMENT = 12.0
LIGER_CHUNK_BYTES_PER_ELEMENT = 8.0  # fp32 chunk logits and their gradient
LIGER_INPUT_GRAD_BYTES = 4.0  # fp32 gradient of the hidden states, filled chunk by chunk
# Our chunked loss (training/lean_loss.py) at its peak, the backward of one chunk: bf16 logits,
# their fp32 copy, log-softmax and the fp32 and bf16 gradients; plus the trained tokens' hidden
# states, their gradient and the gradient scattered back into the sequence.
CHUNKED_BYTES_PER_ELEMENT = 18.0
CHUNKED_HIDDEN_COPIES = 3
CHUNK_TOKENS_MIN, CHUNK_TOKENS_MAX = 128, 512


def liger_chunk_tokens(shape: ModelShape, tokens: int) -> int:
    """Rows per chunk of Liger's fused linear cross-entropy: tokens / ceil(vocab / hidden), to a power of two."""
    return liger_chunk_tokens_for(tokens, shape.hidden, shape.vocab)


def loss_bytes(shape: ModelShape, tokens: int, loss: str, compute_bytes: int) -> float:
    """Memory of lm_head + loss at their peak: full logits, Liger's fused chunks, or our chunked loss."""
    if loss == "liger":
        # only one chunk's fp32 logits (and their gradient) plus the input's gradient
        return (LIGER_CHUNK_BYTES_PER_ELEMENT * liger_chunk_tokens(shape, tokens) * shape.vocab
                + LIGER_INPUT_GRAD_BYTES * tokens * shape.hidden)
    if loss == "chunked":
        chunk = chunked_loss_chunk_tokens(tokens, shape.hidden, shape.vocab)
        return (CHUNKED_BYTES_PER_ELEMENT * chunk * shape.vocab
                + CHUNKED_HIDDEN_COPIES * compute_bytes * tokens * shape.hidden)
    return LOGITS_BYTES_PER_ELEMENT * tokens * shape.vocab


def chunked_loss_chunk_tokens(trained: int, hidden: int, vocab: int) -> int:
    """Chunk length of our chunked loss: a chunk's logits about the size of the hidden states (as
    Liger sizes its chunks), between 128 and 512 tokens, so long batches do not grow the chunk
    (at 80k tokens and a 128k vocabulary Liger's chunks reach 4,096 tokens, 4 GiB)."""
    wanted = liger_chunk_tokens_for(trained, hidden, vocab)
    return max(CHUNK_TOKENS_MIN, min(CHUNK_TOKENS_MAX, wanted))


def liger_chunk_tokens_for(tokens: int, hidden: int, vocab: int) -> int:
    factor = math.ceil(vocab / hidden)
    return 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / factor))))
