"""Replies from a model in chat form: the one way the app generates text, used by the probes during
training and by chat and evaluation afterwards.

Prompts are rendered with the tokenizer's chat template (the one training used: the pipeline sets
it on the tokenizer and saves it beside every adapter), and generation ends on the tokens training
taught the model to end a reply with. `generate_replies` answers a batch at once (left padding);
`ReplyStream` answers one conversation token by token through transformers' TextIteratorStreamer,
generating on a thread of its own so the caller can read the text as it comes and cancel it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

Messages = list[dict[str, str]]


@dataclass
class Sampling:
    """How to pick each next token: greedy (temperature 0) or sampled."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy: the most likely token, the same reply every time
    top_p: float = 1.0

    def generation_config(self, stop_ids: list[int], pad_id: int | None):
        from transformers import GenerationConfig

        sampled = self.temperature > 0
        extra = {"temperature": self.temperature, "top_p": self.top_p, "top_k": None} if sampled else {}
        # A full config, so the model's own defaults (some ship do_sample=True) do not leak in.
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=sampled, eos_token_id=stop_ids,
                                pad_token_id=pad_id, use_cache=True, **extra)


@dataclass
class Reply:
    text: str
    new_tokens: int
    stopped: bool  # ended on a stop token rather than the token limit
    cancelled: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"reply": self.text, "tokens": self.new_tokens, "stopped": self.stopped}


@dataclass
class ChatModel:
    """A model ready to answer: its tokenizer (with the chat template), stop tokens and device."""

    model: object
    tokenizer: object
    stop_ids: list[int]
    device: torch.device

    def encode(self, conversations: list[Messages]):
        tokenizer = self.tokenizer
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        # Left padding for this call only: the tokenizer may be the one the training collator pads with (right).
        return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                         add_special_tokens=False).to(self.device)

    def reply_of(self, new_ids: list[int], seconds: float = 0.0, cancelled: bool = False) -> Reply:
        stop_at = next((i for i, t in enumerate(new_ids) if t in self.stop_ids), None)
        kept = new_ids if stop_at is None else new_ids[:stop_at]
        # Left padding ends the prompt, so no pad token sits among a reply's ids but after its stop.
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return Reply(text, len(kept), stop_at is not None, cancelled, round(seconds, 3))


def generate_replies(chat: ChatModel, conversations: list[Messages], sampling: Sampling | None = None,
                     batch_size: int = 16, cancel: Callable[[], bool] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> list[Reply]:
    """Replies to conversations (each ending with a user turn), `batch_size` at a time."""
    sampling = sampling or Sampling()
    config = sampling.generation_config(chat.stop_ids, chat.tokenizer.pad_token_id)
    replies: list[Reply] = []
    for start in range(0, len(conversations), batch_size):
        if cancel is not None and cancel():
            break
        began = time.monotonic()
        batch = chat.encode(conversations[start:start + batch_size])
        with torch.no_grad():
            output = chat.model.generate(**batch, generation_config=config)
        seconds = (time.monotonic() - began) / len(batch["input_ids"])
        replies += [chat.reply_of(row, seconds) for row in output[:, batch["input_ids"].shape[1]:].tolist()]
        if progress is not None:
            progress(len(replies), len(conversations))
    return replies


class _Cancelled:
    """A StoppingCriteria (duck-typed, see transformers.StoppingCriteria) that ends generation on request."""

    def __init__(self, cancel: Callable[[], bool]):
        self.cancel = cancel
        self.fired = False

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        self.fired = self.fired or bool(self.cancel())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class ReplyStream:
    """One reply, text piece by text piece: `for text in stream: ...`, then `stream.reply`.

    generate() runs on its own thread and hands decoded text through transformers'
    TextIteratorStreamer; `cancel()` returning True ends it after the current token."""

    def __init__(self, chat: ChatModel, messages: Messages, sampling: Sampling | None = None,
                 cancel: Callable[[], bool] | None = None):
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        self.chat = chat
        self.streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.cancelled = _Cancelled(cancel or (lambda: False))
        self.kwargs = dict(**chat.encode([messages]),
                           generation_config=(sampling or Sampling()).generation_config(chat.stop_ids, chat.tokenizer.pad_token_id),
                           streamer=self.streamer, stopping_criteria=StoppingCriteriaList([self.cancelled]))
        self.reply: Reply | None = None
        self._output = None
        self._error: BaseException | None = None

    def _generate(self) -> None:
        try:
            with torch.no_grad():
                self._output = self.chat.model.generate(**self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised again on the reading thread
            self._error = exc
            self.streamer.end()  # the reader would wait for text forever otherwise

    def __iter__(self) -> Iterator[str]:
        began = time.monotonic()
        worker = threading.Thread(target=self._generate, name="generate", daemon=True)
        worker.start()
        yield from self.streamer
        worker.join()
        if self._error is not None:
            raise self._error
        prompt_length = self.kwargs["input_ids"].shape[1]
        self.reply = self.chat.reply_of(self._output[0, prompt_length:].tolist(), time.monotonic() - began,
                                        self.cancelled.fired)
