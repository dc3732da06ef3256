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

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qlora_studio.core.config import RunConfig
from qlora_studio.core.errors import ModelLoadError
from qlora_studio.core.quant_layout import CUDA_ALLOC_ROUND, int8_bytes, packed_4bit_bytes, quant_constants_4bit_bytes

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


# ---- shapes -----------------------------------------------------------------------------------

@dataclass
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass
class ModelShape:
    """What the estimator needs to know about an architecture."""

    model_type: str
    num_layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    norms_per_layer: int
    linears: list[Linear]  # every linear layer but the output head
    lm_head: Linear | None  # None when tied to the embeddings
    embedding_params: int
    other_params: int  # norms and anything else that is not a linear or embedding weight
    max_position: int | None = None

    @property
    def layer_linears(self) -> list[Linear]:
        """The linears of one decoder layer (layer 0)."""
        marker = ".0."
        return [lin for lin in self.linears if marker in f".{lin.name}." and _layer_index(lin.name) == 0]

    @property
    def total_params(self) -> int:
        params = sum(lin.in_features * lin.out_features + (lin.out_features if lin.bias else 0) for lin in self.linears)
        if self.lm_head is not None:
            params += self.lm_head.in_features * self.lm_head.out_features
        return params + self.embedding_params + self.other_params


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layers", "h", "blocks", "layer") and b.isdigit():
            return int(b)
    return None


