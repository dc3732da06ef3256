"""Dataset pipeline: every source and format, bad input named by file and line, masks token by token."""

import json

import pytest

from qlora_studio.core.config import DataSettings
from qlora_studio.core.data.encoder import IGNORE_INDEX, ConversationEncoder
from qlora_studio.core.data.pipeline import inspect_data
from qlora_studio.core.model.loading import stop_token_ids
from qlora_studio.core.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def xray(tokenizer, path, **settings):
    return inspect_data(DataSettings(path=str(path), validation_split=0, **settings), tokenizer,
                        stop_token_ids(tokenizer, None), examples=1, preview=5)


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ALPACA = [{"instruction": f"Add {i} and 1.", "input": "" if i % 2 else "show work", "output": str(i + 1)} for i in range(6)]
SHAREGPT = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"Hi {i}"},
                               {"from": "gpt", "value": f"Hello {i}"}, {"from": "human", "value": "Again?"},
                               {"from": "gpt", "value": "Yes."}]} for i in range(5)]
MESSAGES = [{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"Q{i}"},
                          {"role": "assistant", "content": f"A{i}"}, {"role": "user", "content": "More"},
                          {"role": "assistant", "content": "Done."}]} for i in range(7)]


# ---- sources and formats ----------------------------------------------------------------------

def test_alpaca_json_array(tmp_path, tokenizer):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA))
    report = xray(tokenizer, path)
    assert report.format == "alpaca" and report.rows == 6 and report.columns == ["instruction", "input", "output"]


def test_sharegpt_multi_turn_with_system(tmp_path, tokenizer):
    report = xray(tokenizer, jsonl(tmp_path / "share.jsonl", SHAREGPT))
    assert report.format == "sharegpt" and report.rows == 5
    trained = "".join(s["text"] for s in report.examples[0]["segments"] if s["trained"])
    assert trained == "Hello 0<|im_end|>Yes.<|im_end|>"  # both assistant turns, each ending in EOS


def test_messages_jsonl(tmp_path, tokenizer):
    report = xray(tokenizer, jsonl(tmp_path / "m.jsonl", MESSAGES))
    assert report.format == "messages" and report.rows == 7 and report.eos["ok"]


def test_csv_with_commas_quotes_and_newlines(tmp_path, tokenizer):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\n"Hello, world?","Line one\nline ""two"", with comma"\n"Plain",Short\n'
                    '"Multi\nline question",yes\n')
    report = xray(tokenizer, path)
    assert report.format == "prompt_completion" and report.rows == 3
    assert report.preview_rows[0]["messages"][1]["content"] == 'Line one\nline "two", with comma'


def test_tsv_and_column_mapping(tmp_path, tokenizer):
    path = tmp_path / "odd.tsv"
    path.write_text("frage\tantwort\nWie?\tSo.\nWas?\tDas.\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        xray(tokenizer, path)
    report = xray(tokenizer, path, columns={"prompt": "frage", "completion": "antwort"})
    assert report.format == "prompt_completion" and report.rows == 2


def test_parquet(tmp_path, tokenizer):
    import pandas as pd

    path = tmp_path / "pc.parquet"
    pd.DataFrame({"prompt": ["a?", "b?", "c?", "d?"], "completion": ["A", "B", "C", "D"]}).to_parquet(path)
    report = xray(tokenizer, path)
    assert report.format == "prompt_completion" and report.rows == 4


def test_txt_paragraphs_are_text(tmp_path, tokenizer):
    path = tmp_path / "book.txt"
    path.write_text("First paragraph\nstill first.\n\nSecond one.\n\nThird.\n")
    report = xray(tokenizer, path)
    assert report.format == "text" and report.rows == 3
    assert all(s["trained"] for s in report.examples[0]["segments"])  # raw text trains on everything


def test_text_column_jsonl(tmp_path, tokenizer):
    report = xray(tokenizer, jsonl(tmp_path / "t.jsonl", [{"text": f"doc {i}"} for i in range(4)]))
    assert report.format == "text" and report.rows == 4


def test_json_object_holding_a_list(tmp_path, tokenizer):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "data": MESSAGES}))
    report = xray(tokenizer, path)
    assert report.format == "messages" and report.rows == 7


