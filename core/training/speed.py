"""What a run does for speed and memory, decided once after loading and said in the run log.

The rules are the planner's (`planner.plan.assume`); here they meet the loaded model and the GPU:
packing is checked on the model itself (a three-forward probe) and its attention switched to the
packed path, the GPU's size decides `train.offload_checkpoints: auto`, and the chunked loss is
checked against the real output head. `predict` then gives the run's memory prediction under
exactly those choices: the number Setup and `qlora-studio estimate` show for the same config.

Levers still being measured (bench/NOTES-speed.md) are typed config fields, off by default and
written to each run's config.yaml: `train.experimental` (config.schema.ExperimentalSettings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import UserError
from qlora_studio.core.model.patches import RunPatches
from qlora_studio.core.planner.estimate import GIB, Estimate
from qlora_studio.core.planner.plan import Assumptions, assume, estimate_for, model_config_of, run_packing_plan, with_reasons


@dataclass
class SpeedPlan:
    assumptions: Assumptions
    tokens_per_batch: int | None  # the packed budget; None when padded
    budget_bytes: int | None

    @property
    def packed(self) -> bool:
        return self.assumptions.packed

    @property
    def flash_kwargs(self) -> bool:
        return self.packed and self.assumptions.attention in ("varlen", "flash_attention_2", "flash_attention_3")

    def offloads(self, config: RunConfig) -> bool:
        """Whether checkpoints go to CPU memory under `config` (an out-of-memory cut may have set it on)."""
        setting = config.train.offload_checkpoints
        return config.train.gradient_checkpointing and (setting == "on" or (setting == "auto" and self.assumptions.offload))

    def summary(self) -> str:
        """One line for the run log: how batches are made and which levers are pulled."""
        a = self.assumptions
        if "method" in a.reasons:  # DPO, ORPO, KTO, GRPO: what a micro-batch holds, and how TRL scores it
            parts = [f"{a.reasons['method'].rstrip('.')} ({a.attention} attention)", a.reasons["loss"]]
        elif a.packed:
            parts = [f"packed micro-batches of up to {a.tokens:,} tokens ({a.attention} attention)"]
        else:
            parts = [f"padded micro-batches of {a.micro_batch} rows ({a.attention} attention; "
                     f"{a.reasons.get('packing', '')})"]
        if "method" not in a.reasons:
            parts.append({"liger": "Liger's fused loss", "chunked": "chunked loss", "full": "full logits"}[a.loss])
        if a.offload:
            parts.append("checkpoints offloaded to CPU")
        if a.mlp_tile:
            parts.append(f"MLP in {a.mlp_tile:,}-token tiles")
        if a.embedding_4bit:
            parts.append("input embeddings in NF4")
        return "; ".join(parts)

    def micro_batch_tokens(self, config: RunConfig) -> int | None:
        from qlora_studio.core.data.packing import tokens_per_batch

        return tokens_per_batch(config.train, config.data) if self.packed else None


def plan_speed(config: RunConfig, loaded, note: Callable[[str], None], patches: RunPatches,
               fsdp: bool = False) -> SpeedPlan:
    """Decide packing, attention, loss and offload for this run on this device, say so, and apply
    them to the loaded model, every change through `patches` (model/patches.py), the run's one
    context manager that undoes them all on any exit."""
    from qlora_studio.core.model.devices import gpu_budget_bytes
    from qlora_studio.core.model.shape import model_shape

    local = config.with_overrides({"model.name_or_path": loaded.source.path})
    model_config = model_config_of(local)
    shape = model_shape(model_config)
    budget = gpu_budget_bytes(loaded.device, config.train.experimental.card_gb)
    setting = config.data.packing
    static = run_packing_plan(config, model_config)
    packed, reason = _verify_packing(loaded.model, static, setting, fsdp)
    levers = config.train.experimental
    _set_attention(loaded.model, static.attention if packed else _padded_attention(config, note), levers.varlen_rows_only)
    a = assume(local, model_config, shape, budget_bytes=budget, device_type=loaded.device.type, packed=packed,
               fsdp=fsdp, packed_reason=reason)
    if a.loss == "chunked":
        from qlora_studio.core.training.lean_loss import lean_loss_supported

        ok, why = lean_loss_supported(loaded.model)
        if not ok and config.train.chunked_loss == "on":
            raise UserError(f"train.chunked_loss is on, but {why}; set it to auto or off")
        if not ok:
            a.loss, a.reasons["loss"] = ("liger" if a.liger else "full"), why
    if a.embedding_4bit:
        from qlora_studio.core.model.embedding import quantize_input_embeddings

        freed = quantize_input_embeddings(loaded.model)
        note(f"input embedding table in 4-bit NF4 ({freed / GIB:.2f} GiB less): {a.reasons['embeddings']}")
    if static.packed and not packed:  # auto expected to pack and the model said no: worth a warning
        note(f"packing off: {reason}")
    if a.offload:
        note(f"layer checkpoints offloaded to pinned CPU memory (a little slower): {a.reasons['offload']}")
    if a.mlp_tile:
        note(f"MLP run in {a.mlp_tile:,}-token tiles (about 15% slower): {a.reasons['tiled_mlp']}")
    if a.liger:  # here rather than in the Trainer, so the MLP tiling below wraps Liger's MLP
        from transformers.integrations.liger import apply_liger_kernel

        patches.keep_module_names(modeling_module(loaded.model))  # before patching: a failure halfway is undone too
        # TRL's preference and RL trainers make their log-probs with their own output head
        own_loss = a.loss == "chunked" or config.train.method != "sft"
        kernels = {"fused_linear_cross_entropy": False, "cross_entropy": False} if own_loss else {}
        if levers.compile_layers:  # dynamo cannot trace Liger's RMSNorm autograd function; compile fuses these itself
            kernels.update(rms_norm=False, rope=False, swiglu=False)
        apply_liger_kernel(loaded.model, kernels)
    if a.mlp_tile:
        tile_mlps(loaded.model, a.mlp_tile, patches)
    if not levers.peft_lora:  # 6-7% faster on the 8B shape (bench/NOTES-speed.md, lever 11)
        from qlora_studio.core.model.lora import lean_4bit_lora

        lean_4bit_lora(loaded.model, patches)
    if not levers.sync_offload:  # when the arguments offload (arguments._speed_arguments), the copies overlap compute
        from qlora_studio.core.training.offload import use_async_offload

        use_async_offload(loaded.model, patches, prefetch=levers.prefetch_offload)
    if a.mlp_tile and levers.tiled_norms:  # after lean_4bit_lora: it wraps the q, k and v projections' forward
        if model_config.model_type not in NORM_TILING_MODEL_TYPES:
            raise UserError(f"train.experimental.tiled_norms knows where the norms of {', '.join(sorted(NORM_TILING_MODEL_TYPES))} "
                            f"layers sit, not those of {model_config.model_type}; turn it off")
        tile_norms(loaded.model, a.mlp_tile, patches)
        note(f"norms run inside the {a.mlp_tile:,}-token tiles (train.experimental.tiled_norms)")
    if levers.compile_layers:
        compile_decoder_layers(loaded.model, patches)
    return SpeedPlan(a, a.seq_len if packed else None, budget)


def modeling_module(model) -> str:
    """The name of the module that defines the (base) model's class: what Liger patches."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return type(base).__module__


