"""Memory planner: the peak GPU memory of one QLoRA training step, part by part, from a model's shape.

No library answers "how much VRAM will this QLoRA run take" (accelerate's estimator counts
weights only), so the model is ours:

  weights        every tensor as loaded: 4-bit packed data and quantization constants exactly as
                 bitsandbytes lays them out (`quant_layout`), the unquantized modules (embeddings,
                 lm_head, norms, biases) in the compute dtype; 8-bit and 16-bit modes likewise
  lora           adapter weights (fp32, as peft keeps them), their gradients, optimizer states
  checkpoints    with gradient checkpointing, each layer's input (tokens x hidden, bf16); none on
                 the GPU when they are offloaded to pinned CPU memory (two in flight instead)
  layer          the tensors one decoder layer saves for backward (norm up-casts, LoRA inputs and
                 dropout masks, attention in/out, MLP activations); held for every layer without
                 checkpointing, for the layer being recomputed with it
  attention      what the attention path adds: nothing for varlen/flash kernels; a T x T mask
                 (and its bf16 bias inside the kernel) for sdpa with packed or padded rows
  logits         the lm_head output, its fp32 up-cast, log-softmax and their gradients (about 12
                 bytes per token and vocabulary entry), or only a chunk of them with Liger's fused
                 loss or our chunked loss (training/lean_loss.py)
  overhead       the CUDA context, and the caching allocator's slack (reserved - allocated): small
                 with expandable segments, up to a quarter of the peak without (measured)

A micro-batch is `tokens` long: rows x padded length, or the token budget of a packed batch.
Shapes come from instantiating the model on the meta device (any architecture transformers
knows). The activation and logits coefficients were calibrated against measured peaks on an
H100 (bench/results/estimator-*.json, checked by tests/core/test_memory.py); `plan` maps a run
config onto these arguments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from qlora_studio.core.config.choices import LORA_TARGET_GROUPS, OPTIMIZERS
from qlora_studio.core.model.lora import MASKED_CHUNK_BYTES, select_targets
from qlora_studio.core.model.shape import ModelShape
from qlora_studio.core.planner.host_memory import GIB, ram_needed_sentence
from qlora_studio.core.planner.loss_memory import loss_bytes
from qlora_studio.core.planner.weights import weight_bytes

MIB = 1024**2
BUDGETS_GB = (8, 12, 16, 24, 48, 80)

# sdpa with a mask: the bool mask (1 byte per pair) lives through forward and backward; the
# kernel converts it to a bf16 bias per call (measured about 2.4 bytes per pair at 16k, H100).
MASK_BYTES_PER_PAIR = 1.0
MASK_BIAS_BYTES_PER_PAIR = 2.4
# cuBLAS/cuBLASLt workspaces and small runtime buffers that come through the caching allocator:
# the mean gap left over on the calibration grid, invisible on 7B runs, 10-15% of a 135M run.
RUNTIME_WORKSPACE_BYTES = 64 * MIB
CUDA_CONTEXT_BYTES = 600 * MIB
# Reserved beyond allocated at the peak, as a share of the peak. The default allocator's fixed
# segments fragment: up to 25% on the calibration grid (7B, 2048 x 4: 9.8 GiB allocated, 12.3
# reserved), which is how an 8B run at 32k tokens that the planner said fitted 24 GB died in
# step 2. Expandable segments (our default, devices.configure_cuda_allocator) map pages on demand
# and give them back before failing; the margin below is the most bench/validate_planner.py
# measured where the cap pressed when it was set (24 GB, 32k: 3.56%). Reserved near the cap is
# bounded by it and runs further ahead when pages are free (3.8-5.2% in runs that trained at 16k-64k
# with the lean LoRA forward); what tests/core/test_planner.py checks is that every verdict on the
# validation grid is right and every total covers what its run allocated.
MLP_NAME_HINTS = LORA_TARGET_GROUPS["mlp"]
ALLOCATOR_SLACK_EXPANDABLE = 0.036
ALLOCATOR_SLACK_FIXED_SEGMENTS = 0.26


# ---- the estimate -----------------------------------------------------------------------------

@dataclass
class Estimate:
    model: str
    mode: str
    double_quant: bool
    seq_len: int  # padded row length; for a packed batch its token budget
    micro_batch: int  # rows per micro-batch; 1 for a packed batch
    gradient_checkpointing: bool
    optimizer: str
    params: int
    weights_bytes: int
    quant_constants_bytes: int
    quant_constants_other_setting_bytes: int  # the same layers with double quant flipped
    lora_params: int
    lora_bytes: int
    gradients_bytes: int  # the adapters' gradients alive at the peak
    optimizer_bytes: int
    checkpoint_bytes: int  # layer checkpoints alive at the peak
    layer_activation_bytes: int
    logits_bytes: int
    activations_bytes: int
    peak_allocated_bytes: int
    overhead_bytes: int  # context + slack
    total_bytes: int
    notes: list[str] = field(default_factory=list)  # what the figure leaves out or how it was made
    decisions: list[str] = field(default_factory=list)  # what the run does to fit and be fast, for the user
    warnings: list[str] = field(default_factory=list)  # what needs the user's action
    packed: bool = False
    attention: str = "sdpa"
    offload: bool = False
    loss: str = "full"  # full | liger | chunked
    expandable_segments: bool = True
    mlp_tile: int | None = None
    attention_bytes: int = 0
    context_bytes: int = CUDA_CONTEXT_BYTES
    slack_bytes: int = 0
    host_bytes: int = 0  # pinned CPU memory the offloaded checkpoints take
    embedding_4bit: bool = False

    @property
    def tokens(self) -> int:
        return self.seq_len * self.micro_batch

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
        """The stacked-bar segments, in bytes; they add up to total_bytes."""
        return [
            ("weights", self.weights_bytes),
            ("LoRA + grads + optimizer", self.lora_bytes + self.gradients_bytes + self.optimizer_bytes),
            ("activations", self.activations_bytes - self.logits_bytes),
            ("logits + loss", self.logits_bytes),
            ("CUDA context, workspaces + slack", self.overhead_bytes + RUNTIME_WORKSPACE_BYTES),
        ]

    def assumptions(self) -> str:
        """What the prediction assumes about the batches and the memory levers, in one line."""
        if self.packed:
            batch = f"micro-batches of {self.tokens:,} packed tokens ({self.attention} attention)"
        else:
            batch = f"micro-batches of {self.micro_batch} x {self.seq_len:,} tokens (rows padded to max_length)"
        ckpt = "checkpointing " + ("on" if self.gradient_checkpointing else "off")
        if self.gradient_checkpointing:
            ckpt += ", checkpoints " + ("offloaded to CPU" if self.offload else "on the GPU")
            if self.mlp_tile:
                ckpt += f", MLP in {self.mlp_tile:,}-token tiles"
        loss = {"full": "full logits", "liger": "Liger's fused loss", "chunked": "chunked loss"}[self.loss]
        embeddings = "; input embeddings in NF4" if self.embedding_4bit else ""
        return f"{batch}; {ckpt}; {loss}; optimizer {self.optimizer}{embeddings}"

    def includes(self) -> str:
        """What the total is made of: the part PyTorch allocates (what the VRAM chart's peak measures) and the rest."""
        allocator = "expandable segments" if self.expandable_segments else "fixed segments"
        return (f"PyTorch peak {self.peak_allocated_bytes / GIB:.2f} GiB + CUDA context {self.context_bytes / GIB:.2f} "
                f"+ allocator slack {self.slack_bytes / GIB:.2f} ({allocator})")

    def headline(self) -> str:
        """The one predicted number, as every view shows it."""
        return f"predicted peak {self.total_bytes / GIB:.2f} GiB on the GPU ({self.includes()})"

    def breakdown(self, budget_gb: float | None) -> str:
        """The estimate part by part, as `qlora-studio estimate` prints it, with the verdict for `budget_gb`."""
        def gib(n: int) -> str:
            return f"{n / GIB:7.2f} GiB"

        mode = self.mode if self.mode != "4bit" else f"4-bit{' + double quant' if self.double_quant else ''}"
        lines = [
            f"{self.model}: {self.params / 1e9:.2f}B parameters, {mode}",
            f"assumes {self.assumptions()}",
            "",
            f"  weights            {gib(self.weights_bytes)}   (quantization constants {self.quant_constants_bytes / MIB:.1f} MiB)",
        ]
        if self.mode == "4bit" and self.double_quant_saving_bytes >= 0:
            lines.append(f"  double quant saves {self.double_quant_saving_bytes / MIB:7.1f} MiB"
                         + ("" if self.double_quant else "   (it is off: turn quantization.double_quant on)"))
        elif self.mode == "4bit":
            lines.append(f"  double quant costs {-self.double_quant_saving_bytes / MIB:7.2f} MiB on layers this small")
        lines += [
            f"  LoRA adapters      {gib(self.lora_bytes)}   ({self.lora_params / 1e6:.1f}M trainable parameters)",
            f"  gradients          {gib(self.gradients_bytes)}",
            f"  optimizer states   {gib(self.optimizer_bytes)}",
            f"  activations        {gib(self.activations_bytes - self.logits_bytes)}"
            + (f"   ({self.checkpoint_bytes / GIB:.2f} GiB layer checkpoints on the GPU)" if self.gradient_checkpointing else ""),
            f"  logits + loss      {gib(self.logits_bytes)}",
            f"  CUDA context+slack {gib(self.overhead_bytes + RUNTIME_WORKSPACE_BYTES)}   (workspaces included)",
            f"  total              {gib(self.total_bytes)}   = {self.includes()}",
        ]
        if budget_gb is not None:
            verdict = "fits" if self.fits(budget_gb) else "does NOT fit"
            lines.append(f"\n{verdict} in {budget_gb:g} GiB ({(budget_gb * GIB - self.total_bytes) / GIB:+.2f} GiB headroom)")
            if not self.fits(budget_gb):
                lines.append("try: qlora-studio fit CONFIG --gpu-gb " + f"{budget_gb:g}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"how: {d}" for d in self.decisions]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self, budget_gb: float | None = None) -> dict[str, Any]:
        data = asdict(self)
        data["tokens"] = self.tokens
        data["double_quant_saving_bytes"] = self.double_quant_saving_bytes
        data["total_gb"] = round(self.total_bytes / GIB, 3)
        data["peak_allocated_gb"] = round(self.peak_allocated_bytes / GIB, 3)
        data["assumptions"] = self.assumptions()
        data["includes"] = self.includes()
        data["budget_gb"] = budget_gb
        data["fits"] = self.fits(budget_gb)
        return data


def estimate(shape: ModelShape, *, mode: str = "4bit", double_quant: bool = True, compute_bytes: int = 2,
             seq_len: int = 1024, micro_batch: int = 1, gradient_checkpointing: bool = True, lora_r: int = 16,
             target_modules: str | list[str] = "all-linear", lora_dropout: float = 0.05, use_dora: bool = False,
             optimizer: str = "adamw", model_name: str = "", liger: bool = False, packed: bool = False,
             attention: str = "sdpa", masked: bool = False, offload: bool = False, loss: str | None = None,
             expandable_segments: bool = True, checkpoint_every: int = 1, mlp_tile: int | None = None,
             lean_lora: bool = True, offload_prefetch: bool = False, embedding_4bit: bool = False,
             tiled_norms: bool = False) -> Estimate:
    """Peak memory of one QLoRA training step on one GPU, part by part.

    `packed`: one sequence of seq_len tokens holding several rows (micro_batch is 1); `masked`:
    padded rows of different lengths, so sdpa gets a padding mask (fixed-length rows get none);
    `loss`: full | liger | chunked (default: liger when `liger`, else full); `checkpoint_every`:
    checkpoint only every n-th layer (the others keep their activations); `mlp_tile`: the MLP runs
    over tiles of this many tokens, recomputed in the backward, so only one tile's MLP activations exist;
    `offload_prefetch`: offloaded checkpoints come back a layer early; `embedding_4bit`: the input
    embedding table in NF4 (model/embedding.py); `tiled_norms`: with `mlp_tile`, the norms run in the
    tiles (training/speed.py tile_norms); `lean_lora`: our LoRA forward
    (model/lora.py) on the 4-bit layers, as every run (False: peft's, as bench/calibrate_memory.py measured).
    """
    notes: list[str] = []
    loss = loss or ("liger" if liger else "full")
    weights, constants, constants_other = weight_bytes(shape, mode, double_quant, compute_bytes, embedding_4bit)

    targets = set(select_targets([lin.name for lin in shape.linears], target_modules))
    lora_params = sum(lora_r * (lin.in_features + lin.out_features) + (lin.out_features if use_dora else 0)
                      for lin in shape.linears if lin.leaf in targets)
    lora_bytes = lora_params * 4  # peft keeps adapters in fp32
    gradients = lora_params * 4
    optimizer_bytes = lora_params * OPTIMIZERS[optimizer].state_bytes_per_param
    if OPTIMIZERS[optimizer].paged:
        notes.append("paged optimizer states live in unified memory and move to CPU RAM under pressure: not counted")

    tokens = seq_len * micro_batch
    lean_lora = lean_lora and mode == "4bit" and not use_dora  # peft's own forward on other layers and with DoRA
    attn_per_token, mlp_per_token = _layer_bytes_per_token(shape, targets, lora_r, lora_dropout, compute_bytes, liger,
                                                           lean_lora)
    if (packed or masked) and attention == "sdpa" and shape.kv_heads != shape.heads:
        # with a mask transformers expands grouped key/value heads before sdpa, and they are saved
        attn_per_token += compute_bytes * 2 * (shape.heads - shape.kv_heads) * shape.head_dim
    layer = int(tokens * (attn_per_token + mlp_per_token))
    mlp_tokens = min(tokens, mlp_tile) if mlp_tile and gradient_checkpointing else tokens
    # the layer being recomputed in the backward: with a tiled MLP, one tile of MLP activations
    recomputed = int(tokens * attn_per_token + mlp_tokens * mlp_per_token)
    if lean_lora and any(lin.leaf in targets and _in_mlp(lin) for lin in shape.layer_linears):
        # The lean forward saves the MLP's inputs themselves (counted above); at the down
        # projection two hidden states more are alive than the saved tensors give. Measured 16.7-17.8
        # KB per token on Llama-3.1-8B at 32k-64k tokens (bench/results/planner-validation-*),
        # 2 x 4,096 x 2 = 16.4; and with dropout the masked input is made a chunk at a time.
        recomputed += 2 * mlp_tokens * compute_bytes * shape.hidden
        if lora_dropout > 0:
            recomputed += min(MASKED_CHUNK_BYTES, mlp_tokens * compute_bytes * shape.intermediate)
    elif lora_dropout > 0 and any(lin.leaf in targets and _in_mlp(lin) for lin in shape.layer_linears):
        # Its peak comes as the down projection is recomputed: the MLP's input and the SwiGLU
        # output are still alive in the forward's frames, although only LoRA dropout's copies of
        # them are saved. Measured 37-42 KB per token on Llama-3.1-8B at 16k-64k tokens
        # (bench/memory_peak.py, bench/results/planner-validation-*), 2 x (4,096 + 14,336) = 36.9.
        # (Tiled, the MLP input is counted whole above; a tile's is a view of it.)
        recomputed += mlp_tokens * compute_bytes * ((shape.hidden if mlp_tokens == tokens else 0) + shape.intermediate)
    logits = int(loss_bytes(shape, tokens, loss, compute_bytes))
    hidden_state = tokens * shape.hidden * compute_bytes
    if mlp_tokens < tokens and tiled_norms:
        # the input norm's output (the q, k and v projections' input) exists a tile at a time, and
        # the post-attention norm's, the MLP's input, is made inside the MLP's tiles
        recomputed -= (tokens - mlp_tokens) * shape.hidden * compute_bytes
    elif mlp_tokens < tokens:
        # Tiled, the layer also holds the whole MLP input (the tiles' checkpoints keep views of it,
        # not tile-sized copies). Tensor.split's backward buffers the tiles' input gradients before
        # concatenating them, but that is past the peak: at 64k and 80k tokens (H100, Llama-3.1-8B)
        # counting one more hidden state for it over-predicted by 3-4%.
        recomputed += (tokens - mlp_tokens) * shape.hidden * compute_bytes
    layers_holding_attention = 1 if gradient_checkpointing else shape.num_layers
    attention_bytes = _attention_bytes(shape, attention, packed, masked, seq_len, micro_batch, compute_bytes,
                                       layers_holding_attention)
    host = 0
    if gradient_checkpointing:
        checkpointed = math.ceil(shape.num_layers / max(1, checkpoint_every))
        kept_layers = shape.num_layers - checkpointed
        checkpoints = checkpointed * hidden_state
        if offload:
            # one leaving for the host, one coming back (and with prefetching, the next one on its way)
            host, checkpoints = checkpoints, (3 if offload_prefetch else 2) * hidden_state
            notes.append(f"offloaded checkpoints take {host / GIB:.1f} GiB of pinned CPU memory "
                         f"({ram_needed_sentence(host)})")
        # At the loss all checkpoints are alive; while layer k is recomputed, one layer's
        # activations plus the gradient flowing through it.
        working = max(logits, recomputed + 3 * hidden_state)
        if not offload and checkpointed > 1:
            # Checkpoints on the GPU are freed as the backward passes their layer, while the
            # adapters' gradients fill in: the top layer's recompute holds every checkpoint and
            # almost no gradient, the bottom layer's one checkpoint and every gradient. The peak is
            # the larger end (measured: 16k tokens at r192 came 1.8 GiB under checkpoints + all gradients).
            top = checkpoints + gradients // shape.num_layers
            bottom = hidden_state + gradients
            if top > bottom:
                gradients //= shape.num_layers
                notes.append("peak at the top layer's recompute: every checkpoint, few gradients yet")
            else:
                checkpoints = hidden_state
        activations = checkpoints + kept_layers * layer + working + attention_bytes
    else:
        checkpoints = 0
        activations = shape.num_layers * layer + logits + attention_bytes
    peak = weights + lora_bytes + gradients + optimizer_bytes + activations + RUNTIME_WORKSPACE_BYTES
    slack = int((ALLOCATOR_SLACK_EXPANDABLE if expandable_segments else ALLOCATOR_SLACK_FIXED_SEGMENTS) * peak)
    overhead = CUDA_CONTEXT_BYTES + slack
    warnings = []
    if shape.max_position and seq_len > shape.max_position and not packed:  # packed rows are each <= max_length
        warnings.append(f"{seq_len:,} tokens exceed the model's {shape.max_position:,} positions: lower "
                        "data.max_length")
    return Estimate(
        model=model_name, mode=mode, double_quant=double_quant, seq_len=seq_len, micro_batch=micro_batch,
        gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, params=shape.total_params,
        weights_bytes=weights, quant_constants_bytes=constants, quant_constants_other_setting_bytes=constants_other,
        lora_params=lora_params, lora_bytes=lora_bytes, gradients_bytes=gradients, optimizer_bytes=optimizer_bytes,
        checkpoint_bytes=checkpoints, layer_activation_bytes=layer, logits_bytes=logits, activations_bytes=activations,
        peak_allocated_bytes=peak, overhead_bytes=overhead, total_bytes=peak + overhead, notes=notes, warnings=warnings,
        packed=packed,
        attention=attention, offload=offload and gradient_checkpointing, loss=loss, embedding_4bit=embedding_4bit,
        mlp_tile=mlp_tile if gradient_checkpointing and mlp_tile and tokens > mlp_tile else None,
        expandable_segments=expandable_segments, attention_bytes=attention_bytes, slack_bytes=slack, host_bytes=host,
    )


def _attention_bytes(shape: ModelShape, attention: str, packed: bool, masked: bool, seq_len: int, micro_batch: int,
                     compute_bytes: int, layers: int) -> int:
    """What the attention path holds beyond q, k, v and its output (counted per layer elsewhere)."""
    if attention == "eager":  # softmax weights (saved) and their fp32 working copy, per row
        pairs = micro_batch * shape.heads * seq_len * seq_len
        return int(pairs * (compute_bytes * layers + 4))
    if attention != "sdpa" or not (packed or masked):
        return 0  # varlen / flash kernels and plain causal sdpa (no mask): nothing quadratic
    pairs = micro_batch * seq_len * seq_len
    return int(pairs * (MASK_BYTES_PER_PAIR + MASK_BIAS_BYTES_PER_PAIR * layers))


def _layer_bytes_per_token(shape: ModelShape, targets: set[str], r: int, dropout: float, c: int,
                           liger: bool = False, lean_lora: bool = False) -> tuple[float, float]:
    """Bytes one decoder layer saves for backward, per token (see the module docstring): (the
    norms and attention part, the MLP part). peft's LoRA forward saves each adapted linear's
    dropped-out input; the lean one (`lean_lora`) saves the input itself, once, and a 1-byte mask."""
    # RMSNorm keeps an fp32 copy of its input; Liger's keeps the input as it is (and a scalar per row).
    attn = (c if liger else 4.0) * shape.hidden * shape.norms_per_layer
    mlp = 0.0
    seen_inputs: set[tuple[bool, int]] = set()
    for lin in shape.layer_linears:
        if lin.leaf not in targets:
            continue
        in_mlp = _in_mlp(lin)
        added = c * r  # lora_B's input
        if dropout > 0:
            added += lin.in_features  # the dropout mask
        if dropout > 0 and not lean_lora:
            added += c * lin.in_features  # peft: the dropout output
        elif (in_mlp, lin.in_features) not in seen_inputs:
            added += c * lin.in_features  # shared input, kept once
            seen_inputs.add((in_mlp, lin.in_features))
        if in_mlp:
            mlp += added
        else:
            attn += added
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    # SDPA keeps q, k, v (not expanded for grouped-query attention) and its output. Rotary
    # embeddings keep nothing large: their cos/sin factors need no gradient.
    attn += c * (2 * q + 2 * kv)
    # SiLU input, its output and the up projection; Liger's fused SwiGLU recomputes the SiLU output.
    mlp += c * (2 if liger else 3) * shape.intermediate
    return attn, mlp


def _in_mlp(lin) -> bool:
    return any(h in f".{lin.name}." for h in MLP_NAME_HINTS)