def test_jsonl_named_json(tmp_path, tokenizer):
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    assert xray(tokenizer, path).rows == 6


def test_folder_of_mixed_files(tmp_path, tokenizer):
    folder = tmp_path / "mix"
    folder.mkdir()
    jsonl(folder / "a.jsonl", MESSAGES)
    (folder / "b.json").write_text(json.dumps(ALPACA))
    (folder / "notes.md").write_text("ignored")
    report = xray(tokenizer, folder)
    assert report.rows == 13 and report.formats == {"messages": 7, "alpaca": 6} and report.format == "messages"


def test_save_to_disk_folder(tmp_path, tokenizer):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(MESSAGES).save_to_disk(str(tmp_path / "saved"))
    assert xray(tokenizer, tmp_path / "saved").rows == 7
    DatasetDict({"train": Dataset.from_list(MESSAGES), "test": Dataset.from_list(MESSAGES[:2])}).save_to_disk(str(tmp_path / "dd"))
    assert xray(tokenizer, tmp_path / "dd", split="test").rows == 2


def test_prompt_completion_synonyms(tmp_path, tokenizer):
    report = xray(tokenizer, jsonl(tmp_path / "qa.jsonl", [{"query": "x?", "response": "y"}] * 3))
    assert report.format == "prompt_completion"


# ---- broken input -----------------------------------------------------------------------------

