"""Memory planner: predict a run's peak GPU memory from config.json alone, and make a run fit.

No library answers "how much VRAM will this QLoRA run take" (accelerate's estimator counts
weights only), so the model is ours:

  weights        every tensor as loaded: 4-bit packed data and quantization constants exactly as
                 bitsandbytes lays them out (`quant_layout`), the unquantized modules (embeddings,
                 lm_head, norms, biases) in the compute dtype; 8-bit and 16-bit modes likewise
  lora           adapter weights (fp32, as peft keeps them), their gradients, optimizer states
  checkpoints    with gradient checkpointing, each layer's input (batch x seq x hidden, bf16)
  layer          the tensors one decoder layer saves for backward (norm up-casts, LoRA inputs and
                 dropout masks, rotary copies, attention in/out, MLP activations); held for every
                 layer without checkpointing, for the layer being recomputed with it
  logits         the lm_head output, its fp32 up-cast for the loss, log-softmax and their
                 gradients: batch x seq x vocab x about 12 bytes at the loss
  overhead       the CUDA context and the caching allocator's slack (reserved - allocated)

Shapes come from instantiating the model on the meta device (no weights, any architecture
transformers knows). The activation and logits coefficients were calibrated against measured
peaks on an H100 (bench/results/estimator-*.json, checked by tests/core/test_memory.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qlora_studio.core.config.choices import OPTIMIZERS
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.model.devices import liger_applies
from qlora_studio.core.model.lora import select_targets
from qlora_studio.core.model.quant_layout import CUDA_ALLOC_ROUND, int8_bytes, packed_4bit_bytes, quant_constants_4bit_bytes
from qlora_studio.core.model.shape import ModelShape, builtin_shape_note, load_model_config, model_shape

GIB = 1024**3
MIB = 1024**2
BUDGETS_GB = (8, 12, 16, 24, 48, 80)

LOGITS_BYTES_PER_ELEMENT = 12.0
LIGER_CHUNK_BYTES_PER_ELEMENT = 8.0  # fp32 chunk logits and their gradient
LIGER_INPUT_GRAD_BYTES = 4.0  # fp32 gradient of the hidden states, filled chunk by chunk
# cuBLAS/cuBLASLt workspaces and small runtime buffers that come through the caching allocator:
# the mean gap left over on the calibration grid, invisible on 7B runs, 10-15% of a 135M run.
RUNTIME_WORKSPACE_BYTES = 64 * MIB
CUDA_CONTEXT_BYTES = 600 * MIB
ALLOCATOR_SLACK = 0.08  # reserved exceeds allocated by about this share at the peak


# ---- the estimate -----------------------------------------------------------------------------

@dataclass
class Estimate:
    model: str
    mode: str
    double_quant: bool
    seq_len: int
    micro_batch: int
    gradient_checkpointing: bool
    optimizer: str
    params: int
    weights_bytes: int
    quant_constants_bytes: int
    quant_constants_other_setting_bytes: int  # the same layers with double quant flipped
    lora_params: int
    lora_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    checkpoint_bytes: int
    layer_activation_bytes: int
    logits_bytes: int
    activations_bytes: int
    peak_allocated_bytes: int
    overhead_bytes: int
    total_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def double_quant_saving_bytes(self) -> int:
        if self.mode != "4bit":
            return 0
        with_dq, without = ((self.quant_constants_bytes, self.quant_constants_other_setting_bytes) if self.double_quant
                            else (self.quant_constants_other_setting_bytes, self.quant_constants_bytes))
        return without - with_dq

    def fits(self, budget_gb: float | None) -> bool | None:
        return None if budget_gb is None else self.total_bytes <= budget_gb * GIB

    def parts(self) -> list[tuple[str, int]]:
        """The stacked-bar segments, in bytes."""
        return [
            ("weights", self.weights_bytes),
            ("LoRA + grads + optimizer", self.lora_bytes + self.gradients_bytes + self.optimizer_bytes),
            ("activations", self.checkpoint_bytes + (self.activations_bytes - self.checkpoint_bytes - self.logits_bytes)),
            ("logits + loss", self.logits_bytes),
            ("CUDA context, workspaces + slack", self.overhead_bytes + RUNTIME_WORKSPACE_BYTES),
        ]

    def to_dict(self, budget_gb: float | None = None) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(self)
        data["double_quant_saving_bytes"] = self.double_quant_saving_bytes
        data["total_gb"] = round(self.total_bytes / GIB, 3)
        data["budget_gb"] = budget_gb
        data["fits"] = self.fits(budget_gb)
        return data


def estimate(shape: ModelShape, *, mode: str = "4bit", double_quant: bool = True, compute_bytes: int = 2,
             seq_len: int = 1024, micro_batch: int = 1, gradient_checkpointing: bool = True, lora_r: int = 16,
             target_modules: str | list[str] = "all-linear", lora_dropout: float = 0.05, use_dora: bool = False,
             optimizer: str = "adamw", model_name: str = "", liger: bool = False) -> Estimate:
    """Peak memory of one QLoRA training step on one GPU, part by part."""
    notes: list[str] = []
    granularity = CUDA_ALLOC_ROUND
    weights = constants = constants_other = 0
    for lin in shape.linears:
        numel = lin.in_features * lin.out_features
        if mode == "4bit":
            weights += packed_4bit_bytes(numel, granularity)
            c = quant_constants_4bit_bytes(numel, double_quant, granularity)
            constants += c
            constants_other += quant_constants_4bit_bytes(numel, not double_quant, granularity)
        elif mode == "8bit":
            weights += int8_bytes(lin.out_features, lin.in_features, granularity)
        else:
            weights += _round(numel * compute_bytes)
        if lin.bias:
            weights += _round(lin.out_features * compute_bytes)
    weights += constants
    weights += _round(shape.embedding_params * compute_bytes)
    if shape.lm_head is not None:
        weights += _round(shape.lm_head.in_features * shape.lm_head.out_features * compute_bytes)
    weights += shape.other_params * compute_bytes + shape.num_layers * shape.norms_per_layer * granularity // 2

    targets = set(select_targets([lin.name for lin in shape.linears], target_modules))
    lora_params = sum(lora_r * (lin.in_features + lin.out_features) + (lin.out_features if use_dora else 0)
                      for lin in shape.linears if lin.leaf in targets)
    lora_bytes = lora_params * 4  # peft keeps adapters in fp32
    gradients = lora_params * 4
    optimizer_bytes = lora_params * OPTIMIZERS[optimizer].state_bytes_per_param
    if OPTIMIZERS[optimizer].paged:
        notes.append("paged optimizer states live in unified memory and move to CPU RAM under pressure: not counted")

    tokens = seq_len * micro_batch
    layer = int(tokens * _layer_bytes_per_token(shape, targets, lora_r, lora_dropout, compute_bytes, liger))
    logits = int(_loss_bytes(shape, tokens, liger))
    hidden_state = tokens * shape.hidden * compute_bytes
    if gradient_checkpointing:
        checkpoints = shape.num_layers * hidden_state
        # At the loss all checkpoints are alive; while layer k is recomputed, one layer's
        # activations plus the gradient flowing through it.
        working = max(logits, layer + 3 * hidden_state)
        activations = checkpoints + working
    else:
        checkpoints = 0
        activations = shape.num_layers * layer + logits
    peak = weights + lora_bytes + gradients + optimizer_bytes + activations + RUNTIME_WORKSPACE_BYTES
    overhead = CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * peak)
    if shape.max_position and seq_len > shape.max_position:
        notes.append(f"seq_len {seq_len} exceeds the model's {shape.max_position} positions")
    return Estimate(
        model=model_name, mode=mode, double_quant=double_quant, seq_len=seq_len, micro_batch=micro_batch,
        gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, params=shape.total_params,
        weights_bytes=weights, quant_constants_bytes=constants, quant_constants_other_setting_bytes=constants_other,
        lora_params=lora_params, lora_bytes=lora_bytes, gradients_bytes=gradients, optimizer_bytes=optimizer_bytes,
        checkpoint_bytes=checkpoints, layer_activation_bytes=layer, logits_bytes=logits, activations_bytes=activations,
        peak_allocated_bytes=peak, overhead_bytes=overhead, total_bytes=peak + overhead, notes=notes,
    )


def _loss_bytes(shape: ModelShape, tokens: int, liger: bool) -> float:
    """Memory of lm_head + loss at their peak: full logits, or Liger's chunked fused cross-entropy."""
    if not liger:
        return LOGITS_BYTES_PER_ELEMENT * tokens * shape.vocab
    # Liger's fused linear cross-entropy works on chunks of about tokens / ceil(vocab / hidden) rows,
    # keeping only that chunk's fp32 logits (and their gradient) plus the input's gradient.
    factor = math.ceil(shape.vocab / shape.hidden)
    chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / factor))))
    return LIGER_CHUNK_BYTES_PER_ELEMENT * chunk * shape.vocab + LIGER_INPUT_GRAD_BYTES * tokens * shape.hidden


