"""Bytes that bitsandbytes allocates for one quantized weight, exactly as it lays them out.

Shared by the load report (what a loaded model holds, and what the other double-quant setting
would have held) and by the memory estimator. bitsandbytes has no function that answers "how
much would this take", so the layout is written down here from `bitsandbytes.functional`:

4-bit (`quantize_4bit`, blocksize 64):
  packed data        numel / 2 bytes (two 4-bit codes a byte)
  code               16 fp32 values (the nf4/fp4 table, one copy per weight)
  without double quant: absmax, one fp32 per block
  with double quant:    absmax as uint8 per block, plus a nested state over the absmax
                        (blocksize 256): fp32 absmax per 256 blocks, a 256-entry fp32 code
                        table, and an fp32 offset.
8-bit (`Int8Params`): int8 data plus one fp32 scale per output row.
"""

from __future__ import annotations

import math

BLOCKSIZE_4BIT = 64
NESTED_BLOCKSIZE = 256
CUDA_ALLOC_ROUND = 512  # the caching allocator hands out multiples of 512 bytes


def _round(nbytes: int, granularity: int) -> int:
    if granularity <= 1:
        return nbytes
    return -(-nbytes // granularity) * granularity


def packed_4bit_bytes(numel: int, granularity: int = 1) -> int:
    return _round(math.ceil(numel / 2), granularity)


def quant_constants_4bit_bytes(numel: int, double_quant: bool, granularity: int = 1) -> int:
    """Bytes of absmax, nested state and code tables for one 4-bit weight of `numel` values."""
    blocks = math.ceil(numel / BLOCKSIZE_4BIT)
    code = _round(16 * 4, granularity)
    if not double_quant:
        return _round(blocks * 4, granularity) + code
    nested_blocks = math.ceil(blocks / NESTED_BLOCKSIZE)
    return (
        _round(blocks, granularity)  # uint8 absmax
        + _round(nested_blocks * 4, granularity)  # fp32 absmax of the absmax
        + _round(256 * 4, granularity)  # nested code table
        + _round(4, granularity)  # offset
        + code
    )


def int8_bytes(out_features: int, in_features: int, granularity: int = 1) -> int:
    return _round(out_features * in_features, granularity) + _round(out_features * 4, granularity)
