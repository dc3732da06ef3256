"""Layer checkpoints held in pinned CPU memory, copied off the GPU without stalling it.

transformers' `offload=True` wraps each checkpoint in torch's `save_on_cpu`, whose copy to the
host is a blocking `copy_`: every layer of the forward waits for its checkpoint to reach the host
and the GPU then idles while the host launches the next layer (on an H100, 13-15% slower on the
8B shape). Here the copy runs on a side stream, overlapped with the next layer's compute; the
tensor's block is kept from reuse until the copy is done (`record_stream`). The copy back in the
backward is ordered on the compute stream after that copy's event, with no host sync either.

By default a layer's checkpoint comes back when its recompute needs it, so the compute stream
waits for that copy (~2.5 ms for the 8B shape's 64 MiB at 8k tokens, 32 times a step). With
`prefetch` (train.experimental.prefetch_offload, being measured: bench/NOTES-speed.md, lever 18)
taking a checkpoint back also starts the copy of the one packed before it, on the side stream,
so it is on the GPU by the time the layer below is recomputed: one more hidden state on the GPU
(the planner counts three instead of two), no wait.

torch has no such hook (save_on_cpu is the blocking one), hence this small one of our own.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from qlora_studio.core.model.patches import RunPatches

SMALL_BYTES = 1 << 20  # rotary tables, row boundaries: shared by every layer, not worth moving


@dataclass(eq=False)
class _OnHost:
    host: torch.Tensor
    copied: torch.cuda.Event
    device: torch.device
    previous: Any = None  # a weak reference to the checkpoint packed before this one (prefetching)
    fetched: torch.Tensor | None = None  # its copy back, started early on the side stream
    arrived: torch.cuda.Event | None = None
    taken: bool = False


@functools.lru_cache(maxsize=None)
def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


class Offloader:
    """The pack and unpack hooks of one run's offloaded checkpoints; `prefetch` chains them in the
    order they were packed, so taking one back starts the copy of the one before it."""

    def __init__(self, prefetch: bool = False):
        self.prefetch = prefetch
        self._last: weakref.ref | None = None

    def pack(self, tensor: torch.Tensor):
        if not tensor.is_cuda or tensor.numel() * tensor.element_size() < SMALL_BYTES:
            return tensor
        compute = torch.cuda.current_stream(tensor.device)
        stream = _copy_stream(tensor.device)
        stream.wait_stream(compute)  # the tensor is written before it is copied
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=True)
        with torch.cuda.stream(stream):
            host.copy_(tensor, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        tensor.record_stream(stream)  # its memory is not handed out again before the copy ends
        packed = _OnHost(host, copied, tensor.device)
        if self.prefetch:  # weak: a finished backward's checkpoints must not be kept alive by the next forward's
            packed.previous, self._last = self._last, weakref.ref(packed)
        return packed

    def unpack(self, packed):
        if not isinstance(packed, _OnHost):
            return packed
        compute = torch.cuda.current_stream(packed.device)
        if packed.fetched is not None:
            compute.wait_event(packed.arrived)
            tensor, packed.fetched = packed.fetched, None
        else:
            compute.wait_event(packed.copied)
            # pinned source, compute stream: ordered before the kernels that read it; torch's host
            # allocator keeps the pinned block until the copy has run
            tensor = packed.host.to(packed.device, non_blocking=True)
        packed.taken = True
        below = packed.previous() if packed.previous is not None else None
        if below is not None and not below.taken and below.fetched is None:
            # allocated from the compute stream's memory (no second pool of hidden states), written by the
            # side stream once the compute stream has passed this point, so the block is free to write
            fetched = torch.empty(below.host.size(), dtype=below.host.dtype, device=below.device)
            stream = _copy_stream(below.device)
            stream.wait_stream(compute)
            with torch.cuda.stream(stream):
                fetched.copy_(below.host, non_blocking=True)
                below.arrived = torch.cuda.Event()
                below.arrived.record(stream)
            fetched.record_stream(stream)  # dropped unused (a failed backward), it is not reused mid-copy
            below.fetched = fetched
        return tensor


class offloaded_checkpoints(torch.autograd.graph.saved_tensors_hooks):
    """Context for one checkpointed call: what it saves goes to pinned host memory (CUDA only)."""

    def __init__(self, offloader: Offloader | None = None):
        offloader = offloader or Offloader()
        super().__init__(offloader.pack, offloader.unpack)


def offloading_checkpoint(checkpoint_function, offloader: Offloader | None = None):
    """`checkpoint_function` (torch's checkpoint with its kwargs bound) under `offloaded_checkpoints`."""

    @functools.wraps(checkpoint_function)
    def call(function, *args, **kwargs):
        with offloaded_checkpoints(offloader):
            return checkpoint_function(function, *args, **kwargs)

    return call


def use_async_offload(model, patches: RunPatches, prefetch: bool = False) -> None:
    """Make `model.activation_checkpointing_enable(..., offload=True)` (what the Trainer calls when
    the run offloads) use these hooks instead of transformers' blocking ones."""
    enable = model.activation_checkpointing_enable
    offloader = Offloader(prefetch)

    def activation_checkpointing_enable(activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False):
        enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs, every_n_layers=every_n_layers,
               offload=False)
        if not offload or not torch.cuda.is_available():
            return
        for module in model.modules():
            if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
                module._gradient_checkpointing_func = offloading_checkpoint(module._gradient_checkpointing_func, offloader)

    patches.set_attribute(model, "activation_checkpointing_enable", activation_checkpointing_enable)
