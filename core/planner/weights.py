"""The weights' bytes on the GPU: 4-bit, 8-bit or compute-dtype linear layers with their
quantization constants, the embedding table (NF4 with `embedding_4bit`), the output head, norms."""

from __future__ import annotations

from qlora_studio.core.model.quant_layout import CUDA_ALLOC_ROUND, int8_bytes, packed_4bit_bytes, quant_constants_4bit_bytes
from qlora_studio.core.model.shape import ModelShape

# model/embedding.py quantizes the table without double quant (bitsandbytes' row gather needs
# plain fp32 block scales): 4 bits per weight and 4 bytes per 64-weight block
EMBEDDING_BLOCK = 64


def weight_bytes(shape: ModelShape, mode: str, double_quant: bool, compute_bytes: int,
                 embedding_4bit: bool = False) -> tuple[int, int, int]:
    """(all weights, the 4-bit constants among them, the constants with double quant flipped)."""
    granularity = CUDA_ALLOC_ROUND
    weights = constants = constants_other = 0
    for lin in shape.linears:
        numel = lin.in_features * lin.out_features
        if mode == "4bit":
            weights += packed_4bit_bytes(numel, granularity)
            constants += quant_constants_4bit_bytes(numel, double_quant, granularity)
            constants_other += quant_constants_4bit_bytes(numel, not double_quant, granularity)
        elif mode == "8bit":
            weights += int8_bytes(lin.out_features, lin.in_features, granularity)
        else:
            weights += round_to_allocation(numel * compute_bytes)
        if lin.bias:
            weights += round_to_allocation(lin.out_features * compute_bytes)
    weights += constants
    weights += embedding_table_bytes(shape.embedding_params, compute_bytes, embedding_4bit)
    if shape.lm_head is not None:
        weights += round_to_allocation(shape.lm_head.in_features * shape.lm_head.out_features * compute_bytes)
    weights += shape.other_params * compute_bytes + shape.num_layers * shape.norms_per_layer * granularity // 2
    return weights, constants, constants_other


def embedding_table_bytes(params: int, compute_bytes: int, nf4: bool) -> int:
    if not nf4:
        return round_to_allocation(params * compute_bytes)
    return packed_4bit_bytes(params, CUDA_ALLOC_ROUND) + round_to_allocation(params // EMBEDDING_BLOCK * 4)


def round_to_allocation(nbytes: int) -> int:
    """Bytes as the CUDA caching allocator hands them out (whole blocks)."""
    return -(-nbytes // CUDA_ALLOC_ROUND) * CUDA_ALLOC_ROUND
