"""Dataset pipeline: load, detect, normalize, render with the chat template, mask, cut, split.

`prepare_data` feeds training; `inspect_data` (the X-ray behind `qlora-studio inspect-data` and
the window's preview) runs the same steps and reports what they found.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from qlora_studio.core.config.schema import DataSettings
from qlora_studio.core.data.encoder import IGNORE_INDEX, ConversationEncoder
from qlora_studio.core.data.formats import RowProblem, apply_column_mapping, detect_format, normalize_row, required_columns
from qlora_studio.core.data.report import BAD_ROWS_SHOWN, DataReport, bad_rows_error, fill_stats, render_example
from qlora_studio.core.data.sources import load_parts
from qlora_studio.core.data.templates import choose_template
from qlora_studio.core.errors import DataError


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids, labels
    eval: Any | None
    report: DataReport
    template: str


def _normalized_features():
    from datasets import Features, List, Value

    return Features({
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "text": Value("string"),
        "_row": Value("int64"),
        "_error": Value("string"),
    })


def _pick_num_proc(rows: int, setting: int | None) -> int | None:
    if setting is not None:
        return setting if setting > 1 else None
    return min(4, os.cpu_count() or 1) if rows >= 50_000 else None


def _normalize_batch(batch: dict[str, list], indices: list[int], fmt: str, cols: dict[str, str], system_prompt: str | None):
    out: dict[str, list] = {"messages": [], "text": [], "_row": [], "_error": []}
    keys = list(batch)
    for j, index in enumerate(indices):
        row = {k: batch[k][j] for k in keys}
        try:
            messages, text = normalize_row(row, fmt, cols, system_prompt)
            error = ""
        except RowProblem as problem:
            messages, text, error = [], "", str(problem)
        out["messages"].append(messages)
        out["text"].append(text)
        out["_row"].append(index)
        out["_error"].append(error)
    return out


def load_normalized(settings: DataSettings, path: str | None = None):
    """Every source part normalized to messages/text, plus the bad rows found."""
    from datasets import concatenate_datasets

    parts = load_parts(settings, path)
    normalized = []
    formats: dict[str, int] = {}
    bad: list[dict[str, str]] = []
    bad_count = 0
    columns: list[str] = []
    for part_index, part in enumerate(parts):
        ds = part.dataset
        bad_count += len(part.bad_lines)  # lines the file reader could not take at all
        bad += part.bad_lines[: max(0, BAD_ROWS_SHOWN - len(bad))]
        columns = list(ds.column_names)
        mapped = apply_column_mapping(columns, settings.columns, part.label)
        sample = ds.select(range(min(5, len(ds)))).to_list()
        fmt = settings.format if settings.format != "auto" else detect_format(mapped, sample, part.label, part.kind)
        cols = required_columns(fmt, mapped, part.label)
        norm = ds.map(
            _normalize_batch,
            batched=True,
            with_indices=True,
            remove_columns=ds.column_names,
            features=_normalized_features(),
            fn_kwargs={"fmt": fmt, "cols": cols, "system_prompt": settings.system_prompt},
            num_proc=_pick_num_proc(len(ds), settings.num_proc),
            desc="normalizing rows",
        )
        errors = norm["_error"]
        bad_indices = [i for i, e in enumerate(errors) if e]
        bad_count += len(bad_indices)
        for i in bad_indices[: max(0, BAD_ROWS_SHOWN - len(bad))]:
            bad.append({"where": part.where(norm[i]["_row"]), "reason": errors[i]})
        if bad_indices:
            norm = norm.filter(lambda e: not e, input_columns="_error")
        norm = norm.add_column("_part", [part_index] * len(norm))
        formats[fmt] = formats.get(fmt, 0) + len(norm)
        normalized.append(norm)
    merged = concatenate_datasets(normalized) if len(normalized) > 1 else normalized[0]
    return parts, merged, formats, bad, bad_count, columns


def split_rows(settings: DataSettings, normalized, seed: int):
    """(training rows, validation rows or None): the validation file, or the seeded split."""
    if settings.validation_path:
        val_parts_settings = settings.model_copy(update={"path": settings.validation_path})
        _, val_norm, _, vbad, vbad_count, _ = load_normalized(val_parts_settings, settings.validation_path)
        if vbad_count and not settings.skip_bad_rows:
            raise bad_rows_error(vbad, vbad_count)
        return normalized, val_norm
    if settings.validation_split > 0 and len(normalized) >= 2:
        n_eval = int(round(len(normalized) * settings.validation_split))
        if n_eval >= 1:
            split = normalized.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
            return split["train"], split["test"]
    return normalized, None


def _encode_batch(batch: dict[str, list], encoder: ConversationEncoder):
    out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "length", "_row", "_part", "_fate", "_eos_added")}
    for messages, text, row, part in zip(batch["messages"], batch["text"], batch["_row"], batch["_part"]):
        is_text = not messages
        try:
            example = encoder.encode_text(text) if is_text else encoder.encode_messages(messages)
        except RowProblem as problem:
            pieces, fate, example = [{"input_ids": [], "labels": []}], f"bad:{problem}", {"input_ids": [], "eos_added": 0}
        else:
            pieces, fate = encoder.fit_length(example, is_text)
        if not pieces:  # dropped: keep one empty row so the fate is counted
            pieces = [{"input_ids": [], "labels": []}]
        for number, piece in enumerate(pieces):
            out["input_ids"].append(piece["input_ids"])
            out["labels"].append(piece["labels"])
            out["length"].append(len(example["input_ids"]) if number == 0 else 0)
            out["_row"].append(row)
            out["_part"].append(part)
            out["_fate"].append(fate if number == 0 else "piece")
            out["_eos_added"].append(example.get("eos_added", 0) if number == 0 else 0)
    return out


Progress = Callable[[str, int, int], None]  # (stage, done, total): "read" (0, 0), then "tokenize" rows
TOKENIZE_CHUNKS = 20  # progress steps while tokenizing a large dataset
TOKENIZE_CHUNK_MIN = 2000


def _encode(ds, encoder: ConversationEncoder, num_proc: int | None, progress: Progress | None = None,
            done: int = 0, total: int = 0):
    """Tokenized rows; with `progress`, in chunks (contiguous selections, each cached by datasets
    like the whole), reporting rows done of `total` after each: map() cannot report progress to a
    callable without losing its cache (a callable in fn_kwargs has no stable fingerprint)."""
    from datasets import concatenate_datasets

    size = max(TOKENIZE_CHUNK_MIN, -(-len(ds) // TOKENIZE_CHUNKS)) if progress else len(ds)
    starts = range(0, len(ds), size) if len(ds) > size else [0]
    pieces = []
    for start in starts:
        piece = ds if len(starts) == 1 else ds.select(range(start, min(len(ds), start + size)))
        pieces.append(piece.map(
            _encode_batch,
            batched=True,
            remove_columns=ds.column_names,
            fn_kwargs={"encoder": encoder},
            num_proc=num_proc,
            desc="tokenizing",
        ))
        if progress:
            progress("tokenize", done + start + len(piece), total)
    return pieces[0] if len(pieces) == 1 else concatenate_datasets(pieces)


def _build(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int, warn: Callable[[str], None] | None,
           examples: int = 0, preview: int = 0, progress: Progress | None = None):
    template, template_name, template_warning = choose_template(tokenizer, settings.chat_template)
    warnings: list[str] = []
    if template_warning:
        warnings.append(template_warning)
    if progress:
        progress("read", 0, 0)
    parts, normalized, formats, bad, bad_count, columns = load_normalized(settings)
    if bad_count and not settings.skip_bad_rows:
        raise bad_rows_error(bad, bad_count)
    if bad_count:
        warnings.append(f"skipped {bad_count} bad row{'s' if bad_count > 1 else ''} (first: {bad[0]['where']}: {bad[0]['reason']})")
    if len(normalized) == 0:
        raise DataError("no usable rows left", path=parts[0].label)

    encoder = ConversationEncoder(tokenizer, template, settings.train_on, settings.max_length, settings.overlength, stop_ids)
    num_proc = _pick_num_proc(len(normalized), settings.num_proc)

    train_norm, eval_norm = split_rows(settings, normalized, seed)
    rows = len(train_norm) + (len(eval_norm) if eval_norm is not None else 0)
    if progress:
        progress("tokenize", 0, rows)
    train_enc = _encode(train_norm, encoder, num_proc, progress, 0, rows)
    eval_enc = _encode(eval_norm, encoder, num_proc, progress, len(train_norm), rows) if eval_norm is not None else None

    report = DataReport(
        source=settings.path,
        format=max(formats, key=formats.get) if formats else settings.format,
        formats=formats,
        files=[p.label for p in parts],
        columns=columns,
        rows=len(normalized),
        rows_read=len(normalized) + bad_count,
        bad_rows=bad_count,
        bad_examples=bad,
        template=template_name,
        train_on=settings.train_on,
        max_length=settings.max_length,
        overlength=settings.overlength,
        warnings=warnings,
    )
    train_ok = _usable(train_enc)
    eval_ok = _usable(eval_enc) if eval_enc is not None else None
    encoded = [(train_enc, train_ok)] + ([(eval_enc, eval_ok)] if eval_enc is not None else [])
    fill_stats(report, encoded, encoder, parts, settings.skip_bad_rows)
    report.train_rows = train_ok.num_rows
    report.eval_rows = eval_ok.num_rows if eval_ok is not None else 0
    if report.train_rows == 0:
        raise DataError(f"no example is left after applying data.max_length {settings.max_length}; raise it or use overlength: truncate",
                        path=parts[0].label)
    if eval_norm is not None:
        report.validation_prompts = prompts_of(eval_norm.select(range(min(PROMPTS_SHOWN, len(eval_norm))))["messages"])
    if examples:
        report.examples = [render_example(encoder, normalized[i]) for i in range(min(examples, len(normalized)))]
    if preview:
        report.preview_rows = [
            {"where": parts[r["_part"]].where(r["_row"]), "messages": r["messages"], "text": r["text"]}
            for r in normalized.select(range(min(preview, len(normalized)))).to_list()
        ]
    for message in warnings:
        if warn:
            warn(message)
    train = train_ok.select_columns(["input_ids", "labels"])
    evaluation = eval_ok.select_columns(["input_ids", "labels"]) if report.eval_rows else None
    return train, evaluation, report, template


PROMPTS_SHOWN = 5


def prompts_of(conversations: list[list[dict[str, str]]]) -> list[str]:
    """The last user message of each conversation that has one (what a probe prompt looks like)."""
    prompts = []
    for messages in conversations:
        users = [m["content"] for m in messages if m["role"] == "user"]
        if users and users[-1].strip():
            prompts.append(users[-1])
    return prompts


def _usable(ds):
    return ds.filter(lambda fate: not fate.startswith(("drop", "bad")), input_columns="_fate")


def prepare_data(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int,
                 warn: Callable[[str], None] | None = None, progress: Progress | None = None,
                 method: str = "sft") -> PreparedData:
    """Tokenized training (and validation) rows; `progress(stage, done, total)` hears reading and
    tokenizing. Past SFT, rows in TRL's shape for `method` (data/method_data.py), which its trainer
    tokenizes with the chat template chosen here (set on the tokenizer)."""
    if method != "sft":
        return _prepare_method(settings, tokenizer, seed, warn, progress, method)
    train, evaluation, report, template = _build(settings, tokenizer, stop_ids, seed, warn, progress=progress)
    return PreparedData(train, evaluation, report, template)


def _prepare_method(settings: DataSettings, tokenizer, seed: int, warn, progress, method: str, examples: int = 0,
                    preview: int = 0):
    from qlora_studio.core.data.method_data import prepare_method_data

    template, template_name, template_warning = choose_template(tokenizer, settings.chat_template)
    if template_warning and warn:
        warn(template_warning)
    tokenizer = copy.copy(tokenizer)  # the caller's (perhaps cached) tokenizer keeps its own template
    tokenizer.chat_template = template  # TRL renders with the tokenizer's own template
    train, evaluation, report = prepare_method_data(settings, method, tokenizer, seed, warn, progress, examples, preview)
    report.template = template_name
    if template_warning:
        report.warnings.insert(0, template_warning)
    return PreparedData(train, evaluation, report, template)


def inspect_data(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int = 42,
                 examples: int = 3, preview: int = 50, batching: Callable[[list[int]], str] | None = None,
                 method: str = "sft") -> DataReport:
    """The X-ray: everything `prepare_data` would do, reported instead of trained on; `batching`
    describes the micro-batches the training rows' lengths make."""
    if method != "sft":
        return _prepare_method(settings, tokenizer, seed, None, None, method, examples, preview).report
    train, _, report, _ = _build(settings, tokenizer, stop_ids, seed, None, examples=examples, preview=preview)
    if batching is not None:
        from qlora_studio.core.data.packing import row_lengths

        report.batching = batching(row_lengths(train))
    return report


