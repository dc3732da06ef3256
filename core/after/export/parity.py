"""Does the exported file still behave like the run? The run's held-out rows (or, without any, its
probes) answered by the tuned model (base + adapter, as the Playground runs it) and by the export,
greedy, side by side: exact match with the reference, how often each reply ends by itself, how
often the two agree, and the first row where they differ.

The export is run where people run it: a GGUF file (and an Ollama folder's model.gguf with the
Modelfile's stop parameters) in llama.cpp with the chat template stored in the file; a merged
folder in transformers with its own tokenizer and template. The most common broken export (a lost
template or end-of-turn token) shows as replies that never stop.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlora_studio.core.after.adapters import AdapterRef
from qlora_studio.core.after.export import ExportError, llamacpp
from qlora_studio.core.after.jobs import CancelFn, Job, ProgressFn
from qlora_studio.core.atomic import write_json_atomic

PARITY_FILE = "parity.json"
WORSE_BY = 0.02  # two points of exact match or stop rate: less is noise on 100 rows


@dataclass
class Side:
    exact_match: float | None  # None when the rows have no reference replies (probes)
    stopped: float


@dataclass
class Parity:
    artefact: str
    kind: str  # gguf | merged | ollama
    data: str  # "validation split" | "probes"
    rows: int
    tuned: Side
    exported: Side
    agreement: float  # share of rows where both replies are the same text
    first_difference: dict[str, Any] | None  # row, prompt, reference, tuned, exported
    max_new_tokens: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def lines(self) -> list[str]:
        """The comparison as the CLI prints it and the Export dialog shows it."""
        def pct(v: float | None) -> str:
            return "  n/a" if v is None else f"{100 * v:4.0f}%"

        out = [f"parity on {self.rows} {self.data} rows ({self.kind}: {Path(self.artefact).name})",
               "                exact match   stops",
               f"  tuned run        {pct(self.tuned.exact_match)}      {pct(self.tuned.stopped)}",
               f"  export           {pct(self.exported.exact_match)}      {pct(self.exported.stopped)}",
               f"  same reply       {pct(self.agreement)}"]
        if self.first_difference:
            d = self.first_difference
            out.append(f"  first difference, row {d['row'] + 1}: {d['prompt'][:60]!r}")
            out.append(f"    tuned:  {d['tuned'][:80]!r}")
            out.append(f"    export: {d['exported'][:80]!r}")
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(ref: AdapterRef, artefact: str | Path, kind: str, *, data: str | None = None, limit: int = 100,
                 max_new_tokens: int = 64, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> Parity:
    """Compare `artefact` (what `export_run` wrote as `kind`) with the run it came from, on the run's
    validation split (`data` None; its probes when it has none) or on the rows of the file `data`."""
    from qlora_studio.core.after.inference import InferenceSession
    from qlora_studio.core.model.generation import Sampling

    job = Job(progress, cancel)
    began = time.monotonic()
    artefact = Path(artefact)
    job.report(0.0, "loading the tuned model")
    session = InferenceSession(ref)
    label, prompts, references = _rows(session, data, limit)
    answered = session.replies(prompts, Sampling(max_new_tokens=max_new_tokens), cancel=lambda: job.cancelled,
                               progress=lambda done, total: job.report(0.5 * done / total, f"tuned: {done}/{total}"))
    job.check()
    tuned = [(r.text, r.stopped) for r in answered]
    del session, answered
    exported = _exported_replies(artefact, kind, prompts, max_new_tokens, job.sub(0.5, 1.0))
    parity = _compare(artefact, kind, label, prompts, references, tuned, exported, max_new_tokens)
    parity.seconds = round(time.monotonic() - began, 1)
    job.report(1.0, "parity checked")
    return parity


def save_parity(parity: Parity, run_dir: str | Path | None) -> Path | None:
    """Into the run folder's parity.json, newest last, one entry per exported file."""
    if run_dir is None:
        return None
    path = Path(run_dir) / PARITY_FILE
    try:
        kept = [p for p in json.loads(path.read_text(encoding="utf-8"))["checks"] if p["artefact"] != parity.artefact]
    except (OSError, ValueError, KeyError):
        kept = []
    write_json_atomic(path, {"checks": kept + [parity.to_dict()]})
    return path


