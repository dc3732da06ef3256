"""The X-ray report: what the pipeline read, skipped, cut and trained on, as one JSON-ready record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qlora_studio.core.data.encoder import IGNORE_INDEX, ConversationEncoder
from qlora_studio.core.data.sources import SourcePart
from qlora_studio.core.errors import DataError

BAD_ROWS_SHOWN = 3


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
    validation_prompts: list[str] = field(default_factory=list)  # a few user prompts held out (probe suggestions)
    warnings: list[str] = field(default_factory=list)
    batching: str = ""  # how the run will cut the training rows into micro-batches (packed or padded), per epoch
    method: str = "sft"  # train.method the rows were read for (data/method_data.py past SFT)
    flagged_rows: int = 0  # rows that teach nothing (identical chosen and rejected), left out
    flagged_examples: list[dict[str, str]] = field(default_factory=list)  # where, reason
    answers: int = 0  # GRPO: rows with a reference answer
    labels: dict[str, int] = field(default_factory=dict)  # KTO: desirable / undesirable rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bad_rows_error(bad: list[dict[str, str]], count: int) -> DataError:
    first = bad[0]
    more = ""
    if count > 1:
        shown = "; ".join(f"{b['where']}: {b['reason']}" for b in bad[1:])
        more = f" (and {count - 1} more bad row{'s' if count > 2 else ''}{': ' + shown if shown else ''})"
    return DataError(f"{first['where']}: {first['reason']}{more}. Fix the rows, or set data.skip_bad_rows: true to skip them")


def fill_stats(report: DataReport, encoded: list[tuple], encoder: ConversationEncoder, parts: list[SourcePart],
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


def render_example(encoder: ConversationEncoder, row: dict[str, Any]) -> dict[str, Any]:
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
