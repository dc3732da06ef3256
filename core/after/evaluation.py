"""Score a trained adapter against its base on held-out rows: exact match of the reply with each
row's last assistant turn, how often the reply ends by itself (a stop token before the token
limit), and validation loss / perplexity on the assistant tokens, encoded as training encoded
them. Base and tuned come from one model in memory (`InferenceSession.using(base=True)`).

Results are saved in the run folder (evaluation.json, newest last, one entry per adapter and
data) and shown by the CLI, the window's playground and its runs page.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qlora_studio.core.after.inference import InferenceSession
from qlora_studio.core.after.jobs import CancelFn, Job, ProgressFn
from qlora_studio.core.after.scores import Scores
from qlora_studio.core.atomic import write_json_atomic
from qlora_studio.core.model.generation import Sampling

EVALUATION_FILE = "evaluation.json"
EXAMPLES_KEPT = 20


@dataclass
class Evaluation:
    run_dir: str | None
    adapter: str  # "final" | "step 50"
    data: str  # "validation split" | a file
    rows: int  # rows scored by generation
    loss_rows: int  # rows scored by loss
    tuned: Scores
    base: Scores | None
    max_new_tokens: int
    seconds: float
    created_at: float = field(default_factory=time.time)
    examples: list[dict[str, Any]] = field(default_factory=list)  # prompt, reference, tuned, base (the first rows)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Evaluation":
        values = {k: data.get(k) for k in cls.__dataclass_fields__}
        values["tuned"] = Scores.from_dict(data["tuned"])
        values["base"] = Scores.from_dict(data["base"]) if data.get("base") else None
        return cls(**{k: v for k, v in values.items() if v is not None or k in ("run_dir", "base")})


def evaluate(session: InferenceSession, data: str | None = None, limit: int | None = None,
             max_new_tokens: int = 64, with_base: bool = True, progress: ProgressFn | None = None,
             cancel: CancelFn | None = None) -> Evaluation:
    """Tuned (and base) on the run's validation split (`data` None) or on the file `data`."""
    from qlora_studio.core.data.heldout import held_out_rows

    job = Job(progress, cancel)
    began = time.monotonic()
    job.report(0.0, "reading the held-out rows")
    config = session.config
    rows = held_out_rows(config.data, session.chat.tokenizer, session.chat.stop_ids, config.train.seed, data, limit,
                         method=config.train.method)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    sides = [("tuned", False)] + ([("base", True)] if with_base else [])
    scores: dict[str, Scores] = {}
    replies: dict[str, list] = {}
    for index, (name, base) in enumerate(sides):
        part = job.sub(index / len(sides), (index + 1) / len(sides))
        step = part.sub(0.0, 0.8)
        answered = session.replies(rows.prompts, sampling, base=base, cancel=lambda: job.cancelled,
                                   progress=lambda done, total, s=step, n=name: s.report(done / total, f"{n}: {done}/{total} replies"))
        job.check()
        part.report(0.8, f"{name}: validation loss")
        loss = validation_loss(session, rows.encoded, base, part.sub(0.8, 1.0))
        replies[name] = answered
        matches = [r.text == ref for r, ref in zip(answered, rows.references)]
        scores[name] = Scores(
            exact_match=sum(matches) / len(matches) if matches else None,
            stopped=sum(r.stopped for r in answered) / len(answered) if answered else None,
            eval_loss=loss, perplexity=math.exp(min(loss, 50.0)) if loss is not None else None,
            ranks_chosen=ranks_chosen(session, rows.pairs, base) if rows.pairs else None,
            reward=mean_reward(config, rows, answered) if config.train.method == "grpo" else None)
    examples = []
    for i, (prompt, reference) in enumerate(zip(rows.prompts[:EXAMPLES_KEPT], rows.references)):
        example = {"prompt": prompt[-1]["content"], "reference": reference}
        for name in replies:
            example[name] = replies[name][i].text
            example[f"{name}_stopped"] = replies[name][i].stopped
        examples.append(example)
    job.report(1.0, "done")
    ref = session.ref
    return Evaluation(str(ref.run_dir) if ref.run_dir else None, ref.label, rows.label, len(rows.prompts),
                      len(rows.encoded), scores["tuned"], scores.get("base"), max_new_tokens,
                      round(time.monotonic() - began, 1), examples=examples)


