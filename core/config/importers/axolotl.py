"""axolotl YAML (`src/axolotl/utils/schemas/*.py`, the generated docs/config-reference.qmd) onto our schema."""

from __future__ import annotations

from typing import Any

from qlora_studio.core.config.importers.axolotl_data import (
    axolotl_dataset,
    axolotl_template,
)
from qlora_studio.core.config.importers.common import (
    COMPUTE_DTYPES,
    ConfigImportError,
    Draft,
    Keys,
    add_report_target,
    as_bool,
    as_number,
    carry_attention,
    carry_bool,
    carry_number,
    carry_optimizer,
    carry_processes,
    carry_scheduler,
    is_empty,
    split_output_dir,
    target_modules,
    warmup_steps,
)
from qlora_studio.core.config.importers.preference import import_axolotl_rl

# Keys only axolotl uses: they tell its files from LLaMA-Factory's.
MARKERS = {
    "base_model", "datasets", "adapter", "load_in_4bit", "load_in_8bit", "lora_r", "lora_target_linear",
    "lora_target_modules", "micro_batch_size", "sequence_len", "num_epochs", "val_set_size", "optimizer",
    "lr_scheduler", "sample_packing", "dataset_prepared_path", "bnb_config_kwargs", "test_datasets",
}

_AXOLOTL_DROP_REASONS = {
    "model_type": "QLoRA Studio always loads AutoModelForCausalLM",
    "tokenizer_type": "the tokenizer is loaded with AutoTokenizer from the model",
    "base_model_config": "config.json is read from the model itself",
    "tokenizer_config": "the tokenizer is read from the model itself",
    "hub_model_id": "no Hub upload (push the run's adapter/ folder with `hf upload`)",
    "dataset_prepared_path": "datasets caches tokenized data itself",
    "lora_model_dir": "continue an adapter with `qlora-studio train --resume RUN_DIR`",
    "resume_from_checkpoint": "use `qlora-studio train --resume RUN_DIR`",
    "sample_packing": "data.packing decides (auto: rows packed, kept apart by varlen attention; set it to off for padded batches)",
    "eval_sample_packing": "data.packing decides (auto: rows packed, kept apart by varlen attention; set it to off for padded batches)",
    "pad_to_sequence_len": "batches are padded to their longest example",
    "bf16": "read for quantization.compute_dtype; mixed precision follows it",
    "fp16": "read for quantization.compute_dtype; mixed precision follows it",
    "tf32": "TF32 matmuls are not configurable",
    "logging_steps": "QLoRA Studio logs every optimizer step",
    "evals_per_epoch": "set train.eval_every_steps in steps (the number of steps per epoch is known only at run time)",
    "saves_per_epoch": "set train.save_every_steps in steps (the number of steps per epoch is known only at run time)",
    "special_tokens": "no new tokens are added; the pad token is chosen automatically",
    "tokens": "no new tokens are added",
    "wandb_entity": "W&B's own setting: set WANDB_ENTITY before starting",
    "wandb_watch": "gradients are not logged to W&B", "wandb_log_model": "the adapter stays in the run folder",
    "wandb_name": "the W&B run is named after the run folder", "wandb_run_id": "every run is a new W&B run",
    "use_mlflow": "QLoRA Studio reports to tensorboard and wandb (train.report_to)",
    "loss_watchdog_threshold": "no loss watchdog; the window shows the loss live",
    "loss_watchdog_patience": "no loss watchdog",
    "deepspeed": "DeepSpeed is not used (distributed: ddp or fsdp)",
    "fsdp": "set distributed.strategy: fsdp and distributed.num_processes yourself",
    "fsdp_config": "set distributed.strategy: fsdp and distributed.num_processes yourself",
    "fsdp_version": "set distributed.strategy: fsdp yourself",
    "save_first_step": "checkpoints are every train.save_every_steps",
    "lora_modules_to_save": "only LoRA adapter weights are trained",
    "lora_target_parameters": "only Linear modules get adapters",
    "lora_fan_in_fan_out": "set automatically by PEFT per module type",
    "loraplus_lr_ratio": "LoRA+ is not supported", "loraplus_lr_embedding": "LoRA+ is not supported",
    "peft_layers_to_transform": "adapters go on every layer",
    "lr_quadratic_warmup": "warmup is linear", "cosine_min_lr_ratio": "cosine decays to 0",
    "cosine_constant_lr_ratio": "cosine decays to 0", "lr_scheduler_kwargs": "no scheduler arguments",
    "optim_args": "no optimizer arguments", "chat_template_jinja": "custom Jinja templates are not imported; "
    "data.chat_template is auto (the tokenizer's own)",
    "eval_batch_size": "evaluation uses train.micro_batch_size",
    "batch_size": "set by micro_batch_size x gradient_accumulation_steps (train.micro_batch_size, train.grad_accum)",
    "early_stopping_patience": "no early stopping",
    "group_by_length": "examples are not grouped by length",
    "flash_attn_cross_entropy": "train.liger_kernels covers fused cross-entropy",
    "flash_attn_rms_norm": "train.liger_kernels covers fused RMSNorm",
    "liger_rms_norm": "see train.liger_kernels (auto)", "liger_glu_activation": "see train.liger_kernels (auto)",
    "liger_rope": "see train.liger_kernels (auto)", "liger_fused_linear_cross_entropy": "see train.liger_kernels (auto)",
    "plugins": "axolotl plugins do not apply",
    "strict": "axolotl-only validation switch", "debug": "axolotl-only",
    "gradient_checkpointing_kwargs": "checkpointing always runs non-reentrant",
}