def make_collator(tokenizer, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForSeq2Seq

    # Pads input_ids with the pad token and labels with -100, and builds the attention mask.
    return DataCollatorForSeq2Seq(
        tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=pad_to_multiple_of
    )


def inspect_config(config, examples: int = 2, preview: int = 0, skip_bad_rows: bool | None = None) -> DataReport:
    """The X-ray for a whole run config (the model's tokenizer, stop tokens and template): what both
    `qlora-studio inspect-data` and the window's preview show. The tokenizer is cached per model,
    so editing data settings re-runs only the data pipeline."""
    from qlora_studio.core.model.loading import stop_token_ids

    tokenizer, source_path = _tokenizer_for(config.model)
    data = config.data if skip_bad_rows is None else config.data.model_copy(update={"skip_bad_rows": skip_bad_rows})
    from qlora_studio.core.data.packing import describe_batching

    return inspect_data(data, tokenizer, stop_token_ids(tokenizer, source_path), seed=config.train.seed,
                        examples=examples, preview=preview, batching=lambda lengths: describe_batching(config, lengths),
                        method=config.train.method)


def _tokenizer_for(model_settings):
    from qlora_studio.core.model.sources import resolve_model_source

    source = resolve_model_source(model_settings)
    return _cached_tokenizer(source.path, source.kind, source.origin, model_settings.revision,
                             model_settings.trust_remote_code), source.path


@lru_cache(maxsize=4)
def _cached_tokenizer(path: str, kind: str, origin: str, revision: str | None, trust_remote_code: bool):
    from qlora_studio.core.config.schema import ModelSettings
    from qlora_studio.core.model.loading import load_tokenizer
    from qlora_studio.core.model.sources import ModelSource

    settings = ModelSettings(name_or_path=origin, revision=revision, trust_remote_code=trust_remote_code)
    return load_tokenizer(ModelSource(path, kind, origin), settings)
