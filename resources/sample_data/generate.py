"""Writes the bundled sample task: rewrite a date, written any common way, as ISO 8601.

An original, license-clean task whose success is easy to measure (exact match of a short
answer that must also end the reply). Run `python generate.py` to rebuild the files; the output
is deterministic.
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


def main() -> None:
    rng = random.Random(20261124)
    here = Path(__file__).parent
    rows = [example(rng) for _ in range(500)]
    for name, part in (("dates.jsonl", rows[:400]), ("dates-eval.jsonl", rows[400:])):
        with open(here / name, "w", encoding="utf-8") as fh:
            for row in part:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