def import_axolotl(raw: dict[str, Any], imp: Draft) -> None:
    keys = Keys(raw, imp)

    import_axolotl_rl(imp, keys, keys.take("rl"))

    # model
    base = keys.take("base_model")
    if base is None:
        raise ConfigImportError("base_model is missing")
    imp.carry("base_model", "model.name_or_path", str(base))
    for key in ("revision_of_model", "model_revision"):
        value = keys.take(key)
        if value is not None:
            imp.carry(key, "model.revision", str(value))
    carry_bool(imp, keys, "trust_remote_code", "model.trust_remote_code")
    attn = keys.take("attn_implementation")
    if attn is not None:
        if attn in ("eager", "sdpa", "flash_attention_2"):
            carry_attention(imp, "attn_implementation", attn)
        else:
            imp.drop("attn_implementation", attn, "QLoRA Studio offers auto, sdpa, eager, flash_attention_2")
    for key, ours in (("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"), ("eager_attention", "eager")):
        value = keys.take(key)
        if value is None:
            continue
        if as_bool(value) and not imp.has("model.attn_implementation"):
            carry_attention(imp, key, ours, "deprecated axolotl switch", asked=value)
        else:
            imp.drop(key, value, "attn_implementation decides" if as_bool(value) else "false: nothing to carry")

    # quantization
    adapter = keys.take("adapter")
    in4 = as_bool(keys.take("load_in_4bit")) or False
    in8 = as_bool(keys.take("load_in_8bit")) or False
    for key, flag in (("load_in_4bit", in4), ("load_in_8bit", in8)):
        if key in raw and raw[key] is not None:
            imp.carried.append(f"{key} -> quantization.mode (= {flag})")
    mode = "4bit" if in4 or adapter == "qlora" else "8bit" if in8 else "none"
    imp.put("quantization.mode", mode)
    if mode == "4bit":
        imp.put("quantization.quant_type", "nf4")  # axolotl's fixed qlora settings (loaders/model.py)
        imp.put("quantization.double_quant", True)
    bnb = keys.take("bnb_config_kwargs")
    if isinstance(bnb, dict):
        sub = Keys(bnb, imp, "bnb_config_kwargs.")
        qt = sub.take("bnb_4bit_quant_type")
        if qt is not None:
            if str(qt).lower() in ("nf4", "fp4"):
                imp.carry(sub.name("bnb_4bit_quant_type"), "quantization.quant_type", str(qt).lower())
            else:
                imp.drop(sub.name("bnb_4bit_quant_type"), qt, "quant_type is nf4 or fp4")
        carry_bool(imp, sub, "bnb_4bit_use_double_quant", "quantization.double_quant")
        cd = sub.take("bnb_4bit_compute_dtype")
        if cd is not None:
            if str(cd).lower() in COMPUTE_DTYPES:
                imp.carry(sub.name("bnb_4bit_compute_dtype"), "quantization.compute_dtype", COMPUTE_DTYPES[str(cd).lower()])
            else:
                imp.drop(sub.name("bnb_4bit_compute_dtype"), cd, "compute_dtype is auto, bfloat16, float16 or float32")
        sub.drop_rest({"bnb_4bit_quant_storage": "set automatically (the compute dtype under FSDP)"},
                      "not a QLoRA Studio quantization setting")
    elif bnb is not None:
        imp.drop("bnb_config_kwargs", bnb, "not a mapping")
    dtype_from_flags = not imp.has("quantization.compute_dtype")
    if dtype_from_flags:
        bf16, fp16 = raw.get("bf16", "auto"), raw.get("fp16")
        if as_bool(bf16):
            imp.put("quantization.compute_dtype", "bfloat16")
        elif as_bool(fp16):
            imp.put("quantization.compute_dtype", "float16")
        elif str(bf16).lower() == "auto" or bf16 is None:
            imp.put("quantization.compute_dtype", "auto")
        else:
            imp.put("quantization.compute_dtype", "float32")
        imp.carried.append(f"bf16/fp16 -> quantization.compute_dtype = {imp.config['quantization']['compute_dtype']} "
                           "(axolotl computes in its torch_dtype)")

    # lora
    if adapter in ("lora", "qlora"):
        imp.carried.append(f"adapter -> LoRA (= {adapter})")
    elif adapter is None:
        imp.drop("adapter", None, "no adapter means full fine-tuning in axolotl; QLoRA Studio trains a LoRA adapter")
    else:
        imp.drop("adapter", adapter, "QLoRA Studio trains LoRA adapters only")
    carry_number(imp, keys, "lora_r", "lora.r", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    carry_number(imp, keys, "lora_alpha", "lora.alpha", check=lambda v: v > 0, rule="above 0")
    carry_number(imp, keys, "lora_dropout", "lora.dropout", check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    imp.default("lora.dropout", 0.0, "axolotl default")
    carry_bool(imp, keys, "peft_use_dora", "lora.use_dora")
    carry_bool(imp, keys, "peft_use_rslora", "lora.use_rslora")
    linear = keys.take("lora_target_linear")
    modules = keys.take("lora_target_modules")
    if as_bool(linear):
        imp.carry("lora_target_linear", "lora.target_modules", "all-linear")
        if modules is not None:
            imp.carried.append("lora_target_modules -> lora.target_modules (contained in all-linear: axolotl adds every linear layer to the list)")
    elif modules is not None:
        targets = target_modules(modules)
        if targets is None:
            imp.drop("lora_target_modules", modules, "not a list of module names (a regular expression?); lora.target_modules stays all-linear")
        else:
            imp.carry("lora_target_modules", "lora.target_modules", targets)
        if linear is not None:
            imp.drop("lora_target_linear", linear, "false: lora_target_modules decides")
    elif linear is not None:
        imp.drop("lora_target_linear", linear, "false and no lora_target_modules: lora.target_modules stays all-linear")

    # data (the global chat_template first: a dataset's own one, or its type's prompt style, wins)
    chat = keys.take("chat_template")
    if chat is not None:
        axolotl_template(imp, "chat_template", chat)
    datasets = keys.take("datasets")
    if datasets is None:
        raise ConfigImportError("datasets is missing (a list of {path, type})")
    if not isinstance(datasets, list):
        datasets = [datasets]
    for index, entry in enumerate(datasets):
        name = f"datasets[{index}]"
        if index == 0:
            axolotl_dataset(entry, imp, name, "data.path")
        else:
            imp.drop(name, entry, "QLoRA Studio trains on one data.path (a folder of files works: put the files in one folder)")
    tests = keys.take("test_datasets")
    if tests is not None:
        tests = tests if isinstance(tests, list) else [tests]
        first = tests[0] if tests else None
        path = first.get("path") if isinstance(first, dict) else None
        if path:
            imp.carry("test_datasets[0].path", "data.validation_path", str(path))
            rest = {k: v for k, v in first.items() if k != "path"}
            if rest:
                imp.drop("test_datasets[0]", rest, "the validation file is read with the training data's format settings")
        for index, entry in enumerate(tests[1:], start=1):
            imp.drop(f"test_datasets[{index}]", entry, "one validation file (data.validation_path)")
    system = keys.take("default_system_message")
    if system is not None:
        imp.carry("default_system_message", "data.system_prompt", str(system))
    train_inputs = keys.take("train_on_inputs")
    if train_inputs is not None:
        imp.carry("train_on_inputs", "data.train_on", "all" if as_bool(train_inputs) else "assistant")
    carry_number(imp, keys, "sequence_len", "data.max_length", integer=True, check=lambda v: v >= 8, rule="of at least 8")
    imp.default("data.max_length", 512, "axolotl default sequence_len")
    excess = keys.take("excess_length_strategy")
    if excess in ("drop", "truncate"):
        imp.carry("excess_length_strategy", "data.overlength", excess)
    elif excess is not None:
        imp.drop("excess_length_strategy", excess, "QLoRA Studio truncates or drops (data.overlength); it never raises")
    imp.default("data.overlength", "drop", "axolotl drops rows longer than sequence_len by default")
    val = keys.take("val_set_size")
    if val is not None:
        number = as_number(val)
        if number is not None and 0 <= number < 1:
            imp.carry("val_set_size", "data.validation_split", number)
        else:
            imp.drop("val_set_size", val, "data.validation_split is a fraction in [0, 1)")
    imp.default("data.validation_split", 0.0, "axolotl default val_set_size")
    carry_processes(imp, keys, "dataset_processes")

    # train
    carry_number(imp, keys, "num_epochs", "train.epochs", check=lambda v: v > 0, rule="above 0")
    max_steps = carry_number(imp, keys, "max_steps", "train.max_steps", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    carry_number(imp, keys, "micro_batch_size", "train.micro_batch_size", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    imp.default("train.micro_batch_size", 1, "axolotl default")
    carry_number(imp, keys, "gradient_accumulation_steps", "train.grad_accum", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    imp.default("train.grad_accum", 1, "axolotl default")
    carry_number(imp, keys, "learning_rate", "train.learning_rate", check=lambda v: v > 0, rule="above 0")
    carry_scheduler(imp, keys, "lr_scheduler")
    carry_number(imp, keys, "warmup_ratio", "train.warmup_ratio", check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    warmup_steps(imp, keys, "warmup_steps", max_steps)
    imp.default("train.warmup_ratio", 0.0, "axolotl default: no warmup")
    carry_number(imp, keys, "weight_decay", "train.weight_decay", check=lambda v: v >= 0, rule="of at least 0")
    carry_number(imp, keys, "max_grad_norm", "train.max_grad_norm", check=lambda v: v >= 0, rule="of at least 0")
    carry_optimizer(imp, keys, "optimizer")
    gc = keys.take("gradient_checkpointing")
    if gc is not None:
        flag = as_bool(gc)
        if flag is not None:
            imp.carry("gradient_checkpointing", "train.gradient_checkpointing", flag)
        elif gc in ("offload", "offload_disk"):
            imp.carry("gradient_checkpointing", "train.gradient_checkpointing", True, f"{gc}: activations stay on the GPU here")
        else:
            imp.drop("gradient_checkpointing", gc, "not true or false")
    imp.default("train.gradient_checkpointing", False, "axolotl default")
    carry_number(imp, keys, "save_steps", "train.save_every_steps", integer=True, check=lambda v: v >= 1,
                 rule="of at least 1 (a fraction of the run is not supported)")
    carry_number(imp, keys, "eval_steps", "train.eval_every_steps", integer=True, check=lambda v: v >= 1,
                 rule="of at least 1 (a fraction of the run is not supported)")
    carry_number(imp, keys, "save_total_limit", "train.keep_checkpoints", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    carry_number(imp, keys, "seed", "train.seed", integer=True)
    split_output_dir(imp, keys, "output_dir")
    _reporting(imp, keys)
    for flag in ("bf16", "fp16"):  # read above for the compute dtype
        if flag in keys.left and not is_empty(keys.left[flag]):
            if dtype_from_flags:
                imp.carried.append(f"{flag} -> quantization.compute_dtype (= {keys.left.pop(flag)})")
            else:
                imp.drop(flag, keys.left.pop(flag), "bnb_config_kwargs.bnb_4bit_compute_dtype decides the compute dtype")
    method = imp.config.get("train", {}).get("method", "sft")
    fmt = imp.config.get("data", {}).get("format")
    if method != "sft" and fmt not in (None, "auto"):  # axolotl's pair types (chatml.intel, ...) name a prompt format
        imp.replace("datasets[0].type", fmt, "data.format", "auto",
                    f"{method.upper()} rows are read by their columns (prompt / chosen / rejected ...)")
    keys.drop_rest(_AXOLOTL_DROP_REASONS, "no QLoRA Studio equivalent")


def _reporting(imp: Draft, keys: Keys) -> None:
    """use_tensorboard and wandb_project (or use_wandb) switch reporting on; wandb_mode can turn W&B off."""
    tensorboard = keys.take("use_tensorboard")
    if as_bool(tensorboard):
        add_report_target(imp, "use_tensorboard", "tensorboard")
    elif tensorboard is not None:
        imp.drop("use_tensorboard", tensorboard, "false: nothing to carry")
    switches = {key: keys.take(key) for key in ("wandb_project", "use_wandb", "wandb_mode")}
    project, use_wandb, mode = switches.values()
    off = str(mode).lower() == "disabled" or as_bool(use_wandb) is False
    if off or (project is None and not as_bool(use_wandb)):
        for key, value in switches.items():
            if value is not None:
                imp.drop(key, value, "W&B is switched off in the source" if off else "W&B is off without wandb_project")
        return
    if project is not None:
        add_report_target(imp, "wandb_project", "wandb", f"project {project}: set WANDB_PROJECT={project} before "
                          "starting; without it runs go to the project qlora-studio")
    if use_wandb is not None:
        add_report_target(imp, "use_wandb", "wandb")
    if mode is not None:
        imp.carried.append(f"wandb_mode -> W&B mode (= {mode}; QLoRA Studio logs offline by itself without network "
                           "or login, WANDB_MODE=offline forces it)")
