"""What the dataset X-ray shows for the methods past SFT, from core's report (data/method_data.py):
the summary in the method's units, an example (a pair side by side, a rated answer, a prompt with
its reference answer), the Rows tab's columns and the pairs left out. Plain functions from the
report to text; `xray.DataXRay` puts it on screen."""

from __future__ import annotations

from typing import Any

from qlora_studio.gui import fmt

TRAINED_STYLE = "background:#bbf7d0;color:#14532d;"
CONTEXT_STYLE = "color:#64748b;"
PRE = "white-space:pre-wrap;font-family:monospace;margin:0"
GOOD, BAD, AMBER = "#15803d", "#b91c1c", "#b45309"
BADGES = {True: ("desirable ✔", "background:#dcfce7;color:#166534;"),
          False: ("undesirable ✘", "background:#fee2e2;color:#991b1b;")}
# The Rows tab's columns per row shape: (header, the row's key, stretches with the table)
COLUMNS = {
    "pairs": [("Where", "where", False), ("Prompt", "prompt", True), ("Chosen", "chosen", True),
              ("Rejected", "rejected", True)],
    "rated": [("Where", "where", False), ("Prompt", "prompt", True), ("Completion", "completion", True),
              ("Label", "label", False)],
    "prompts": [("Where", "where", False), ("Prompt", "prompt", True), ("Answer", "answer", True)],
}


def shape(r) -> str:
    """The rows' shape: pairs (DPO, ORPO, KTO over pairs), rated answers (KTO), prompts (GRPO)."""
    if r.method == "grpo":
        return "prompts"
    return "rated" if r.format == "unpaired" else "pairs"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word if n == 1 else word + 's'}"


# ---- the summary ----
def summary_lines(r) -> list[str]:
    kind = shape(r)
    unit = {"pairs": "pairs", "rated": "rows", "prompts": "prompts"}[kind]
    mix = f" (mixed: {', '.join(f'{k} {v}' for k, v in r.formats.items())})" if len(r.formats) > 1 else ""
    train = f"{r.train_rows:,} train"
    if r.labels:  # KTO counts the training rows it learns from, a pair being two of them
        split = " answers, each pair split in two" if kind == "pairs" else ""
        train += f" ({r.labels.get('desirable', 0):,} desirable / {r.labels.get('undesirable', 0):,} undesirable{split})"
    first = (f"<b>{fmt.escape(r.format)}</b>{fmt.escape(mix)} · {r.rows:,} {unit}"
             + (f" (<span style='color:{BAD}'>{r.bad_rows:,} bad</span>)" if r.bad_rows else "")
             + f" · {train} / {r.eval_rows:,} validation · template <b>{fmt.escape(r.template)}</b>")
    if r.flagged_rows:
        first += f" · <span style='color:{AMBER}'>{_plural(r.flagged_rows, 'identical pair')} left out</span>"
    if r.cut_rows:
        first += f" · {r.cut_rows:,} cut at max_length {r.max_length}"
    if r.dropped_rows:
        first += f" · <span style='color:{AMBER}'>{r.dropped_rows:,} dropped at max_length {r.max_length}</span>"
    if kind == "prompts":
        first += f" · {r.answers:,} of {r.train_rows:,} with a reference answer"
    lines = [first]
    t = r.token_lengths
    if t:
        lines.append(f"{histogram_labels(r)[0]}: p50 <b>{t['p50']:.0f}</b> · p90 <b>{t['p90']:.0f}</b> · "
                     f"p99 <b>{t['p99']:.0f}</b> · max <b>{t['max']}</b>")
    return lines


def histogram_labels(r) -> tuple[str, str]:
    """(what a length counts, what the bars count): core counts a pair's prompt and longer answer."""
    return {"pairs": ("tokens per pair (prompt + longer answer)", "pairs"),
            "rated": ("tokens per row (prompt + answer)", "rows"),
            "prompts": ("prompt tokens", "prompts")}[shape(r)]


