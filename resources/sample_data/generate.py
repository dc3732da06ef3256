"""Writes the bundled sample tasks, one per training method (data.path: sample:<name>).

- dates / dates-eval (SFT): rewrite a date, written any common way, as ISO 8601. An original,
  license-clean task whose success is easy to measure (exact match of a short answer that must
  also end the reply).
- dates-pairs / dates-pairs-eval (DPO, ORPO): the same task as prompt, chosen (the right ISO date
  and nothing else), rejected (a plausible mistake: day and month swapped, a date a little off,
  the right date in another layout, or a right answer that rambles on), so preference accuracy
  and margin rise within minutes on a CPU.
- dates-kto (KTO): the same answers unpaired, each marked desirable (label true) or not.
- arithmetic / arithmetic-eval (GRPO): prompts only, with the reference answer the exact_match
  reward compares with; small operands, so a 135M model gets some right and can improve.

Run `python generate.py` to rebuild the files; the output is deterministic (tests/core/test_samples.py).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
ORDINAL_WORDS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
                 "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
                 "seventeenth", "eighteenth", "nineteenth", "twentieth", "twenty-first", "twenty-second",
                 "twenty-third", "twenty-fourth", "twenty-fifth", "twenty-sixth", "twenty-seventh",
                 "twenty-eighth", "twenty-ninth", "thirtieth", "thirty-first"]
PROMPTS = [
    "Convert this date to ISO 8601 (YYYY-MM-DD): {date}",
    "What is {date} in YYYY-MM-DD format?",
    "Normalize the date: {date}",
    "Rewrite as an ISO date: {date}",
    "Date: {date}\nGive it as YYYY-MM-DD.",
    "Please turn \"{date}\" into an ISO 8601 date.",
]
SYSTEM = "You convert dates to ISO 8601. Reply with the date only."


def suffix(day: int) -> str:
    if 11 <= day % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def render(date: dt.date, style: int) -> str:
    d, m, y = date.day, MONTHS[date.month - 1], date.year
    return [
        f"{m} {d}, {y}",
        f"{d} {m} {y}",
        f"{date.strftime('%A')}, {m} {d}, {y}",
        f"the {d}{suffix(d)} of {m} {y}",
        f"{y}, {m} {d}",
        f"{m[:3]}. {d}, {y}",
        f"{d:02d}.{date.month:02d}.{y} (day first)",
        f"{m} the {ORDINAL_WORDS[d - 1]}, {y}",
    ][style]


def example(rng: random.Random) -> dict:
    start = dt.date(1900, 1, 1).toordinal()
    date = dt.date.fromordinal(rng.randint(start, dt.date(2099, 12, 31).toordinal()))
    prompt = rng.choice(PROMPTS).format(date=render(date, rng.randrange(8)))
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": date.isoformat()}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    return {"messages": messages}


def random_date(rng: random.Random) -> dt.date:
    start = dt.date(1900, 1, 1).toordinal()
    return dt.date.fromordinal(rng.randint(start, dt.date(2099, 12, 31).toordinal()))


def date_prompt(rng: random.Random) -> tuple[str, dt.date]:
    date = random_date(rng)
    return rng.choice(PROMPTS).format(date=render(date, rng.randrange(8))), date


def wrong_answer(date: dt.date, rng: random.Random) -> str:
    """A plausible mistake: what a half-trained model writes instead of the bare ISO date."""
    kind = rng.choice(["swap", "off", "layout", "ramble"])
    if kind == "swap" and date.day <= 12 and date.day != date.month:
        return f"{date.year}-{date.day:02d}-{date.month:02d}"
    if kind in ("swap", "off"):
        off = rng.choice([dt.timedelta(days=rng.choice([-2, -1, 1, 2])), "year"])
        if off == "year":
            return f"{date.year + rng.choice([-10, -1, 1, 10])}-{date.month:02d}-{date.day:02d}"
        return (date + off).isoformat()
    if kind == "layout":
        return rng.choice([f"{date.month:02d}/{date.day:02d}/{date.year}", f"{date.day:02d}/{date.month:02d}/{date.year}",
                           f"{date.year}/{date.month:02d}/{date.day:02d}", f"{date.day} {MONTHS[date.month - 1]} {date.year}",
                           f"{date.year}{date.month:02d}{date.day:02d}"])
    return rng.choice(RAMBLES).format(iso=date.isoformat(), month=MONTHS[date.month - 1], number=date.month,
                                      year=date.year)


RAMBLES = [
    "Sure! The date in ISO 8601 format is {iso}. ISO 8601 puts the year first, then the month, then the day, "
    "each padded with zeros. Let me know if you need any other dates converted, or if you would like",
    "{iso}\n\nExplanation: the year is {year}, the month is {month}, and the day goes last. This format is "
    "used worldwide because it sorts correctly as text. Here are some more examples:",
    "Okay, let's think step by step. First we find the year: {year}. Then the month, {month}, which is "
    "month number {number}. Then the day. So the answer is {iso}. But wait, let me double-check the",
]


def pairs(rng: random.Random, count: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < count:
        prompt, date = date_prompt(rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "chosen": date.isoformat(), "rejected": wrong_answer(date, rng)})
    return rows


def unpaired(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        prompt, date = date_prompt(rng)
        good = rng.random() < 0.5
        rows.append({"prompt": prompt, "completion": date.isoformat() if good else wrong_answer(date, rng), "label": good})
    return rows


ARITHMETIC_PROMPTS = [
    "What is {a} {op} {b}? Reply with the number only.",
    "Compute {a} {op} {b}. Reply with the number only.",
    "{a} {op} {b} = ? Reply with the number only.",
]


def arithmetic(rng: random.Random, count: int) -> list[dict]:
    """Sums and differences of numbers below 100 and products up to 12 x 12, each asked once."""
    rows, seen = [], set()
    while len(rows) < count:
        op = rng.choice("+-*")
        if op == "+":
            a, b = rng.randint(1, 60), rng.randint(1, 40)
        elif op == "-":
            a = rng.randint(10, 99)
            b = rng.randint(1, a)
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"prompt": rng.choice(ARITHMETIC_PROMPTS).format(a=a, op=op, b=b), "answer": str(answer)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_all(folder: Path) -> None:
    rng = random.Random(20261124)
    rows = [example(rng) for _ in range(500)]
    preference = pairs(random.Random(20261125), 350)
    math = arithmetic(random.Random(20261127), 350)
    files = {
        "dates.jsonl": rows[:400], "dates-eval.jsonl": rows[400:],
        "dates-pairs.jsonl": preference[:300], "dates-pairs-eval.jsonl": preference[300:],
        "dates-kto.jsonl": unpaired(random.Random(20261126), 300),
        "arithmetic.jsonl": math[:300], "arithmetic-eval.jsonl": math[300:],
    }
    for name, part in files.items():
        write_jsonl(folder / name, part)


def main() -> None:
    write_all(Path(__file__).parent)


if __name__ == "__main__":
    main()
