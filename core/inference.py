"""Try a trained adapter: load the base as it was trained, attach the adapter, generate.

The prompt is rendered with the chat template saved beside the adapter (the one training used),
and generation stops on the same tokens training taught the model to end with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qlora_studio.core.config import RunConfig, load_config
from qlora_studio.core.errors import UserError


@dataclass
class Reply:
    text: str
    new_tokens: int
    stopped: bool  # ended on a stop token rather than the token limit


@dataclass
class AdapterModel:
    model: object
    tokenizer: object
    stop_ids: list[int]
    device: torch.device


def _locate(path: str | Path) -> tuple[Path, RunConfig | None]:
    path = Path(path).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():
        config = load_config(path / "config.yaml") if (path / "config.yaml").is_file() else None
        return path / "adapter", config
    if (path / "adapter_config.json").is_file():
        parent_config = path.parent / "config.yaml"
        return path, load_config(parent_config) if parent_config.is_file() else None
    raise UserError(f"{path}: neither a run folder with adapter/ nor an adapter folder (no adapter_config.json)")


def load_adapter(path: str | Path) -> AdapterModel:
    import json

    from peft import PeftModel
    from transformers import AutoTokenizer

    from qlora_studio.core.data import stop_token_ids
    from qlora_studio.core.modeling import load_base_model, resolve_compute_dtype, resolve_device, resolve_model_source

    adapter_dir, config = _locate(path)
    if config is None:
        base = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        config = RunConfig.model_validate({"model": {"name_or_path": base}})
    device = resolve_device(config.train.device)
    dtype = resolve_compute_dtype(config.quantization.compute_dtype, device)
    source = resolve_model_source(config.model)
    base_model = load_base_model(config, source, device, dtype)
    model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AdapterModel(model, tokenizer, stop_token_ids(tokenizer, source.path), device)


def generate(loaded: AdapterModel, prompts: list[str], max_new_tokens: int = 128) -> list[Reply]:
    """Greedy replies to single-turn user prompts, batched (left padding)."""
    tokenizer = loaded.tokenizer
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
    with torch.no_grad():
        output = loaded.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=loaded.stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
    replies = []
    for row in output[:, batch["input_ids"].shape[1]:].tolist():
        stop_at = next((i for i, t in enumerate(row) if t in loaded.stop_ids), None)
        kept = row if stop_at is None else row[:stop_at]
        replies.append(Reply(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept), stop_at is not None))
    return replies


def generate_reply(path: str | Path, prompt: str, max_new_tokens: int = 128) -> Reply:
    return generate(load_adapter(path), [prompt], max_new_tokens)[0]
