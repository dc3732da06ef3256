"""The tokenizer as GGUF metadata: tokens and their types, merges (or sentencepiece scores), the
special token ids, whether BOS/EOS are added, the chat template, and the pre-tokenizer name
llama.cpp picks its splitting regex by."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from qlora_studio.core.after.export import ExportError, load_tokenizer

# llama.cpp does not run the HF tokenizer: it re-implements each family's pre-tokenizer (the regex
# that splits text before BPE) and picks it by the name in `tokenizer.ggml.pre`. llama.cpp's
# converter finds that name by hashing the token ids of a test string; we recognise the
# pre-tokenizer definition in tokenizer.json instead, for the families we support, and refuse
# the rest (a wrong name tokenizes silently differently).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_pre(tokenizer_json: dict, vocab: dict[str, int]) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        # GPT-2's own regex. SmolLM's vocabulary has no multi-digit tokens, so splitting digits
        # first ("smollm") changes nothing; say so, as llama.cpp's converter does for such files.
        return "smollm" if _digits_never_merged(vocab) else "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == _LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == _QWEN2_SPLIT:
            return "qwen2"
    raise ExportError(
        "GGUF export: this tokenizer's pre-tokenizer is not one llama.cpp knows by name "
        "(supported: Llama-3, Qwen2, SmolLM, GPT-2 style); convert with llama.cpp's own script"
    )


def _digits_never_merged(vocab: dict[str, int]) -> bool:
    return not any(len(t.lstrip("Ġ")) >= 2 and t.lstrip("Ġ").isdigit() or (t.startswith("Ġ") and t[1:].isdigit())
                   for t in vocab)


@dataclass
class _Vocab:
    model: str                     # tokenizer.ggml.model: gpt2 (byte-level BPE) | llama (sentencepiece BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | None

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def gguf_vocab(folder: Path, config: dict) -> _Vocab:
    """The tokenizer as GGUF metadata: tokens, types, merges/scores, special ids, template."""
    import gguf

    T = gguf.TokenType
    tokenizer = load_tokenizer(folder)
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ExportError(f"{folder}: GGUF export needs a fast (tokenizers) tokenizer")
    # The definition transformers actually runs, not the saved tokenizer.json: for some model
    # types (Qwen2) transformers 5 replaces the saved pre-tokenizer with the family's own.
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe = tokenizer_json.get("model") or {}
    if bpe.get("type") != "BPE":
        raise ExportError(f"GGUF export supports BPE tokenizers, not {bpe.get('type')}")
    byte_fallback = bool(bpe.get("byte_fallback"))
    vocab = tokenizer.get_vocab()
    n_vocab = int(config["vocab_size"])
    if max(vocab.values()) >= n_vocab:
        raise ExportError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} embeddings")
    added = {a["id"]: a for a in tokenizer_json.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}

    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:  # embedding rows the tokenizer never produces (vocab padded to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
            continue
        if byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types.append(T.BYTE)  # sentencepiece byte-fallback pieces, whether listed as added or not
        elif byte_fallback and text == tokenizer.unk_token:
            types.append(T.UNKNOWN)
        elif i in added:
            # Added tokens are matched as raw text by llama.cpp; special ones are CONTROL (never
            # printed), the rest USER_DEFINED.
            types.append(T.CONTROL if added[i].get("special") else T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
        tokens.append(text)

    merges = [m if isinstance(m, str) else " ".join(p.replace(" ", "Ġ" if not byte_fallback else "▁") for p in m)
              for m in bpe.get("merges", [])]
    if byte_fallback:
        # Llama-2 / Mistral: a sentencepiece BPE vocabulary ("llama" in GGUF). llama.cpp's SPM
        # tokenizer merges by token *score*; tokenizer.json keeps merge ranks instead, so the
        # score of each merged token is minus the rank of the merge that makes it (the order
        # sentencepiece gave them). Merges are written too, for readers that use them.
        model, pre = "llama", "default"
        scores = [0.0] * n_vocab
        for rank, merge in enumerate(merges):
            made = vocab.get(merge.replace(" ", ""))
            if made is not None and scores[made] == 0.0:
                scores[made] = -float(rank + 1)
        add_space_prefix = _sentencepiece_prefix_space(tokenizer_json)
    else:
        model, pre, scores, add_space_prefix = "gpt2", _byte_level_pre(tokenizer_json, vocab), None, None

    special_ids = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is None and kind in ("bos", "eos", "pad"):
            token_id = config.get(f"{kind}_token_id")
            token_id = token_id[0] if isinstance(token_id, list) else token_id
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            special_ids[kind] = token_id
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
    for marker in ("<|im_end|>", "<|eot_id|>"):  # end-of-turn: llama.cpp stops generation on it
        if template and marker in template and marker in vocab:
            special_ids["eot"] = vocab[marker]
            break
    # Whether BOS/EOS are added to a plain tokenize() call, measured rather than read from the
    # post-processor config, whose shape varies between tokenizer versions.
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    add_bos = len(probe) > len(bare) and probe[0] == tokenizer.bos_token_id
    add_eos = len(probe) > len(bare) and probe[-1] == tokenizer.eos_token_id
    return _Vocab(model, pre, tokens, [int(t) for t in types], merges, scores, special_ids, add_bos, add_eos,
                  add_space_prefix, template)


def _sentencepiece_prefix_space(tokenizer_json: dict) -> bool:
    """Does the tokenizer put "▁" before the first word (Llama-2, Mistral v0.1-v0.3: yes)?"""
    text = json.dumps([tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text


