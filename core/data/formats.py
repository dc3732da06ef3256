"""The five row formats users actually have, detected from the columns and turned into one shape:
a list of {role, content} messages (or plain text for the `text` format).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from qlora_studio.core.errors import DataError

PROMPT_NAMES = ("prompt", "question", "query", "input", "instruction", "source", "human", "user")
COMPLETION_NAMES = ("completion", "answer", "response", "output", "target", "assistant", "gpt", "reply")
CONVERSATION_NAMES = ("messages", "conversations", "conversation", "chat", "dialog", "dialogue", "turns")
TEXT_NAMES = ("text", "content", "document", "body")

ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant",
    "system": "system", "developer": "system",
}
SHAREGPT_ROLES = "human, gpt or system"
MESSAGE_ROLES = "user, assistant or system"


class RowProblem(Exception):
    """One row does not fit its format; the message says why."""


def apply_column_mapping(columns: list[str], mapping: dict[str, str], label: str) -> dict[str, str]:
    """{canonical name: column in the file}; checks that every mapped column exists."""
    missing = [theirs for theirs in mapping.values() if theirs not in columns]
    if missing:
        raise DataError(
            f"data.columns names {', '.join(repr(m) for m in missing)}, but the columns are {', '.join(columns)}", path=label
        )
    renamed = {ours: theirs for ours, theirs in mapping.items()}
    for column in columns:
        if column not in renamed.values():
            renamed.setdefault(column, column)
    return renamed


def detect_format(columns: dict[str, str], sample: list[dict[str, Any]], label: str, kind: str) -> str:
    """The row format from the (mapped) column names and a few rows."""
    names = set(columns)
    if kind == "txt":
        return "text"
    conversation = _first_present(names, CONVERSATION_NAMES)
    if conversation:
        first = _first_turn(sample, columns[conversation])
        if isinstance(first, dict) and ("from" in first or "value" in first):
            return "sharegpt"
        return "messages"
    if "instruction" in names and ("output" in names or "response" in names):
        return "alpaca"
    if _first_present(names, PROMPT_NAMES) and _first_present(names, COMPLETION_NAMES):
        return "prompt_completion"
    if _first_present(names, TEXT_NAMES) or len(names) == 1:
        return "text"
    raise DataError(
        f"cannot tell the format from the columns {', '.join(sorted(columns.values()))}; set data.format "
        "(alpaca | sharegpt | messages | prompt_completion | text) and data.columns, e.g. {prompt: your_question_column}",
        path=label,
    )


@dataclass(frozen=True)
class RowFormat:
    """One row format: the columns it reads, by role, and how a row becomes messages (or text)."""

    needs: tuple[tuple[str, tuple[str, ...]], ...]  # (role, the column names that can hold it, preferred first)
    read: Callable[[dict[str, Any], dict[str, str]], tuple[list[dict[str, str]], str]]  # (row, columns) -> (messages, text)
    optional: tuple[str, ...] = ("system",)  # read when the file has them
    any_single_column: bool = False  # a file of one column is this format whatever the column's name


def _alpaca(row: dict[str, Any], cols: dict[str, str]) -> tuple[list[dict[str, str]], str]:
    instruction = _text(row.get(cols["instruction"]), cols["instruction"])
    extra = _optional_text(row.get(cols["input"])) if "input" in cols else ""
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user},
            {"role": "assistant", "content": _text(row.get(cols["output"]), cols["output"])}], ""


ROW_FORMATS: dict[str, RowFormat] = {
    "alpaca": RowFormat((("instruction", ("instruction",)), ("output", ("output", "response"))), _alpaca,
                        optional=("input", "system")),
    "sharegpt": RowFormat((("conversation", CONVERSATION_NAMES),),
                          lambda row, cols: (_conversation(row.get(cols["conversation"]), sharegpt=True), "")),
    "messages": RowFormat((("conversation", CONVERSATION_NAMES),),
                          lambda row, cols: (_conversation(row.get(cols["conversation"]), sharegpt=False), "")),
    "prompt_completion": RowFormat(
        (("prompt", PROMPT_NAMES), ("completion", COMPLETION_NAMES)),
        lambda row, cols: (_prompt_completion(row.get(cols["prompt"]), row.get(cols["completion"]), cols), "")),
    "text": RowFormat((("text", TEXT_NAMES),), lambda row, cols: ([], _text(row.get(cols["text"]), cols["text"])),
                      optional=(), any_single_column=True),
}
FORMATS = tuple(ROW_FORMATS)


def required_columns(fmt: str, columns: dict[str, str], label: str) -> dict[str, str]:
    """The columns `fmt` reads, by role: {'conversation': 'messages'} etc. Missing ones are an error."""
    spec, names = ROW_FORMATS[fmt], set(columns)
    picked = {}
    for role, candidates in spec.needs:
        found = _first_present(names, candidates) or (next(iter(names)) if spec.any_single_column and len(names) == 1 else None)
        if found is None:
            raise DataError(
                f"the {fmt} format needs a {role} column ({' / '.join(candidates[:4])}); the columns are "
                f"{', '.join(sorted(columns.values()))} (map yours with data.columns)",
                path=label,
            )
        picked[role] = columns[found]
    picked.update({role: columns[role] for role in spec.optional if role in names})
    return picked


def normalize_row(row: dict[str, Any], fmt: str, cols: dict[str, str], system_prompt: str | None) -> tuple[list[dict[str, str]], str]:
    """(messages, text) for one row; raises RowProblem when the row does not fit."""
    messages, text = ROW_FORMATS[fmt].read(row, cols)
    if not messages:
        return messages, text
    system = (_optional_text(row.get(cols["system"])) if "system" in cols else "") or system_prompt
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages, ""


def _prompt_completion(prompt: Any, completion: Any, cols: dict[str, str]) -> list[dict[str, str]]:
    # TRL's conversational prompt-completion: both sides already lists of messages
    if isinstance(prompt, list) or isinstance(completion, list):
        turns = _conversation(prompt, sharegpt=False, need_assistant=False) if isinstance(prompt, list) else [
            {"role": "user", "content": _text(prompt, cols["prompt"])}]
        tail = _conversation(completion, sharegpt=False) if isinstance(completion, list) else [
            {"role": "assistant", "content": _text(completion, cols["completion"])}]
        return turns + tail
    return [{"role": "user", "content": _text(prompt, cols["prompt"])},
            {"role": "assistant", "content": _text(completion, cols["completion"])}]


def _conversation(turns: Any, sharegpt: bool, need_assistant: bool = True) -> list[dict[str, str]]:
    if turns is None:
        raise RowProblem("the conversation is missing")
    if not isinstance(turns, list):
        raise RowProblem(f"the conversation must be a list of turns, not {type(turns).__name__}")
    if not turns:
        raise RowProblem("the conversation is empty")
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    allowed = SHAREGPT_ROLES if sharegpt else MESSAGE_ROLES
    messages = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowProblem(f"turn {number} is not an object with {role_key} and {content_key}")
        raw_role = turn.get(role_key)
        if raw_role is None:
            raise RowProblem(f"turn {number} has no '{role_key}'")
        role = ROLE_ALIASES.get(str(raw_role).strip().lower())
        if role is None:
            raise RowProblem(f"unknown role '{raw_role}' in turn {number} (expected {allowed})")
        content = _content(turn.get(content_key), number, content_key)
        if role == "system" and messages:
            raise RowProblem(f"turn {number} is a system turn after the conversation started")
        messages.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise RowProblem("the conversation has no assistant turn, so nothing to learn from")
    return messages


def _content(value: Any, number: int, key: str) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise RowProblem(f"turn {number} has non-text content (images and tools are not supported)")
        value = "".join(parts)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowProblem(f"turn {number} has no '{key}'")
    if not isinstance(value, str):
        value = str(value)
    if not value.strip():
        raise RowProblem(f"turn {number} is empty")
    return value


def _text(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowProblem(f"'{column}' is missing")
    if isinstance(value, (dict, list)):
        raise RowProblem(f"'{column}' must be text, not {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise RowProblem(f"'{column}' is empty")
    return text


def _optional_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip() and str(value)


def _first_present(names: set[str], candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        if candidate in names:
            return candidate
    return None


def _first_turn(sample: list[dict[str, Any]], column: str) -> Any:
    for row in sample:
        turns = row.get(column)
        if isinstance(turns, list) and turns:
            return turns[0]
    return None
