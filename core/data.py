"""Dataset pipeline: load, detect, normalize, render with the chat template, mask, cut, split.

`prepare_data` feeds training; `inspect_data` (the X-ray behind `qlora-studio inspect-data` and
the window's preview) runs the same steps and reports what they found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from qlora_studio.core.config import DataSettings
from qlora_studio.core.data_formats import (
    RowProblem,
    apply_column_mapping,
    detect_format,
    normalize_row,
    required_columns,
)
from qlora_studio.core.data_sources import SourcePart, load_parts
from qlora_studio.core.errors import DataError
from qlora_studio.core.templates import choose_template

IGNORE_INDEX = -100
BAD_ROWS_SHOWN = 3
# Strings that end a turn in common templates; used only when a template's output cannot be
# split turn by turn and the end of a reply has to be found by search.
TURN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


# ---- rendering and masking --------------------------------------------------------------------

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


# ---- the pipeline ------------------------------------------------------------------------------

@dataclass
class DataReport:
    """What the pipeline did; the JSON of `inspect-data --json` is `to_dict()`."""

    source: str
    format: str
    formats: dict[str, int]
    files: list[str]
    columns: list[str]
    rows: int
    rows_read: int
    bad_rows: int
    bad_examples: list[dict[str, str]]
    template: str
    train_on: str
    max_length: int
    overlength: str
    train_rows: int = 0
    eval_rows: int = 0
    cut_rows: int = 0
    dropped_rows: int = 0
    split_rows: int = 0
    eos_added_turns: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    token_lengths: dict[str, float] = field(default_factory=dict)
    over_max_length: int = 0
    length_histogram: dict[str, list[float]] = field(default_factory=dict)
    eos: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    preview_rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


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


def bad_rows_error(bad: list[dict[str, str]], count: int) -> DataError:
    first = bad[0]
    more = ""
    if count > 1:
        shown = "; ".join(f"{b['where']}: {b['reason']}" for b in bad[1:])
        more = f" (and {count - 1} more bad row{'s' if count > 2 else ''}{': ' + shown if shown else ''})"
    return DataError(f"{first['where']}: {first['reason']}{more}. Fix the rows, or set data.skip_bad_rows: true to skip them")


def stop_token_ids(tokenizer, source_path: str | None) -> list[int]:
    """The token ids generation stops on: EOS plus the model's generation_config eos ids."""
    ids = [tokenizer.eos_token_id]
    if source_path:
        try:
            from transformers import GenerationConfig

            gen = GenerationConfig.from_pretrained(source_path)
            extra = gen.eos_token_id
            ids += extra if isinstance(extra, list) else [extra]
        except (OSError, ValueError):
            pass
    return [i for i in ids if i is not None]


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


def _encode(ds, encoder: ConversationEncoder, num_proc: int | None):
    return ds.map(
        _encode_batch,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"encoder": encoder},
        num_proc=num_proc,
        desc="tokenizing",
    )


def _build(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int, warn: Callable[[str], None] | None,
           examples: int = 0, preview: int = 0):
    template, template_name, template_warning = choose_template(tokenizer, settings.chat_template)
    warnings: list[str] = []
    if template_warning:
        warnings.append(template_warning)
    parts, normalized, formats, bad, bad_count, columns = load_normalized(settings)
    if bad_count and not settings.skip_bad_rows:
        raise bad_rows_error(bad, bad_count)
    if bad_count:
        warnings.append(f"skipped {bad_count} bad row{'s' if bad_count > 1 else ''} (first: {bad[0]['where']}: {bad[0]['reason']})")
    if len(normalized) == 0:
        raise DataError("no usable rows left", path=parts[0].label)

    encoder = ConversationEncoder(tokenizer, template, settings.train_on, settings.max_length, settings.overlength, stop_ids)
    num_proc = _pick_num_proc(len(normalized), settings.num_proc)

    if settings.validation_path:
        val_parts_settings = settings.model_copy(update={"path": settings.validation_path})
        _, val_norm, _, vbad, vbad_count, _ = load_normalized(val_parts_settings, settings.validation_path)
        if vbad_count and not settings.skip_bad_rows:
            raise bad_rows_error(vbad, vbad_count)
        train_norm, eval_norm = normalized, val_norm
    elif settings.validation_split > 0 and len(normalized) >= 2:
        n_eval = int(round(len(normalized) * settings.validation_split))
        if n_eval >= 1:
            split = normalized.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
            train_norm, eval_norm = split["train"], split["test"]
        else:
            train_norm, eval_norm = normalized, None
    else:
        train_norm, eval_norm = normalized, None

    train_enc = _encode(train_norm, encoder, num_proc)
    eval_enc = _encode(eval_norm, encoder, num_proc) if eval_norm is not None else None

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
    _fill_stats(report, encoded, encoder, parts, settings.skip_bad_rows)
    report.train_rows = train_ok.num_rows
    report.eval_rows = eval_ok.num_rows if eval_ok is not None else 0
    if report.train_rows == 0:
        raise DataError(f"no example is left after applying data.max_length {settings.max_length}; raise it or use overlength: truncate",
                        path=parts[0].label)
    if examples:
        report.examples = [_render_example(encoder, normalized[i]) for i in range(min(examples, len(normalized)))]
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


