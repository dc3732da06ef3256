"""Conversations and texts into `input_ids` and `labels`: the chat template renders, labels keep the
assistant tokens only, every reply ends in a token generation stops on, long examples are cut."""

from __future__ import annotations

from typing import Any

from qlora_studio.core.data.formats import RowProblem

IGNORE_INDEX = -100
# Strings that end a turn in common templates; used only when a template's output cannot be
# split turn by turn and the end of a reply has to be found by search.
TURN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


class ConversationEncoder:
    """Turns messages into input_ids and labels, labels set on assistant tokens only.

    Each assistant turn's character span is found by rendering the conversation up to that turn
    (with and without the generation prompt), so the mask follows whatever the template writes.
    Every assistant turn must end in a token generation stops on; where the template does not
    write one, the EOS token is added and trained, so the tuned model learns to stop.
    """

    def __init__(self, tokenizer, template: str, train_on: str, max_length: int, overlength: str,
                 stop_ids: list[int]):
        self.tokenizer = tokenizer
        self.template = template
        self.train_on = train_on
        self.max_length = max_length
        self.overlength = overlength
        self.eos_id = tokenizer.eos_token_id
        self.stop_ids = sorted({i for i in stop_ids if i is not None} | ({self.eos_id} if self.eos_id is not None else set()))
        probe = tokenizer("a", add_special_tokens=True).input_ids
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else None

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=generation_prompt
        )

    def assistant_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        full = self.render(messages)
        spans: list[tuple[int, int]] = []
        cursor = 0
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:index], generation_prompt=True) if index else ""
            through = self.render(messages[: index + 1]).rstrip()
            if full.startswith(before) and full.startswith(through) and len(before) < len(through):
                start, end = len(before), len(through)
            else:
                start, end = self._search_span(full, message["content"], cursor, index)
            spans.append((start, end))
            cursor = end
        return full, spans

    def _search_span(self, full: str, content: str, cursor: int, index: int) -> tuple[int, int]:
        start = full.find(content, cursor)
        if start < 0:
            raise RowProblem(f"the chat template drops or rewrites assistant turn {index + 1}; try another data.chat_template")
        end = start + len(content)
        tail = full[end:end + 40]
        hits = [(tail.find(m), m) for m in TURN_END_MARKERS if tail.find(m) >= 0]
        if hits:
            offset, marker = min(hits)
            end += offset + len(marker)
        return start, end

    def encode_messages(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        try:
            text, spans = self.assistant_spans(messages)
        except RowProblem:
            raise
        except Exception as exc:  # jinja raises TemplateError and friends for conversations it rejects
            raise RowProblem(f"the chat template rejects this conversation ({str(exc).splitlines()[0]})") from None
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(encoded["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in encoded["offset_mapping"]]
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
            offsets.insert(0, (0, 0))
        in_span = [-1] * len(ids)
        for number, (lo, hi) in enumerate(spans):
            for j, (s, e) in enumerate(offsets):
                if s < hi and e > lo and e > s:
                    in_span[j] = number
        labels = list(ids) if self.train_on == "all" else [t if in_span[j] >= 0 else IGNORE_INDEX for j, t in enumerate(ids)]
        eos_added = 0
        for number in reversed(range(len(spans))):
            members = [j for j, s in enumerate(in_span) if s == number]
            if not members:
                continue
            if not any(ids[j] in self.stop_ids for j in members) and self.eos_id is not None:
                at = members[-1] + 1
                ids.insert(at, self.eos_id)
                labels.insert(at, self.eos_id)
                in_span.insert(at, number)
                eos_added += 1
        return {"input_ids": ids, "labels": labels, "eos_added": eos_added}

    def encode_text(self, text: str) -> dict[str, Any]:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if self.bos_id is not None:
            ids = [self.bos_id] + ids
        if self.eos_id is not None:
            ids = ids + [self.eos_id]
        return {"input_ids": ids, "labels": list(ids), "eos_added": 0}

    def fit_length(self, example: dict[str, Any], is_text: bool) -> tuple[list[dict[str, Any]], str]:
        """Pieces that respect max_length, and what happened: '' | cut | split | drop:<reason>."""
        ids, labels = example["input_ids"], example["labels"]
        limit = self.max_length
        if len(ids) <= limit:
            return [example], ""
        if is_text and self.overlength == "truncate":
            pieces = [{"input_ids": ids[i:i + limit], "labels": labels[i:i + limit]} for i in range(0, len(ids), limit)]
            return [p for p in pieces if len(p["input_ids"]) > 1], "split"
        if self.overlength == "drop":
            return [], f"drop:longer than data.max_length ({len(ids)} > {limit} tokens)"
        cut = {"input_ids": ids[:limit], "labels": labels[:limit]}
        if all(label == IGNORE_INDEX for label in cut["labels"]):
            return [], f"drop:no reply left after cutting to data.max_length {limit}"
        return [cut], "cut"
