"""The run config's schema: typed, documented, validated sections, and override/validation rules.

The section and key names are the user-facing contract (README, presets, tests). Every field's
docstring is its documentation: `qlora-studio init` writes them as comments and the window shows
them as tooltips. Closed sets of values come from the tables in `choices`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from qlora_studio.core.atomic import write_text_atomic
from qlora_studio.core.config.choices import CHAT_TEMPLATES, LORA_TARGET_GROUPS, OPTIMIZERS, REPORTERS
from qlora_studio.core.config.methods import METHOD_FORMATS, DpoSettings, GrpoSettings, KtoSettings, Method, OrpoSettings
from qlora_studio.core.errors import ConfigError

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SAMPLE_PREFIX = "sample:"
DEMO_DATA = f"{SAMPLE_PREFIX}dates"

OptimizerName = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]
ChatTemplateName = Literal[("auto", *CHAT_TEMPLATES)]  # type: ignore[valid-type]
ReporterName = Literal[tuple(REPORTERS)]  # type: ignore[valid-type]


class _Section(BaseModel):
    # inf/nan are never meaningful settings (a learning rate of .inf would only show up as NaN losses)
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)


def _switch(value: Any) -> Any:
    """YAML reads a bare `on` / `off` as true / false: for auto|on|off keys they mean "on" / "off"."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ModelSettings(_Section):
    name_or_path: str = DEMO_MODEL_ID
    """Hub id (org/name), a local model folder, or a .gguf file."""
    revision: str | None = None
    """Hub branch, tag or commit to load; null for the default branch."""
    trust_remote_code: bool = False
    """Run modeling code shipped with the model. Only for models you trust."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention", "varlen"] = "auto"
    """Attention kernel: auto = varlen for packed batches of plain causal attention (torch's variable-length flash kernel on CUDA, one causal SDPA per row elsewhere; no mask), SDPA otherwise. flash_attention_2 needs the flash-attn package; flex_attention compiles its kernel (tens of seconds) on first use."""
    random_init: bool = False
    """Random weights of the model's shape (only config.json and the tokenizer are read): rehearse memory and speed before downloading weights. What it learns is meaningless."""


class QuantizationSettings(_Section):
    mode: Literal["4bit", "8bit", "none"] = "4bit"
    """4bit: QLoRA (bitsandbytes NF4/FP4); 8bit: LLM.int8 weights; none: weights in compute_dtype."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: nf4 (normal float, best for normally distributed weights) or fp4."""
    double_quant: bool = True
    """Quantize the 4-bit block scales too (about 0.37 bits per weight saved)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Dtype of the matmuls: auto = bfloat16 where the GPU supports it, else float16; float32 on CPU."""
    embeddings: Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)] = "auto"
    """Keep the input embedding table in 4-bit NF4 too (4-bit runs, models whose output head is a separate matrix): 0.7 GiB less for an 8B model, rows dequantized as they are looked up, no slower. auto = on when the run does not fit the GPU otherwise."""


class LoraSettings(_Section):
    r: int = Field(16, ge=1, le=4096)
    """LoRA rank: adapter capacity. 8-64 is typical."""
    alpha: float = Field(32, gt=0)
    """LoRA scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input; 0 (peft's, LLaMA-Factory's and Unsloth's default) skips it. 0.05-0.1 may help on small datasets; on an 8B model it costs about 6% of each step."""
    target_modules: list[str] | str = "all-linear"
    """Which linear layers get adapters: all-linear | attention | mlp | a list of module names."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): often a little better, slower per step."""
    use_rslora: bool = False
    """Rank-stabilized scaling (alpha / sqrt(r)), helps at high ranks."""

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str) and value not in LORA_TARGET_GROUPS:
            raise ValueError(f"must be one of {', '.join(LORA_TARGET_GROUPS)} or a list of module names")
        if isinstance(value, list) and not value:
            raise ValueError("the list of module names is empty")
        return value