# ---- the example tab ----
def example_html(r) -> str:
    if not r.examples:
        return "<i>No example to show.</i>"
    trained = (f"<span style='{TRAINED_STYLE}'>&nbsp;trained&nbsp;</span> tokens carry the loss · "
               f"<span style='{CONTEXT_STYLE}'>grey</span> tokens are context")
    legend = {
        "pairs": f"{trained} · training makes the chosen answer more likely than the rejected one"
                 + (" (KTO: chosen is desirable, rejected undesirable)" if r.method == "kto" else ""),
        "rated": f"{trained} · training makes desirable answers more likely and undesirable ones less",
        "prompts": f"<span style='{CONTEXT_STYLE}'>grey</span> prompts are context · the answers are sampled during "
                   "training; rewards score them",
    }[shape(r)]
    parts = [f"<p style='color:#334155'>{legend}</p>"]
    for number, ex in enumerate(r.examples, start=1):
        parts.append(_example(number, ex))
    return "".join(parts)


def _example(number: int, ex: dict[str, Any]) -> str:
    prompt = f"<pre style='{PRE}'><span style='{CONTEXT_STYLE}'>{fmt.escape(ex['prompt'])}</span></pre>"
    head = f"<p style='color:#475569;margin-top:10px'><b>Example {number}</b> · prompt {ex['prompt_tokens']} tokens"
    if "chosen" in ex:
        chosen, rejected = ex["chosen"], ex["rejected"]
        return (f"{head} · {chosen['trained_tokens']} chosen / {rejected['trained_tokens']} rejected tokens "
                f"trained</p>{prompt}"
                "<table width='100%' cellspacing='0' cellpadding='4' style='margin-top:4px'><tr>"
                f"<th width='50%' align='left' style='background:#f0fdf4;color:{GOOD}'>chosen ✔</th>"
                f"<th width='50%' align='left' style='background:#fef2f2;color:{BAD}'>rejected ✘</th></tr>"
                f"<tr><td valign='top'>{_answer(chosen)}</td><td valign='top'>{_answer(rejected)}</td></tr></table>")
    if "completion" in ex:
        text, style = BADGES[bool(ex.get("label"))]
        return (f"{head} · {ex['completion']['trained_tokens']} tokens trained</p>{prompt}"
                f"<p style='margin:4px 0'><span style='{style}'>&nbsp;{text}&nbsp;</span></p>{_answer(ex['completion'])}")
    answer = ex.get("answer")
    reference = (f"reference answer: <b>{fmt.escape(answer)}</b>" if answer
                 else "<i>no reference answer</i> (only rewards that need none can score this prompt)")
    return f"{head}</p>{prompt}<p style='margin:4px 0;color:#334155'>{reference}</p>"


def _answer(answer: dict[str, Any]) -> str:
    html = f"<pre style='{PRE}'><span style='{TRAINED_STYLE}'>{fmt.escape(answer['text'])}</span></pre>"
    if answer.get("cut_tokens"):
        html += (f"<p style='color:{BAD};margin:2px 0 0 0'>… {answer['cut_tokens']:,} tokens cut at max_length "
                 "(not trained)</p>")
    return html


# ---- the rows tab ----
def row_columns(r) -> list[tuple[str, bool]]:
    """(header, stretches) of the Rows tab's columns."""
    return [(header, stretch) for header, _, stretch in COLUMNS[shape(r)]]


def row_cells(r, row: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(text, color or None) for each column of one preview row."""
    cells = []
    for _, key, _ in COLUMNS[shape(r)]:
        value = row.get(key)
        if key == "label":
            if value is None:  # a pair read by KTO: its chosen answer is desirable, its rejected one not
                cells.append(("pair", None))
            else:
                cells.append((BADGES[bool(value)][0], GOOD if value else BAD))
        elif key == "completion" and value is None and "chosen" in row:
            cells.append((f"✔ {row['chosen']}  ✘ {row['rejected']}", None))
        else:
            cells.append(("" if value is None else str(value), None))
    return cells


# ---- the problems tab ----
def flagged_items(r) -> list[str]:
    items = [f"<li><b>left out</b> {fmt.escape(flag['where'])}: {fmt.escape(flag['reason'])} (the pair teaches "
             "nothing)</li>" for flag in r.flagged_examples]
    if r.flagged_rows > len(r.flagged_examples):
        items.append(f"<li>… and {r.flagged_rows - len(r.flagged_examples):,} more pairs left out</li>")
    return items
