"""One adapted 4-bit linear of the 8B shape, forward + backward: GPU time, host time and what it saves.

Compares peft's LoRA forward, the earlier lean forward (dropout module + addmm) and LoraProduct
(model/lora_product.py; its masked input in 64 MiB chunks, and whole), with dropout 0.05, bf16
autocast. GPU time: CUDA events over 8,192 tokens;
host time: the same calls at 16 tokens, where the GPU waits on the host.

  python bench/lora_forward_micro.py          (on the GPU, through the device tool)
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

SHAPES = {"q_proj 4096->4096": (4096, 4096), "gate_proj 4096->14336": (4096, 14336), "down_proj 14336->4096": (14336, 4096)}


def adapted_linear(fan_in: int, fan_out: int):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = bnb.nn.Linear4bit(fan_in, fan_out, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                                          compress_statistics=True)

        def forward(self, x):
            return self.proj(x)

    model = One().to(torch.bfloat16).cuda()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["proj"],
                                             init_lora_weights=False))
    model.train()
    return model, model.base_model.model.proj


def earlier_lean(layer):
    """The lean forward before LoraProduct: dropout module, F.linear, addmm."""
    def forward(x):
        result = layer.base_layer(x)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        hidden = F.linear(layer.lora_dropout["default"](x), a)
        out = torch.addmm(result.reshape(-1, result.shape[-1]), hidden.reshape(-1, hidden.shape[-1]), b.t(),
                          alpha=layer.scaling["default"])
        return out.view(result.shape)
    return forward


def one_chunk(layer):
    """LoraProduct with the masked input made whole, not in chunks."""
    from qlora_studio.core.model.lora_product import LoraProduct

    def forward(x):
        result = layer.base_layer(x)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        with torch.autocast("cuda", enabled=False):
            return LoraProduct.apply(x, result.to(torch.bfloat16), a.to(torch.bfloat16), b.to(torch.bfloat16),
                                     layer.scaling["default"], layer.lora_dropout["default"].p, 2**62)
    return forward


def variants(layer):
    from qlora_studio.core.model.lora import _lean_forward

    peft_forward = type(layer).forward.__get__(layer)
    return {"peft": peft_forward, "earlier lean": earlier_lean(layer), "LoraProduct": _lean_forward(layer),
            "one chunk": one_chunk(layer)}


def saved_bytes(fn, x) -> int:
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autocast("cuda", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    return sum(storages.values())


def step(fn, x, grad):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fn(x)
    out.backward(grad)


def gpu_ms(fn, x, grad, iters=20) -> float:
    for _ in range(3):
        step(fn, x, grad)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        step(fn, x, grad)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def host_us(fn, x, grad, iters=200) -> float:
    for _ in range(5):
        step(fn, x, grad)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step(fn, x, grad)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def main() -> None:
    rows = []
    for label, (fan_in, fan_out) in SHAPES.items():
        model, layer = adapted_linear(fan_in, fan_out)
        for name, fn in variants(layer).items():
            big = torch.randn(1, 8192, fan_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            small = torch.randn(1, 16, fan_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            rows.append((label, name, gpu_ms(fn, big, torch.randn(1, 8192, fan_out, device="cuda", dtype=torch.bfloat16)),
                         host_us(fn, small, torch.randn(1, 16, fan_out, device="cuda", dtype=torch.bfloat16)),
                         saved_bytes(fn, big) / 2**20))
    print(f"{'linear':24} {'forward':14} {'GPU ms (8k)':>11} {'host us':>8} {'saved MiB':>9}")
    for label, name, ms, us, mib in rows:
        print(f"{label:24} {name:14} {ms:11.3f} {us:8.0f} {mib:9.1f}")


if __name__ == "__main__":
    main()
