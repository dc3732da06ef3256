"""Where LoRA goes and how it is configured: the one target-module selector (shared by the loader
and the memory planner) and the one place a peft `LoraConfig` is made."""

from __future__ import annotations

from typing import Any

from qlora_studio.core.config.choices import LORA_TARGET_GROUPS
from qlora_studio.core.config.schema import LoraSettings
from qlora_studio.core.errors import ModelLoadError
from qlora_studio.core.model.patches import RunPatches


def select_targets(linear_names: list[str], spec: str | list[str]) -> list[str]:
    """Leaf module names (q_proj, down_proj, ...) that get adapters, from the full names of a
    model's linear layers (output head excluded) and `lora.target_modules`."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
    if isinstance(spec, list):
        unknown = [m for m in spec if m not in leaves]
        if unknown:
            raise ModelLoadError(
                f"lora.target_modules: {', '.join(unknown)} not in this model; its linear layers are {', '.join(leaves)}"
            )
        return list(spec)
    hints = LORA_TARGET_GROUPS[spec]
    if not hints:
        return leaves
    chosen = sorted({n.rsplit(".", 1)[-1] for n in linear_names if any(h in f".{n}" for h in hints)})
    if not chosen:
        raise ModelLoadError(
            f"lora.target_modules: found no {spec} layers in this model; list them by name from: {', '.join(leaves)}"
        )
    return chosen


def linear_module_names(model) -> list[str]:
    """Full names of the linear layers that can carry LoRA (the output head excluded)."""
    import bitsandbytes as bnb
    import torch

    linear_types = (torch.nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules()
            if isinstance(module, linear_types) and module is not output and not name.endswith("lm_head")]


def build_lora_config(settings: LoraSettings, target_modules: list[str]):
    """The one place a `LoraConfig` is made."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules,
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model, settings: LoraSettings) -> tuple[Any, list[str]]:
    from peft import get_peft_model

    targets = select_targets(linear_module_names(model), settings.target_modules)
    return get_peft_model(model, build_lora_config(settings, targets)), targets


# The lean forward's masked input (dropout applied) is made this many bytes at a time: the down
# projection's input at 8k tokens of an 8B model is 224 MiB, and its recompute is where a
# checkpointed step peaks.
MASKED_CHUNK_BYTES = 64 * 1024**2


def lean_4bit_lora(model, patches: RunPatches) -> int:
    """Give every peft LoRA layer over a bitsandbytes 4-bit linear a leaner forward; returns how many.

    peft's forward clones the base output ("defensively", for old torch), then materializes
    B(A(x)), scales it and adds it: four more passes over the layer's output, in the forward and
    again in the checkpointed recompute. Here `LoraProduct` adds the adapter's product into the
    base output by one GEMM (`addmm_` with alpha = scaling), and saves the layer's input and a
    1-byte dropout mask instead of a dropped-out copy of the input. Same dropout per linear, same
    adapters, same gradients (the sum is rounded once instead of three times). Anything unusual (DoRA and other variants, several or disabled adapters, merged
    weights, adapter_names, an adapter bias, adapters in another dtype than the input without
    autocast) takes peft's own forward."""
    from peft.tuners.lora.bnb import Linear4bit

    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for layer in layers:
        patches.set_attribute(layer, "forward", _lean_forward(layer))
    return len(layers)


def _lean_forward(layer):
    import torch

    from qlora_studio.core.model.lora_product import LoraProduct

    peft_forward = type(layer).forward.__get__(layer)

    def forward(x, *args, **kwargs):
        active = layer.active_adapters
        name = active[0] if len(active) == 1 else None
        if (kwargs or layer.disable_adapters or layer.merged or name not in layer.lora_A
                or name in layer.lora_variant or layer.lora_B[name].bias is not None):
            return peft_forward(x, *args, **kwargs)
        result = layer.base_layer(x, *args)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # the adapter runs in the autocast dtype, as F.linear would
            dtype = torch.get_autocast_dtype(device)
        elif x.dtype == result.dtype == layer.lora_A[name].weight.dtype:
            dtype = x.dtype
        else:  # peft's rule without autocast: the adapter in its own dtype, the sum in the base output's
            return peft_forward(x, *args, **kwargs)
        dropout = layer.lora_dropout[name]
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        return LoraProduct.apply(x.to(dtype), result.to(dtype).contiguous(), layer.lora_A[name].weight,
                                 layer.lora_B[name].weight, layer.scaling[name], p, MASKED_CHUNK_BYTES)

    return forward


def count_parameters(model) -> tuple[int, int]:
    """(trainable, base): the adapters' parameters, and the model's own, each tensor counted once
    (tied embeddings are one tensor) and 4-bit weights by their real element count: the number
    Setup shows for the model (ModelShape.total_params)."""
    import bitsandbytes as bnb

    trainable = total = 0
    seen: set[int] = set()
    for module in model.modules():
        for _, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            count = param.numel()
            if isinstance(param, bnb.nn.Params4bit) and isinstance(module, bnb.nn.Linear4bit):
                count = module.in_features * module.out_features
            if param.requires_grad:
                trainable += count
            else:
                total += count
    return trainable, total


def adapter_digest(model) -> str:
    """sha256 of the trainable (adapter) weights: the same on every rank of a data-parallel run."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