BROKEN = {
    "truncated.json": ('[{"instruction": "a", "output": "b"},\n {"instruction": "c", "outp', r"truncated.json:2: invalid JSON"),
    "badline.jsonl": ('{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n', r"badline.jsonl:3: invalid JSON"),
    "empty.jsonl": ("", r"empty.jsonl: the file is empty"),
    "junk.jsonl": (b"\x00\x01\x02\xff\xfe\x00 binary\n", r"junk.jsonl:1: this is not a text file"),
    "roles.jsonl": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot2", "content": "yo"}]}\n',
                    r"roles.jsonl:2: unknown role 'bot2' in turn 2"),
    "noassistant.jsonl": ('\n{"conversations": [{"from": "human", "value": "hi"}]}\n',
                          r"noassistant.jsonl:2: the conversation has no assistant turn"),
    "missing.csv": ("instruction,notes\nDo it,later\n", r"missing.csv: the alpaca format needs a output column"),
    "array_line.jsonl": ('{"text": "a"}\n[1, 2]\n', r"array_line.jsonl:2: each line must be a JSON object"),
    "empty_reply.jsonl": ('{"prompt": "q", "completion": "   "}\n', r"empty_reply.jsonl row 1|empty_reply.jsonl:1: 'completion' is empty"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_name_file_and_line(tmp_path, tokenizer, name):
    content, pattern = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fmt = "alpaca" if name == "missing.csv" else "auto"
    with pytest.raises(DataError, match=pattern):
        xray(tokenizer, path, format=fmt)


def test_empty_folder_and_missing_path(tmp_path, tokenizer):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder holds no data files"):
        xray(tokenizer, tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        xray(tokenizer, tmp_path / "nope.jsonl")


def test_bad_rows_stop_by_default_and_can_be_skipped(tmp_path, tokenizer):
    rows = MESSAGES[:3] + [{"messages": [{"role": "user", "content": "only a question"}]}] + MESSAGES[3:] + [{"messages": []}]
    path = jsonl(tmp_path / "some_bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        xray(tokenizer, path)
    message = str(info.value)
    assert "some_bad.jsonl:4: the conversation has no assistant turn" in message
    assert "1 more bad row" in message and "some_bad.jsonl:9" in message and "skip_bad_rows" in message
    report = xray(tokenizer, path, skip_bad_rows=True)
    assert report.rows == 7 and report.bad_rows == 2 and report.rows_read == 9
    assert report.bad_examples[0]["where"].endswith("some_bad.jsonl:4")


def test_skip_bad_rows_skips_malformed_json_lines_too(tmp_path, tokenizer, monkeypatch):
    """Issue 12: with skip_bad_rows on, one malformed JSON line still failed the whole file
    (`bad.jsonl:4: invalid JSON`): datasets' JSON reader rejects the file, not the line."""
    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(tmp_path / "cache"))
    lines = [json.dumps(r) for r in MESSAGES[:3]] + ['{"messages": [broken', "[1, 2]"] + \
        [json.dumps(r) for r in MESSAGES[3:]] + [json.dumps({"messages": []})]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:4: invalid JSON .*and 2 more bad rows.*skip_bad_rows"):
        xray(tokenizer, path)
    report = xray(tokenizer, path, skip_bad_rows=True)
    assert report.rows == 7 and report.bad_rows == 3 and report.rows_read == 10
    wheres = [b["where"].rsplit("/", 1)[-1] for b in report.bad_examples]
    assert wheres == ["bad.jsonl:4", "bad.jsonl:5", "bad.jsonl:10"]  # line numbers still those of the file
    assert "each line must be a JSON object" in report.bad_examples[1]["reason"]
    assert report.preview_rows[3]["where"].endswith("bad.jsonl:6")


# ---- lengths and splits -----------------------------------------------------------------------

def test_truncate_and_drop_are_counted(tmp_path, tokenizer):
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "short"}]}
    path = jsonl(tmp_path / "lens.jsonl", MESSAGES[:4] + [long])
    cut = xray(tokenizer, path, max_length=64)
    assert cut.over_max_length == 1 and cut.dropped_rows == 1  # cutting leaves no reply: dropped, and said so
    long_reply = {"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "word " * 200}]}
    path = jsonl(tmp_path / "lens2.jsonl", MESSAGES[:4] + [long_reply])
    cut = xray(tokenizer, path, max_length=64)
    assert cut.cut_rows == 1 and cut.dropped_rows == 0 and cut.train_rows == 5
    dropped = xray(tokenizer, path, max_length=64, overlength="drop")
    assert dropped.dropped_rows == 1 and dropped.train_rows == 4
    assert cut.token_lengths["max"] > 64 and cut.token_lengths["p50"] > 0


def test_tokenizing_reports_progress_in_chunks_with_the_same_result(tokenizer, monkeypatch):
    from qlora_studio.core.data import pipeline

    settings = DataSettings(path="sample:dates", validation_split=0.05, max_length=128)
    whole = pipeline.prepare_data(settings, tokenizer, stop_token_ids(tokenizer, None), seed=3)
    monkeypatch.setattr(pipeline, "TOKENIZE_CHUNK_MIN", 100)
    seen = []
    chunked = pipeline.prepare_data(settings, tokenizer, stop_token_ids(tokenizer, None), seed=3,
                                    progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen[0] == ("read", 0, 0) and seen[1] == ("tokenize", 0, 400) and seen[-1] == ("tokenize", 400, 400)
    done = [d for stage, d, _ in seen if stage == "tokenize"]
    assert len(done) >= 5 and done == sorted(done)
    assert chunked.train["input_ids"] == whole.train["input_ids"] and chunked.eval["labels"] == whole.eval["labels"]


def test_validation_split_is_deterministic(tmp_path, tokenizer):
    path = jsonl(tmp_path / "m.jsonl", MESSAGES * 4)
    a = inspect_data(DataSettings(path=str(path), validation_split=0.25), tokenizer, [tokenizer.eos_token_id], seed=1)
    b = inspect_data(DataSettings(path=str(path), validation_split=0.25), tokenizer, [tokenizer.eos_token_id], seed=1)
    assert (a.train_rows, a.eval_rows) == (21, 7) and (b.train_rows, b.eval_rows) == (21, 7)
    separate = jsonl(tmp_path / "val.jsonl", MESSAGES[:3])
    c = inspect_data(DataSettings(path=str(path), validation_path=str(separate)), tokenizer, [tokenizer.eos_token_id])
    assert (c.train_rows, c.eval_rows) == (28, 3)


# ---- masks, token by token --------------------------------------------------------------------

def trained_and_untrained(tokenizer, encoded):
    ids, labels = encoded["input_ids"], encoded["labels"]
    trained = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    untrained = [t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX]
    for t, lab in zip(ids, labels):
        assert lab in (IGNORE_INDEX, t)  # a label is the token itself or masked
    return tokenizer.decode(trained), tokenizer.decode(untrained)


def encoder_for(tokenizer, template=None, train_on="assistant"):
    from qlora_studio.core.data.templates import choose_template

    text, _, _ = choose_template(tokenizer, template or "auto")
    return ConversationEncoder(tokenizer, text, train_on, 4096, "truncate", stop_token_ids(tokenizer, None))


@pytest.mark.parametrize("fmt_rows", ["alpaca", "sharegpt", "messages", "prompt_completion"])
def test_mask_per_format_on_tiny_model(tmp_path, tokenizer, fmt_rows):
    from qlora_studio.core.data.formats import normalize_row

    rows = {"alpaca": (ALPACA[0], {"instruction": "instruction", "input": "input", "output": "output"}),
            "sharegpt": (SHAREGPT[0], {"conversation": "conversations"}),
            "messages": (MESSAGES[0], {"conversation": "messages"}),
            "prompt_completion": ({"prompt": "p?", "completion": "c!"}, {"prompt": "prompt", "completion": "completion"})}
    row, cols = rows[fmt_rows]
    messages, _ = normalize_row(row, fmt_rows, cols, None)
    encoded = encoder_for(tokenizer).encode_messages(messages)
    trained, untrained = trained_and_untrained(tokenizer, encoded)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert trained == "".join(r + "<|im_end|>" for r in replies)
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in untrained
    assert encoded["input_ids"].count(tokenizer.eos_token_id) >= len(replies)


def test_mask_on_smollm2_real_template(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    encoder = ConversationEncoder(tok, tok.chat_template, "assistant", 4096, "truncate", stop_token_ids(tok, str(smollm2_dir)))
    messages = MESSAGES[0]["messages"]
    encoded = encoder.encode_messages(messages)
    trained, untrained = trained_and_untrained(tok, encoded)
    assert trained == "A0<|im_end|>Done.<|im_end|>"
    assert "You are terse." in untrained and "Q0" in untrained and "<|im_start|>assistant" in untrained
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    trained_ids = [t for t, lab in zip(encoded["input_ids"], encoded["labels"]) if lab != IGNORE_INDEX]
    assert trained_ids.count(eos) == 2 and trained_ids[-1] == eos
    # without a system turn SmolLM2's template adds its default one, still untrained
    encoded = encoder.encode_messages(messages[1:])
    trained, untrained = trained_and_untrained(tok, encoded)
    assert trained == "A0<|im_end|>Done.<|im_end|>" and "SmolLM" in untrained


def test_eos_is_added_when_the_template_ends_turns_otherwise(tokenizer):
    encoder = encoder_for(tokenizer, template="phi3")  # <|end|> is not this tokenizer's EOS
    encoded = encoder.encode_messages(MESSAGES[0]["messages"])
    assert encoded["eos_added"] == 2
    trained, _ = trained_and_untrained(tokenizer, encoded)
    assert trained.count("<|im_end|>") == 2 and trained.startswith("A0")


def test_base_model_gets_chatml_with_a_warning(tiny_base_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_model)
    assert not tok.chat_template
    report = xray(tok, jsonl(tmp_path / "m.jsonl", MESSAGES))
    assert report.template == "chatml" and any("no chat template" in w for w in report.warnings)
    assert report.eos["ok"]


def test_train_on_everything(tokenizer):
    encoded = encoder_for(tokenizer, train_on="all").encode_messages(MESSAGES[0]["messages"])
    assert encoded["labels"] == encoded["input_ids"]


# ---- the CLI --------------------------------------------------------------------------------

def run_cli(capsys, *args):
    """`inspect-data` in this process (test_cli.py starts the real entry point once): (exit code, stdout, stderr)."""
    from qlora_studio.core.cli import main

    code = main(["inspect-data", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_data_json_and_errors(tmp_path, tiny_model, capsys):
    good = jsonl(tmp_path / "share.jsonl", SHAREGPT)
    code, stdout, stderr = run_cli(capsys, "--data", str(good), "--model", str(tiny_model), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["format"] == "sharegpt" and report["rows"] == 5 and report["token_lengths"]["p99"] > 0

    _, text, _ = run_cli(capsys, "--data", str(good), "--model", str(tiny_model))
    assert "format      sharegpt" in text and "[[Hello 0<|im_end|>]]" in text

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    code, _, stderr = run_cli(capsys, "--data", str(bad), "--model", str(tiny_model), "--json")
    assert code == 2 and "Traceback" not in stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}:2: invalid JSON (Expecting value, column 10)") and "skip_bad_rows" in line
