"""Rows of the methods past SFT, in TRL's conversational shapes: preference pairs (DPO, ORPO),
unpaired answers marked good or bad (KTO), prompts with an optional reference answer (GRPO).

Pairs come in many shapes; each becomes {prompt: [messages], chosen: [assistant], rejected:
[assistant]}:
- `prompt` / `chosen` / `rejected` as strings;
- the same as message lists, chosen and rejected either the answer alone or the whole
  conversation, prompt included (UltraFeedback);
- no prompt column: chosen and rejected are whole conversations sharing their prompt, as message
  lists or as Anthropic-HH text ("\\n\\nHuman: ... \\n\\nAssistant: ...").
TRL tokenizes these rows itself with the tokenizer's chat template (the run's, set before the
trainer is made); `completion_tokens` here does the same, so the X-ray's counts are training's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from qlora_studio.core.data.formats import (
    COMPLETION_NAMES, CONVERSATION_NAMES, PROMPT_NAMES, ROW_FORMATS, RowProblem, _conversation, _first_present,
    _optional_text, _text,
)

CHOSEN_NAMES = ("chosen", "preferred", "accepted", "chosen_response", "winner")
REJECTED_NAMES = ("rejected", "dispreferred", "rejected_response", "loser")
LABEL_NAMES = ("label", "desirable", "is_desirable", "kto_tag", "thumbs_up")
ANSWER_NAMES = ("answer", "solution", "reference", "ground_truth", "expected", "target")

TRUE_LABELS = {"true", "1", "yes", "good", "desirable", "positive", "+", "up", "chosen"}
FALSE_LABELS = {"false", "0", "no", "bad", "undesirable", "negative", "-", "down", "rejected"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


@dataclass(frozen=True)
class MethodFormat:
    """A row format of a method past SFT: its columns by role (role, names, required) and the reader
    that turns a row into TRL's shape (raises RowProblem)."""

    columns: tuple[tuple[str, tuple[str, ...], bool], ...]
    read: Callable[[dict[str, Any], dict[str, str], str | None], dict[str, Any]]
    fields: tuple[str, ...]  # the TRL row's keys


def _preference(row: dict[str, Any], cols: dict[str, str], system: str | None) -> dict[str, Any]:
    chosen_raw, rejected_raw = row.get(cols["chosen"]), row.get(cols["rejected"])
    prompt_raw = row.get(cols["prompt"]) if "prompt" in cols else None
    if _missing(prompt_raw):
        prompt, chosen, rejected = _split_shared_prompt(chosen_raw, rejected_raw, cols)
    else:
        prompt = _prompt_messages(prompt_raw, cols["prompt"])
        chosen = _answer(chosen_raw, cols["chosen"], prompt)
        rejected = _answer(rejected_raw, cols["rejected"], prompt)
    return {"prompt": _with_system(prompt, system), "chosen": chosen, "rejected": rejected}


def _unpaired(row: dict[str, Any], cols: dict[str, str], system: str | None) -> dict[str, Any]:
    prompt = _prompt_messages(row.get(cols["prompt"]), cols["prompt"])
    completion = _answer(row.get(cols["completion"]), cols["completion"], prompt)
    return {"prompt": _with_system(prompt, system), "completion": completion,
            "label": _label(row.get(cols["label"]), cols["label"])}


def _prompt_only(row: dict[str, Any], cols: dict[str, str], system: str | None) -> dict[str, Any]:
    prompt = _prompt_messages(row.get(cols["prompt"]), cols["prompt"])
    answer = _optional_text(row.get(cols["answer"])).strip() if "answer" in cols else ""
    return {"prompt": _with_system(prompt, system), "answer": answer or None}


METHOD_ROW_FORMATS: dict[str, MethodFormat] = {
    "preference": MethodFormat((("prompt", PROMPT_NAMES, False), ("chosen", CHOSEN_NAMES, True),
                                ("rejected", REJECTED_NAMES, True), ("system", ("system",), False)),
                               _preference, ("prompt", "chosen", "rejected")),
    "unpaired": MethodFormat((("prompt", PROMPT_NAMES, True), ("completion", COMPLETION_NAMES, True),
                              ("label", LABEL_NAMES, True), ("system", ("system",), False)),
                             _unpaired, ("prompt", "completion", "label")),
    "prompt": MethodFormat((("prompt", PROMPT_NAMES, True), ("answer", ANSWER_NAMES, False),
                            ("system", ("system",), False)),
                           _prompt_only, ("prompt", "answer")),
}


def detect_method_format(method: str, names: set[str], label: str) -> str:
    """The row format a method reads, from the (mapped) column names; `DataError` when none fits."""
    from qlora_studio.core.errors import DataError

    has = lambda candidates: _first_present(names, candidates) is not None  # noqa: E731
    if method in ("dpo", "orpo", "kto") and has(CHOSEN_NAMES) and has(REJECTED_NAMES):
        return "preference"
    if method == "kto" and has(PROMPT_NAMES) and has(COMPLETION_NAMES) and has(LABEL_NAMES):
        return "unpaired"
    if method == "grpo":
        if has(CONVERSATION_NAMES) or ("instruction" in names and ("output" in names or "response" in names)):
            return "sft_rows"  # any SFT format: the prompt is trained, its answer is the reference
        if has(PROMPT_NAMES):
            return "prompt"
    needs = {"dpo": "prompt / chosen / rejected columns (the prompt may be part of chosen and rejected)",
             "orpo": "prompt / chosen / rejected columns (the prompt may be part of chosen and rejected)",
             "kto": "prompt / completion / label columns, or prompt / chosen / rejected pairs",
             "grpo": "a prompt column (and optionally an answer column)"}[method]
    raise DataError(f"train.method {method} needs {needs}; the columns are {', '.join(sorted(names))} "
                    "(map yours with data.columns, e.g. {chosen: better_answer})", path=label)


