"""The data pipeline of the methods past SFT: read, detect, check, split, and X-ray rows in TRL's
shapes (data/pairs.py). TRL tokenizes them when its trainer is made; the lengths here are counted
the same way (`pairs.completion_tokens`), so the X-ray's cut and dropped rows are training's.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from qlora_studio.core.config.schema import DataSettings
from qlora_studio.core.data.formats import ROW_FORMATS, RowProblem, apply_column_mapping, detect_format, required_columns
from qlora_studio.core.data.pairs import completion_tokens, detect_method_format, method_columns, pair_problem, read_method_row
from qlora_studio.core.data.report import BAD_ROWS_SHOWN, DataReport, bad_rows_error
from qlora_studio.core.data.sources import load_parts
from qlora_studio.core.errors import DataError

Progress = Callable[[str, int, int], None]


def load_method_rows(settings: DataSettings, method: str, path: str | None = None):
    """(parts, rows with their origin, formats, bad rows shown, bad count, flagged rows, columns)."""
    parts = load_parts(settings, path)
    rows: list[dict[str, Any]] = []
    formats: dict[str, int] = {}
    bad: list[dict[str, str]] = []
    flagged: list[dict[str, str]] = []
    bad_count, columns = 0, []
    for part_index, part in enumerate(parts):
        ds = part.dataset
        bad_count += len(part.bad_lines)
        bad += part.bad_lines[: max(0, BAD_ROWS_SHOWN - len(bad))]
        columns = list(ds.column_names)
        mapped = apply_column_mapping(columns, settings.columns, part.label)
        fmt = settings.format if settings.format != "auto" else detect_method_format(method, set(mapped), part.label)
        sft_format = None
        if fmt in ROW_FORMATS or fmt == "sft_rows":  # GRPO over SFT rows: the last reply is the reference answer
            sample = ds.select(range(min(5, len(ds)))).to_list()
            sft_format = fmt if fmt in ROW_FORMATS else detect_format(mapped, sample, part.label, part.kind)
            cols, fmt = required_columns(sft_format, mapped, part.label), "sft_rows"
        else:
            cols = method_columns(fmt, mapped, part.label)
        for index, raw in enumerate(ds):
            try:
                row = read_method_row(raw, fmt, cols, settings.system_prompt, sft_format)
            except RowProblem as problem:
                bad_count += 1
                if len(bad) < BAD_ROWS_SHOWN:
                    bad.append({"where": part.where(index), "reason": str(problem)})
                continue
            why = pair_problem(row)
            if why:
                flagged.append({"where": part.where(index), "reason": why})
                continue
            rows.append(row | {"_where": part.where(index) if len(rows) < 50 else ""})
        formats[sft_format or fmt] = formats.get(sft_format or fmt, 0) + len(ds)
    return parts, rows, formats, bad, bad_count, flagged, columns


def prepare_method_data(settings: DataSettings, method: str, tokenizer, seed: int,
                        warn: Callable[[str], None] | None = None, progress: Progress | None = None,
                        examples: int = 0, preview: int = 0):
    """(train rows, eval rows or None, report) as datasets in TRL's shape for `method`; the
    tokenizer must carry the run's chat template already."""
    from datasets import Dataset

    if progress:
        progress("read", 0, 0)
    parts, rows, formats, bad, bad_count, flagged, columns = load_method_rows(settings, method)
    if bad_count and not settings.skip_bad_rows:
        raise bad_rows_error(bad, bad_count)
    warnings = []
    if bad_count:
        warnings.append(f"skipped {bad_count} bad row{'s' if bad_count > 1 else ''} (first: {bad[0]['where']}: {bad[0]['reason']})")
    if flagged:
        warnings.append(f"left out {len(flagged)} pair{'s' if len(flagged) > 1 else ''} that teach nothing "
                        f"(first: {flagged[0]['where']}: {flagged[0]['reason']})")
    if not rows:
        raise DataError("no usable rows left", path=parts[0].label)
    train_rows, eval_rows = split_method_rows(settings, method, rows, seed)
    report = DataReport(source=settings.path, format=max(formats, key=formats.get), formats=formats,
                        files=[p.label for p in parts], columns=columns, rows=len(rows) + len(flagged),
                        rows_read=len(rows) + len(flagged) + bad_count, bad_rows=bad_count, bad_examples=bad,
                        template="", train_on="assistant", max_length=settings.max_length,
                        overlength=settings.overlength, method=method, flagged_rows=len(flagged),
                        flagged_examples=flagged[:BAD_ROWS_SHOWN], warnings=warnings)
    train_rows = _fit_lengths(train_rows, method, tokenizer, settings, report, progress, examples)
    if eval_rows:
        eval_rows = _fit_lengths(eval_rows, method, tokenizer, settings, None, None, 0)
    if method == "kto":
        train_rows, eval_rows = _unpair(train_rows), _unpair(eval_rows) if eval_rows else eval_rows
        report.labels = {"desirable": sum(r["label"] for r in train_rows),
                         "undesirable": sum(not r["label"] for r in train_rows)}
    if method == "grpo":
        report.answers = sum(1 for r in train_rows if r.get("answer"))
    report.train_rows, report.eval_rows = len(train_rows), len(eval_rows or [])
    if not train_rows:
        raise DataError(f"no row is left after applying data.max_length {settings.max_length}; raise it",
                        path=parts[0].label)
    report.validation_prompts = [_last_user(r["prompt"]) for r in (eval_rows or [])[:5]]
    report.preview_rows = [_preview_row(r) for r in rows[:preview]]
    for message in report.warnings:
        if warn:
            warn(message)
    clean = lambda items: [{k: v for k, v in r.items() if not k.startswith("_")} for r in items]  # noqa: E731
    train = Dataset.from_list(clean(train_rows))
    evaluation = Dataset.from_list(clean(eval_rows)) if eval_rows else None
    return train, evaluation, report


