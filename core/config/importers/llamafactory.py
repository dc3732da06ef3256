"""LLaMA-Factory YAML (`src/llamafactory/hparams/*_args.py`, TrainingArguments, and the datasets of
`dataset_info.json` described in data/README.md) onto our schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qlora_studio.core.config.importers.common import (
    ConfigImportError,
    Draft,
    Keys,
    add_report_target,
    as_bool,
    as_int,
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
from qlora_studio.core.config.importers.preference import import_llamafactory_pairs, import_llamafactory_stage

# Keys only LLaMA-Factory uses: they tell its files from axolotl's.
MARKERS = {
    "model_name_or_path", "stage", "do_train", "finetuning_type", "lora_rank", "lora_target", "quantization_bit",
    "quantization_method", "double_quantization", "dataset", "dataset_dir", "template", "cutoff_len",
    "per_device_train_batch_size", "num_train_epochs", "lr_scheduler_type", "val_size", "plot_loss",
}
V1_MARKERS = {"peft_config", "quant_config", "train_dataset", "model_class", "dist_config"}

_LLAMAFACTORY_TEMPLATES: dict[str, tuple[str, str]] = {
    "chatml": ("chatml", ""), "chatml_de": ("chatml", "without its German default system prompt"),
    "llama3": ("llama3", ""), "llama2": ("llama2", ""), "mistral": ("mistral", ""), "gemma": ("gemma", ""),
    "phi": ("phi3", "<|user|> ... <|end|>"), "zephyr": ("zephyr", ""), "alpaca": ("alpaca", ""),
    "empty": ("auto", "no template"), "default": ("auto", "LLaMA-Factory's Human:/Assistant: default has no equivalent"),
}

_LLAMAFACTORY_DROP_REASONS = {
    "do_train": "training is what QLoRA Studio does",
    "max_samples": "all rows are used; cut the file to train on fewer",
    "preprocessing_batch_size": "batching of tokenization is automatic",
    "dataloader_num_workers": "data loading runs in the training process",
    "overwrite_cache": "datasets' cache is keyed by content",
    "overwrite_output_dir": "every run gets its own folder",
    "logging_steps": "QLoRA Studio logs every optimizer step",
    "plot_loss": "the window charts the loss live (and runs keep metrics.jsonl)",
    "save_only_model": "checkpoints are always resumable",
    "ddp_timeout": "not configurable",
    "bf16": "read for quantization.compute_dtype", "fp16": "read for quantization.compute_dtype",
    "pure_bf16": "read for quantization.compute_dtype",
    "packing": "data.packing decides (auto: rows packed, kept apart by varlen attention; set it to off for padded batches)", "neat_packing": "data.packing decides (auto: rows packed, kept apart by varlen attention; set it to off for padded batches)",
    "mask_history": "every assistant turn carries loss",
    "enable_thinking": "reasoning traces are not handled specially",
    "eval_strategy": "evaluation runs every train.eval_every_steps when there are validation rows",
    "do_eval": "evaluation runs when there are validation rows",
    "per_device_eval_batch_size": "evaluation uses train.micro_batch_size",
    "deepspeed": "DeepSpeed is not used (distributed: ddp or fsdp)",
    "adapter_name_or_path": "continue an adapter with `qlora-studio train --resume RUN_DIR`",
    "resume_from_checkpoint": "use `qlora-studio train --resume RUN_DIR`",
    "hf_hub_token": "tokens are never imported: huggingface_hub reads HF_TOKEN or the `hf auth login` token",
    "additional_target": "only LoRA adapter weights are trained",
    "loraplus_lr_ratio": "LoRA+ is not supported", "pissa_init": "PiSSA init is not supported",
    "use_unsloth": "unsloth is not used; see train.liger_kernels",
    "enable_liger_kernel": "see train.liger_kernels (auto)",
    "quantization_device_map": "the device map is chosen automatically",
    "infer_dtype": "inference dtype follows quantization.compute_dtype",
    "tokenized_path": "datasets caches tokenized data itself",
    "streaming": "datasets are memory-mapped, not streamed",
    "media_dir": "text-only", "tool_format": "tool calls are not supported",
    "new_special_tokens_config": "no new tokens are added", "add_tokens": "no new tokens are added",
    "add_special_tokens": "no new tokens are added", "resize_vocab": "the vocabulary is not resized",
    "upcast_layernorm": "not configurable", "upcast_lmhead_output": "not configurable",
    "ignore_pad_token_for_loss": "padding never carries loss",
    "eval_on_each_dataset": "one validation set",
}

_LF_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
_LF_SHAREGPT_DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                             "assistant_tag": "gpt", "system_tag": "system"}
_ROLE_NAMES = {"user", "human", "prompter", "assistant", "gpt", "model", "bot", "chatgpt", "system", "developer"}


def import_llamafactory(raw: dict[str, Any], imp: Draft) -> None:
    keys = Keys(raw, imp)

    stage = keys.take("stage") or "sft"
    if stage not in ("sft", "pt", "dpo", "kto"):
        raise ConfigImportError(f"stage: {stage} cannot be imported: QLoRA Studio trains sft, pt (as text), dpo "
                                "(with pref_loss sigmoid, ipo, hinge or orpo) and kto")
    if stage in ("dpo", "kto"):
        import_llamafactory_stage(imp, keys, stage)
    else:
        imp.carried.append(f"stage -> supervised fine-tuning (= {stage})" if "stage" in raw else
                           "default: stage = sft (LLaMA-Factory default)")

    # model
    base = keys.take("model_name_or_path")
    if base is None:
        raise ConfigImportError("model_name_or_path is missing")
    imp.carry("model_name_or_path", "model.name_or_path", str(base))
    revision = keys.take("model_revision")
    if revision is not None:
        imp.carry("model_revision", "model.revision", str(revision))
    carry_bool(imp, keys, "trust_remote_code", "model.trust_remote_code")
    attn = keys.take("flash_attn")
    if attn is not None:
        ours = {"auto": "auto", "sdpa": "sdpa", "fa2": "flash_attention_2", "disabled": "eager"}.get(str(attn))
        if ours:
            carry_attention(imp, "flash_attn", ours)
        else:
            imp.drop("flash_attn", attn, "QLoRA Studio offers auto, sdpa, eager, flash_attention_2")

    # quantization
    bits = keys.take("quantization_bit")
    method = keys.take("quantization_method")
    if bits is None:
        imp.put("quantization.mode", "none")
        imp.carried.append("default: quantization.mode = none (no quantization_bit: LLaMA-Factory loads full weights)")
    elif as_int(bits) in (4, 8):
        imp.carry("quantization_bit", "quantization.mode", f"{as_int(bits)}bit")
    else:
        imp.drop("quantization_bit", bits, "bitsandbytes quantizes to 4 or 8 bits; quantization.mode stays none")
        imp.put("quantization.mode", "none")
    if method is not None:
        if str(method).lower() in ("bnb", "bitsandbytes"):
            imp.carried.append(f"quantization_method -> bitsandbytes (= {method})")
        else:
            imp.drop("quantization_method", method, "QLoRA Studio quantizes with bitsandbytes; the bit width is kept")
    qt = keys.take("quantization_type")
    if qt is not None:
        if str(qt).lower() in ("nf4", "fp4"):
            imp.carry("quantization_type", "quantization.quant_type", str(qt).lower())
        else:
            imp.drop("quantization_type", qt, "quant_type is nf4 or fp4")
    carry_bool(imp, keys, "double_quantization", "quantization.double_quant")
    if imp.config["quantization"]["mode"] == "4bit":
        imp.default("quantization.quant_type", "nf4", "LLaMA-Factory default quantization_type")
        imp.default("quantization.double_quant", True, "LLaMA-Factory default double_quantization")
    if as_bool(raw.get("bf16")) or as_bool(raw.get("pure_bf16")):
        dtype = "bfloat16"
    elif as_bool(raw.get("fp16")):
        dtype = "float16"
    else:
        dtype = "auto"
    imp.put("quantization.compute_dtype", dtype)
    imp.carried.append(f"bf16/fp16 -> quantization.compute_dtype = {dtype} (LLaMA-Factory's compute_dtype)")

    # lora
    ftype = keys.take("finetuning_type") or "lora"
    if ftype == "lora":
        imp.carried.append("finetuning_type -> LoRA (= lora)" if "finetuning_type" in raw else "default: finetuning_type = lora")
    else:
        imp.drop("finetuning_type", ftype, "QLoRA Studio trains LoRA adapters only")
    rank = carry_number(imp, keys, "lora_rank", "lora.r", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    imp.default("lora.r", 8, "LLaMA-Factory default lora_rank")
    alpha = keys.take("lora_alpha")
    if alpha is not None and as_number(alpha) and as_number(alpha) > 0:
        imp.carry("lora_alpha", "lora.alpha", as_number(alpha))
    else:
        if alpha is not None:
            imp.drop("lora_alpha", alpha, "not a number above 0")
        imp.default("lora.alpha", float(2 * (rank or 8)), "LLaMA-Factory default: 2 x lora_rank")
    carry_number(imp, keys, "lora_dropout", "lora.dropout", check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    imp.default("lora.dropout", 0.0, "LLaMA-Factory default")
    target = keys.take("lora_target")
    if target is not None:
        targets = target_modules(target)
        if targets is None:
            imp.drop("lora_target", target, "not module names; lora.target_modules stays all-linear")
        else:
            imp.carry("lora_target", "lora.target_modules", targets)
    imp.default("lora.target_modules", "all-linear", "LLaMA-Factory default lora_target: all")
    carry_bool(imp, keys, "use_dora", "lora.use_dora")
    carry_bool(imp, keys, "use_rslora", "lora.use_rslora")

    # data
    if stage == "pt":
        imp.put("data.format", "text")
        imp.put("data.train_on", "all")
        imp.carried.append("stage pt -> data.format = text, data.train_on = all (pre-training on raw text)")
    dataset_dir = keys.take("dataset_dir") or "data"
    if "dataset_dir" in raw and raw["dataset_dir"] is not None:
        imp.carried.append(f"dataset_dir -> where data.path's dataset_info.json entry was looked up (= {dataset_dir})")
    info, info_path = _dataset_info(imp.source_dir, str(dataset_dir))
    names = _names(keys.take("dataset"))
    if not names:
        raise ConfigImportError("dataset is missing (names of dataset_info.json entries, comma separated)")
    _llamafactory_dataset(imp, "dataset", names[0], info, info_path, str(dataset_dir), "data.path", stage)
    for extra in names[1:]:
        imp.drop("dataset", extra, "QLoRA Studio trains on one data.path (a folder of files works: put the files in one folder)")
    eval_names = _names(keys.take("eval_dataset"))
    if eval_names:
        _llamafactory_dataset(imp, "eval_dataset", eval_names[0], info, info_path, str(dataset_dir),
                              "data.validation_path", stage, main=False)
        for extra in eval_names[1:]:
            imp.drop("eval_dataset", extra, "one validation file (data.validation_path)")
    template = keys.take("template")
    if template is not None:
        name = str(template)
        if name in _LLAMAFACTORY_TEMPLATES:
            ours, note = _LLAMAFACTORY_TEMPLATES[name]
            imp.carry("template", "data.chat_template", ours, note)
        else:
            imp.carry("template", "data.chat_template", "auto",
                      f"LLaMA-Factory's {name} template follows the model's own chat template, which auto uses")
    system = keys.take("default_system")
    if system is not None:
        imp.carry("default_system", "data.system_prompt", str(system))
    prompt = keys.take("train_on_prompt")
    if prompt is not None:
        imp.carry("train_on_prompt", "data.train_on", "all" if as_bool(prompt) else "assistant")
    carry_number(imp, keys, "cutoff_len", "data.max_length", integer=True, check=lambda v: v >= 8, rule="of at least 8")
    imp.default("data.max_length", 2048, "LLaMA-Factory default cutoff_len")
    val = keys.take("val_size")
    if val is not None:
        number = as_number(val)
        if number is not None and 0 <= number < 1:
            imp.carry("val_size", "data.validation_split", number)
        else:
            imp.drop("val_size", val, "a number of rows: data.validation_split is a fraction in [0, 1)")
    imp.default("data.validation_split", 0.0, "LLaMA-Factory default val_size")
    carry_processes(imp, keys, "preprocessing_num_workers")

    # train (transformers' TrainingArguments names; its defaults where ours differ)
    carry_number(imp, keys, "num_train_epochs", "train.epochs", check=lambda v: v > 0, rule="above 0")
    imp.default("train.epochs", 3.0, "TrainingArguments default")
    max_steps = keys.take("max_steps")
    steps = None
    if max_steps is not None:
        steps = as_int(max_steps)
        if steps is not None and steps >= 1:
            imp.carry("max_steps", "train.max_steps", steps)
        elif steps is not None and steps <= 0:
            imp.drop("max_steps", max_steps, "-1 or 0: epochs decide")
            steps = None
        else:
            imp.drop("max_steps", max_steps, "not an integer")
    carry_number(imp, keys, "per_device_train_batch_size", "train.micro_batch_size", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    imp.default("train.micro_batch_size", 8, "TrainingArguments default")
    carry_number(imp, keys, "gradient_accumulation_steps", "train.grad_accum", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    imp.default("train.grad_accum", 1, "TrainingArguments default")
    carry_number(imp, keys, "learning_rate", "train.learning_rate", check=lambda v: v > 0, rule="above 0")
    imp.default("train.learning_rate", 5e-5, "TrainingArguments default")
    carry_scheduler(imp, keys, "lr_scheduler_type")
    imp.default("train.lr_scheduler", "linear", "TrainingArguments default")
    carry_number(imp, keys, "warmup_ratio", "train.warmup_ratio", check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    warmup_steps(imp, keys, "warmup_steps", steps)
    imp.default("train.warmup_ratio", 0.0, "TrainingArguments default: no warmup")
    carry_number(imp, keys, "weight_decay", "train.weight_decay", check=lambda v: v >= 0, rule="of at least 0")
    carry_number(imp, keys, "max_grad_norm", "train.max_grad_norm", check=lambda v: v >= 0, rule="of at least 0")
    carry_optimizer(imp, keys, "optim")
    carry_bool(imp, keys, "disable_gradient_checkpointing", "train.gradient_checkpointing", invert=True)
    if not imp.has("train.gradient_checkpointing"):  # TrainingArguments' own switch, passed through by LLaMA-Factory
        carry_bool(imp, keys, "gradient_checkpointing", "train.gradient_checkpointing")
    carry_number(imp, keys, "save_steps", "train.save_every_steps", integer=True, check=lambda v: v >= 1,
                 rule="of at least 1 (a fraction of the run is not supported)")
    imp.default("train.save_every_steps", 500, "TrainingArguments default")
    carry_number(imp, keys, "eval_steps", "train.eval_every_steps", integer=True, check=lambda v: v >= 1,
                 rule="of at least 1 (a fraction of the run is not supported)")
    carry_number(imp, keys, "save_total_limit", "train.keep_checkpoints", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    carry_number(imp, keys, "seed", "train.seed", integer=True)
    split_output_dir(imp, keys, "output_dir")
    _reporting(imp, keys)
    for flag in ("bf16", "fp16", "pure_bf16"):
        if flag in keys.left and not is_empty(keys.left[flag]):
            imp.carried.append(f"{flag} -> quantization.compute_dtype (= {keys.left.pop(flag)})")
    keys.drop_rest(_LLAMAFACTORY_DROP_REASONS, "no QLoRA Studio equivalent")


def _reporting(imp: Draft, keys: Keys) -> None:
    """TrainingArguments' report_to: none, all, one name, a comma string or a list."""
    value = keys.take("report_to")
    if value is not None and set(_names(value)) <= {"none"}:
        imp.drop("report_to", value, "none: nothing to report")
    for name in _names(value):
        if name in ("tensorboard", "wandb"):
            add_report_target(imp, "report_to", name)
        elif name != "none":
            imp.drop("report_to", name, "QLoRA Studio reports to tensorboard and wandb (train.report_to); "
                     "'all' is not carried: name them")


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _dataset_info(source_dir: Path, dataset_dir: str) -> tuple[dict[str, Any] | None, Path | None]:
    """dataset_info.json from dataset_dir, looked up next to the config file, then in the working folder."""
    folder = Path(dataset_dir).expanduser()
    candidates = [folder] if folder.is_absolute() else [source_dir / folder, Path.cwd() / folder]
    for candidate in candidates:
        info = candidate / "dataset_info.json"
        if info.is_file():
            try:
                data = json.loads(info.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigImportError(f"{info}: not readable JSON ({exc})") from None
            return (data if isinstance(data, dict) else None), info
    return None, None


def _llamafactory_dataset(imp: Draft, source: str, name: str, info: dict[str, Any] | None, info_path: Path | None,
                          dataset_dir: str, target: str, stage: str, main: bool = True) -> None:
    if info is None or name not in info:
        where = f"{info_path}" if info_path else f"{dataset_dir}/dataset_info.json (not found)"
        imp.put(target, name)
        imp.drop(source, name, f"'{name}' is not an entry of {where}; {target} was set to the name: "
                               "replace it with the data file or Hub dataset id")
        return
    entry = info[name]
    label = f"dataset_info[{name}]"
    keys = Keys(entry, imp, f"{label}.")
    hub = keys.take("hf_hub_url")
    file_name = keys.take("file_name")
    for other in ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"):
        value = keys.take(other)
        if value is not None and not (hub or file_name):
            imp.drop(keys.name(other), value, "only Hugging Face Hub ids and local files are read")
        elif value is not None:
            imp.drop(keys.name(other), value, "hf_hub_url or file_name decides")
    if hub is not None:
        imp.carry(f"{source} -> {keys.name('hf_hub_url')}", target, str(hub))
        if file_name is not None:
            imp.drop(keys.name("file_name"), file_name, "hf_hub_url decides")
    elif file_name is not None:
        path = (info_path.parent / str(file_name)).resolve() if info_path else Path(dataset_dir) / str(file_name)
        imp.carry(f"{source} -> {keys.name('file_name')}", target, str(path))
    else:
        imp.put(target, name)
        imp.drop(source, name, f"{label} has no hf_hub_url or file_name; {target} was set to the name")
    if not main:
        keys.drop_rest({}, "the validation file is read with the training data's format settings")
        return
    for key, dotted in (("subset", "data.subset"), ("split", "data.split")):
        value = keys.take(key)
        if value is not None:
            imp.carry(keys.name(key), dotted, str(value))
    ranking = as_bool(keys.take("ranking"))
    formatting = keys.take("formatting") or "alpaca"
    columns = dict(keys.take("columns") or {})
    tags = dict(keys.take("tags") or {})
    ours: dict[str, str] = {}
    if ranking or stage == "kto":
        import_llamafactory_pairs(imp, keys, name, label, formatting, columns, ranking)
        return
    if stage == "pt":
        text = columns.pop("prompt", "text")
        if text != "text":
            ours["text"] = text
        imp.carried.append(f"{keys.name('columns')} -> data.columns.text = {text}")
    elif formatting == "alpaca":
        imp.carry(keys.name("formatting") if "formatting" in entry else f"{label} (formatting default)", "data.format", "alpaca")
        for theirs_role, our_name in _LF_ALPACA_COLUMNS.items():
            column = columns.pop(theirs_role, None)
            if column is not None and column != our_name:
                ours[our_name] = column
            if column is not None:
                imp.carried.append(f"{keys.name('columns')}.{theirs_role} -> data.columns.{our_name} = {column}")
    elif formatting == "sharegpt":
        merged = {**_LF_SHAREGPT_DEFAULT_TAGS, **tags}
        pair = (merged["role_tag"], merged["content_tag"])
        fmt = "sharegpt" if pair == ("from", "value") else "messages" if pair == ("role", "content") else None
        if fmt is None:
            imp.drop(keys.name("tags"), tags, "QLoRA Studio reads turns as {role, content} or {from, value}")
        else:
            imp.carry(keys.name("formatting"), "data.format", fmt, f"turns are {{{pair[0]}, {pair[1]}}}")
        for tag in ("user_tag", "assistant_tag", "system_tag"):
            value = merged.get(tag)
            if value is not None and str(value).lower() not in _ROLE_NAMES:
                imp.drop(f"{keys.name('tags')}.{tag}", value, "role names are user/human, assistant/gpt/model, system")
        for tag in set(tags) - {"role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag"}:
            imp.drop(f"{keys.name('tags')}.{tag}", tags[tag], "tool/function turns are not supported")
        messages = columns.pop("messages", "conversations")
        if messages not in ("conversations", "messages"):
            ours["messages"] = messages
        imp.carried.append(f"{keys.name('columns')}.messages -> data.columns.messages = {messages}")
        system = columns.pop("system", None)
        if system is not None:
            imp.drop(f"{keys.name('columns')}.system", system, "a system column beside the turns is not read; "
                     "put the system turn into the conversation or use data.system_prompt")
    else:
        imp.drop(keys.name("formatting"), formatting, "formats are alpaca or sharegpt")
    for role, column in columns.items():
        imp.drop(f"{keys.name('columns')}.{role}", column, "not read (history, tools, media and preference columns)")
    if ours:
        imp.put("data.columns", ours)
    keys.drop_rest({"num_samples": "all rows are used", "folder": "point data.path at the folder's files"},
                   "no QLoRA Studio equivalent")