def method_columns(fmt: str, columns: dict[str, str], label: str) -> dict[str, str]:
    """{role: column in the file} for a method format; a missing required column is a `DataError`."""
    from qlora_studio.core.errors import DataError

    names, picked = set(columns), {}
    for role, candidates, required in METHOD_ROW_FORMATS[fmt].columns:
        found = _first_present(names, candidates)
        if found is None and required:
            raise DataError(f"the {fmt} format needs a {role} column ({' / '.join(candidates[:4])}); the columns are "
                            f"{', '.join(sorted(columns.values()))} (map yours with data.columns)", path=label)
        if found is not None:
            picked[role] = columns[found]
    return picked


def read_method_row(row: dict[str, Any], fmt: str, cols: dict[str, str], system: str | None,
                    sft_format: str | None = None) -> dict[str, Any]:
    """One row in TRL's shape; `sft_rows` (GRPO over SFT data) keeps the conversation before the
    last reply as the prompt and that reply as the reference answer."""
    if "system" in cols:
        system = _optional_text(row.get(cols["system"])) or system
    if fmt != "sft_rows":
        return METHOD_ROW_FORMATS[fmt].read(row, cols, system)
    messages, _ = ROW_FORMATS[sft_format].read(row, cols)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = messages[:last]
    if not any(m["role"] == "user" for m in prompt):
        raise RowProblem("no user turn before the last reply, so no prompt to answer")
    return {"prompt": _with_system(prompt, system), "answer": messages[last]["content"].strip() or None}


def pair_problem(row: dict[str, Any]) -> str:
    """'' for a good pair; why a pair teaches nothing (identical answers), for the X-ray's flags."""
    if "chosen" in row and row["chosen"] == row["rejected"]:
        return "chosen and rejected are identical"
    return ""


def completion_tokens(tokenizer, prompt: list[dict[str, str]], completion: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) as TRL's preference trainers cut them: the completion starts
    where the rendered prompt (with the generation prompt) and prompt + completion part."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    shared = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        shared += 1
    return list(full_ids[:shared]), list(full_ids[shared:])


# ---- readers ----
def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _sharegpt(turns: list) -> bool:
    return bool(turns) and isinstance(turns[0], dict) and "from" in turns[0]


def _prompt_messages(value: Any, column: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        messages = _conversation(value, sharegpt=_sharegpt(value), need_assistant=False)
        if messages[-1]["role"] == "assistant":
            raise RowProblem(f"'{column}' ends with an assistant turn; the prompt should end with the user's turn")
        return messages
    return [{"role": "user", "content": _text(value, column)}]


def _answer(value: Any, column: str, prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """The assistant reply of a chosen / rejected / completion cell: a string, the reply as
    messages, or the whole conversation with the prompt in front (UltraFeedback)."""
    if isinstance(value, dict):  # one message (LLaMA-Factory's ShareGPT pairs)
        value = [value]
    if isinstance(value, list):
        turns = _conversation(value, sharegpt=_sharegpt(value))
        if turns[:len(prompt)] == prompt:
            turns = turns[len(prompt):]
        elif turns and turns[0]["role"] == "user" and prompt and turns[0]["content"] == prompt[0]["content"] and len(turns) > len(prompt):
            turns = turns[len(prompt):]  # the same turns, a system prompt added on one side only
        if not turns or turns[-1]["role"] != "assistant":
            raise RowProblem(f"'{column}' has no assistant reply after the prompt")
        return turns
    return [{"role": "assistant", "content": _text(value, column)}]


def _split_shared_prompt(chosen: Any, rejected: Any, cols: dict[str, str]) -> tuple[list, list, list]:
    """No prompt column: both answers are whole conversations; their shared start is the prompt."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        chosen, rejected = _hh_turns(chosen, cols["chosen"]), _hh_turns(rejected, cols["rejected"])
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise RowProblem(f"without a prompt column, '{cols['chosen']}' and '{cols['rejected']}' must be whole "
                         "conversations (message lists, or Human:/Assistant: text)")
    chosen = _conversation(chosen, sharegpt=False)
    rejected = _conversation(rejected, sharegpt=False)
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":  # the answers start with the assistant's turn
        shared -= 1
    prompt = chosen[:shared]
    if not any(m["role"] == "user" for m in prompt):
        raise RowProblem(f"'{cols['chosen']}' and '{cols['rejected']}' share no user turn to use as the prompt")
    return prompt, chosen[shared:], rejected[shared:]


def _hh_turns(text: str, column: str) -> list[dict[str, str]]:
    """Anthropic-HH text ("\\n\\nHuman: hi\\n\\nAssistant: hello") as messages."""
    pieces = HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    turns = [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
             for who, body in zip(pieces[1::2], pieces[2::2])]
    if not turns:
        raise RowProblem(f"'{column}' is text without Human:/Assistant: turns, and there is no prompt column")
    return turns


def _label(value: Any, column: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in TRUE_LABELS:
        return True
    if text in FALSE_LABELS:
        return False
    raise RowProblem(f"'{column}' must be true or false (desirable or not), not {value!r}")


def _with_system(prompt: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    if system and prompt[0]["role"] != "system":
        return [{"role": "system", "content": system}] + prompt
    return prompt
