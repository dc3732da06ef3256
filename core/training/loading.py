"""What a run loads before its first step: the model with adapters, the tokenized data, the memory
prediction shown beside the measured peak; and what it leaves: the final adapter folder."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from qlora_studio.core.atomic import replace_dir
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import OutOfMemoryStop, UserError
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.arguments import is_fsdp


def load_inputs(config: RunConfig, warn: Callable[[str], None], world_size: int, emit: ev.Emit | None = None):
    """(loaded model, prepared data); with several processes rank 0 converts, downloads and
    tokenizes first and the others read its caches. Each stage is announced as a `Preparing`
    event through `emit`."""
    emit = emit or (lambda event: None)
    from transformers import set_seed

    from qlora_studio.core.model.devices import resolve_compute_dtype, resolve_device
    from qlora_studio.core.model.loading import load_for_training

    set_seed(config.train.seed)
    if config.train.method == "grpo":  # a bad regex or a python reward without consent: before the model loads
        from qlora_studio.core.training.rewards import check_rewards

        check_rewards(config.train.grpo, has_answers=True)
    with _main_process_first(world_size):
        kwargs: dict[str, Any] = {}
        if is_fsdp(config):
            # Rank 0 reads the weights, the others start empty and receive them; 4-bit data is
            # stored in the compute dtype so FSDP can shard it with everything else.
            os.environ["ACCELERATE_USE_FSDP"] = "true"
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
            device = resolve_device(config.train.device)
            kwargs = {"device_map": None, "quant_storage": resolve_compute_dtype(config.quantization.compute_dtype, device)}
        try:
            loaded = load_for_training(config, note=warn, **kwargs,
                                       progress=lambda stage, message: emit(ev.Preparing(stage, message)))
        except torch.OutOfMemoryError:
            raise OutOfMemoryStop(
                "the model does not fit in GPU memory: use quantization.mode 4bit, a smaller model, or free the GPU"
            ) from None
        data = prepare_run_data(config, loaded, warn, emit)
    if loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(loaded.device)
    return loaded, data


def prepare_run_data(config: RunConfig, loaded, warn: Callable[[str], None], emit: ev.Emit | None = None):
    """Tokenize for the current config (again after an out-of-memory cut of max_length); the
    tokenizer keeps the chat template training used, so the saved adapter renders prompts alike."""
    from qlora_studio.core.data.pipeline import prepare_data
    from qlora_studio.core.model.loading import stop_token_ids

    def progress(stage: str, done: int, total: int) -> None:
        if emit is None:
            return
        if stage == "read":
            emit(ev.Preparing("data", f"reading {config.data.path}"))
        else:
            emit(ev.Preparing("tokenize", f"tokenizing {done:,} / {total:,} rows", done, total))

    stops = stop_token_ids(loaded.tokenizer, loaded.source.path)
    data = prepare_data(config.data, loaded.tokenizer, stops, config.train.seed, warn=warn, progress=progress,
                        method=config.train.method)
    loaded.tokenizer.chat_template = data.template
    if config.train.method == "grpo":
        from qlora_studio.core.training.rewards import check_rewards

        check_rewards(config.train.grpo, has_answers=data.report.answers > 0)
    return data


def _main_process_first(world_size: int):
    if world_size == 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def run_prediction(config: RunConfig, loaded, plan, warn: Callable[[str], None]):
    """The planner's estimate for this run as it will train (GPU runs only): the number Setup and
    `qlora-studio estimate` show for the same config and card."""
    if loaded.device.type != "cuda" or plan is None:
        return None
    from qlora_studio.core.training.speed import predict

    try:
        return predict(config, loaded, plan)
    except UserError as exc:
        warn(f"no memory prediction: {exc}")
        return None


def save_adapter(loaded, trainer, folder, config: RunConfig, rank: int) -> str | None:
    """The final adapter and tokenizer into <run>/adapter, replacing any earlier one at once."""
    if is_fsdp(config) and trainer is not None:
        # Sharded weights are gathered by a collective: every rank saves through the Trainer.
        trainer.save_model(str(Path(trainer.args.output_dir).parent / "adapter.tmp"))
    if rank != 0 or loaded is None or folder is None:
        return None
    target = folder.adapter_dir
    staging = target.with_name("adapter.tmp")
    if not is_fsdp(config) or trainer is None:
        shutil.rmtree(staging, ignore_errors=True)
        loaded.model.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    replace_dir(staging, target)  # the old adapter stays whole until the new one is
    return str(target)