def ranks_chosen(session: InferenceSession, pairs, base: bool) -> float:
    """How often the model gives the chosen answer of a held-out pair a higher log-probability than
    the rejected one, each answer's tokens cut from the prompt as TRL cuts them (data/pairs.py)."""
    from qlora_studio.core.data.pairs import completion_tokens

    tokenizer, device, wins = session.chat.tokenizer, session.chat.device, 0
    with session.using(base), torch.no_grad():
        for prompt, chosen, rejected in pairs:
            scores = []
            for answer in (chosen, rejected):
                prompt_ids, answer_ids = completion_tokens(tokenizer, prompt, answer)
                ids = torch.tensor([prompt_ids + answer_ids], device=device)
                logits = session.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
                scores.append(float(logits.log_softmax(-1).gather(-1, ids[0, len(prompt_ids):, None]).sum()))
            wins += scores[0] > scores[1]
    return round(wins / len(pairs), 6)


def mean_reward(config, rows, answered) -> float | None:
    """GRPO: the replies' mean total reward under the run's own rewards (greedy replies, so the
    same every time)."""
    from qlora_studio.core.training.rewards import score_completions

    answers = rows.answers or [None] * len(answered)
    scored = score_completions(config.train.grpo, [p[-1]["content"] for p in rows.prompts],
                               [r.text for r in answered], answers)
    totals = [s["total"] for s in scored if s["total"] is not None]
    return round(sum(totals) / len(totals), 6) if totals else None


def validation_loss(session: InferenceSession, encoded, base: bool, job: Job) -> float | None:
    """Mean cross-entropy per trained (assistant) token, weighted by tokens across batches."""
    from qlora_studio.core.data.pipeline import make_collator

    if len(encoded) == 0:
        return None
    chat = session.chat
    tokenizer = chat.tokenizer
    tokenizer.padding_side = "right"  # positions must match training's (this session's own tokenizer)
    collate = make_collator(tokenizer, None)
    longest = max(len(ids) for ids in encoded["input_ids"])
    vocab = getattr(session.model.config, "vocab_size", 50_000)
    batch_size = max(1, min(16, (1 << 30) // max(1, longest * vocab * 4)))  # logits under about 1 GiB
    total, tokens = 0.0, 0
    with session.using(base), torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            job.check()
            batch = collate([encoded[i] for i in range(start, min(start + batch_size, len(encoded)))])
            batch = {k: v.to(chat.device) for k, v in batch.items()}
            counted = int((batch["labels"][:, 1:] != -100).sum())
            if counted:
                total += float(session.model(**batch).loss) * counted
                tokens += counted
            job.report(min(start + batch_size, len(encoded)) / len(encoded), "validation loss")
    return round(total / tokens, 6) if tokens else None


def save_evaluation(evaluation: Evaluation) -> Path | None:
    """Into the run folder's evaluation.json, replacing an earlier one of the same adapter and data."""
    if evaluation.run_dir is None:
        return None
    path = Path(evaluation.run_dir) / EVALUATION_FILE
    kept = [e for e in read_evaluations(evaluation.run_dir)
            if (e.adapter, e.data) != (evaluation.adapter, evaluation.data)]
    records = [e.to_dict() for e in kept + [evaluation]]
    write_json_atomic(path, {"evaluations": records})
    return path


def read_evaluations(run_dir: str | Path) -> list[Evaluation]:
    try:
        records = json.loads((Path(run_dir) / EVALUATION_FILE).read_text(encoding="utf-8"))["evaluations"]
        return [Evaluation.from_dict(r) for r in records]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def latest_evaluation(run_dir: str | Path) -> Evaluation | None:
    """The newest evaluation of the final adapter, else the newest of any."""
    found = sorted(read_evaluations(run_dir), key=lambda e: e.created_at)
    finals = [e for e in found if e.adapter == "final"]
    return (finals or found or [None])[-1]