def tile_mlps(model, tokens: int, patches: RunPatches) -> int:
    """Run every decoder layer's MLP over the sequence in tiles of `tokens`, each under non-reentrant
    checkpoint: in the backward only one tile's MLP activations exist. The MLP is per-token, so the
    result is the untiled one; the cost is one more MLP forward. Returns how many MLPs."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    mlps = [layer.mlp for layer in model.modules() if isinstance(layer, GradientCheckpointingLayer)
            and isinstance(getattr(layer, "mlp", None), torch.nn.Module)]
    for mlp in mlps:
        patches.set_attribute(mlp, "forward", _tiled(mlp.forward, tokens))  # wraps Liger's bound forward too
    return len(mlps)


# Decoder layers whose norms sit where tile_norms expects them: input_layernorm before attention,
# post_attention_layernorm before the MLP, each feeding nothing else (Gemma's are placed otherwise)
NORM_TILING_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def tile_norms(model, tokens: int, patches: RunPatches) -> int:
    """Long context, with the MLP tiled (`tile_mlps`): each layer's two RMSNorms move into tiles too.
    The post-attention norm runs inside the MLP's tiles; the input norm inside tiles of the q, k and
    v projections (once for each: the norm is cheap). Neither norm's output then exists for the whole
    sequence in the recomputed layer: two hidden states less, for one more forward of the q, k and
    v projections. Call after the adapters' forward is set (lean_4bit_lora), which it wraps.
    Returns how many layers."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [layer for layer in model.modules() if isinstance(layer, GradientCheckpointingLayer)
              and all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp"))]
    for layer in layers:
        attention, pre, post = layer.self_attn, layer.input_layernorm, layer.post_attention_layernorm
        pre_norm, post_norm, mlp = pre.forward, post.forward, layer.mlp.forward
        for name in ("q_proj", "k_proj", "v_proj"):
            projection = getattr(attention, name)
            forward = projection.forward
            patches.set_attribute(projection, "forward", _tiled(lambda x, f=forward: f(pre_norm(x)), tokens))
        patches.set_attribute(layer.mlp, "forward", _tiled(lambda h, f=mlp: f(post_norm(h)), tokens))
        patches.set_attribute(pre, "forward", _unchanged)
        patches.set_attribute(post, "forward", _unchanged)
    return len(layers)


