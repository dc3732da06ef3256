"""Try a trained adapter: its base loaded once as training loaded it, the adapter attached, and base
answers from the same copy with the adapter switched off (peft's `disable_adapter`), so comparing
the two costs no second model in memory. Switching to another checkpoint of the same base swaps
only the adapter.

A second run on the same base (same model, revision and quantization) can be compared beside the
first: its adapter is loaded onto the same PeftModel under a name of its own (peft's
`load_adapter`), answers with `set_adapter`, and the first adapter is active again afterwards;
the base weights stay loaded once. Another base is refused with one line (core/after/compare.py).

Generation itself is core/model/generation.py (the one way the app generates): prompts in the
chat template saved beside the adapter (the one training used), stops on the tokens training
taught the model to end with.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from qlora_studio.core.after.adapters import AdapterRef, locate_adapter
from qlora_studio.core.after.compare import Comparison, check_same_base
from qlora_studio.core.model.generation import ChatModel, Messages, Reply, Sampling, generate_replies

TUNED, BASE, COMPARED = "tuned", "base", "compared"  # who answers: the run, its base, the compared run
SIDES = (TUNED, BASE, COMPARED)


class InferenceSession:
    """One base model in memory with one adapter attached (and, to compare, a second one)."""

    ADAPTER = "tuned"
    COMPARED_ADAPTER = "compared"

    def __init__(self, ref: AdapterRef):
        from peft import PeftModel

        from qlora_studio.core.model.devices import resolve_device
        from qlora_studio.core.model.loading import load_base_model, stop_token_ids
        from qlora_studio.core.model.sources import resolve_model_source

        from qlora_studio.core.model.consent import check_remote_code, check_weights

        config = ref.config
        device = resolve_device(config.train.device)
        self.source = resolve_model_source(config.model)
        check_remote_code(self.source.path, config.model, None)
        self.dtype = ref.compute_dtype(device)
        base = load_base_model(config, self.source, device, self.dtype)
        check_weights(ref.adapter_dir, str(ref.adapter_dir), what="adapter")
        model = PeftModel.from_pretrained(base, str(ref.adapter_dir), adapter_name=self.ADAPTER)
        model.eval()
        tokenizer = self._tokenizer(ref)
        self.chat = ChatModel(model, tokenizer, stop_token_ids(tokenizer, self.source.path), device)
        self.ref = ref
        self._key = self._base_key(ref)
        self._active, self._loads = self.ADAPTER, 0
        self.comparison: Comparison | None = None
        self._freeze()

    @property
    def model(self):
        return self.chat.model

    @property
    def config(self):
        return self.ref.config

    def _tokenizer(self, ref: AdapterRef):
        from qlora_studio.core.model.loading import load_tokenizer

        folder = ref.adapter_dir
        if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
            return load_tokenizer(self.source, ref.config.model)
        from transformers import AutoTokenizer

        # The adapter's tokenizer carries the chat template training used, for the base model too.
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @staticmethod
    def _base_key(ref: AdapterRef) -> str:
        from qlora_studio.core.model.devices import resolve_device

        c = ref.config
        device = resolve_device(c.train.device)
        return f"{c.model.model_dump_json()}|{c.quantization.model_dump_json()}|{ref.compute_dtype(device)}|{device}"

    def can_switch_to(self, ref: AdapterRef) -> bool:
        """`ref` trains on the same base, quantized alike: only the adapter needs loading."""
        return self._base_key(ref) == self._key

    def switch(self, ref: AdapterRef) -> None:
        """Attach `ref`'s adapter in place of the current one (same base: see `can_switch_to`)."""
        if not self.can_switch_to(ref):
            raise ValueError("another base model: load a new session")
        from qlora_studio.core.model.consent import check_weights

        check_weights(ref.adapter_dir, str(ref.adapter_dir), what="adapter")
        model = self.model
        self._loads += 1
        incoming = f"{self.ADAPTER}-{self._loads}"
        model.load_adapter(str(ref.adapter_dir), adapter_name=incoming)
        model.set_adapter(incoming)
        model.delete_adapter(self._active)
        self._active = incoming
        tokenizer = self._tokenizer(ref)
        from qlora_studio.core.model.loading import stop_token_ids

        self.chat = ChatModel(model, tokenizer, stop_token_ids(tokenizer, self.source.path), self.chat.device)
        self.ref = ref
        self._freeze()

    # ---- a second run to compare ----
    @property
    def compared(self) -> AdapterRef | None:
        return self.comparison.ref if self.comparison is not None else None

    def compare_with(self, ref: AdapterRef) -> None:
        """Load `ref`'s adapter beside the current one on the same base weights (no second copy of
        them); it answers through `answering(COMPARED)`. Replaces an earlier comparison. A run on
        another base model, or quantized otherwise, is refused with a one-line UserError."""
        from qlora_studio.core.model.consent import check_weights
        from qlora_studio.core.model.loading import stop_token_ids

        check_same_base(self.ref, ref, self.chat.device)
        check_weights(ref.adapter_dir, str(ref.adapter_dir), what="adapter")
        self.drop_comparison()
        model = self.model
        self._loads += 1
        name = f"{self.COMPARED_ADAPTER}-{self._loads}"
        try:
            model.load_adapter(str(ref.adapter_dir), adapter_name=name)  # not made active: the first stays on
            # Each run's adapter folder carries the tokenizer training saved, with that run's chat template
            # (data.chat_template may differ between the runs): the compared side renders its prompts with
            # its own template and stops on its own tokens, not the first run's.
            tokenizer = self._tokenizer(ref)
        except BaseException:
            if name in model.peft_config:
                model.delete_adapter(name)
            raise
        chat = ChatModel(model, tokenizer, stop_token_ids(tokenizer, self.source.path), self.chat.device)
        self.comparison = Comparison(ref, name, chat)
        self._freeze()

    def drop_comparison(self) -> None:
        """Unload the compared adapter (peft's `delete_adapter`); the first adapter stays active."""
        if self.comparison is None:
            return
        name, self.comparison = self.comparison.adapter, None
        self.model.delete_adapter(name)
        self.model.set_adapter(self._active)
        self._freeze()

    def _freeze(self) -> None:
        # peft turns requires_grad back on when an adapter is (re)activated; nothing here trains.
        for param in self.model.parameters():
            param.requires_grad_(False)

    @contextlib.contextmanager
    def using(self, base: bool) -> Iterator[None]:
        """The tuned model, or with `base` the same weights with the adapter switched off."""
        with self.answering(BASE if base else TUNED):
            yield

    @contextlib.contextmanager
    def answering(self, side: str) -> Iterator[ChatModel]:
        """The chat that answers as `side` (TUNED, BASE: every adapter off, COMPARED: the second
        adapter active); afterwards the first adapter is the active one again, even after an error."""
        if side == TUNED:
            yield self.chat
        elif side == BASE:
            try:
                with self.model.disable_adapter():
                    yield self.chat
            finally:
                self._freeze()
        elif side == COMPARED:
            if self.comparison is None:
                raise ValueError("no run loaded to compare: compare_with() first")
            self.model.set_adapter(self.comparison.adapter)
            try:
                yield self.comparison.chat
            finally:
                self.model.set_adapter(self._active)
                self._freeze()
        else:
            raise ValueError(f"side {side!r}: one of {', '.join(SIDES)}")

    def replies(self, conversations: list[Messages], sampling: Sampling | None = None, base: bool = False,
                cancel: Callable[[], bool] | None = None, progress: Callable[[int, int], None] | None = None,
                batch_size: int = 16, side: str | None = None) -> list[Reply]:
        """Replies as the tuned model, the base (`base`), or any `side` (see `answering`)."""
        with self.answering(side or (BASE if base else TUNED)) as chat:
            return generate_replies(chat, conversations, sampling, batch_size, cancel, progress)


def load_session(path: str | Path, checkpoint: str | int | None = None) -> InferenceSession:
    return InferenceSession(locate_adapter(path, checkpoint))