class DataSettings(_Section):
    path: str = DEMO_DATA
    """A file (.jsonl .json .csv .tsv .parquet .txt), a folder of them, a save_to_disk folder, a Hub dataset id, or sample:<name>."""
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text", "preference", "unpaired",
                    "prompt"] = "auto"
    """Row format; auto detects it from the columns. SFT: alpaca, sharegpt, messages, prompt_completion, text; DPO/ORPO: preference (prompt / chosen / rejected); KTO: unpaired (prompt / completion / label) or preference; GRPO: prompt (a prompt and an optional reference answer)."""
    subset: str | None = None
    """Hub dataset configuration (subset) name."""
    split: str = "train"
    """Split to read from a Hub dataset or a save_to_disk DatasetDict."""
    field: str | None = None
    """For a .json file holding an object: the key of the list of rows (found automatically when unique)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Map the format's column names to yours, e.g. {prompt: question, completion: answer}."""
    chat_template: ChatTemplateName = "auto"
    """auto uses the tokenizer's own template (chatml when it has none); or a named one (chatml, llama3, mistral, ...)."""
    system_prompt: str | None = None
    """System message added to conversations that have none."""
    train_on: Literal["assistant", "all"] = "assistant"
    """Which tokens carry loss: assistant replies only, or everything."""
    max_length: int = Field(1024, ge=8)
    """Longest example in tokens."""
    overlength: Literal["truncate", "drop"] = "truncate"
    """What happens to longer examples: cut at max_length, or leave them out."""
    validation_split: float = Field(0.05, ge=0, lt=1)
    """Fraction of rows held out for evaluation (deterministic by seed)."""
    validation_path: str | None = None
    """A separate validation file; overrides validation_split."""
    skip_bad_rows: bool = False
    """Skip rows that do not fit the format (and report how many) instead of stopping."""
    text_split: Literal["paragraph", "line", "document"] = "paragraph"
    """For .txt files: one example per paragraph, per line, or per file."""
    num_proc: int | None = Field(None, ge=1)
    """Processes for tokenizing; null picks by dataset size."""
    packing: Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)] = "auto"
    """Lay rows end to end in micro-batches of train.tokens_per_batch tokens instead of padding each batch to its longest row; every row still attends to itself only, so losses are those of unpacked training. auto = on where the model's attention keeps packed rows apart cheaply (checked on the loaded model); an epoch then has fewer, fuller optimizer steps."""


class ExperimentalSettings(_Section):
    """Levers still being measured (bench/NOTES-speed.md): off by default, kept in each run's config.yaml."""

    compile_layers: bool = False
    """torch.compile each decoder layer (Liger then fuses the loss only)."""
    every_n_layers: int = Field(1, ge=1)
    """Checkpoint only every N-th decoder layer: less recompute, more memory (the planner counts it)."""
    group_by_length: bool = False
    """With packing off: sample rows of similar length together, for less padding."""
    sequential: bool = False
    """Keep the data's order instead of shuffling (benchmarks: every arm sees the same rows)."""
    peft_lora: bool = False
    """peft's own LoRA forward instead of ours (for comparison)."""
    sync_offload: bool = False
    """transformers' blocking checkpoint offload instead of ours (for comparison)."""
    sync_logs: bool = False
    """Read each step's numbers at its own end, as transformers does, instead of a step late (for comparison)."""
    varlen_rows_only: bool = False
    """Packed attention one row at a time, never torch's one-launch varlen kernel (for comparison)."""
    prefetch_offload: bool = False
    """With offloaded checkpoints: bring each one back a layer early, overlapped with compute (one more hidden state on the GPU)."""
    tiled_norms: bool = False
    """With the MLP tiled (long rows): each layer's norms run inside tiles too, so neither norm's output exists for the whole sequence (two hidden states less; the q, k and v projections run once more)."""
    reentrant_checkpoints: bool = False
    """torch's reentrant activation checkpoints: the first forward of each layer runs without autograd (less host work per step)."""
    automatic_gc: bool = False
    """Python's garbage collector on its own schedule during training (full collections mid-step) instead of one young collection per step (for comparison)."""
    stock_loop_walks: bool = False
    """transformers' per-step walks over every module and parameter (train mode, zero_grad, clip, FLOP count) instead of lists taken once (for comparison)."""
    card_gb: float | None = Field(None, gt=0)
    """Train as on a card of this many GiB: the process's CUDA memory is capped there and the planner plans for it (rehearsals on a bigger GPU)."""
    host_ram_gb: float | None = Field(None, gt=0)
    """Plan as on a computer with this much RAM (offloaded checkpoints are pinned: at most half of it); empty = this computer's."""