def _rows(session, data: str | None, limit: int) -> tuple[str, list, list[str | None]]:
    from qlora_studio.core.data.heldout import held_out_rows
    from qlora_studio.core.errors import DataError

    config = session.config
    try:
        rows = held_out_rows(config.data, session.chat.tokenizer, session.chat.stop_ids, config.train.seed, data, limit)
        if rows.prompts:
            return rows.label, rows.prompts, list(rows.references)
    except DataError:
        if data is not None:
            raise
    if not config.probes:
        raise ExportError("the parity check needs held-out rows (data.validation_split) or probes; the run has neither")
    probes = config.probes[:limit]
    return "probes", [[{"role": "user", "content": p}] for p in probes], [None] * len(probes)


def _exported_replies(artefact: Path, kind: str, prompts: list, max_new_tokens: int, job: Job) -> list[tuple[str, bool]]:
    if kind == "merged":
        return _merged_replies(artefact, prompts, max_new_tokens, job)
    if kind not in ("gguf", "ollama"):
        raise ExportError(f"nothing to compare for a {kind} export: the adapter is the run's own")
    model_file, stops = (artefact, None) if kind == "gguf" else (artefact / "model.gguf", _modelfile_stops(artefact))
    return llamacpp.gguf_replies(model_file, prompts, max_new_tokens, stops, cancel=lambda: job.cancelled,
                                 progress=lambda done, total: job.report(done / total, f"export: {done}/{total}"))


def _merged_replies(folder: Path, prompts: list, max_new_tokens: int, job: Job) -> list[tuple[str, bool]]:
    import torch
    from transformers import AutoModelForCausalLM

    from qlora_studio.core.after.export import load_tokenizer
    from qlora_studio.core.model.generation import ChatModel, Sampling, generate_replies
    from qlora_studio.core.model.loading import stop_token_ids

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto").to(device).eval()
    tokenizer = load_tokenizer(folder)
    chat = ChatModel(model, tokenizer, stop_token_ids(tokenizer, str(folder)), device)
    replies = generate_replies(chat, prompts, Sampling(max_new_tokens=max_new_tokens), cancel=lambda: job.cancelled,
                               progress=lambda done, total: job.report(done / total, f"export: {done}/{total}"))
    job.check()
    return [(r.text, r.stopped) for r in replies]


def _modelfile_stops(folder: Path) -> list[str]:
    """The `PARAMETER stop` values of an Ollama folder's Modelfile (JSON strings, as ollama.py writes them)."""
    stops = []
    for line in (folder / "Modelfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("PARAMETER stop "):
            stops.append(json.loads(line[len("PARAMETER stop "):]))
    return stops


def _compare(artefact: Path, kind: str, label: str, prompts: list, references: list[str | None],
             tuned: list[tuple[str, bool]], exported: list[tuple[str, bool]], max_new_tokens: int) -> Parity:
    def side(replies: list[tuple[str, bool]]) -> Side:
        scored = [(text == ref) for (text, _), ref in zip(replies, references) if ref is not None]
        return Side(sum(scored) / len(scored) if scored else None, sum(s for _, s in replies) / max(1, len(replies)))

    a, b = side(tuned), side(exported)
    same = [t[0] == e[0] for t, e in zip(tuned, exported)]
    first = next((i for i, ok in enumerate(same) if not ok), None)
    difference = None if first is None else {
        "row": first, "prompt": prompts[first][-1]["content"], "reference": references[first],
        "tuned": tuned[first][0], "exported": exported[first][0]}
    warnings = []
    if a.exact_match is not None and b.exact_match is not None and b.exact_match < a.exact_match - WORSE_BY:
        warnings.append(f"the export answers worse than the run: {100 * b.exact_match:.0f}% exact match against "
                        f"{100 * a.exact_match:.0f}%")
    if b.stopped < a.stopped - WORSE_BY:
        warnings.append(f"the export does not stop like the run ({100 * b.stopped:.0f}% of replies end by themselves "
                        f"against {100 * a.stopped:.0f}%): its chat template or end-of-turn token was lost or changed")
    return Parity(str(artefact), kind, label, len(prompts), a, b, sum(same) / max(1, len(same)), difference,
                  max_new_tokens, 0.0, warnings)
