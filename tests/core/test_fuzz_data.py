"""Property tests of the dataset loader (files read through `datasets`, formats detected and rows
normalized): random bytes, truncated JSON, mixed schemas, giant rows, empty fields, wrong
encodings, BOMs and CRLF all end in rows or a `UserError` with a one-line message; never another
exception, never a hang. Each example reads a real file (~0.1 s), so the counts stay small for CI."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from qlora_studio.core.config.schema import DataSettings
from qlora_studio.core.data.pipeline import load_normalized
from qlora_studio.core.errors import UserError

# derandomize: the same examples every run. Runs of these have died, rarely, of a segfault inside
# pyarrow's JSON reader (through datasets), once with these very examples that pass on rerun: an
# intermittent fault, not one input.
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
COLUMNS = ["messages", "conversations", "instruction", "input", "output", "prompt", "completion", "text", "system",
           "role", "content", "from", "value", "weird"]
turn = st.fixed_dictionaries({}, optional={"role": st.one_of(text, st.sampled_from(["user", "assistant", "gpt"])),
                                           "content": st.one_of(text, st.none(), st.integers()),
                                           "from": st.sampled_from(["human", "gpt", "alien"]), "value": text})
value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text, st.lists(turn, max_size=3),
                  st.lists(text, max_size=2), st.dictionaries(text, text, max_size=2),
                  st.just("x" * 200_000))  # a giant row
rows = st.lists(st.dictionaries(st.sampled_from(COLUMNS), value, max_size=4), min_size=0, max_size=6)
SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet"]


def holds_the_contract(path, **settings) -> None:
    try:
        parts, normalized, *_ = load_normalized(DataSettings(path=str(path), **settings))
        assert parts and normalized is not None
        event("rows")
    except UserError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
        event(f"{type(exc).__name__}")


def encode(content: str, encoding: str) -> bytes:
    return content.encode(encoding, errors="replace")


def serialize(records: list[dict], suffix: str, line_end: str) -> str:
    if suffix in (".csv", ".tsv"):
        out = io.StringIO()
        names = sorted({k for r in records for k in r}) or ["text"]
        writer = csv.DictWriter(out, names, delimiter="\t" if suffix == ".tsv" else ",", lineterminator=line_end)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in records)
        return out.getvalue()
    if suffix == ".json":
        return json.dumps(records)
    if suffix == ".txt":
        return line_end.join(str(v) for r in records for v in r.values())
    return line_end.join(json.dumps(r, ensure_ascii=False) for r in records) + line_end


@pytest.mark.timeout(300)
@FUZZ
@given(records=rows, suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]), line_end=st.sampled_from(["\n", "\r\n"]),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=400)), skip_bad_rows=st.booleans(),
       fmt=st.sampled_from(["auto", "auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"]))
@example(records=[{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
         suffix=".jsonl", encoding="utf-8-sig", line_end="\r\n", cut=None, skip_bad_rows=False, fmt="auto")
@example(records=[{"text": "a"}, {"prompt": "p", "completion": "c"}], suffix=".jsonl", encoding="utf-8",
         line_end="\n", cut=20, skip_bad_rows=True, fmt="auto")  # mixed schemas, truncated mid-row
@example(records=[{"prompt": "", "completion": None}], suffix=".csv", encoding="utf-8", line_end="\n", cut=None,
         skip_bad_rows=True, fmt="auto")  # empty fields
def test_structured_files(tmp_path, records, suffix, encoding, line_end, cut, skip_bad_rows, fmt):
    data = encode(serialize(records, suffix, line_end), encoding)
    path = tmp_path / f"data{suffix}"
    path.write_bytes(data[:cut] if cut is not None else data)
    holds_the_contract(path, skip_bad_rows=skip_bad_rows, format=fmt)


@pytest.mark.timeout(300)
@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), skip_bad_rows=st.booleans())
@example(content=b"\xef\xbb\xbf{\"text\": \"hi\"}\r\n{\"text\": ", suffix=".jsonl", skip_bad_rows=True)
@example(content=b"[{\"text\": \"a\"}, {\"text\"", suffix=".json", skip_bad_rows=False)
@example(content=b"PAR1\x00\x00garbage", suffix=".parquet", skip_bad_rows=False)
def test_random_bytes(tmp_path, content, suffix, skip_bad_rows):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    holds_the_contract(path, skip_bad_rows=skip_bad_rows)


any_text = st.one_of(st.text(min_size=1), st.text(max_size=3000), st.just(""), st.just(" \r\n\t"),
                     st.just("<|im_end|>{{ x }}"))


def _turns(role_key: str, content_key: str, user: str, assistant: str):
    pair = st.tuples(any_text, any_text).map(lambda p: [{role_key: user, content_key: p[0]},
                                                        {role_key: assistant, content_key: p[1]}])
    return st.lists(pair, min_size=1, max_size=2).map(lambda pairs: [t for p in pairs for t in p])


PLAUSIBLE = (  # rows of the five formats, with odd text: empty, whitespace, long, special tokens, Jinja
    st.fixed_dictionaries({"messages": _turns("role", "content", "user", "assistant")}),
    st.fixed_dictionaries({"conversations": _turns("from", "value", "human", "gpt")}),
    st.fixed_dictionaries({"prompt": any_text, "completion": any_text}),
    st.fixed_dictionaries({"instruction": any_text, "input": any_text, "output": any_text}),
    st.fixed_dictionaries({"text": any_text}),
)


@pytest.fixture(scope="module")
def tokenizer():
    from tiny import build_tokenizer

    return build_tokenizer()


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=20)
@given(records=st.tuples(st.sampled_from(PLAUSIBLE).flatmap(lambda rows: st.lists(rows, min_size=1, max_size=5)),
                        st.lists(st.one_of(st.sampled_from(PLAUSIBLE).flatmap(lambda rows: rows),
                                           st.dictionaries(st.sampled_from(COLUMNS), value, max_size=3)), max_size=2))
       .map(lambda pair: pair[0] + pair[1]),  # one format, sometimes mixed with others and with junk
       max_length=st.sampled_from([12, 64, 1024]), overlength=st.sampled_from(["truncate", "drop"]))
def test_the_whole_pipeline_on_odd_rows(tmp_path, tokenizer, records, max_length, overlength):
    """Through templates, tokenizing and masking too (what training and the X-ray run)."""
    from qlora_studio.core.data.pipeline import inspect_data

    path = tmp_path / "data.jsonl"
    path.write_text(serialize(records, ".jsonl", "\n"), encoding="utf-8")
    settings_ = DataSettings(path=str(path), skip_bad_rows=True, max_length=max_length, overlength=overlength,
                             validation_split=0.0)
    try:
        report = inspect_data(settings_, tokenizer, [tokenizer.eos_token_id], examples=1, preview=2)
        assert report.train_rows >= 1
        event("trained rows")
    except UserError as exc:
        assert "\n" not in str(exc), repr(str(exc))
        event(str(exc).split(": ", 2)[-1][:60])