class TrainSettings(_Section):
    method: Method = "sft"
    """sft: learn the answers in the data; dpo / orpo: prefer the chosen answer of each pair; kto: answers marked good or bad; grpo: learn from rewards on sampled answers (train.grpo.rewards)."""
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    """DPO's settings (read when method is dpo)."""
    orpo: OrpoSettings = Field(default_factory=OrpoSettings)
    """ORPO's settings (read when method is orpo)."""
    kto: KtoSettings = Field(default_factory=KtoSettings)
    """KTO's settings (read when method is kto)."""
    grpo: GrpoSettings = Field(default_factory=GrpoSettings)
    """GRPO's settings (read when method is grpo)."""
    epochs: float = Field(1, gt=0)
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""
    micro_batch_size: int = Field(4, ge=1)
    """Examples per forward pass."""
    grad_accum: int = Field(4, ge=1)
    """Micro-batches per optimizer step; effective batch = micro_batch_size x grad_accum."""
    tokens_per_batch: int | None = Field(None, ge=8)
    """With packing: tokens per micro-batch (at least data.max_length); null = micro_batch_size x max_length. Smaller keeps more optimizer steps per epoch (micro_batch_size x mean row length keeps today's)."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Fraction of steps spent warming the learning rate up."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay on the adapter weights."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm; 0 turns clipping off."""
    optimizer: OptimizerName = "adamw"
    """adamw (fused on CUDA) or bitsandbytes' 8-bit / paged variants."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: far less memory, about 30% slower."""
    offload_checkpoints: Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)] = "auto"
    """Keep the layer checkpoints of gradient checkpointing in pinned CPU memory instead of on the GPU (long context on small cards; a few percent slower on 7B-class models, more on small ones). auto = on when the run does not fit the GPU otherwise. CUDA only."""
    tiled_mlp: Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)] = "auto"
    """Run each layer's MLP over the sequence in tiles of 8,192 tokens, recomputed in the backward pass, so a long sequence's MLP activations never exist at once (about 15% slower). auto = on when the run does not fit the GPU otherwise, after offloading checkpoints."""
    chunked_loss: Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)] = "auto"
    """Compute the loss in chunks, only where labels are trained, so the full tokens x vocabulary logits never exist. auto = on a CUDA GPU for vocabularies of 32k+ tokens, unless Liger's fused loss holds less."""
    liger_kernels: Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)] = "auto"
    """Liger's fused Triton kernels (RMSNorm, SwiGLU, RoPE, and a cross-entropy that never holds the full logits): auto = on with a CUDA GPU and the liger-kernel package."""
    save_every_steps: int = Field(100, ge=1)
    """Write a resumable checkpoint every N optimizer steps."""
    eval_every_steps: int | None = Field(None, ge=1)
    """Evaluate on the validation rows every N steps; null = at each checkpoint."""
    keep_checkpoints: int | None = Field(3, ge=1)
    """Keep only the newest N checkpoints; null keeps all."""
    seed: int = 42
    """Seed for data order, the validation split and adapter init."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto trains on the GPU when there is one."""
    on_oom: Literal["adapt", "stop"] = "adapt"
    """On CUDA out-of-memory: adapt (halve micro-batch, double grad_accum, go on) or stop with a checkpoint."""
    oom_last_resort: Literal["ask", "shrink", "stop"] = "ask"
    """At micro-batch 1: ask (the window asks; the CLI stops), shrink (turn on checkpointing, then halve max_length), or stop."""
    on_nan: Literal["stop", "skip_step"] = "stop"
    """When the loss or the gradients turn NaN/Inf: stop (the last good checkpoint stays), or skip_step (that batch's update is dropped; 3 bad steps in a row stop anyway)."""
    report_to: list[ReporterName] = Field(default_factory=list)
    """Also send the metrics (loss, learning rate, real tokens/s, VRAM) to tensorboard (<run folder>/tensorboard) and/or wandb (offline without network or login; `wandb sync` uploads later). Needs pip install "qlora-studio[tensorboard]" or "[wandb]"."""

    @field_validator("report_to")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))
    probe_max_new_tokens: int = Field(48, ge=1, le=2048)
    """Longest answer to a probe prompt, in tokens (probes are answered greedily at each checkpoint)."""
    experimental: ExperimentalSettings = Field(default_factory=ExperimentalSettings)
    """Levers still being measured; every one off by default."""


class DistributedSettings(_Section):
    num_processes: int = Field(1, ge=1)
    """Data-parallel processes (one per GPU; gloo on CPU)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: one 4-bit model per GPU; fsdp: shard the 4-bit model across GPUs (FSDP-QLoRA)."""
    gpus: list[int] | None = None
    """GPU indices to use; null = the first num_processes."""


