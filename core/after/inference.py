"""Try a trained adapter: its base loaded once as training loaded it, the adapter attached, and base
answers from the same copy with the adapter switched off (peft's `disable_adapter`), so comparing
the two costs no second model in memory. Switching to another checkpoint of the same base swaps
only the adapter.

Generation itself is core/model/generation.py (the one way the app generates): prompts in the
chat template saved beside the adapter (the one training used), stops on the tokens training
taught the model to end with.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from qlora_studio.core.after.adapters import AdapterRef, locate_adapter
from qlora_studio.core.model.generation import ChatModel, Messages, Reply, Sampling, generate_replies


class InferenceSession:
    """One base model in memory with one adapter attached."""

    ADAPTER = "tuned"

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

    def _freeze(self) -> None:
        # peft turns requires_grad back on when an adapter is (re)activated; nothing here trains.
        for param in self.model.parameters():
            param.requires_grad_(False)

    @contextlib.contextmanager
    def using(self, base: bool) -> Iterator[None]:
        """The tuned model, or with `base` the same weights with the adapter switched off."""
        if not base:
            yield
            return
        with self.model.disable_adapter():
            yield
        self._freeze()

    def replies(self, conversations: list[Messages], sampling: Sampling | None = None, base: bool = False,
                cancel: Callable[[], bool] | None = None, progress: Callable[[int, int], None] | None = None,
                batch_size: int = 16) -> list[Reply]:
        with self.using(base):
            return generate_replies(self.chat, conversations, sampling, batch_size, cancel, progress)


def load_session(path: str | Path, checkpoint: str | int | None = None) -> InferenceSession:
    return InferenceSession(locate_adapter(path, checkpoint))