def split_method_rows(settings: DataSettings, method: str, rows: list[dict[str, Any]], seed: int):
    """(training rows, held-out rows): the validation file's, or the seeded split (evaluation takes
    the same held-out rows)."""
    if settings.validation_path:
        _, held, _, vbad, vbad_count, _, _ = load_method_rows(settings.model_copy(update={"path": settings.validation_path}),
                                                              method, settings.validation_path)
        if vbad_count and not settings.skip_bad_rows:
            raise bad_rows_error(vbad, vbad_count)
        return rows, held
    n_eval = int(round(len(rows) * settings.validation_split)) if len(rows) >= 2 else 0
    if n_eval < 1:
        return rows, []
    order = np.random.default_rng(seed).permutation(len(rows))
    held = set(order[:n_eval].tolist())
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def _fit_lengths(rows, method: str, tokenizer, settings: DataSettings, report: DataReport | None,
                 progress: Progress | None, examples: int):
    """Count each row's tokens as TRL will; rows whose prompt alone fills data.max_length are
    dropped (TRL drops them too), longer rows are cut (overlength truncate) or dropped (drop)."""
    limit, kept, lengths, cut, dropped = settings.max_length, [], [], 0, 0
    shown: list[dict[str, Any]] = []
    for number, row in enumerate(rows):
        prompt_ids, answers = _tokens(tokenizer, method, row)
        length = len(prompt_ids) + max((len(a) for a in answers), default=0)
        lengths.append(length)
        if len(prompt_ids) >= limit or (length > limit and settings.overlength == "drop"):
            dropped += 1
            continue
        cut += length > limit
        kept.append(row)
        if len(shown) < examples:
            shown.append(_example(tokenizer, method, row, prompt_ids, answers, limit))
        if progress and number % 500 == 0:
            progress("tokenize", number, len(rows))
    if report is not None:
        report.cut_rows, report.dropped_rows, report.examples = cut, dropped, shown
        report.trained_tokens = 0 if method == "grpo" else sum(lengths)  # GRPO trains on what it samples
        report.total_tokens = sum(lengths)
        if lengths:
            arr = np.asarray(lengths)
            report.token_lengths = {"min": int(arr.min()), "mean": round(float(arr.mean()), 1),
                                    "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
                                    "p99": float(np.percentile(arr, 99)), "max": int(arr.max())}
            report.over_max_length = int((arr > limit).sum())
            counts, edges = np.histogram(arr, bins=min(30, max(5, int(np.sqrt(len(arr))))))
            report.length_histogram = {"counts": counts.tolist(), "edges": [round(float(e), 1) for e in edges]}
        if cut:
            report.warnings.append(f"{cut} row{'s are' if cut > 1 else ' is'} longer than data.max_length "
                                   f"{limit} and will be cut there (the end of the answer is not trained)")
        if dropped:
            report.warnings.append(f"{dropped} row{'s' if dropped > 1 else ''} left out: the prompt alone fills "
                                   f"data.max_length {limit}" + (" or the row is longer" if settings.overlength == "drop" else ""))
    return kept


def _tokens(tokenizer, method: str, row: dict[str, Any]) -> tuple[list[int], list[list[int]]]:
    if method == "grpo":
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        return list(ids), []
    answers = [row["chosen"], row["rejected"]] if "chosen" in row else [row["completion"]]
    cuts = [completion_tokens(tokenizer, row["prompt"], answer) for answer in answers]
    return min((c[0] for c in cuts), key=len), [c[1] for c in cuts]


def _example(tokenizer, method: str, row: dict[str, Any], prompt_ids, answers, limit: int) -> dict[str, Any]:
    """One row for the X-ray: the prompt, and each answer's tokens that carry the loss."""
    prompt = tokenizer.decode(prompt_ids)
    example: dict[str, Any] = {"where": row.get("_where", ""), "method": method, "prompt": prompt,
                               "prompt_tokens": len(prompt_ids)}
    names = ("chosen", "rejected") if "chosen" in row else ("completion",) if answers else ()
    for name, ids in zip(names, answers):
        room = max(0, limit - len(prompt_ids))
        example[name] = {"text": tokenizer.decode(ids[:room]), "trained_tokens": min(len(ids), room),
                         "cut_tokens": max(0, len(ids) - room)}
    if "label" in row:
        example["label"] = bool(row["label"])
    if method == "grpo":
        example["answer"] = row.get("answer")
    return example


def _unpair(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO learns from single answers: a pair becomes a desirable and an undesirable row."""
    out = []
    for row in rows:
        if "chosen" in row:
            out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
            out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
        else:
            out.append(row)
    return out


def _preview_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row as text for the X-ray's Rows tab: the prompt's last user turn and each answer."""
    text = lambda turns: "\n".join(m["content"] for m in turns) if isinstance(turns, list) else turns  # noqa: E731
    shown = {"where": row.get("_where", ""), "prompt": _last_user(row["prompt"]), "turns": len(row["prompt"])}
    for key in ("chosen", "rejected", "completion", "answer"):
        if key in row:
            shown[key] = text(row[key]) or ""
    if "label" in row:
        shown["label"] = bool(row["label"])
    return shown


def _last_user(prompt: list[dict[str, str]]) -> str:
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""