def _layer_bytes_per_token(shape: ModelShape, targets: set[str], r: int, dropout: float, c: int,
                           liger: bool = False) -> float:
    """Bytes one decoder layer saves for backward, per token (see the module docstring)."""
    # RMSNorm keeps an fp32 copy of its input; Liger's keeps the input as it is (and a scalar per row).
    total = (c if liger else 4.0) * shape.hidden * shape.norms_per_layer
    seen_inputs: set[int] = set()
    for lin in shape.layer_linears:
        if lin.leaf not in targets:
            continue
        if dropout > 0:
            total += (c + 1) * lin.in_features  # dropout output (compute dtype) + its mask
        elif lin.in_features not in seen_inputs:
            total += c * lin.in_features  # shared input, kept once
            seen_inputs.add(lin.in_features)
        total += c * r  # lora_B's input
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    # SDPA keeps q, k, v (not expanded for grouped-query attention) and its output. Rotary
    # embeddings keep nothing large: their cos/sin factors need no gradient.
    total += c * (2 * q + 2 * kv)
    # SiLU input, its output and the up projection; Liger's fused SwiGLU recomputes the SiLU output.
    total += c * (2 if liger else 3) * shape.intermediate
    return total


def _round(nbytes: int) -> int:
    return -(-nbytes // CUDA_ALLOC_ROUND) * CUDA_ALLOC_ROUND


def estimate_config(config: RunConfig, seq_len: int | None = None) -> Estimate:
    """The estimate for a run config, on a CUDA GPU (compute dtype auto = bf16)."""
    model_config = load_model_config(config.model.name_or_path, config.model.trust_remote_code, config.model.revision)
    result = estimate_run(model_shape(model_config), config, seq_len or config.data.max_length)
    if builtin_shape_note(model_config):
        result.notes.append(builtin_shape_note(model_config))
    return result


def config_shape(config: RunConfig) -> ModelShape:
    return model_shape(load_model_config(config.model.name_or_path, config.model.trust_remote_code,
                                         config.model.revision))


def estimate_run(shape: ModelShape, config: RunConfig, seq_len: int, **train: Any) -> Estimate:
    """`estimate` with every argument taken from `config`; `train` replaces micro_batch,
    gradient_checkpointing or optimizer (the settings make_it_fit tries)."""
    t = config.train
    settings = {"micro_batch": t.micro_batch_size, "gradient_checkpointing": t.gradient_checkpointing,
                "optimizer": t.optimizer, **train}
    return estimate(
        shape, mode=config.quantization.mode, double_quant=config.quantization.double_quant,
        compute_bytes=4 if config.quantization.compute_dtype == "float32" else 2, seq_len=seq_len,
        lora_r=config.lora.r, target_modules=config.lora.target_modules, lora_dropout=config.lora.dropout,
        use_dora=config.lora.use_dora, model_name=config.model.name_or_path,
        liger=liger_applies(config.train.liger_kernels, "cuda"), **settings,
    )


def detect_budget_gb() -> float | None:
    from qlora_studio.core.model.devices import list_gpus

    gpus = list_gpus()
    return round(gpus[0].total_gb, 1) if gpus else None


def format_estimate(e: Estimate, budget_gb: float | None) -> str:
    def gib(n: int) -> str:
        return f"{n / GIB:7.2f} GiB"

    mode = e.mode if e.mode != "4bit" else f"4-bit{' + double quant' if e.double_quant else ''}"
    lines = [
        f"{e.model}: {e.params / 1e9:.2f}B parameters, {mode}",
        f"micro-batch {e.micro_batch} x {e.seq_len} tokens, checkpointing {'on' if e.gradient_checkpointing else 'off'}, "
        f"optimizer {e.optimizer}",
        "",
        f"  weights            {gib(e.weights_bytes)}   (quantization constants {e.quant_constants_bytes / MIB:.1f} MiB)",
    ]
    if e.mode == "4bit" and e.double_quant_saving_bytes >= 0:
        lines.append(f"  double quant saves {e.double_quant_saving_bytes / MIB:7.1f} MiB"
                     + ("" if e.double_quant else "   (it is off: turn quantization.double_quant on)"))
    elif e.mode == "4bit":
        lines.append(f"  double quant costs {-e.double_quant_saving_bytes / MIB:7.2f} MiB on layers this small")
    lines += [
        f"  LoRA adapters      {gib(e.lora_bytes)}   ({e.lora_params / 1e6:.1f}M trainable parameters)",
        f"  gradients          {gib(e.gradients_bytes)}",
        f"  optimizer states   {gib(e.optimizer_bytes)}",
        f"  activations        {gib(e.activations_bytes - e.logits_bytes)}"
        + (f"   ({e.checkpoint_bytes / GIB:.2f} GiB layer checkpoints)" if e.gradient_checkpointing else ""),
        f"  logits + loss      {gib(e.logits_bytes)}",
        f"  CUDA context+slack {gib(e.overhead_bytes + RUNTIME_WORKSPACE_BYTES)}   (workspaces included)",
        f"  total              {gib(e.total_bytes)}",
    ]
    if budget_gb is not None:
        verdict = "fits" if e.fits(budget_gb) else "does NOT fit"
        lines.append(f"\n{verdict} in {budget_gb:g} GiB ({(budget_gb * GIB - e.total_bytes) / GIB:+.2f} GiB headroom)")
        if not e.fits(budget_gb):
            lines.append("try: qlora-studio fit CONFIG --gpu-gb " + f"{budget_gb:g}")
    lines += [f"note: {n}" for n in e.notes]
    return "\n".join(lines)
