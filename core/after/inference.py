"""Try a trained adapter: load the base as it was trained, attach the adapter, generate, score.

The prompt is rendered with the chat template saved beside the adapter (the one training used),
and generation stops on the same tokens training taught the model to end with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from qlora_studio.core.config.files import load_config
from qlora_studio.core.config.schema import DataSettings, RunConfig
from qlora_studio.core.errors import UserError


@dataclass
class Reply:
    text: str
    new_tokens: int
    stopped: bool  # ended on a stop token rather than the token limit


@dataclass
class LoadedForInference:
    model: object
    tokenizer: object
    stop_ids: list[int]
    device: torch.device
    with_adapter: bool


@dataclass
class Evaluation:
    rows: int
    exact_match: float
    stopped: float  # share of replies that ended by themselves
    examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "exact_match": self.exact_match, "stopped": self.stopped, "examples": self.examples}


def _locate(path: str | Path) -> tuple[Path, RunConfig | None]:
    path = Path(path).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():
        config = load_config(path / "config.yaml") if (path / "config.yaml").is_file() else None
        return path / "adapter", config
    if (path / "adapter_config.json").is_file():
        parent_config = path.parent / "config.yaml"
        return path, load_config(parent_config) if parent_config.is_file() else None
    raise UserError(f"{path}: neither a run folder with adapter/ nor an adapter folder (no adapter_config.json)")


def load_for_inference(path: str | Path, with_adapter: bool = True) -> LoadedForInference:
    """The run's base model quantized as in training, with its adapter unless `with_adapter` is False."""
    import json

    from peft import PeftModel
    from transformers import AutoTokenizer

    from qlora_studio.core.model.consent import check_remote_code, check_weights
    from qlora_studio.core.model.devices import resolve_compute_dtype, resolve_device
    from qlora_studio.core.model.loading import load_base_model, stop_token_ids
    from qlora_studio.core.model.sources import resolve_model_source

    adapter_dir, config = _locate(path)
    if config is None:
        base = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        config = RunConfig.model_validate({"model": {"name_or_path": base}})
    device = resolve_device(config.train.device)
    dtype = resolve_compute_dtype(config.quantization.compute_dtype, device)
    source = resolve_model_source(config.model)
    check_remote_code(source.path, config.model, None)
    model = load_base_model(config, source, device, dtype)
    if with_adapter:
        check_weights(adapter_dir, str(adapter_dir), what="adapter")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    # The adapter's tokenizer carries the chat template training used, for the base model too.
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedForInference(model, tokenizer, stop_token_ids(tokenizer, source.path), device, with_adapter)


def generate(loaded: LoadedForInference, conversations: list[list[dict[str, str]]], max_new_tokens: int = 128,
             batch_size: int = 16) -> list[Reply]:
    """Greedy replies to conversations (each ending with a user turn), batched with left padding."""
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    replies: list[Reply] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start:start + batch_size]
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
        with torch.no_grad():
            output = loaded.model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=loaded.stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in output[:, batch["input_ids"].shape[1]:].tolist():
            stop_at = next((i for i, t in enumerate(row) if t in loaded.stop_ids), None)
            kept = row if stop_at is None else row[:stop_at]
            replies.append(Reply(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept), stop_at is not None))
    return replies


def generate_reply(path: str | Path, prompt: str, max_new_tokens: int = 128) -> Reply:
    return generate(load_for_inference(path), [[{"role": "user", "content": prompt}]], max_new_tokens)[0]


def evaluate(loaded: LoadedForInference, data_path: str, limit: int | None = None, max_new_tokens: int = 64) -> Evaluation:
    """Exact match of the model's reply with each row's last assistant turn, and how often it stops by itself."""
    from qlora_studio.core.data.pipeline import load_normalized

    _, rows, _, bad, bad_count, _ = load_normalized(DataSettings(path=data_path, skip_bad_rows=True))
    conversations, references = [], []
    for messages in rows["messages"]:
        if messages and messages[-1]["role"] == "assistant":
            conversations.append(messages[:-1])
            references.append(messages[-1]["content"].strip())
        if limit and len(conversations) >= limit:
            break
    if not conversations:
        raise UserError(f"{data_path}: no conversation ends with an assistant reply to compare against")
    replies = generate(loaded, conversations, max_new_tokens)
    matches = [r.text == ref for r, ref in zip(replies, references)]
    examples = [{"prompt": c[-1]["content"], "reference": ref, "reply": r.text, "stopped": r.stopped}
                for c, ref, r in list(zip(conversations, references, replies))[:5]]
    return Evaluation(len(replies), sum(matches) / len(replies), sum(r.stopped for r in replies) / len(replies), examples)