class RunConfig(_Section):
    model: ModelSettings = Field(default_factory=ModelSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)
    probes: list[str] = Field(default_factory=list)
    """Taste test: prompts the model answers before step 1 (the base) and at every checkpoint, into probes.jsonl and the window's grid; [] turns it off."""
    output_dir: str | None = None
    """Folder that holds one folder per run; null = the default runs folder, shared by the window and the CLI (`qlora-studio env` shows it)."""
    run_name: str | None = None
    """Name of the run folder; null = <date>-<time>-<model>."""

    @model_validator(mode="after")
    def _check_combinations(self) -> "RunConfig":
        if self.distributed.strategy == "fsdp" and self.quantization.mode == "8bit":
            raise ValueError("distributed.strategy fsdp works with quantization.mode 4bit or none, not 8bit")
        if self.train.tokens_per_batch is not None and self.train.tokens_per_batch < self.data.max_length:
            raise ValueError(f"train.tokens_per_batch ({self.train.tokens_per_batch}) must hold one row of "
                             f"data.max_length ({self.data.max_length}) tokens; raise it or set it to null")
        method = self.train.method
        if method != "sft" and self.distributed.num_processes > 1:
            raise ValueError(f"train.method {method} trains on one GPU; set distributed.num_processes to 1")
        if self.data.format != "auto" and self.data.format not in METHOD_FORMATS[method]:
            raise ValueError(f"data.format {self.data.format} does not fit train.method {method}; use auto or one of "
                             f"{', '.join(METHOD_FORMATS[method])}")
        rows = self.train.micro_batch_size * self.train.grad_accum
        if method == "grpo" and rows % self.train.grpo.num_generations:
            raise ValueError(f"train.grpo.num_generations ({self.train.grpo.num_generations}) must divide "
                             f"micro_batch_size x grad_accum ({rows}): each prompt's answers are compared in one step")
        return self

    @property
    def effective_batch_size(self) -> int:
        return self.train.micro_batch_size * self.train.grad_accum * self.distributed.num_processes

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_yaml())  # a kill never leaves half a config behind

    def with_overrides(self, overrides: list[str] | dict[str, Any], source: str = "override") -> "RunConfig":
        data = self.model_dump(mode="json")
        apply_overrides(data, overrides)
        return validate_config(data, source)


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> None:
    """Apply `train.max_steps=50`-style overrides in place; values are parsed as YAML."""
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for dotted, value in items:
        keys = dotted.split(".")
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: '{key}' is not a section")
            node = child
        node[keys[-1]] = value


def _split_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': write it as section.key=value, e.g. train.max_steps=50")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError):  # not YAML (or a date PyYAML cannot build): text
        parsed = value
    return key.strip(), parsed


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem as one readable line: the key, the bad value, what is allowed."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"] if not isinstance(part, int)]
    key = ".".join(loc) or "config"
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'{_did_you_mean(loc)}{tail}"
    value = err.get("input")
    if err["type"] == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        allowed = allowed.replace("'", "").replace(" or ", ", ")
        return f"{key}: {value!r} is not allowed; use one of {allowed}{tail}"
    if err["type"] == "model_type" or err["type"] == "dict_type":
        return f"{key}: expected a section of keys, got {value!r}{tail}"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    shown = "" if value is None or isinstance(value, dict) else f"{value!r}: "
    return f"{key}: {shown}{message[0].lower() + message[1:]}{tail}"


# Names users bring from other tools' configs.
KEY_ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lr": "learning_rate",
    "batch_size": "micro_batch_size", "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "model_name": "name_or_path", "base_model": "name_or_path", "model_name_or_path": "name_or_path",
    "cutoff_len": "max_length", "sequence_len": "max_length", "max_seq_length": "max_length",
    "bnb_4bit_quant_type": "quant_type", "bnb_4bit_use_double_quant": "double_quant", "dataset": "path",
    "sample_packing": "packing", "padding_free": "packing", "max_tokens_per_batch": "tokens_per_batch",
}


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    fields = list(model.model_fields)
    key = loc[-1]
    matches = [KEY_ALIASES[key]] if KEY_ALIASES.get(key) in fields else difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    if not matches:
        matches = [f for f in fields if key.startswith(f) or f.startswith(key)][:1]
    if not matches:
        return f"; valid keys here: {', '.join(model.model_fields)}"
    return f" (did you mean '{'.'.join(loc[:-1] + matches)}'?)"