def _unchanged(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states


def _tiled(forward, tokens: int):
    from torch.utils.checkpoint import checkpoint

    def tiled_forward(hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[-2] <= tokens or not torch.is_grad_enabled():
            return forward(hidden_states)
        tiles = hidden_states.split(tokens, dim=-2)
        return torch.cat([checkpoint(forward, tile, use_reentrant=False) for tile in tiles], dim=-2)

    return tiled_forward


def _verify_packing(model, static, setting: str, fsdp: bool) -> tuple[bool, str]:
    """The static plan, checked on the loaded model: loss kwargs, then the probe (not under FSDP,
    whose ranks do not all hold the weights)."""
    from qlora_studio.core.data.packing import accepts_loss_kwargs, probe_packed_attention

    if not static.packed:
        return False, static.reason
    problem = None
    if not accepts_loss_kwargs(model):
        problem = f"{type(model).__name__}.forward takes no num_items_in_batch"
    elif not fsdp:
        _set_attention(model, static.attention)
        ok, detail = probe_packed_attention(model)
        if not ok:
            problem = f"the model does not keep packed rows apart ({detail})"
    if problem is None:
        return True, static.reason
    if setting == "on":
        raise UserError(f"data.packing is on, but {problem}; set it to auto or off")
    return False, problem


def _padded_attention(config: RunConfig, note: Callable[[str], None]) -> str:
    attn = config.model.attn_implementation
    if attn == "varlen":
        note("model.attn_implementation varlen needs packed batches; padded ones run with sdpa")
    return "sdpa" if attn in ("auto", "varlen") else attn


def _set_attention(model, attention: str, rows_only: bool = False) -> None:
    from qlora_studio.core.model.attention import ROWS_ONLY, VARLEN, register

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    setattr(inner.config, ROWS_ONLY, rows_only)  # the attention function reads it from each layer's config
    if attention == VARLEN:
        register()
    if getattr(inner.config, "_attn_implementation", None) != attention:
        inner.set_attn_implementation(attention)


def compile_decoder_layers(model, patches: RunPatches) -> int:
    """torch.compile every decoder layer in place (bitsandbytes >= 0.50 compiles Linear4bit); the
    layers stay modules, so checkpointing and peft work as before. Returns how many."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        patches.compile(layer, dynamic=True)
    return len(layers)


def predict(config: RunConfig, loaded, plan: SpeedPlan) -> Estimate:
    """The memory prediction for this run as it will train (on CUDA; the planner's one number)."""
    from qlora_studio.core.model.shape import model_shape

    local = config.with_overrides({"model.name_or_path": loaded.source.path})
    shape = model_shape(model_config_of(local))
    a = plan.assumptions
    return with_reasons(estimate_for(shape, local, a), a)
