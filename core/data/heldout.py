"""Held-out rows for evaluating a trained adapter: the run's own validation split (the same rows,
split with the same seed) or another file, as prompts with their reference replies (for exact
match) and as encoded examples with assistant-only labels (for validation loss), encoded exactly
as training encoded them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qlora_studio.core.config.schema import DataSettings
from qlora_studio.core.data.encoder import ConversationEncoder
from qlora_studio.core.data.pipeline import _encode, _usable, load_normalized, split_rows
from qlora_studio.core.data.templates import choose_template
from qlora_studio.core.errors import DataError

RUN_SPLIT = "validation split"


@dataclass
class HeldOut:
    label: str  # "validation split" or the file
    prompts: list[list[dict[str, str]]]  # each conversation without its last (assistant) turn
    references: list[str]  # that last turn
    encoded: Any  # datasets.Dataset of input_ids and labels, for the loss
    # Held-out preference pairs (prompt, chosen, rejected), for how often a model ranks chosen first
    pairs: list[tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]] = field(default_factory=list)
    # GRPO: each prompt's reference answer or None, for the run's rewards
    answers: list[str | None] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return max(len(self.prompts), len(self.encoded))


def held_out_rows(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int, path: str | None = None,
                  limit: int | None = None, method: str = "sft") -> HeldOut:
    """The run's validation rows (`path` None) or every row of `path`, at most `limit` of them. A run
    past SFT reads its own kind of rows (pairs, answers marked good or bad, prompts): the split it
    held out, or a file of them; a file of conversations is read as for SFT."""
    if method != "sft":
        held = _method_rows(settings, tokenizer, stop_ids, seed, path, limit, method)
        if held is not None:
            return held
    if path is None:
        _, normalized, _, _, _, _ = load_normalized(settings.model_copy(update={"skip_bad_rows": True}))
        _, rows = split_rows(settings.model_copy(update={"skip_bad_rows": True}), normalized, seed)
        if rows is None or len(rows) == 0:
            raise DataError("the run has no validation rows (data.validation_split is 0); choose a file to evaluate on")
        label = settings.validation_path or RUN_SPLIT
    else:
        other = settings.model_copy(update={"path": path, "validation_path": None, "validation_split": 0.0,
                                            "skip_bad_rows": True})
        _, rows, _, _, _, _ = load_normalized(other)
        label = path
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    prompts, references = [], []
    for messages in rows["messages"]:
        if messages and messages[-1]["role"] == "assistant" and len(messages) > 1:
            prompts.append(messages[:-1])
            references.append(messages[-1]["content"].strip())
    template, _, _ = choose_template(tokenizer, settings.chat_template)
    encoder = ConversationEncoder(tokenizer, template, settings.train_on, settings.max_length, settings.overlength,
                                  stop_ids)
    encoded = _usable(_encode(rows, encoder, None)).select_columns(["input_ids", "labels"])
    if not prompts and len(encoded) == 0:
        raise DataError(f"{label}: no usable rows to evaluate on")
    return HeldOut(label, prompts, references, encoded)


def _method_rows(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int, path: str | None,
                 limit: int | None, method: str) -> HeldOut | None:
    """Held-out rows of a run past SFT: the prompts answered, the reference (the chosen or a
    desirable answer, GRPO's answer) for exact match, the prompt + reference encoded for the loss,
    and the pairs. None when `path` holds conversations rather than the method's rows."""
    from datasets import Dataset

    from qlora_studio.core.data.method_data import load_method_rows, split_method_rows

    quiet = settings.model_copy(update={"skip_bad_rows": True})
    if path is None:
        _, rows, _, _, _, _, _ = load_method_rows(quiet, method)
        _, rows = split_method_rows(quiet, method, rows, seed)
        if not rows:
            raise DataError("the run has no validation rows (data.validation_split is 0); choose a file to evaluate on")
        label = settings.validation_path or RUN_SPLIT
    else:
        try:
            _, rows, _, _, _, _, _ = load_method_rows(quiet.model_copy(update={"path": path, "format": "auto"}), method, path)
        except DataError:
            return None  # conversations: read as for SFT
        label = path
    rows = rows[:limit] if limit else rows
    prompts, references, conversations, pairs, answers = [], [], [], [], []
    for row in rows:
        reply = row.get("chosen") or (row["completion"] if row.get("label", True) and "completion" in row else None)
        if reply is not None:
            text = "\n".join(m["content"] for m in reply if m["role"] == "assistant").strip()
            prompts.append(row["prompt"])
            references.append(text)
            conversations.append(row["prompt"] + reply)
        elif "answer" in row:
            prompts.append(row["prompt"])
            references.append(row["answer"] or "")
            answers.append(row["answer"])
            if row["answer"]:
                conversations.append(row["prompt"] + [{"role": "assistant", "content": row["answer"]}])
        if "rejected" in row:
            pairs.append((row["prompt"], row["chosen"], row["rejected"]))
    template, _, _ = choose_template(tokenizer, settings.chat_template)
    encoder = ConversationEncoder(tokenizer, template, settings.train_on, settings.max_length, settings.overlength,
                                  stop_ids)
    normalized = Dataset.from_list([{"messages": m, "text": "", "_row": i, "_part": 0}
                                    for i, m in enumerate(conversations)]) if conversations else None
    encoded = (_usable(_encode(normalized, encoder, None)).select_columns(["input_ids", "labels"])
               if normalized is not None else [])
    if not prompts:
        raise DataError(f"{label}: no usable rows to evaluate on")
    return HeldOut(label, prompts, references, encoded, pairs, answers if method == "grpo" else [])