def _usable(ds):
    return ds.filter(lambda fate: not fate.startswith(("drop", "bad")), input_columns="_fate")


def _fill_stats(report: DataReport, encoded: list[tuple], encoder: ConversationEncoder, parts: list[SourcePart],
                skip_bad_rows: bool) -> None:
    """Counts over (every encoded row, the usable ones) pairs."""
    lengths: list[int] = []
    bad_template: list[dict[str, str]] = []
    bad_template_count = 0
    for ds, usable in encoded:
        fates = ds["_fate"]
        row_lengths = ds["length"]
        report.cut_rows += sum(1 for f in fates if f == "cut")
        report.split_rows += sum(1 for f in fates if f == "split")
        report.dropped_rows += sum(1 for f in fates if f.startswith("drop"))
        report.eos_added_turns += int(sum(ds["_eos_added"]))
        lengths += [n for n, f in zip(row_lengths, fates) if f != "piece" and not f.startswith("bad")]
        for i, f in enumerate(fates):
            if f.startswith("bad"):
                bad_template_count += 1
                if len(bad_template) < BAD_ROWS_SHOWN:
                    row = ds[i]
                    bad_template.append({"where": parts[row["_part"]].where(row["_row"]), "reason": f[4:]})
        labels = usable["labels"]
        report.trained_tokens += sum(sum(1 for t in seq if t != IGNORE_INDEX) for seq in labels)
        report.total_tokens += sum(len(seq) for seq in labels)
    if bad_template_count and not skip_bad_rows:
        raise bad_rows_error(bad_template, bad_template_count)
    if bad_template_count:
        report.bad_rows += bad_template_count
        report.rows -= bad_template_count
        report.bad_examples = (report.bad_examples + bad_template)[:BAD_ROWS_SHOWN]
        report.warnings.append(f"skipped {bad_template_count} row(s) the chat template rejects (first: "
                               f"{bad_template[0]['where']}: {bad_template[0]['reason']})")
    if lengths:
        arr = np.asarray(lengths)
        report.token_lengths = {
            "min": int(arr.min()), "mean": round(float(arr.mean()), 1), "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)), "p99": float(np.percentile(arr, 99)), "max": int(arr.max()),
        }
        report.over_max_length = int((arr > report.max_length).sum())
        counts, edges = np.histogram(arr, bins=min(30, max(5, int(np.sqrt(len(arr))))))
        report.length_histogram = {"counts": counts.tolist(), "edges": [round(float(e), 1) for e in edges]}
    stop_names = [encoder.tokenizer.convert_ids_to_tokens(i) for i in encoder.stop_ids]
    ok = bool(encoder.stop_ids)
    report.eos = {
        "stop_tokens": stop_names,
        "ok": ok,
        "added_by_pipeline": report.eos_added_turns,
        "message": (
            f"every trained reply ends with {' or '.join(stop_names)}, which generation stops on"
            + (f" ({report.eos_added_turns} added because the template does not write one)" if report.eos_added_turns else "")
            if ok else "the tokenizer has no EOS token: the tuned model will not know when to stop"
        ),
    }


def _render_example(encoder: ConversationEncoder, row: dict[str, Any]) -> dict[str, Any]:
    """Segments of one encoded example: [{'text': ..., 'trained': bool}], for the X-ray."""
    example = encoder.encode_text(row["text"]) if not row["messages"] else encoder.encode_messages(row["messages"])
    pieces, _ = encoder.fit_length(example, not row["messages"])
    ids, labels = (pieces[0]["input_ids"], pieces[0]["labels"]) if pieces else (example["input_ids"], example["labels"])
    segments: list[dict[str, Any]] = []
    run: list[int] = []
    trained_state = None
    for token, label in zip(ids, labels):
        trained = label != IGNORE_INDEX
        if trained_state is not None and trained != trained_state:
            segments.append({"text": encoder.tokenizer.decode(run), "trained": trained_state})
            run = []
        run.append(token)
        trained_state = trained
    if run:
        segments.append({"text": encoder.tokenizer.decode(run), "trained": bool(trained_state)})
    return {"tokens": len(ids), "trained_tokens": sum(1 for x in labels if x != IGNORE_INDEX), "segments": segments}


def prepare_data(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int,
                 warn: Callable[[str], None] | None = None) -> PreparedData:
    train, evaluation, report, template = _build(settings, tokenizer, stop_ids, seed, warn)
    return PreparedData(train, evaluation, report, template)


def inspect_data(settings: DataSettings, tokenizer, stop_ids: list[int], seed: int = 42,
                 examples: int = 3, preview: int = 50) -> DataReport:
    """The X-ray: everything `prepare_data` would do, reported instead of trained on."""
    _, _, report, _ = _build(settings, tokenizer, stop_ids, seed, None, examples=examples, preview=preview)
    return report


def make_collator(tokenizer, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForSeq2Seq

    # Pads input_ids with the pad token and labels with -100, and builds the attention mask.
    return DataCollatorForSeq2Seq(
        tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=pad_to_multiple_of
    )
