"""Held-out rows for evaluating a trained adapter: the run's own validation split (the same rows,
split with the same seed) or another file, as prompts with their reference replies (for exact
match) and as encoded examples with assistant-only labels (for validation loss), encoded exactly
as training encoded them."""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def rows(self) -> int:
        return max(len(self.prompts), len(self.encoded))


def held_out_rows(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int, path: str | None = None,
                  limit: int | None = None) -> HeldOut:
    """The run's validation rows (`path` None) or every row of `path`, at most `limit` of them."""
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
