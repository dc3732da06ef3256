"""A run config -> what the run will do about batches, attention, loss and checkpoints -> its estimate.

The rules here are the run's own: `training/speed.py` applies `assume` to the loaded model (with
the packing probe's verdict and the GPU's size), the window's memory panel and `qlora-studio
estimate` apply it to config.json (with the budget chosen). So Setup, the CLI and the run's
prediction are one number, made under the same stated assumptions:

  batches     packed: micro-batches of train.tokens_per_batch tokens (default micro-batch x
              max_length); padded: micro-batch rows of max_length, the most the config allows
  attention   varlen (no mask) for packed plain causal attention; sdpa otherwise
  loss        Liger's fused loss where Liger runs, our chunked loss where its chunks are smaller
              or Liger is missing (large vocabularies, CUDA), else the full logits
  offload     train.offload_checkpoints auto: on when the run does not fit the budget otherwise
  tiled MLP   train.tiled_mlp auto: on when it still does not fit (long sequences)
  allocator   expandable segments unless the user's PYTORCH_CUDA_ALLOC_CONF says otherwise
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.data.packing import packing_plan, tokens_per_batch
from qlora_studio.core.errors import UserError
from qlora_studio.core.model.devices import expandable_segments_expected, liger_applies
from qlora_studio.core.model.shape import ModelShape, builtin_shape_note, load_model_config, model_shape
from qlora_studio.core.planner.estimate import GIB, Estimate, estimate
from qlora_studio.core.planner.host_memory import PINNED_SHARE, pinned_fits, planned_ram_bytes
from qlora_studio.core.planner.loss_memory import CHUNK_TOKENS_MAX, liger_chunk_tokens
from qlora_studio.core.planner.method_memory import method_batch_sentence, method_loss, method_rows, with_generation

CHUNKED_LOSS_MIN_VOCAB = 32_000
MLP_TILE_TOKENS = 8192
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class Assumptions:
    """How a run will batch and which memory levers it pulls; `reasons` says why, per lever."""

    packed: bool
    attention: str
    seq_len: int  # padded row length, or the packed token budget
    micro_batch: int  # rows per micro-batch, 1 when packed
    offload: bool
    loss: str  # full | liger | chunked
    liger: bool
    reasons: dict[str, str] = field(default_factory=dict)
    mlp_tile: int | None = None  # tokens per MLP tile when the MLP is tiled
    embedding_4bit: bool = False  # the input embedding table in NF4 (model/embedding.py)
    warnings: list[str] = field(default_factory=list)  # a lever refused where the user must act (the estimate's)

    @property
    def tokens(self) -> int:
        return self.seq_len * self.micro_batch


def model_config_of(config: RunConfig):
    return load_model_config(config.model.name_or_path, config.model.trust_remote_code, config.model.revision)


def config_shape(config: RunConfig) -> ModelShape:
    return model_shape(model_config_of(config))


def run_packing_plan(config: RunConfig, model_config):
    """Whether the run packs its rows, from config.json (`speed.plan_speed` checks it on the model)."""
    t, d = config.train, config.data
    plan = packing_plan(d.packing, config.model.attn_implementation, model_config, tokens_per_batch(t, d))
    if t.method != "sft":  # TRL pads its pairs and groups
        plan = dataclasses.replace(plan, packed=False, attention="sdpa" if plan.attention == "varlen" else plan.attention,
                                   reason=f"{t.method.upper()} batches are padded (TRL)")
    return plan


def assume(config: RunConfig, model_config, shape: ModelShape, *, budget_bytes: int | None = None,
           device_type: str = "cuda", packed: bool | None = None, fsdp: bool = False,
           packed_reason: str | None = None) -> Assumptions:
    """The run's batching and levers. `packed`: the verdict of the run's probe (None: from config.json)."""
    t, d = config.train, config.data
    budget_tokens = tokens_per_batch(t, d)
    plan = run_packing_plan(config, model_config)
    if packed is None:
        packed = plan.packed
    reasons = {"packing": packed_reason or plan.reason}
    if packed:
        attention, seq_len, micro = plan.attention, budget_tokens, 1
    else:
        attention = plan.attention if not plan.packed else ("sdpa" if plan.attention == "varlen" else plan.attention)
        seq_len, micro = method_rows(config, d.max_length, t.micro_batch_size)
    liger = liger_applies(t.liger_kernels, device_type)
    if t.method != "sft":
        reasons["method"] = method_batch_sentence(config, seq_len, micro)
    loss, reasons["loss"] = _choose_loss(config, model_config, shape, seq_len * micro, liger, device_type, fsdp)
    a = Assumptions(packed, attention, seq_len, micro, False, loss, liger, reasons)
    # first: it costs no speed (offloading and tiling do)
    a.embedding_4bit, reasons["embeddings"] = _choose_embedding(config, shape, a, budget_bytes, fsdp)
    a.offload, reasons["offload"] = _choose_offload(config, shape, a, budget_bytes, device_type, fsdp)
    tiled, reasons["tiled_mlp"] = _choose_tiling(config, shape, a, budget_bytes)
    a.mlp_tile = MLP_TILE_TOKENS if tiled else None
    return a


def _choose_loss(config: RunConfig, model_config, shape: ModelShape, tokens: int, liger: bool, device_type: str,
                 fsdp: bool) -> tuple[str, str]:
    setting = config.train.chunked_loss
    if config.train.method != "sft":
        return method_loss(config.train.method)
    plain = "liger" if liger else "full"
    if setting == "off":
        return plain, "train.chunked_loss is off"
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    blocked = next((f"the model post-processes its logits ({n})" for n in LOGIT_POSTPROCESSING
                    if getattr(text, n, None) not in (None, 0, 1, 1.0)), None)
    targets = config.lora.target_modules
    if blocked is None and isinstance(targets, list) and "lm_head" in targets:
        blocked = "the output head is a LoRA target"
    if blocked is None and fsdp:
        blocked = "FSDP shards the output head"
    if setting == "on":
        if blocked:
            raise UserError(f"train.chunked_loss is on, but {blocked}; set it to auto or off")
        return "chunked", "train.chunked_loss is on"
    if blocked:
        return plain, blocked
    if device_type != "cuda" or shape.vocab < CHUNKED_LOSS_MIN_VOCAB:
        return plain, f"a {shape.vocab:,}-token vocabulary's logits are small" if device_type == "cuda" else "CPU"
    if liger and liger_chunk_tokens(shape, tokens) <= CHUNK_TOKENS_MAX:
        return "liger", "Liger's fused loss holds only small chunks at this length"
    if liger:
        return "chunked", f"at {tokens:,} tokens Liger's loss chunks outgrow ours"
    return "chunked", "Liger is not running; the full logits would be large"


def embedding_quantizable(config: RunConfig, shape: ModelShape, fsdp: bool = False) -> bool:
    """Whether the input embedding table can go to NF4: single-process 4-bit runs of untied models."""
    return config.quantization.mode == "4bit" and not fsdp and shape.lm_head is not None


def _choose_embedding(config: RunConfig, shape: ModelShape, a: Assumptions, budget_bytes: int | None,
                      fsdp: bool) -> tuple[bool, str]:
    setting = config.quantization.embeddings
    if setting == "off":
        return False, "quantization.embeddings is off"
    if not embedding_quantizable(config, shape, fsdp):
        return False, ("the output head shares the embedding table (tied weights)" if shape.lm_head is None
                       else "only single-process 4-bit runs quantize the embedding table")
    if setting == "on":
        return True, "quantization.embeddings is on"
    if budget_bytes is None:
        return False, "no budget to plan against"
    whole = estimate_for(shape, config, a)
    if whole.total_bytes <= budget_bytes:
        return False, "the embedding table fits in the compute dtype"
    saved = whole.weights_bytes - estimate_for(shape, config, a, embedding_4bit=True).weights_bytes
    return True, f"without it the run would not fit {budget_bytes / GIB:g} GiB ({saved / GIB:.2f} GiB less)"


def _choose_offload(config: RunConfig, shape: ModelShape, a: Assumptions, budget_bytes: int | None, device_type: str,
                    fsdp: bool) -> tuple[bool, str]:
    setting, t = config.train.offload_checkpoints, config.train
    if setting == "off":
        return False, "train.offload_checkpoints is off"
    if not t.gradient_checkpointing:
        return False, "there are no checkpoints to offload (gradient checkpointing is off)"
    if device_type != "cuda" or fsdp:
        return False, "offloading needs one CUDA GPU (FSDP offloads its own way)"
    if setting == "on":
        return True, "train.offload_checkpoints is on"
    if budget_bytes is None:
        return False, "no budget to plan against"
    kept = estimate_for(shape, config, a)
    if kept.total_bytes <= budget_bytes:
        return False, f"the checkpoints fit on the GPU ({kept.total_bytes / GIB:.1f} GiB in {budget_bytes / GIB:g} GiB)"
    moved = estimate_for(shape, config, a, offload=True).host_bytes  # every layer's checkpoint
    ram = planned_ram_bytes(config)
    if not pinned_fits(moved, ram):
        why = (f"the checkpoints ({moved / GIB:.1f} GiB) do not fit beside the rest in {budget_bytes / GIB:g} GiB, "
               f"and pinning them would take more than {PINNED_SHARE:.0%} of the computer's {ram / GIB:.0f} GiB of RAM")
        a.warnings.append(f"offloading was not planned: {why}")
        return False, why
    return True, (f"the checkpoints ({moved / GIB:.1f} GiB) do not fit beside the rest in "
                  f"{budget_bytes / GIB:g} GiB: they go to pinned CPU memory")


def _choose_tiling(config: RunConfig, shape: ModelShape, a: Assumptions, budget_bytes: int | None) -> tuple[bool, str]:
    setting, t = config.train.tiled_mlp, config.train
    if setting == "off":
        return False, "train.tiled_mlp is off"
    if not t.gradient_checkpointing or a.tokens <= MLP_TILE_TOKENS:
        return False, f"micro-batches of {a.tokens:,} tokens fit in one tile" if t.gradient_checkpointing \
            else "the MLP is tiled inside checkpointed layers only (gradient checkpointing is off)"
    if setting == "on":
        return True, "train.tiled_mlp is on"
    if budget_bytes is None:
        return False, "no budget to plan against"
    whole = estimate_for(shape, config, a)
    if whole.total_bytes <= budget_bytes:
        return False, "the MLP's activations fit"
    return True, (f"a {a.tokens:,}-token MLP does not fit {budget_bytes / GIB:g} GiB at once: it runs in "
                  f"{MLP_TILE_TOKENS:,}-token tiles")


def estimate_for(shape: ModelShape, config: RunConfig, a: Assumptions, **settings: Any) -> Estimate:
    """`estimate` under these assumptions; `settings` replaces seq_len, micro_batch,
    gradient_checkpointing, optimizer, offload, mlp_tile or embedding_4bit (what make_it_fit tries)."""
    t, q, lora = config.train, config.quantization, config.lora
    values = {"seq_len": a.seq_len, "micro_batch": a.micro_batch, "gradient_checkpointing": t.gradient_checkpointing,
              "optimizer": t.optimizer, "offload": a.offload, "mlp_tile": a.mlp_tile, "embedding_4bit": a.embedding_4bit,
              "checkpoint_every": t.experimental.every_n_layers, **settings}
    compute_bytes = 4 if q.compute_dtype == "float32" else 2
    return with_generation(estimate(
        shape, mode=q.mode, double_quant=q.double_quant, compute_bytes=compute_bytes,
        lora_r=lora.r, target_modules=lora.target_modules, lora_dropout=lora.dropout, use_dora=lora.use_dora,
        model_name=config.model.name_or_path, liger=a.liger, packed=a.packed, attention=a.attention,
        masked=not a.packed and values["micro_batch"] > 1, loss=a.loss,
        expandable_segments=expandable_segments_expected(), offload_prefetch=t.experimental.prefetch_offload,
        tiled_norms=t.experimental.tiled_norms, **values,
    ), shape, config, compute_bytes)


def estimate_config(config: RunConfig, budget_gb: float | None = None) -> Estimate:
    """The one predicted peak for a run config on a CUDA GPU of `budget_gb` (None: no budget, so
    train.offload_checkpoints auto stays off)."""
    model_config = model_config_of(config)
    shape = model_shape(model_config)
    budget = int(budget_gb * GIB) if budget_gb else None
    a = assume(config, model_config, shape, budget_bytes=budget)
    result = with_reasons(estimate_for(shape, config, a), a)
    ram = planned_ram_bytes(config)
    if result.offload and not pinned_fits(result.host_bytes, ram):
        result.warnings.append(f"the offloaded checkpoints need {result.host_bytes / GIB:.1f} GiB of pinned CPU memory, "
                               f"more than {PINNED_SHARE:.0%} of the computer's {ram / GIB:.0f} GiB of RAM: the "
                               "system may swap or stop; use shorter micro-batches")
    if builtin_shape_note(model_config):
        result.notes.append(builtin_shape_note(model_config))
    return result


def with_reasons(e: Estimate, a: Assumptions) -> Estimate:
    e.decisions = plain_decisions(a)
    e.warnings += [w for w in a.warnings if w not in e.warnings]
    return e


def plain_decisions(a: Assumptions) -> list[str]:
    """What the levers chosen mean for the user, one sentence each (the levers left off say nothing)."""
    r = a.reasons
    if a.packed:
        lines = [f"Rows are packed into {a.seq_len:,}-token micro-batches with no padding; each row attends only "
                 "to itself, so training computes what it would one row at a time."]
    elif "method" in r:
        lines = [r["method"]]
    else:
        lines = [f"Rows are padded into micro-batches of {a.micro_batch} ({r.get('packing', 'packing is off')})."]
    if a.loss == "liger":
        lines.append("The loss runs in Liger's fused kernel, a chunk at a time: the logits never exist whole.")
    elif a.loss == "chunked":
        lines.append("The loss is computed a chunk of tokens at a time: the logits over the whole vocabulary "
                     "never exist at once.")
    if a.embedding_4bit:
        lines.append(f"The input embedding table is kept in 4-bit NF4 as well; its rows are dequantized as they "
                     f"are looked up: {r.get('embeddings', '')}.")
    if a.offload:
        lines.append(f"Layer checkpoints wait in pinned CPU memory instead of on the GPU (a little slower): "
                     f"{r.get('offload', '')}.")
    if a.mlp_tile:
        lines.append(f"The MLP runs {a.mlp_tile:,} tokens at a time so that long rows fit (about 15% slower).")
    return lines


def detect_budget_gb() -> float | None:
    from qlora_studio.core.model.devices import list_gpus

    gpus = list_gpus()
    return round(gpus[0].total_gb, 1) if gpus else None
