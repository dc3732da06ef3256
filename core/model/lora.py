"""Where LoRA goes and how it is configured: the one target-module selector (shared by the loader
and the memory planner) and the one place a peft `LoraConfig` is made."""

from __future__ import annotations

from typing import Any

from qlora_studio.core.config.choices import LORA_TARGET_GROUPS
from qlora_studio.core.config.schema import LoraSettings
from qlora_studio.core.errors import ModelLoadError


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


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting 4-bit weights by their real element count."""
    import bitsandbytes as bnb

    trainable = total = 0
    for module in model.modules():
        for _, param in module.named_parameters(recurse=False):
            count = param.numel()
            if isinstance(param, bnb.nn.Params4bit) and isinstance(module, bnb.nn.Linear4bit):
                count = module.in_features * module.out_features
            total += count
            if param.requires_grad:
                trainable += count
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