def load_model_config(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    """config.json of a local folder (weights not needed), a .gguf file, or a Hub id."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".gguf":
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        if path.is_dir():
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        from qlora_studio.core.config import ModelSettings
        from qlora_studio.core.modeling import resolve_model_source

        source = resolve_model_source(ModelSettings(name_or_path=name_or_path, revision=revision,
                                                    trust_remote_code=trust_remote_code))
        return AutoConfig.from_pretrained(source.path, revision=revision if source.kind == "hub" else None,
                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path: cannot read the config of {name_or_path}: {str(exc).splitlines()[0]}") from None


@lru_cache(maxsize=16)
def _shape_from_json(config_json: str, trust_remote_code: bool) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    model_type = data.pop("model_type")
    config = AutoConfig.for_model(model_type, **data)
    # torch's meta-device context is thread-local (accelerate's init_empty_weights patches
    # nn.Module for the whole process, breaking a model load running on another thread).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    output = model.get_output_embeddings()
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    # Meta-device models are not tied by from_config, so the config decides.
    tied = output is not None and (output.weight is model.get_input_embeddings().weight
                                   or bool(getattr(text_config, "tie_word_embeddings", False)))
    linears, lm_head = [], None
    embedding_params = other_params = 0
    counted: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if module is output:
                if not tied:
                    lm_head = Linear(name, module.in_features, module.out_features, module.bias is not None)
                counted.add(id(module.weight))
                continue
            linears.append(Linear(name, module.in_features, module.out_features, module.bias is not None))
            counted.add(id(module.weight))
            if module.bias is not None:
                counted.add(id(module.bias))
        elif isinstance(module, torch.nn.Embedding):
            embedding_params += module.weight.numel()
            counted.add(id(module.weight))
    for param in model.parameters():
        if id(param) not in counted:
            other_params += param.numel()
            counted.add(id(param))
    text = text_config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    layers = text.num_hidden_layers
    norms = sum(1 for n, m in model.named_modules() if _layer_index(n) == 0 and "norm" in type(m).__name__.lower())
    return ModelShape(
        model_type=model_type,
        num_layers=layers,
        hidden=hidden,
        intermediate=getattr(text, "intermediate_size", 4 * hidden) or 4 * hidden,
        vocab=text.vocab_size,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        norms_per_layer=max(norms, 2),
        linears=linears,
        lm_head=lm_head,
        embedding_params=embedding_params,
        other_params=other_params,
        max_position=getattr(text, "max_position_embeddings", None),
    )


def model_shape(config) -> ModelShape:
    """Shape of a transformers config (instantiated on the meta device, cached)."""
    data = config.to_dict()
    data.pop("quantization_config", None)
    data.pop("transformers_version", None)
    return _shape_from_json(json.dumps(data, sort_keys=True, default=str), False)


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

    targets = _targets(shape, target_modules)
    lora_params = sum(lora_r * (lin.in_features + lin.out_features) + (lin.out_features if use_dora else 0)
                      for lin in shape.linears if lin.leaf in targets)
    lora_bytes = lora_params * 4  # peft keeps adapters in fp32
    gradients = lora_params * 4
    state_bytes = {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 0, "paged_adamw_32bit": 0}[optimizer]
    optimizer_bytes = lora_params * state_bytes
    if optimizer.startswith("paged"):
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


def _targets(shape: ModelShape, spec: str | list[str]) -> set[str]:
    from qlora_studio.core.modeling import ATTENTION_HINTS, MLP_HINTS

    leaves = {lin.leaf for lin in shape.linears}
    if isinstance(spec, list):
        return set(spec) & leaves
    if spec == "all-linear":
        return leaves
    hints = ATTENTION_HINTS if spec == "attention" else MLP_HINTS
    return {lin.leaf for lin in shape.linears if any(h in f".{lin.name}" for h in hints)}


def _round(nbytes: int) -> int:
    return -(-nbytes // CUDA_ALLOC_ROUND) * CUDA_ALLOC_ROUND


def estimate_config(config: RunConfig, seq_len: int | None = None) -> Estimate:
    """The estimate for a run config, on a CUDA GPU (compute dtype auto = bf16)."""
    return _estimate_run(config_shape(config), config, seq_len or config.data.max_length)


def config_shape(config: RunConfig) -> ModelShape:
    return model_shape(load_model_config(config.model.name_or_path, config.model.trust_remote_code,
                                         config.model.revision))


def _estimate_run(shape: ModelShape, config: RunConfig, seq_len: int, **train: Any) -> Estimate:
    """`estimate` with every argument taken from `config`; `train` replaces micro_batch,
    gradient_checkpointing or optimizer (the settings make_it_fit tries)."""
    t = config.train
    settings = {"micro_batch": t.micro_batch_size, "gradient_checkpointing": t.gradient_checkpointing,
                "optimizer": t.optimizer, **train}
    return estimate(
        shape, mode=config.quantization.mode, double_quant=config.quantization.double_quant,
        compute_bytes=4 if config.quantization.compute_dtype == "float32" else 2, seq_len=seq_len,
        lora_r=config.lora.r, target_modules=config.lora.target_modules, lora_dropout=config.lora.dropout,
        use_dora=config.lora.use_dora, model_name=config.model.name_or_path, liger=expects_liger(config), **settings,
    )


def expects_liger(config: RunConfig) -> bool:
    """Whether a GPU run of `config` will use Liger kernels (estimates are for the GPU)."""
    import importlib.util

    setting = config.train.liger_kernels
    return setting == "on" or (setting == "auto" and importlib.util.find_spec("liger_kernel") is not None)


def detect_budget_gb() -> float | None:
    from qlora_studio.core.gpu import list_gpus

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


# ---- make it fit ------------------------------------------------------------------------------

@dataclass
class FitResult:
    budget_gb: float
    config: RunConfig | None
    estimate: Estimate | None
    changes: dict[str, tuple[Any, Any]]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_gb": self.budget_gb,
            "fits": self.config is not None,
            "changes": {k: list(v) for k, v in self.changes.items()},
            "message": self.message,
            "estimate": self.estimate.to_dict(self.budget_gb) if self.estimate else None,
            "config": self.config.model_dump(mode="json") if self.config else None,
        }


def _divisors(n: int) -> list[int]:
    return sorted({d for d in range(1, n + 1) if n % d == 0}, reverse=True)


# Throughput model for choosing among settings that fit: a GPU runs near full speed once a micro-batch
# holds a few thousand tokens, and recomputing activations costs about one extra forward pass.
SATURATION_TOKENS = 4096
CHECKPOINTING_SPEED = 0.75
OPTIMIZER_PREFERENCE = ("adamw", "adamw_8bit", "paged_adamw_8bit")


def relative_speed(micro_batch: int, seq_len: int, gradient_checkpointing: bool) -> float:
    tokens = micro_batch * seq_len
    return tokens / (tokens + SATURATION_TOKENS) * (CHECKPOINTING_SPEED if gradient_checkpointing else 1.0)


def make_it_fit(config: RunConfig, budget_gb: float, seq_len: int | None = None) -> FitResult:
    """The fastest settings that fit `budget_gb`, keeping the effective batch.

    data.max_length is kept whenever anything fits at it (cutting data changes what is learned);
    among the settings that fit, the one `relative_speed` rates fastest wins (ties: the plain
    fused AdamW before 8-bit states before paged ones).
    """
    effective = config.train.micro_batch_size * config.train.grad_accum
    lengths = [config.data.max_length]
    while lengths[-1] // 2 >= 256:
        lengths.append(lengths[-1] // 2)
    shape = config_shape(config)
    for length in lengths:
        tokens = min(length, seq_len or length)
        best = None
        for checkpointing in (False, True):
            for micro in _divisors(effective):
                for rank, optimizer in enumerate(OPTIMIZER_PREFERENCE):
                    e = _estimate_run(shape, config, tokens, micro_batch=micro, gradient_checkpointing=checkpointing,
                                      optimizer=optimizer)
                    if not e.fits(budget_gb):
                        continue
                    score = (relative_speed(micro, tokens, checkpointing), -rank)
                    if best is None or score > best[0]:
                        best = (score, micro, checkpointing, optimizer, e)
                    break  # a later optimizer only saves memory this one did not need
        if best is not None:
            _, micro, checkpointing, optimizer, e = best
            fitted = config.with_overrides({
                "train.micro_batch_size": micro, "train.grad_accum": effective // micro,
                "train.gradient_checkpointing": checkpointing, "train.optimizer": optimizer,
                "data.max_length": length,
            })
            changes = _diff(config, fitted)
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()) or "no change needed"
            message = (f"fits in {budget_gb:g} GiB at {e.total_bytes / GIB:.1f} GiB: {what}; "
                       f"effective batch stays {effective}")
            return FitResult(budget_gb, fitted, e, changes, message)
    message = (f"even micro-batch 1 at {lengths[-1]} tokens with checkpointing does not fit in {budget_gb:g} GiB: "
               "use a smaller model or 4-bit quantization")
    return FitResult(budget_gb, None, None, {}, message)


def _diff(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    keys = ["train.micro_batch_size", "train.grad_accum", "train.gradient_checkpointing", "train.optimizer", "data.max_length"]
    out = {}
    for key in keys:
        section, name = key.split(".")
        a, b = getattr(getattr(before, section), name), getattr(getattr(after, section), name)
        if a != b:
            out[key] = (a, b)
    return out


def format_fit(result: FitResult) -> str:
    if result.config is None:
        return result.message
    lines = [result.message, ""]
    lines.append(format_estimate(result.estimate, result.budget_gb))
    return "\n".join(lines)
