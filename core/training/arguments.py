"""The one place a `TrainingArguments` is made from a run config."""

from __future__ import annotations

from typing import Any

from qlora_studio.core.config.choices import OPTIMIZERS
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.model.devices import liger_applies
from qlora_studio.core.training.reporting import report_to


def training_arguments(config: RunConfig, device, compute_dtype, output_dir: str, has_eval: bool, plan=None,
                       arguments_class=None, method_arguments: dict[str, Any] | None = None):
    """`plan`: the run's SpeedPlan (training/speed.py); None trains padded batches with Liger as
    train.liger_kernels says and no offload. `arguments_class`: a TRL method's config class (a
    TrainingArguments), made with `method_arguments` besides."""
    import torch
    from transformers import TrainingArguments

    t = config.train
    cuda = device.type == "cuda"
    choice = OPTIMIZERS[t.optimizer]
    eval_steps = t.eval_every_steps or t.save_every_steps
    sharded = is_fsdp(config)
    extra: dict[str, Any] = _speed_arguments(config, device, plan)
    checkpointing = extra.pop("checkpointing")
    if sharded:
        # FSDP-QLoRA: FSDP shards the 4-bit weights (stored in the compute dtype, see the runner's loading) and
        # checkpoints activations itself; the Trainer-level flag would all-gather again in backward.
        # FSDP1 with flat parameters: FSDP2's DTensors reach bitsandbytes' 4-bit matmul, which
        # cannot mix them with plain tensors (seen on 2 x H200).
        extra |= {"fsdp": True, "fsdp_config": {
            "version": 1, "use_orig_params": False, "cpu_ram_efficient_loading": True,
            "activation_checkpointing": t.gradient_checkpointing, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
        }}
    if arguments_class is not None:
        extra |= method_arguments or {}
        extra["gradient_checkpointing"] = t.gradient_checkpointing and not sharded  # TRL's default is on
    return (arguments_class or TrainingArguments)(
        output_dir=output_dir,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=extra.pop("eval_rows", t.micro_batch_size),
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=choice.trainer_optim if cuda else choice.trainer_optim_cpu,
        bf16=cuda and compute_dtype == torch.bfloat16,
        fp16=cuda and compute_dtype == torch.float16,
        use_cpu=not cuda,
        activation_checkpointing=t.gradient_checkpointing and not sharded,
        activation_checkpointing_kwargs=checkpointing if t.gradient_checkpointing and not sharded else None,
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,  # a device sync per micro-batch; the NaN guard judges bad steps (training.guard)
        save_strategy="steps",
        save_steps=t.save_every_steps,
        save_total_limit=None,  # pruning is ours: Trainer's rotation only knows its own folder names
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        prediction_loss_only=True,
        include_num_input_tokens_seen=extra.pop("tokens_seen", "non_padding"),
        remove_unused_columns=False,
        seed=t.seed,
        data_seed=t.seed,
        report_to=report_to(config),
        disable_tqdm=True,
        dataloader_pin_memory=cuda,
        accelerator_config={"non_blocking": cuda},  # batches copied from pinned memory without a host wait
        ddp_find_unused_parameters=False,
        use_liger_kernel=plan is None and liger_applies(t.liger_kernels, device.type),  # a plan applied it already
        **extra,
    )


def _speed_arguments(config: RunConfig, device, plan) -> dict[str, Any]:
    """What the run's speed plan changes: packed batches, offloaded or sparser checkpoints, which
    of Liger's kernels run, how training rows are sampled."""
    # reentrant: the first forward runs without autograd (no graph, no saved-tensor hooks per op): ~10%
    # less host time per step on the CPU (bench/NOTES-speed.md, lever 20); off until a GPU measures it
    checkpointing: dict[str, Any] = {"use_reentrant": config.train.experimental.reentrant_checkpoints}
    out: dict[str, Any] = {"checkpointing": checkpointing}
    if plan is None:
        return out
    if plan.packed:
        # every token of a packed batch is real; "non_padding" without an attention mask would
        # count ids != pad_token_id, missing every EOS where pad is EOS
        out["tokens_seen"] = "all"
        out["eval_rows"] = max(1, plan.micro_batch_tokens(config) // config.data.max_length)
    if plan.offloads(config) and device.type == "cuda":  # transformers pins host memory for it, which needs CUDA
        checkpointing["offload"] = True
    levers = config.train.experimental
    if levers.every_n_layers > 1:
        checkpointing["every_n_layers"] = levers.every_n_layers
    if levers.sequential:
        out["train_sampling_strategy"] = "sequential"
    elif levers.group_by_length and not plan.packed:
        out["train_sampling_strategy"] = "group_by_length"
    return out


def is_fsdp(config: RunConfig) -> bool:
    return config.distributed.strategy == "fsdp" and config.distributed.num_processes > 1
